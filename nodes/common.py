"""What the nodes share: category, typed wires, option classes, and reading a ComfyUI MODEL."""

from __future__ import annotations

from typing import Dict

import torch

from ..anydressing_core.errors import AnyDressingError
from ..anydressing_core.features import BlockKey
from .host_api import io

CATEGORY = "AnyDressing"

# Typed wires: internal objects travel as named custom types, never as untyped dicts or fake IMAGEs.
Garments = io.Custom("GARMENTS")              # anydressing_core.garments.GarmentList
GarmentFeaturesType = io.Custom("GARMENT_FEATURES")  # anydressing_core.features.GarmentFeatures
Adapter = io.Custom("ANYDRESSING")            # anydressing_core.checkpoint.AnyDressingAdapter


class CFGPolicy:
    """Where garment tokens go under classifier-free guidance."""

    PAPER = "garments in positive only (paper)"
    BOTH = "garments in both"
    ALL = [PAPER, BOTH]


def check_choice(value, options, what: str):
    """A combo value that is one of ``options``, or an error that lists them."""
    if value not in options:
        raise AnyDressingError(f"unknown {what} {value!r}; use one of {', '.join(map(str, options))}")
    return value


def choice_message(value, options, what: str):
    """``validate_inputs``' form of :func:`check_choice`: True, or the message."""
    return True if value in options else f"unknown {what} {value!r}; use one of {', '.join(map(str, options))}"


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
            blocks = getattr(sub, "transformer_blocks", None)
            if blocks is None:
                continue
            for idx, tb in enumerate(blocks):
                if getattr(tb, "attn1", None) is not None:
                    found[(name, block_id, idx)] = tb.attn1

    for i, blk in enumerate(diffusion_model.input_blocks):
        visit("input", i, blk)
    if getattr(diffusion_model, "middle_block", None) is not None:
        visit("middle", 0, diffusion_model.middle_block)
    for i, blk in enumerate(diffusion_model.output_blocks):
        visit("output", i, blk)
    return found


def model_channels(model) -> Dict[BlockKey, int]:
    """``{key: C}`` self-attention widths of a ComfyUI MODEL."""
    return {k: m.to_q.in_features for k, m in attn1_modules(diffusion_model_of(model, "model")).items()}


def latent_channels(model) -> int:
    return int(model.model.latent_format.latent_channels)


def compute_dtype(model) -> torch.dtype:
    inner = model.model
    return getattr(inner, "manual_cast_dtype", None) or inner.get_dtype()
