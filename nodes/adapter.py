"""The ComfyUI side of AnyDressing weights (the ANYDRESSING wire): fit checks, GarmentsNet, garment-pass hooks.

* :func:`check_adapter` refuses weights made for another UNet before any work.
* :func:`garments_net_patcher` turns a file's GarmentsNet weights into a MODEL ComfyUI manages.
* :func:`encode_options` adds the GFE LoRA hooks (and a peer's GarmentsNet context) to the transformer
  options of the garment pass; the hooks run only there, never while sampling.
* :func:`managed_lora` hands the LoRA's tensors to ComfyUI's model management for that pass.

K', V' are never projected here: the adapter's projections travel with the garment features and the
attention patch computes K', V' once per sampling run (``anydressing_core.features.garment_kv``).
"""

from __future__ import annotations

import torch

import logging

from ..anydressing_core.base_check import base_warning
from ..anydressing_core.bases import check_same_base, name
from ..anydressing_core.checkpoint import AnyDressingAdapter
from ..anydressing_core.errors import AnyDressingError
from ..anydressing_core.importers import infer_unet_config
from ..anydressing_core.keys import ldm_unet_config
from .common import diffusion_model_of, model_base, model_channels
from .host_api import model_patcher, optimized_attention, sd, utils

log = logging.getLogger(__name__)


def check_adapter(adapter, channels: dict, what: str = "this MODEL", widths: bool = True):
    """``adapter`` must be AnyDressing weights whose layers (and widths) are ``channels`` ``{key: C}``."""
    if not isinstance(adapter, AnyDressingAdapter):
        raise AnyDressingError(f"'adapter' must come from AnyDressing Loader (got {type(adapter).__name__})")
    adapter.check_layers(channels, what, widths=widths)


def check_base(adapter, model):
    """Refuse weights made for another base (SD1.5 vs SDXL) than ``model``'s, naming both, before any work."""
    if not isinstance(adapter, AnyDressingAdapter):
        return  # check_adapter says what is wrong
    mine = model_base(model)
    weights = f"the AnyDressing weights {adapter.name}" if adapter.name else "the AnyDressing weights"
    check_same_base(f"{weights} are made for", adapter.meta.base, mine,
                    f"Load AnyDressing weights made for {name(mine)} (base={mine}), or sample with an "
                    f"{name(adapter.meta.base)} checkpoint.")


def warn_if_other_base(adapter, model, what: str):
    """Log when ``model`` was not loaded from the checkpoint ``adapter`` was trained on.

    ComfyUI's MODEL does not say which file it came from, so the weights' recorded fingerprint of the base
    is compared with the model's own (``anydressing_core.base_check``); nothing to say without weights.
    """
    if adapter is None:
        return
    mismatch = base_warning(adapter.meta, diffusion_model_of(model, "model").state_dict(), what)
    if mismatch:
        log.warning("AnyDressing: %s", mismatch)


def garments_net_patcher(adapter: AnyDressingAdapter, base_model=None, dtype=None):
    """The file's GarmentsNet as a ComfyUI MODEL (ComfyUI's memory manager loads and offloads it).

    Without GarmentsNet weights in the file (zero-shot / DA-only weights) GarmentsNet IS the base
    UNet [choice]: the connected base MODEL is returned (cloned).
    """
    if adapter.garments_net is None:
        if base_model is None:
            raise AnyDressingError(
                f"{adapter.name or 'this file'} has no GarmentsNet weights (zero-shot or projections only): GarmentsNet "
                "is the base UNet. Connect your checkpoint's MODEL to the loader's 'model' input (or use that MODEL "
                "directly in AnyDressing Encode Garments).")
        return base_model.clone()
    config = adapter.meta.unet_config or infer_unet_config(adapter.garments_net)
    mapping = utils.unet_to_diffusers(ldm_unet_config(config))  # diffusers key -> LDM key
    unknown = [k for k in adapter.garments_net if k not in mapping]
    if unknown:
        raise AnyDressingError(f"GarmentsNet weights of {adapter.name} have keys ComfyUI's UNet map does not know: "
                               f"{unknown[:5]} ({len(unknown)} in all)")
    state = {mapping[k]: v for k, v in adapter.garments_net.items()}
    model = sd.load_diffusion_model_state_dict(state, model_options={"dtype": dtype} if dtype else {})
    if model is None:
        raise AnyDressingError(
            f"ComfyUI could not detect the GarmentsNet UNet of {adapter.name} as a known model (its config: "
            f"{ldm_unet_config(config)}); SD1.5 needs model_channels 320 and context_dim 768")
    return model


def managed_lora(adapter, model):
    """The adapter's GFE LoRA as a ModelPatcher on ``model``'s devices (loaded with GarmentsNet), or None.

    Built once per adapter object and kept on it (ComfyUI caches the Loader's output, so this lives as long
    as the weights do).
    """
    if adapter is None or adapter.gfe is None:
        return None
    handle = adapter.host_handle
    if handle is None or handle.load_device != model.load_device:
        handle = model_patcher.ModelPatcher(adapter.gfe, model.load_device, model.offload_device)
        adapter.host_handle = handle
    return handle


def _comfy_attention(q, k, v, heads, mask=None, **_):
    return optimized_attention(q, k, v, heads, mask=mask)


class GarmentContext:
    """attn2 patch: GarmentsNet's cross-attention reads the weights' own context (e.g. the empty prompt)."""

    def __init__(self, context: torch.Tensor):
        self.context = context

    def __call__(self, n, context, value, extra_options):
        ctx = self.context.to(device=n.device, dtype=n.dtype)  # [1, S, D] shared, or [N, S, D] one per garment
        ctx = ctx.expand(n.shape[0], -1, -1) if ctx.shape[0] == 1 else ctx
        return n, ctx, ctx

    def __deepcopy__(self, memo):
        return self


def _restore_attn2(options: dict, model, context):
    """Undo the [paper] attn2 removal of the garment pass for weights trained with a text context."""
    base = model.model_options.get("transformer_options", {})
    patches = options.setdefault("patches", {})
    patches["attn2_output_patch"] = list(base.get("patches", {}).get("attn2_output_patch", []))
    patches["attn2_patch"] = list(base.get("patches", {}).get("attn2_patch", [])) + [GarmentContext(context)]
    options.setdefault("patches_replace", {})["attn2"] = dict(base.get("patches_replace", {}).get("attn2", {}))


def encode_options(adapter, options: dict, slots, keys, model=None, context=None) -> dict:
    """Add the adapter's GFE to the transformer_options of a GarmentsNet pass (in place; returned).

    ``options`` must already hold fresh ``patches`` / ``patches_replace`` dicts (AnyDressing Encode Garments builds
    them); ``slots`` give each batch row's slot.  Weights whose GarmentsNet reads a text context
    (MagicClothing) get attn2 back, fed ``context`` or ``adapter.garment_context``.
    """
    if adapter is None:
        return options
    check_adapter(adapter, {k: None for k in keys}, "the GarmentsNet MODEL", widths=False)
    context = context if context is not None else adapter.garment_context
    if context is not None and model is not None:
        _restore_attn2(options, model, context)
    hooks = adapter.encode_hooks(list(slots), attention=_comfy_attention)
    if hooks is None:
        return options
    patches = options.setdefault("patches", {})
    patches["attn1_patch"] = list(patches.get("attn1_patch", [])) + [hooks.attn1_patch]
    patches["attn1_output_patch"] = list(patches.get("attn1_output_patch", [])) + [hooks.attn1_output_patch]
    replace = options.setdefault("patches_replace", {})
    replace["attn1"] = dict(replace.get("attn1", {}))
    replace["attn1"].update({key: hooks.attn1_replace for key in keys})
    return options


def attach(adapter, features, model):
    """``features`` carrying the adapter's form and projections, after checking the adapter fits ``model``."""
    if adapter is None:
        return features
    check_base(adapter, model)
    check_adapter(adapter, model_channels(model), "the MODEL")
    if features.projections is not None:
        return features
    return adapter.attach(features)
