"""AnyDressingApply: patch a MODEL's self-attention with Dressing-Attention (clone, never mutate)."""

from __future__ import annotations

import logging

import comfy.patcher_extension
import torch

from ..anydressing_core.attention import DAForm
from ..anydressing_core.bases import check_same_base
from ..anydressing_core.budget import MAX_BUDGET, apply_budget, describe
from ..anydressing_core.errors import AnyDressingError
from ..anydressing_core.features import GarmentFeatures, key_to_str
from .common import (ANYDRESSING, CATEGORY, GARMENT_FEATURES, CFGPolicy, FormOption, attn1_modules, diffusion_model_of,
                     model_base)
from .loader import adapter_features
from .patch import DressingReplace, DressingShared

log = logging.getLogger(__name__)

#: What a new Apply node shows; a graph saved without the input gets 0 (no pooling), see docs/SDXL.md.
BUDGET_DEFAULT = 0


def check_features(model_modules: dict, features: GarmentFeatures, base=None):
    """The features must come from a model of the same base (``base``, when known) with the same
    self-attention layers and widths."""
    check_same_base("the garment features were encoded with", features.base, base,
                    "Encode the garments with the MODEL you sample with (the same checkpoint's MODEL into Encode "
                    "Garments).")
    missing = [key_to_str(k) for k in model_modules if k not in features.tokens]
    extra = [key_to_str(k) for k in features.tokens if k not in model_modules]
    if missing or extra:
        raise AnyDressingError(
            "the garment features were encoded with a UNet of another shape: "
            + (f"this model's layers {missing[:4]}{'...' if len(missing) > 4 else ''} have no features; " if missing else "")
            + (f"features for layers {extra[:4]} that this model lacks; " if extra else "")
            + "encode the garments with the same base architecture you sample with (SD1.5 with SD1.5)."
        )
    for key, module in model_modules.items():
        want = module.to_k.in_features
        got = features.tokens[key].shape[-1]
        if got != want:
            raise AnyDressingError(
                f"layer {key_to_str(key)} expects {want} channels but the garment features have {got}; encode the garments "
                "with a model of this architecture"
            )


def apply_dressing(model, features, strength=0.7, start_percent=0.0, end_percent=1.0, form=FormOption.AUTO,
                   cfg_policy=CFGPolicy.PAPER, region_masks=None, adapter=None, garment_token_budget=0):
    if not isinstance(features, GarmentFeatures):
        raise AnyDressingError(f"'features' must come from Encode Garments (got {type(features).__name__})")
    if features.count == 0:
        raise AnyDressingError("the garment features hold no garments; add an AnyDressing Garment node")
    if not (0.0 <= strength <= 2.0):
        raise AnyDressingError(f"strength {strength} is out of range; use 0..2 (the paper uses 0.7)")
    if not (0.0 <= start_percent <= 1.0 and 0.0 <= end_percent <= 1.0) or start_percent > end_percent:
        raise AnyDressingError(
            f"start_percent {start_percent} / end_percent {end_percent}: both must be in 0..1 and start <= end")
    if form not in FormOption.ALL:
        raise AnyDressingError(f"unknown form {form!r}; use one of {FormOption.ALL}")
    if cfg_policy not in CFGPolicy.ALL:
        raise AnyDressingError(f"unknown cfg_policy {cfg_policy!r}; use one of {CFGPolicy.ALL}")
    budget = garment_token_budget
    if isinstance(budget, bool) or not isinstance(budget, int) or not 0 <= budget <= MAX_BUDGET:
        raise AnyDressingError(f"garment_token_budget {budget!r}: use a whole number of tokens per layer from 0 "
                               f"(no budget) to {MAX_BUDGET}")
    modules = attn1_modules(diffusion_model_of(model, "model"))
    check_features(modules, features, model_base(model))
    regions = None
    if region_masks is not None:
        if not torch.is_tensor(region_masks) or region_masks.ndim not in (2, 3):
            raise AnyDressingError(
                f"region_masks must be a MASK [N, H, W] (one mask per garment); got shape "
                f"{tuple(getattr(region_masks, 'shape', ()))}")
        if not torch.isfinite(region_masks).all():
            raise AnyDressingError("region_masks contains NaN or infinite values; connect 0..1 masks")
        regions = region_masks if region_masks.ndim == 3 else region_masks.unsqueeze(0)
        if regions.shape[0] != features.count:
            raise AnyDressingError(
                f"region_masks has {regions.shape[0]} masks for {features.count} garments; give one region per garment, "
                "in the order of the garment chain")
        regions = regions.float().cpu()
    features = adapter_features(adapter, features, model)  # checks the adapter fits; K'/V' only if not encoded with it
    m = model.clone()
    if strength == 0.0:
        return m  # neutral setting: the unpatched model, bit for bit (STYLE 10)
    pooled = apply_budget(features, budget)  # once per Apply, never per step (the same object when nothing pools)
    if pooled is not features:
        log.info("AnyDressing: garment token budget %d: %s", budget, describe(pooled, features))
    features = pooled
    if form == FormOption.AUTO:
        # trained/imported weights say which form they were trained with; zero-shot uses the joint
        # (reference-attention) form [choice]: with K'=K, V'=V it keeps one normalised softmax.
        form = features.form or DAForm.JOINT
    sampling = m.get_model_object("model_sampling")
    shared = DressingShared(
        features, strength, sampling.percent_to_sigma(start_percent), sampling.percent_to_sigma(end_percent),
        form, cfg_policy, regions,
    )
    existing = m.model_options.get("transformer_options", {}).get("patches_replace", {}).get("attn1", {})
    for key in modules:
        previous = existing.get(key) or existing.get(key[:2])
        m.set_model_attn1_replace(DressingReplace(shared, key, previous), key[0], key[1], key[2])
    m.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, f"anydressing_{id(shared)}",
                           shared.outer_sample_wrapper)
    return m


class AnyDressingApply:
    DESCRIPTION = (
        "Dresses the person in the encoded garments: every self-attention layer of the MODEL also attends to the garment "
        "features (Dressing-Attention). Connect the result to a stock KSampler. Works after LoRA loaders, with ControlNet "
        "and with IP-Adapter (which lives on cross-attention)."
    )
    CATEGORY = CATEGORY
    FUNCTION = "apply"
    RETURN_TYPES = ("MODEL",)
    OUTPUT_TOOLTIPS = ("The patched model (a clone; the input MODEL is unchanged).",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The SD1.5 model you sample with (DressingNet)."}),
                "features": (GARMENT_FEATURES, {"tooltip": "From Encode Garments."}),
                "strength": ("FLOAT", {"default": 0.7, "min": 0.0, "max": 2.0, "step": 0.05,
                                       "tooltip": "lambda: weight of the garment attention (paper: 0.7). 0 = off, exactly."}),
                "start_percent": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01,
                                            "tooltip": "Sampling progress at which garments start to apply."}),
                "end_percent": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01,
                                          "tooltip": "Sampling progress after which garments stop applying."}),
                "form": (FormOption.ALL, {"default": FormOption.AUTO,
                                          "tooltip": "separate: the paper's self-attention + lambda * garment attention; joint: one "
                                                     "softmax over image and garment tokens (reference style). auto: what the "
                                                     "weights were trained with; joint in zero-shot."}),
                "cfg_policy": (CFGPolicy.ALL, {"default": CFGPolicy.PAPER,
                                               "tooltip": "Paper: the negative (unconditional) branch drops text and garments "
                                                          "together. 'both' also dresses the negative branch."}),
            },
            "optional": {
                "adapter": (ANYDRESSING, {"tooltip": "Optional, from AnyDressing Loader: checks the weights fit this MODEL and "
                                                     "projects K'/V' if the features were encoded without it."}),
                "region_masks": ("MASK", {"tooltip": "Optional: one mask per garment (chain order) on the output image. Pixels "
                                                     "inside garment k's region attend only to garment k (training-free "
                                                     "localization)."}),
                "garment_token_budget": ("INT", {
                    "default": BUDGET_DEFAULT, "min": 0, "max": MAX_BUDGET, "step": 256,
                    "tooltip": "Most garment tokens per self-attention layer, all garments together; 0 = no limit. Layers "
                               "above it average their garment tokens 2x2 (the highest-resolution layers first), which "
                               "bounds the cost at 1024 px and with many garments. SDXL at 1024 px: 4096."}),
            },
        }

    def apply(self, model, features, strength, start_percent, end_percent, form, cfg_policy, region_masks=None, adapter=None,
              garment_token_budget=0):
        return (apply_dressing(model, features, strength, start_percent, end_percent, form, cfg_policy, region_masks,
                               adapter, garment_token_budget),)


NODE_CLASS_MAPPINGS = {"AnyDressingApply": AnyDressingApply}
NODE_DISPLAY_NAME_MAPPINGS = {"AnyDressingApply": "Apply AnyDressing"}
