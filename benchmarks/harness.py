"""Loading the host in-process and building random-weight models for the benchmarks (no downloads).

- ``load_host(gpu)``: imports ComfyUI from ``COMFYUI_PATH`` / ``~/ComfyUI`` (CPU mode unless ``gpu``) and
  loads this pack the way ComfyUI loads a custom node folder.
- ``build_unet(host, preset)``: a random-weight UNet MODEL (``comfy.sd.load_diffusion_model_state_dict``),
  either a tiny preset of ``nodes/tiny_models.py`` or ``"sd15"``, the real SD1.5 UNet config (860 M params).
- ``build_vae(host)``: a random TAESD VAE (latents ``[B, 4, H/8, W/8]``), enough to run Encode Garments.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
log = logging.getLogger(__name__)

#: The real SD1.5 UNet (comfy/model_detection.py ``SD15``), for the full-size GPU benchmark.
SD15_UNET = dict(num_res_blocks=[2, 2, 2, 2], channel_mult=[1, 2, 4, 4], transformer_depth=[1, 1, 1, 1, 1, 1, 0, 0],
                 transformer_depth_output=[1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0], transformer_depth_middle=1)


def find_host() -> Path:
    for c in (os.environ.get("COMFYUI_PATH"), str(Path.home() / "ComfyUI")):
        if c and (Path(c).expanduser() / "comfy").is_dir():
            return Path(c).expanduser().resolve()
    if REPO.parent.name == "custom_nodes":
        return REPO.parent.parent
    raise SystemExit("no ComfyUI found: set COMFYUI_PATH or extract it to ~/ComfyUI (shared/HOST.md)")


class Host:
    """ComfyUI's modules plus this pack, loaded in this process."""

    def __init__(self, gpu: bool, attention: str = "default"):
        path = find_host()
        sys.path.insert(0, str(path))
        import comfy.options

        comfy.options.enable_args_parsing(False)
        from comfy.cli_args import args

        args.cpu = not gpu  # before comfy.model_management is imported (HOST.md)
        if attention == "pytorch":
            args.use_pytorch_cross_attention = True
        elif attention == "split":
            args.use_split_cross_attention = True
        import comfy.model_management
        import comfy.ldm.modules.attention as attn
        import comfy.utils

        comfy.utils.PROGRESS_BAR_ENABLED = False  # benchmark output stays a table
        import nodes

        self.path = path
        self.nodes = nodes
        self.mm = comfy.model_management
        self.attention_name = attn.optimized_attention.__name__
        if not asyncio.run(nodes.load_custom_node(str(REPO))):
            raise SystemExit("the pack failed to import into ComfyUI; see the log above")
        self.pack = sys.modules[str(REPO).replace(".", "_x_")]

    def run(self, node_id: str, **inputs):
        cls = self.nodes.NODE_CLASS_MAPPINGS[node_id]
        out = getattr(cls(), cls.FUNCTION)(**inputs)
        return out["result"] if isinstance(out, dict) else out

    def module(self, dotted: str):
        import importlib

        return importlib.import_module(f"{self.pack.__name__}.{dotted}")


def unet_state_dict(host: Host, preset: str, seed: int = 0) -> dict:
    """Seeded random UNet weights (fp16) for a tiny preset or the full SD1.5 config."""
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    tiny = host.module("nodes.tiny_models")
    cfg = tiny.unet_config("recommended")
    if preset == "sd15":
        cfg.update(SD15_UNET)
    else:
        cfg = tiny.unet_config(preset)
    shapes = tiny._meta_state_dict(lambda: UNetModel(**cfg, operations=comfy.ops.disable_weight_init))
    return tiny._fill(shapes, seed)


def build_unet(host: Host, preset: str, seed: int = 0):
    """A ComfyUI MODEL (ModelPatcher) with random weights, detected as SD1.5 by the host."""
    import comfy.sd

    sd = unet_state_dict(host, preset, seed)
    model = comfy.sd.load_diffusion_model_state_dict(sd)
    if model is None:
        raise SystemExit(f"ComfyUI did not detect the {preset} UNet as a diffusion model")
    return model


def build_vae(host: Host, seed: int = 2):
    import comfy.sd

    tiny = host.module("nodes.tiny_models")
    return comfy.sd.VAE(sd=tiny._taesd_sd(seed))


def conditioning(seed: int, tokens: int = 77, dim: int = 768):
    gen = torch.Generator().manual_seed(seed)
    return [[torch.randn(1, tokens, dim, generator=gen), {}]]


def garment_picture(index: int, size=(256, 192)) -> torch.Tensor:
    """A garment-like IMAGE ``[1, H, W, 3]``: a textured coloured shape on white (seeded by ``index``)."""
    h, w = size
    rng = np.random.default_rng(index)
    img = np.ones((h, w, 3), dtype=np.float32)
    y0, y1, x0, x1 = h // 8, h - h // 8, w // 6, w - w // 6
    img[y0:y1, x0:x1] = rng.random(3, dtype=np.float32)
    img[y0:y1:6, x0:x1] *= 0.4
    return torch.from_numpy(img)[None]


SLOTS = ["upper", "lower", "hat", "shoes", "bag", "other"]


def garment_chain(host: Host, n: int):
    chain = None
    for i in range(n):
        kw = {} if chain is None else {"garments": chain}
        chain = host.run("AnyDressingGarment", image=garment_picture(i), slot=SLOTS[i % len(SLOTS)], weight=1.0, **kw)[0]
    return chain
