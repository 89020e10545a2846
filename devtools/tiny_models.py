"""Tiny random-weight model FILES built from ComfyUI's own classes, for tests and the offline demo.

Nothing here is a usable model: the weights are seeded noise, so every picture made with them is noise.
What they ARE good for is exercising the real ComfyUI loaders and samplers end to end in about a second.

- ``build_tiny_sd15``: an SD1.5 checkpoint that ``CheckpointLoaderSimple`` detects as ``SD15``
  (``model_channels=320``, ``context_dim=768``, conv ``proj_in``, 4 input channels, an input-block
  transformer: what ComfyUI's model detection keys on; the other sizes are free), the real CLIP-L text encoder layout, and a
  TAESD VAE (``first_stage_model.taesd_encoder/decoder.*``) so VAEEncode and VAEDecode work.
- ``build_tiny_controlnet``: an LDM-format ControlNet (``comfy.cldm.cldm.ControlNet``) for the same UNet config.
- ``build_tiny_lora``: kohya-format low-rank pairs on the tiny UNet's attention projections.
- ``ensure_tiny_models``: builds all three once into a cache folder keyed by ``BUILDER_VERSION``.
- ``build_tiny_sdxl`` / ``build_tiny_sdxl_controlnet`` / ``build_tiny_sdxl_lora`` / ``ensure_tiny_sdxl_models``: the
  same for the SDXL family. ComfyUI detects SDXL-family UNets by ``model_channels`` 320, ``context_dim`` 2048,
  ``adm_in_channels`` 2816 and the transformer depths, not by channel widths, so a Segmind-Vega-shaped UNet
  (depths ``[0, 0, 1, 1, 2, 2]``) with every level 320 wide (115 M) is loaded as SDXL. Its text encoders are
  the real, fixed-size CLIP-L (123 M) and CLIP-G (695 M, stored as fp8: ComfyUI loads fp8 tensors inside a
  checkpoint), so the file is about 1.2 GB; it is built once per machine (``SDXL_BUILDER_VERSION``).

Models are instantiated on the meta device (no memory, no init cost) only to learn key names and shapes;
values are then drawn from one seeded ``torch.Generator`` in sorted key order, so a file is a pure
function of (builder version, preset, seed).  [choice] fan-in-scaled normal weights with gain 0.5,
norm scales 1, small biases: activations stay O(1) through the tiny nets, outputs stay finite.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path

import torch

log = logging.getLogger(__name__)

# Bump when anything below changes the bytes of a built file: cached files under another version are rebuilt.
BUILDER_VERSION = 1

PRESETS = {
    # 13.6 M UNet, no output-block transformers, no middle transformer.
    "smallest": dict(num_res_blocks=[1], channel_mult=[1], transformer_depth=[1],
                     transformer_depth_output=[0, 0], transformer_depth_middle=-2),
    # 44 M UNet, 7 transformer blocks named like real SD1.5 (input 1,2; middle 0; output 0..3).
    "recommended": dict(num_res_blocks=[1, 1], channel_mult=[1, 1], transformer_depth=[1, 1],
                        transformer_depth_output=[1, 1, 1, 1], transformer_depth_middle=1),
}

CLIP_L_CONFIG = {
    "hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12, "num_hidden_layers": 12,
    "max_position_embeddings": 77, "vocab_size": 49408, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5,
    "projection_dim": 768, "eos_token_id": 49407, "bos_token_id": 0, "pad_token_id": 1,
}

FILE_NAMES = {
    "checkpoint": "anydressing-tiny-sd15.safetensors",
    "controlnet": "anydressing-tiny-controlnet.safetensors",
    "lora": "anydressing-tiny-lora.safetensors",
}


def unet_config(preset: str = "recommended") -> dict:
    """The ``UNetModel`` / ``ControlNet`` keyword arguments of a tiny SD1.5-shaped UNet."""
    if preset not in PRESETS:
        raise ValueError(f"tiny model preset: expected one of {sorted(PRESETS)}, got {preset!r}")
    return dict(
        image_size=32, in_channels=4, out_channels=4, model_channels=320, num_heads=8, num_head_channels=-1,
        context_dim=768, use_linear_in_transformer=False, use_spatial_transformer=True, legacy=False,
        adm_in_channels=None, use_temporal_attention=False, use_temporal_resblock=False,
        **PRESETS[preset],
    )


def _meta_state_dict(build) -> dict:
    """Key -> meta tensor (shape only) of the module ``build()`` makes on the meta device. Scales of
    normalisation layers are tagged (``t.is_norm_scale = True``) so ``_fill`` sets them near 1."""
    with torch.device("meta"):
        module = build()
    sd = module.state_dict()
    for name, sub in module.named_modules():
        if isinstance(sub, (torch.nn.GroupNorm, torch.nn.LayerNorm)) and getattr(sub, "weight", None) is not None:
            key = f"{name}.weight" if name else "weight"
            sd[key] = torch.empty(sd[key].shape, device="meta")
            sd[key].is_norm_scale = True
    return sd


def _fill(shapes: dict, seed: int, dtype: torch.dtype = torch.float16) -> dict:
    """Seeded random values for every key of a meta state dict; see the module docstring for the scheme."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for key in sorted(shapes):
        meta = shapes[key]
        shape = tuple(meta.shape)
        noise = torch.randn(shape, generator=gen)
        if getattr(meta, "is_norm_scale", False):
            value = 1.0 + noise * 0.01
        elif len(shape) == 0:
            value = torch.ones(shape)  # TAESD vae_scale (vae_shift is fixed to 0 below)
        elif len(shape) == 1:
            value = noise * 0.01  # biases
        elif "embedding" in key:
            value = noise * 0.02
        else:
            value = noise * (0.5 / math.sqrt(math.prod(shape[1:])))
        out[key] = value.to(dtype).contiguous()
    if "vae_shift" in out:
        out["vae_shift"] = torch.zeros((), dtype=dtype)
    return out


def _unet_sd(preset: str, seed: int) -> dict:
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    cfg = unet_config(preset)
    return _fill(_meta_state_dict(lambda: UNetModel(**cfg, operations=comfy.ops.disable_weight_init)), seed)


def _clip_sd(seed: int) -> dict:
    import comfy.ops
    from comfy.clip_model import CLIPTextModel

    shapes = _meta_state_dict(lambda: CLIPTextModel(CLIP_L_CONFIG, torch.float32, None,
                                                    comfy.ops.disable_weight_init))
    # Real SD1.5 checkpoints carry only text_model.*; ComfyUI supplies the projection itself.
    shapes = {k: v for k, v in shapes.items() if k.startswith("text_model.")}
    return _fill(shapes, seed)


def _taesd_sd(seed: int) -> dict:
    import comfy.taesd.taesd

    return _fill(_meta_state_dict(lambda: comfy.taesd.taesd.TAESD(latent_channels=4)), seed)


def _prefixed(sd: dict, prefix: str) -> dict:
    return {prefix + k: v for k, v in sd.items()}


def _save(sd: dict, path, metadata: dict) -> Path:
    """Write atomically: a half-written file never carries the final name."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        save_file(sd, str(tmp), metadata={k: str(v) for k, v in metadata.items()})
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def _meta(kind: str, preset: str, seed: int, **extra) -> dict:
    return {"anydressing.tiny": kind, "anydressing.builder_version": BUILDER_VERSION,
            "anydressing.preset": preset, "anydressing.seed": seed,
            "anydressing.note": "random weights for tests: every picture made with this is noise", **extra}


def build_tiny_sd15(path, seed: int = 0, preset: str = "recommended") -> Path:
    """Write a tiny random SD1.5 checkpoint (fp16 safetensors, ~330 MB for "recommended") and return its path.

    Keys: ``model.diffusion_model.*`` (tiny UNet), ``cond_stage_model.transformer.text_model.*`` (CLIP-L,
    123 M params, fixed by SD1.5), ``first_stage_model.taesd_{encoder,decoder}.*`` (TAESD, latent [B, 4, H/8, W/8]).
    """
    sd = {}
    sd.update(_prefixed(_unet_sd(preset, seed), "model.diffusion_model."))
    sd.update(_prefixed(_clip_sd(seed + 1), "cond_stage_model.transformer."))
    sd.update(_prefixed(_taesd_sd(seed + 2), "first_stage_model."))
    log.info("writing tiny SD1.5 checkpoint (%s, seed %d) to %s", preset, seed, path)
    return _save(sd, path, _meta("sd15", preset, seed))


def _controlnet_sd(cfg: dict, seed: int) -> dict:
    """Random LDM-format ControlNet weights (``comfy.cldm.cldm.ControlNet``) for the UNet of ``cfg``."""
    import comfy.cldm.cldm
    import comfy.ops

    cfg = dict(cfg)
    cfg.pop("out_channels")
    cfg.pop("use_temporal_resblock")
    cfg.pop("use_temporal_attention")
    shapes = _meta_state_dict(lambda: comfy.cldm.cldm.ControlNet(
        hint_channels=3, **cfg, operations=comfy.ops.disable_weight_init))
    return _prefixed(_fill(shapes, seed + 3), "control_model.")


def build_tiny_controlnet(path, seed: int = 0, preset: str = "recommended") -> Path:
    """Write a tiny random LDM-format ControlNet (hint: RGB image [B, 3, H, W]) matching ``build_tiny_sd15``."""
    sd = _controlnet_sd(unet_config(preset), seed)
    log.info("writing tiny ControlNet (%s, seed %d) to %s", preset, seed, path)
    return _save(sd, path, _meta("controlnet", preset, seed))


def _attention_targets(cfg: dict) -> dict:
    """Attention projection weight key (``diffusion_model.*``) -> (out_features, in_features) of the UNet of ``cfg``."""
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    shapes = _meta_state_dict(lambda: UNetModel(**cfg, operations=comfy.ops.disable_weight_init))
    targets = {}
    for key, t in shapes.items():
        if ".attn1.to_" in key or ".attn2.to_" in key:
            if key.endswith(".weight") and t.ndim == 2:
                targets["diffusion_model." + key] = tuple(t.shape)
    return targets


def lora_targets(preset: str = "recommended") -> dict:
    """UNet attention projection weight key (``diffusion_model.*``) -> (out_features, in_features)."""
    return _attention_targets(unet_config(preset))


def _lora_sd(targets: dict, seed: int, rank: int) -> dict:
    """Kohya-format pairs ``lora_unet_<key>.lora_down/up.weight`` + ``.alpha`` on every target; ``up @ down``
    has shape [out, in]; alpha = rank."""
    gen = torch.Generator().manual_seed(seed + 4)
    sd = {}
    for key, (out_f, in_f) in sorted(targets.items()):
        name = "lora_unet_" + key[len("diffusion_model."):-len(".weight")].replace(".", "_")
        sd[f"{name}.lora_down.weight"] = (torch.randn(rank, in_f, generator=gen) / math.sqrt(in_f)).half()
        # [choice] non-zero up (real trained LoRAs start at 0): the delta must be visible in tests.
        sd[f"{name}.lora_up.weight"] = (torch.randn(out_f, rank, generator=gen) * 0.05).half()
        sd[f"{name}.alpha"] = torch.tensor(float(rank)).half()
    return sd


def build_tiny_lora(path, seed: int = 0, rank: int = 4, preset: str = "recommended") -> Path:
    """Write kohya-format LoRA pairs on every attn1/attn2 q/k/v/out projection of the tiny UNet."""
    sd = _lora_sd(lora_targets(preset), seed, rank)
    log.info("writing tiny LoRA (rank %d, %d layers) to %s", rank, len(sd) // 3, path)
    return _save(sd, path, _meta("lora", preset, seed, rank=rank))


def ensure_tiny_models(folder, seed: int = 0, preset: str = "recommended") -> dict:
    """Build the tiny checkpoint, ControlNet and LoRA once under ``folder/v<BUILDER_VERSION>-<preset>-s<seed>/``
    and return ``{"checkpoint": Path, "controlnet": Path, "lora": Path, "folder": Path}``. Later calls reuse the
    files (a ``built.json`` stamp is written last, so an interrupted build is redone)."""
    import fcntl

    root = Path(folder).expanduser() / f"v{BUILDER_VERSION}-{preset}-s{seed}"
    paths = {kind: root / name for kind, name in FILE_NAMES.items()}
    stamp = root / "built.json"
    root.mkdir(parents=True, exist_ok=True)
    # Several test sessions may start at once on one machine: one builds, the others wait and reuse.
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if stamp.is_file() and all(p.is_file() for p in paths.values()):
            log.debug("reusing tiny models in %s", root)
            return {**paths, "folder": root}
        build_tiny_sd15(paths["checkpoint"], seed=seed, preset=preset)
        build_tiny_controlnet(paths["controlnet"], seed=seed, preset=preset)
        build_tiny_lora(paths["lora"], seed=seed, preset=preset)
        stamp.write_text(json.dumps({"builder_version": BUILDER_VERSION, "preset": preset, "seed": seed,
                                     "files": {k: p.name for k, p in paths.items()}}, indent=1))
    return {**paths, "folder": root}


# --- SDXL family ---------------------------------------------------------------------------------------------

# Bump when anything below changes the bytes of a built SDXL file (kept apart from BUILDER_VERSION so that a
# change to one family never rebuilds the other's files).
SDXL_BUILDER_VERSION = 1

#: Segmind Vega's transformer depths (``comfy/supported_models.py`` Segmind_Vega), every level 320 wide; the middle
#: block has the last level's depth, as in SDXL (and as diffusers' UNet2DConditionModel builds it).
SDXL_UNET = dict(num_res_blocks=[2, 2, 2], channel_mult=[1, 1, 1], transformer_depth=[0, 0, 1, 1, 2, 2],
                 transformer_depth_output=[0, 0, 0, 1, 1, 1, 2, 2, 2], transformer_depth_middle=2)

#: ComfyUI's TAESDXL latent scale (``VAELoader.load_taesd``): the SDXL latent format's scale factor.
TAESDXL_SCALE = 0.13025

SDXL_FILE_NAMES = {
    "checkpoint": "anydressing-tiny-sdxl.safetensors",
    "controlnet": "anydressing-tiny-sdxl-controlnet.safetensors",
    "lora": "anydressing-tiny-sdxl-lora.safetensors",
}


def sdxl_unet_config() -> dict:
    """The ``UNetModel`` keyword arguments of the tiny SDXL-family UNet (linear transformers, ADM input 2816,
    64-channel heads like SDXL)."""
    return dict(
        image_size=32, in_channels=4, out_channels=4, model_channels=320, num_heads=-1, num_head_channels=64,
        context_dim=2048, use_linear_in_transformer=True, use_spatial_transformer=True, legacy=False,
        adm_in_channels=2816, num_classes="sequential", use_temporal_attention=False, use_temporal_resblock=False,
        **SDXL_UNET,
    )


def _sdxl_clip_sd(seed: int) -> dict:
    """CLIP-L (fp16) and CLIP-G (fp8) in the key layout of a real SDXL checkpoint
    (``conditioner.embedders.0.transformer.*`` and open_clip ``conditioner.embedders.1.model.*``), converted by
    ComfyUI's own SDXL saver so the loader's inverse map applies unchanged."""
    import comfy.sdxl_clip
    import comfy.supported_models

    shapes = _meta_state_dict(lambda: comfy.sdxl_clip.SDXLClipModel(device="meta", dtype=torch.float16))
    clip_l = _fill({k: v for k, v in shapes.items() if k.startswith("clip_l.")}, seed)
    clip_g = _fill({k: v for k, v in shapes.items() if k.startswith("clip_g.")}, seed + 5, dtype=torch.float8_e4m3fn)
    saver = comfy.supported_models.SDXL(sdxl_unet_config())
    sd = saver.process_clip_state_dict_for_saving({**clip_l, **clip_g})
    sd.pop("conditioner.embedders.0.transformer.text_model.embeddings.position_ids", None)  # an int64 arange
    return {k: v.contiguous() for k, v in sd.items()}


def build_tiny_sdxl(path, seed: int = 0) -> Path:
    """Write a tiny random SDXL-family checkpoint (~1.2 GB) that ``CheckpointLoaderSimple`` loads as SDXL.

    Keys: ``model.diffusion_model.*`` (tiny UNet: ``x [B, 4, H/8, W/8]``, ``context [B, 77, 2048]``,
    ``y [B, 2816]``), ``conditioner.embedders.{0,1}.*`` (CLIP-L, CLIP-G; pooled output [B, 1280]),
    ``first_stage_model.taesd_{encoder,decoder}.*`` (TAESD with TAESDXL's latent scale).
    """
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    cfg = sdxl_unet_config()
    unet = _fill(_meta_state_dict(lambda: UNetModel(**cfg, operations=comfy.ops.disable_weight_init)), seed)
    vae = _taesd_sd(seed + 2)
    vae["vae_scale"] = torch.tensor(TAESDXL_SCALE, dtype=vae["vae_scale"].dtype)
    sd = {}
    sd.update(_prefixed(unet, "model.diffusion_model."))
    sd.update(_sdxl_clip_sd(seed + 1))
    sd.update(_prefixed(vae, "first_stage_model."))
    log.info("writing tiny SDXL checkpoint (seed %d) to %s", seed, path)
    return _save(sd, path, _sdxl_meta("sdxl", seed))


def build_tiny_sdxl_controlnet(path, seed: int = 0) -> Path:
    """Write a tiny random LDM-format SDXL ControlNet (hint: RGB image [B, 3, H, W]) matching ``build_tiny_sdxl``."""
    sd = _controlnet_sd(sdxl_unet_config(), seed)
    log.info("writing tiny SDXL ControlNet (seed %d) to %s", seed, path)
    return _save(sd, path, _sdxl_meta("sdxl-controlnet", seed))


def build_tiny_sdxl_lora(path, seed: int = 0, rank: int = 4) -> Path:
    """Write kohya-format LoRA pairs on every attn1/attn2 q/k/v/out projection of the tiny SDXL UNet."""
    sd = _lora_sd(_attention_targets(sdxl_unet_config()), seed, rank)
    log.info("writing tiny SDXL LoRA (rank %d, %d layers) to %s", rank, len(sd) // 3, path)
    return _save(sd, path, _sdxl_meta("sdxl-lora", seed, rank=rank))


def _sdxl_meta(kind: str, seed: int, **extra) -> dict:
    return {**_meta(kind, "sdxl-vega320", seed, **extra), "anydressing.builder_version": SDXL_BUILDER_VERSION}


def ensure_tiny_sdxl_models(folder, seed: int = 0) -> dict:
    """Build the tiny SDXL checkpoint, ControlNet and LoRA once under ``folder/sdxl-v<SDXL_BUILDER_VERSION>-s<seed>/``
    (about 1.3 GB, ~30 s) and return ``{"checkpoint": Path, "controlnet": Path, "lora": Path, "folder": Path}``."""
    import fcntl

    root = Path(folder).expanduser() / f"sdxl-v{SDXL_BUILDER_VERSION}-s{seed}"
    paths = {kind: root / name for kind, name in SDXL_FILE_NAMES.items()}
    stamp = root / "built.json"
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if stamp.is_file() and all(p.is_file() for p in paths.values()):
            log.debug("reusing tiny SDXL models in %s", root)
            return {**paths, "folder": root}
        build_tiny_sdxl(paths["checkpoint"], seed=seed)
        build_tiny_sdxl_controlnet(paths["controlnet"], seed=seed)
        build_tiny_sdxl_lora(paths["lora"], seed=seed)
        stamp.write_text(json.dumps({"builder_version": SDXL_BUILDER_VERSION, "family": "sdxl", "seed": seed,
                                     "files": {k: p.name for k, p in paths.items()}}, indent=1))
    return {**paths, "folder": root}


def main(argv=None) -> int:
    """``python -m devtools.tiny_models OUT_FOLDER [--comfyui PATH]`` (from the repo root): build (or reuse) the
    tiny models and print their paths as JSON. Used by the headless runner's demo, which never imports ComfyUI."""
    import argparse

    from .comfy_host import prepare

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("folder")
    parser.add_argument("--comfyui", help="the ComfyUI folder (default: $COMFYUI_PATH, else ~/ComfyUI)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--preset", default="recommended", choices=sorted(PRESETS))
    parser.add_argument("--family", default="sd15", choices=["sd15", "sdxl"],
                        help="sdxl: the tiny SDXL-family files (about 1.3 GB; --preset does not apply)")
    ns = parser.parse_args(argv)
    host = Path(ns.comfyui).expanduser() if ns.comfyui else None
    if host is not None and not (host / "comfy").is_dir():
        parser.error(f"no ComfyUI at {host} (expected a folder with comfy/ and main.py): pass --comfyui")
    prepare(host)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if ns.family == "sdxl":
        paths = ensure_tiny_sdxl_models(ns.folder, seed=ns.seed)
    else:
        paths = ensure_tiny_models(ns.folder, seed=ns.seed, preset=ns.preset)
    print(json.dumps({k: str(v) for k, v in paths.items()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
