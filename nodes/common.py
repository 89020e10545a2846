"""What the nodes share: category, typed wires, option classes, and reading a ComfyUI MODEL."""

from __future__ import annotations

from typing import Dict, Optional

import torch

from ..anydressing_core.bases import base_of_unet_config
from ..anydressing_core.errors import AnyDressingError
from ..anydressing_core.features import BlockKey
from .host_api import io, supported_models

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


def choice_message(value, options, what: str):
    """True when ``value`` is one of ``options``, else the message (at most 20 options are listed)."""
    if value in options:
        return True
    listed = ", ".join(map(str, options[:20])) + (f" ... ({len(options)} in all)" if len(options) > 20 else "")
    return f"unknown {what} {value!r}; use one of {listed or 'nothing (the list is empty)'}"


def check_choice(value, options, what: str):
    """A combo value that is one of ``options``, or an error that lists them."""
    message = choice_message(value, list(options), what)
    if message is not True:
        raise AnyDressingError(message)
    return value


def _bound(x) -> str:
    return "any" if x is None else f"{x:g}"


def widget_message(spec, value):
    """True, or why ``value`` does not fit the widget input ``spec`` (its options, or its min..max)."""
    options = getattr(spec, "options", None)
    if options is not None:
        return choice_message(value, list(options), spec.id)
    lo, hi = getattr(spec, "min", None), getattr(spec, "max", None)
    if lo is None and hi is None:
        return True
    try:
        number = float(value)
    except (TypeError, ValueError):
        return f"{spec.id} {value!r} is not a number"
    if not ((lo is None or number >= lo) and (hi is None or number <= hi)):  # NaN fails both
        return f"{spec.id} {value} is out of range; use {_bound(lo)}..{_bound(hi)}"
    return True


class AnyDressingNode(io.ComfyNode):
    """Base of the pack's nodes: the schema comes from the class attributes below, so each node file says only
    what is its own.

    ``inputs`` / ``outputs`` are lists of V3 inputs and outputs (override :meth:`schema_inputs` for inputs
    that change at run time, such as a folder's file list).  Queue-time checks: ComfyUI checks numbers against
    their min/max itself (naming the input); a node's ``validate_inputs`` names exactly the inputs ComfyUI does
    not check (V3 combo values, in 0.3.64) or that need a rule across inputs, and hands them to
    :meth:`check_widgets`.  ComfyUI attaches its message to every input ``validate_inputs`` takes, so it takes
    no more than those.
    """

    node_id = ""
    title = ""
    about = ""
    menu = CATEGORY
    inputs: list = []
    outputs: list = []

    @classmethod
    def schema_inputs(cls) -> list:
        return list(cls.inputs)

    @classmethod
    def define_schema(cls):
        return io.Schema(node_id=cls.node_id, display_name=cls.title, category=cls.menu, description=cls.about,
                         inputs=cls.schema_inputs(), outputs=list(cls.outputs))

    @classmethod
    def check_widgets(cls, **values):
        """True, or what is wrong with these widget values (their options or range, then :meth:`check_settings`).
        None values are linked inputs, not known before the run: skipped."""
        for spec in cls.schema_inputs():
            value = values.get(spec.id)
            if value is not None and (message := widget_message(spec, value)) is not True:
                return message
        return cls.check_settings(**values)

    @classmethod
    def check_settings(cls, **values):
        """True, or what is wrong across this node's widget values."""
        return True


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


def model_base(model) -> Optional[str]:
    """``"sdxl"`` for the SDXL family ComfyUI detects (SDXL, SSD-1B, Vega, KOALA, ...), ``"sd15"`` for SD1.5,
    else what the UNet's shape says (None when it says nothing)."""
    config = getattr(getattr(model, "model", None), "model_config", None)
    if isinstance(config, supported_models.SDXL):
        return "sdxl"
    if isinstance(config, supported_models.SD15):
        return "sd15"
    return base_of_unet_config(getattr(config, "unet_config", None) or {})
