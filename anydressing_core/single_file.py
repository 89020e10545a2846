"""The trainer's base model from a single-file checkpoint: the ``.safetensors`` a ComfyUI user samples with.

``model.base`` may name a ComfyUI / A1111 single-file SD1.5 or SDXL checkpoint.  It is read with safetensors
only (never a pickle) and converted here, with no download: diffusers' own ``from_single_file`` fetches
configs from the Hugging Face hub, so the configs are read off the tensors instead (:mod:`.ldm_convert`).

What a file holds, by key prefix (detected from keys, never from the file name):

=====================================================  =================================================
``model.diffusion_model.*``                            UNet (SD1.5: context 768; SDXL: 2048 + label_emb)
``first_stage_model.*``                                KL VAE -> ``AutoencoderKL``
``first_stage_model.taesd_encoder/decoder.*``          TAESD -> ``AutoencoderTiny`` (small test checkpoints)
``cond_stage_model.transformer.*``                     SD1.5 CLIP-L -> ``CLIPTextModel``
``conditioner.embedders.0.transformer.*``              SDXL CLIP-L -> ``CLIPTextModel``
``conditioner.embedders.1.model.*``                    SDXL OpenCLIP ViT-bigG -> ``CLIPTextModelWithProjection``
=====================================================  =================================================

The tokenizer (CLIP's BPE vocabulary) is not in the file: ``model.tokenizer`` names a folder with
``vocab.json`` and ``merges.txt``; by default the host ComfyUI's ``comfy/sd1_tokenizer`` is used (found through
``COMFYUI_PATH`` or ``~/ComfyUI``; only those two files are read, ComfyUI is never imported).
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Dict, Mapping, Optional, Tuple

import torch

from . import ldm_convert as conv
from .errors import AnyDressingError

log = logging.getLogger(__name__)

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
SD15_TEXT_PREFIX = "cond_stage_model.transformer."
SDXL_TEXT_PREFIXES = ("conditioner.embedders.0.transformer.", "conditioner.embedders.1.model.")
#: What ComfyUI multiplies VAE latents by before the UNet sees them (``latent_formats.SD15`` / ``SDXL``).
LATENT_SCALE = {"sd15": 0.18215, "sdxl": 0.13025}
TOKENIZER_FILES = ("vocab.json", "merges.txt")


def is_single_file(base: str) -> bool:
    return Path(base).expanduser().is_file()


def read_shapes(path) -> Dict[str, Tuple[int, ...]]:
    """``{key: shape}`` of a safetensors file without reading its tensors; a clear error for anything else."""
    from safetensors import safe_open

    from .checkpoint import sniff_format

    path = str(path)
    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types
        if sniff_format(path) in ("pickle", "torch-zip"):
            raise AnyDressingError(
                f"model.base {path} is a pickled checkpoint (.ckpt/.pt): pickles can run code and are never loaded. "
                "Save it as .safetensors first (e.g. with ComfyUI's CheckpointSave node) and train on that") from None
        raise AnyDressingError(f"model.base {path} is not a readable safetensors checkpoint ({e}); give the "
                               ".safetensors file you load in ComfyUI, or a diffusers folder") from None


def detect_base(shapes: Mapping[str, Tuple[int, ...]], where: str = "checkpoint") -> str:
    """``"sd15"`` or ``"sdxl"`` from the keys (ComfyUI's rule: SDXL = context 2048 with a 2816-wide
    label embedding); anything else is refused with what was found."""
    unet = {k[len(UNET_PREFIX):]: s for k, s in shapes.items() if k.startswith(UNET_PREFIX)}
    if not unet:
        raise AnyDressingError(f"{where} has no UNet (no {UNET_PREFIX}* keys): not a single-file SD checkpoint. "
                               "A UNet-only file (models/unet) lacks the VAE and text encoder the trainer needs")
    ctx = next((s[1] for k, s in unet.items() if k.endswith(".attn2.to_k.weight")), None)
    adm = unet.get("label_emb.0.0.weight")
    if ctx == 768 and adm is None:
        base = "sd15"
    elif ctx == 2048 and adm is not None and adm[1] == 2816:
        base = "sdxl"
    else:
        raise AnyDressingError(f"{where}: a UNet with text context {ctx} and size embedding "
                               f"{adm[1] if adm else None} is neither SD1.5 (768, none) nor SDXL (2048, 2816); "
                               "AnyDressing trains on SD1.5 and SDXL bases")
    need = [SD15_TEXT_PREFIX] if base == "sd15" else list(SDXL_TEXT_PREFIXES)
    missing = [p for p in need + [VAE_PREFIX] if not any(k.startswith(p) for k in shapes)]
    if missing:
        raise AnyDressingError(f"{where} is an {base} UNet without {missing}: the trainer needs the checkpoint's VAE "
                               "and text encoder(s) too; give the full checkpoint you load with Load Checkpoint")
    return base


def _tensors(path, prefix: str) -> Dict[str, torch.Tensor]:
    """Every tensor under ``prefix`` (prefix removed), as float32."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt", device="cpu") as f:
        return {k[len(prefix):]: f.get_tensor(k).float() for k in f.keys() if k.startswith(prefix)}


def _build(make, sd: Dict[str, torch.Tensor], what: str):
    """``make()`` built on the meta device and filled with ``sd`` (strict: every tensor must fit)."""
    with torch.device("meta"):
        module = make()
    own = module.state_dict()
    if "text_model.embeddings.token_embedding.weight" in sd and "text_model.embeddings.token_embedding.weight" not in own:
        # transformers 5 names the text tower's tensors without the ``text_model.`` prefix
        sd = {k[len("text_model."):] if k.startswith("text_model.") else k: v for k, v in sd.items()}
    missing, unexpected = module.load_state_dict(sd, strict=False, assign=True)
    if missing or unexpected:
        raise AnyDressingError(f"the checkpoint's {what} does not convert cleanly: missing {missing[:4]} "
                               f"({len(missing)}), unexpected {unexpected[:4]} ({len(unexpected)})")
    for name, buf in list(module.named_buffers()):
        if buf.is_meta:  # non-persistent buffers (CLIP's position_ids) are not in any file
            owner, _, leaf = name.rpartition(".")
            if leaf != "position_ids":
                raise AnyDressingError(f"cannot rebuild buffer {name} of the {what}")
            sub = module.get_submodule(owner)
            sub.register_buffer(leaf, torch.arange(buf.shape[-1]).expand(1, -1), persistent=False)
    return module.eval()


def load_unet(path, shapes=None):
    """``(UNet2DConditionModel, base)`` from a single-file checkpoint."""
    from diffusers import UNet2DConditionModel

    shapes = shapes or read_shapes(path)
    base = detect_base(shapes, str(path))
    ldm = {k[len(UNET_PREFIX):]: s for k, s in shapes.items() if k.startswith(UNET_PREFIX)}
    layout = conv.unet_layout(ldm)
    config = conv.unet_config(layout, base)
    sd = conv.unet_to_diffusers(_tensors(path, UNET_PREFIX), layout)
    return _build(lambda: UNet2DConditionModel.from_config(config), sd, "UNet"), base


class LatentCodec:
    """Images ``[B, 3, H, W]`` in [-1, 1] <-> the latents the UNet sees, exactly as ComfyUI makes them
    (VAE encode, then ``process_latent_in``: times the base's latent scale).

    ``vae`` is an ``AutoencoderKL`` (``kind="kl"``) or an ``AutoencoderTiny`` (``kind="taesd"``, with
    ComfyUI's ``vae_scale`` / ``vae_shift``).
    """

    def __init__(self, vae, kind: str, latent_scale: float, taesd_scale: float = 1.0, taesd_shift: float = 0.0):
        self.vae, self.kind, self.latent_scale = vae, kind, float(latent_scale)
        self.taesd_scale, self.taesd_shift = float(taesd_scale), float(taesd_shift)

    @property
    def downscale(self) -> int:
        """Pixels per latent cell along each side."""
        if self.kind == "taesd":
            return 8
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def encode(self, images: torch.Tensor, sample: bool = False, generator=None) -> torch.Tensor:
        with torch.no_grad():
            if self.kind == "taesd":
                raw = self.vae.encoder(images) / self.taesd_scale + self.taesd_shift
            else:
                dist = self.vae.encode(images).latent_dist
                raw = dist.sample(generator=generator) if sample else dist.mode()
        return raw * self.latent_scale

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents -> images in about [-1, 1], differentiable (GTL back-propagates through it)."""
        raw = latents / self.latent_scale
        if self.kind == "taesd":
            return self.vae.decoder((raw - self.taesd_shift) * self.taesd_scale)
        return self.vae.decode(raw).sample


def load_codec(path, base: str, shapes=None) -> LatentCodec:
    shapes = shapes or read_shapes(path)
    if f"{VAE_PREFIX}taesd_decoder.1.weight" in shapes:
        from diffusers import AutoencoderTiny

        sd, scale, shift = conv.taesd_to_diffusers(_tensors(path, VAE_PREFIX))
        latent = int(sd["decoder.layers.0.weight"].shape[1])
        vae = _build(lambda: AutoencoderTiny(latent_channels=latent), sd, "TAESD VAE")
        return LatentCodec(vae, "taesd", LATENT_SCALE[base], scale, shift)
    from diffusers import AutoencoderKL

    vae_shapes = {k[len(VAE_PREFIX):]: s for k, s in shapes.items() if k.startswith(VAE_PREFIX)}
    config = conv.vae_config(vae_shapes, LATENT_SCALE[base])
    sd = conv.vae_to_diffusers(_tensors(path, VAE_PREFIX), len(config["block_out_channels"]))
    return LatentCodec(_build(lambda: AutoencoderKL.from_config(config), sd, "VAE"), "kl", LATENT_SCALE[base])


def load_text_encoders(path, base: str):
    """SD1.5: ``[CLIPTextModel]``; SDXL: ``[CLIPTextModel, CLIPTextModelWithProjection]`` (CLIP-L, OpenCLIP bigG)."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    prefixes = [SD15_TEXT_PREFIX] if base == "sd15" else list(SDXL_TEXT_PREFIXES)
    out = []
    for i, prefix in enumerate(prefixes):
        raw = _tensors(path, prefix)
        if base == "sdxl" and i == 1:
            sd = conv.open_clip_to_transformers(raw) if "positional_embedding" in raw else conv.clip_to_transformers(raw)
            kind, cls = "clip_g", CLIPTextModelWithProjection
        else:
            sd, kind, cls = conv.clip_to_transformers(raw), "clip_l", CLIPTextModel
            sd = {k: v for k, v in sd.items() if not k.startswith("text_projection.")}  # unused by SD1.5 / SDXL's L
        config = CLIPTextConfig(**conv.text_config(sd, kind))
        out.append(_build(lambda: cls(config), sd, f"text encoder {prefix}"))
    return out


def host_tokenizer_dir() -> Optional[Path]:
    """``comfy/sd1_tokenizer`` of the host ComfyUI (``$COMFYUI_PATH``, else ``~/ComfyUI``), if there is one."""
    roots = [os.environ["COMFYUI_PATH"]] if os.environ.get("COMFYUI_PATH") else []
    roots.append(str(Path.home() / "ComfyUI"))
    for root in roots:
        folder = Path(root).expanduser() / "comfy" / "sd1_tokenizer"
        if all((folder / f).is_file() for f in TOKENIZER_FILES):
            return folder
    return None


def tokenizer_dir(explicit: str = "") -> Path:
    """The CLIP BPE vocabulary folder: ``explicit`` (``model.tokenizer``), else the host ComfyUI's."""
    if explicit:
        folder = Path(explicit).expanduser()
        if folder.is_dir() and (folder / "tokenizer").is_dir() and not (folder / "vocab.json").is_file():
            folder = folder / "tokenizer"  # a diffusers folder
        missing = [f for f in TOKENIZER_FILES if not (folder / f).is_file()]
        if missing:
            raise AnyDressingError(f"model.tokenizer={explicit}: {folder} lacks {missing}; point it at a folder with "
                                   "CLIP's vocab.json and merges.txt (ComfyUI ships one in comfy/sd1_tokenizer)")
        return folder
    found = host_tokenizer_dir()
    if found is None:
        raise AnyDressingError("a single-file model.base needs CLIP's tokenizer files (vocab.json, merges.txt), which "
                               "checkpoints do not carry, and no ComfyUI was found to take them from ($COMFYUI_PATH or "
                               "~/ComfyUI, folder comfy/sd1_tokenizer): set model.tokenizer=FOLDER (or COMFYUI_PATH)")
    return found


def load_tokenizers(folder: Path, base: str):
    """SD1.5: ``[CLIP-L tokenizer]``; SDXL: also the OpenCLIP one, which pads with ``!`` (id 0) as ComfyUI's
    SDXL CLIP-G tokenizer does.  77 tokens, like every SD text encoder."""
    from transformers import CLIPTokenizer

    files = [str(folder / f) for f in TOKENIZER_FILES]
    out = [CLIPTokenizer(*files, model_max_length=77)]
    if base == "sdxl":
        out.append(CLIPTokenizer(*files, model_max_length=77, pad_token="!"))
    return out


def file_sha256(path, chunk: int = 1 << 24) -> str:
    """SHA-256 of the whole file: the hash model sites (Civitai's "AutoV2", A1111) show for a checkpoint."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()
