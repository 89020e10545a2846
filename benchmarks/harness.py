"""Loading the host in-process and building random-weight models for the benchmarks (no downloads).

- ``Host(gpu, attention)``: the shared in-process host (``devtools.comfy_host``), with progress bars off so
  benchmark output stays a table, and the name of the attention kernel ComfyUI picked.
- ``build_unet(host, preset)``: a random-weight UNet MODEL (``comfy.sd.load_diffusion_model_state_dict``),
  either a tiny preset of ``devtools/tiny_models.py`` or ``"sd15"``, the real SD1.5 UNet config (860 M params).
- ``build_vae(host)``: a random TAESD VAE (latents ``[B, 4, H/8, W/8]``), enough to run Encode Garments.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from devtools import tiny_models
from devtools.comfy_host import InProcessHost

log = logging.getLogger(__name__)

#: The real SD1.5 UNet (comfy/model_detection.py ``SD15``), for the full-size GPU benchmark.
SD15_UNET = dict(num_res_blocks=[2, 2, 2, 2], channel_mult=[1, 2, 4, 4], transformer_depth=[1, 1, 1, 1, 1, 1, 0, 0],
                 transformer_depth_output=[1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0], transformer_depth_middle=1)


class Host(InProcessHost):
    """ComfyUI's modules plus this pack, loaded in this process, for benchmarks."""

    def __init__(self, gpu: bool, attention: str = "default"):
        super().__init__(gpu=gpu, attention=attention)
        import comfy.ldm.modules.attention as attn
        import comfy.model_management
        import comfy.utils

        comfy.utils.set_progress_bar_enabled(False)  # benchmark output stays a table
        self.mm = comfy.model_management
        self.attention_name = attn.optimized_attention.__name__


def unet_state_dict(host: Host, preset: str, seed: int = 0) -> dict:
    """Seeded random UNet weights (fp16) for a tiny preset or the full SD1.5 config."""
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    tiny = tiny_models
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

    return comfy.sd.VAE(sd=tiny_models._taesd_sd(seed))


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
