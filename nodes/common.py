"""Shared constants and small helpers for the ComfyUI side (this package may import ComfyUI)."""

from __future__ import annotations

from typing import Dict, Optional

import torch

from ..anydressing_core.bases import base_of_unet_config
from ..anydressing_core.errors import AnyDressingError
from ..anydressing_core.features import BlockKey

CATEGORY = "AnyDressing"

# Custom wire types (STYLE 6): internal objects travel typed, never as fake IMAGEs.
GARMENTS = "GARMENTS"
GARMENT_FEATURES = "GARMENT_FEATURES"
ANYDRESSING = "ANYDRESSING"


class FormOption:
    AUTO = "auto"
    SEPARATE = "separate"
    JOINT = "joint"
    ALL = [AUTO, SEPARATE, JOINT]


class CFGPolicy:
    """Where garment tokens go under classifier-free guidance."""

    PAPER = "garments in positive only (paper)"
    BOTH = "garments in both"
    ALL = [PAPER, BOTH]


def diffusion_model_of(model, role: str = "model"):
    """The UNet inside a MODEL, or a clear error for anything else."""
    inner = getattr(getattr(model, "model", None), "diffusion_model", None)
    if inner is None or not hasattr(model, "clone"):
        raise AnyDressingError(
            f"the {role} input is not a ComfyUI MODEL with a diffusion model (got {type(model).__name__}). "
            "Connect the MODEL output of a checkpoint or UNet loader."
        )
    if not hasattr(inner, "input_blocks") or not hasattr(inner, "output_blocks"):
        raise AnyDressingError(
            f"the {role} is a {type(inner).__name__}, not a UNet. AnyDressing works on SD1.5-style (and SDXL-shaped) "
            "UNets; connect an SD1.5 checkpoint's MODEL."
        )
    return inner


def attn1_modules(diffusion_model) -> Dict[BlockKey, torch.nn.Module]:
    """Every self-attention module of a ComfyUI UNet, by key ``(block, id, transformer_index)``.

    Discovered from the model (any module with ``transformer_blocks``), so SD1.5, SDXL-shaped and
    tiny test UNets all work without a hard-coded list.
    """
    found: Dict[BlockKey, torch.nn.Module] = {}

    def visit(name: str, block_id: int, block):
        for sub in block.modules():
            tbs = getattr(sub, "transformer_blocks", None)
            if tbs is None:
                continue
            for idx, tb in enumerate(tbs):
                if getattr(tb, "attn1", None) is not None:
                    found[(name, block_id, idx)] = tb.attn1

    for i, blk in enumerate(diffusion_model.input_blocks):
        visit("input", i, blk)
    if getattr(diffusion_model, "middle_block", None) is not None:
        visit("middle", 0, diffusion_model.middle_block)
    for i, blk in enumerate(diffusion_model.output_blocks):
        visit("output", i, blk)
    return found


def latent_channels(model) -> int:
    return int(model.model.latent_format.latent_channels)


def compute_dtype(model) -> torch.dtype:
    inner = model.model
    dtype = getattr(inner, "manual_cast_dtype", None) or inner.get_dtype()
    return dtype


def model_base(model) -> Optional[str]:
    """``"sdxl"`` for the SDXL family ComfyUI detects (SDXL, SSD-1B, Vega, KOALA, ...), ``"sd15"`` for SD1.5,
    else what the UNet's shape says (None when it says nothing)."""
    import comfy.supported_models

    config = getattr(getattr(model, "model", None), "model_config", None)
    if isinstance(config, comfy.supported_models.SDXL):
        return "sdxl"
    if isinstance(config, comfy.supported_models.SD15):
        return "sd15"
    return base_of_unet_config(getattr(config, "unet_config", None) or {})
