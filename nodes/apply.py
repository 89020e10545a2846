"""AnyDressing Apply: patch a MODEL's self-attention with Dressing-Attention (clone, never mutate)."""

from __future__ import annotations

import logging

import torch

from ..anydressing_core.attention import DAForm
from ..anydressing_core.bases import check_same_base
from ..anydressing_core.budget import MAX_BUDGET, apply_budget, describe
from ..anydressing_core.errors import AnyDressingError
from ..anydressing_core.features import GarmentFeatures, key_to_str
from . import adapter as adapter_side
from . import regions as region_hooks
from .common import (Adapter, AnyDressingNode, CFGPolicy, GarmentFeaturesType, attn1_modules, check_choice,
                     diffusion_model_of, model_base)
from .host_api import io, patcher_extension
from .patch import DressingPatch, DressingReplace, managed_store

log = logging.getLogger(__name__)

#: lambda, the weight of the garment attention [paper: 0.7 at inference].
STRENGTH_RANGE = (0.0, 2.0)
#: What a new Apply node shows; a graph saved without the input gets 0 (no pooling) too, see docs/SDXL.md.
BUDGET_DEFAULT = 0


def check_features(model_modules: dict, features: GarmentFeatures, base=None):
    """The features must come from a model of the same base (``base``, when known) with the same
    self-attention layers and widths."""
    check_same_base("the garment features were encoded with", features.base, base,
                    "Encode the garments with the MODEL you sample with (the same checkpoint's MODEL into AnyDressing "
                    "Encode Garments).")
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


def settings_message(strength=None, start_percent=None, end_percent=None):
    """True, or what is wrong with Apply's numbers (None: not known yet)."""
    if strength is not None and not STRENGTH_RANGE[0] <= float(strength) <= STRENGTH_RANGE[1]:
        return f"strength {strength} is out of range; use {STRENGTH_RANGE[0]:g}..{STRENGTH_RANGE[1]:g} (the paper uses 0.7)"
    percents = [float(p) for p in (start_percent, end_percent) if p is not None]
    ordered = start_percent is None or end_percent is None or float(start_percent) <= float(end_percent)
    if not all(0.0 <= p <= 1.0 for p in percents) or not ordered:
        return f"start_percent {start_percent} / end_percent {end_percent}: both must be in 0..1 and start <= end"
    return True


def check_regions(region_masks, count: int):
    if region_masks is None:
        return None
    if not torch.is_tensor(region_masks) or region_masks.ndim not in (2, 3):
        raise AnyDressingError(
            f"region_masks must be a MASK [N, H, W] (one mask per garment); got shape "
            f"{tuple(getattr(region_masks, 'shape', ()))}")
    if not torch.isfinite(region_masks).all():
        raise AnyDressingError("region_masks contains NaN or infinite values; connect 0..1 masks")
    regions = region_masks if region_masks.ndim == 3 else region_masks.unsqueeze(0)
    if regions.shape[0] != count:
        raise AnyDressingError(
            f"region_masks has {regions.shape[0]} masks for {count} garments; give one region per garment, "
            "in the order of the garment chain")
    return regions.float().cpu()


def check_budget(budget):
    if isinstance(budget, bool) or not isinstance(budget, int) or not 0 <= budget <= MAX_BUDGET:
        raise AnyDressingError(f"garment_token_budget {budget!r}: use a whole number of tokens per layer from 0 "
                               f"(no budget) to {MAX_BUDGET}")
    return budget


def apply_dressing(model, features, strength=0.7, start_percent=0.0, end_percent=1.0, form=DAForm.AUTO,
                   cfg_policy=CFGPolicy.PAPER, region_masks=None, adapter=None, auto_regions=None,
                   garment_token_budget=0):
    if not isinstance(features, GarmentFeatures):
        raise AnyDressingError(f"'features' must come from AnyDressing Encode Garments (got {type(features).__name__})")
    if features.count == 0:
        raise AnyDressingError("the garment features hold no garments; add an AnyDressing Garment node")
    problem = settings_message(strength, start_percent, end_percent)
    if problem is not True:
        raise AnyDressingError(problem)
    check_choice(form, DAForm.CHOICES, "form")
    check_choice(cfg_policy, CFGPolicy.ALL, "cfg_policy")
    budget = check_budget(garment_token_budget)
    modules = attn1_modules(diffusion_model_of(model, "model"))
    check_features(modules, features, model_base(model))
    regions = check_regions(region_masks, features.count)
    spec = region_hooks.spec_for(auto_regions, features, masks_given=regions is not None)
    if adapter is not None and adapter.gfe is not None and not features.gfe:
        log.warning("AnyDressing: the garments were encoded without %s's garment LoRA; connect the adapter to "
                    "AnyDressing Encode Garments too", adapter.name or "the adapter")
    features = adapter_side.attach(adapter, features, model)  # checks the adapter fits this MODEL
    adapter_side.warn_if_other_base(adapter, model, "the MODEL you sample with")
    patched = model.clone()
    if strength == 0.0:
        return patched  # neutral setting: the unpatched model, bit for bit
    pooled = apply_budget(features, budget)  # once per Apply, never per step (the same object when nothing pools)
    if pooled is not features:
        log.info("AnyDressing: garment token budget %d: %s", budget, describe(pooled, features))
    features = pooled
    if form == DAForm.AUTO:
        # trained/imported weights say which form they were trained with; zero-shot uses the joint
        # (reference-attention) form [choice]: with K'=K, V'=V it keeps one normalised softmax.
        form = features.form or DAForm.JOINT
    sampling = patched.get_model_object("model_sampling")
    patch = DressingPatch(features, managed_store(features, model), strength,
                          sampling.percent_to_sigma(start_percent), sampling.percent_to_sigma(end_percent),
                          form, cfg_policy, regions, region_spec=spec)
    existing = patched.model_options.get("transformer_options", {}).get("patches_replace", {}).get("attn1", {})
    for key in modules:
        previous = existing.get(key) or existing.get(key[:2])
        patched.set_model_attn1_replace(DressingReplace(patch, key, previous), key[0], key[1], key[2])
    handle = f"anydressing_{id(patch)}"
    patched.add_wrapper_with_key(patcher_extension.WrappersMP.OUTER_SAMPLE, handle, patch.outer_sample_wrapper)
    patched.set_additional_models(handle, [patch.store])  # loaded and offloaded with the UNet
    region_hooks.install(patched, patch)
    return patched


class AnyDressingApply(AnyDressingNode):
    node_id = "AnyDressingApply"
    title = "AnyDressing Apply"
    about = ("Dresses the person in the encoded garments: every self-attention layer of the MODEL also attends to the "
             "garment features (Dressing-Attention). Connect the result to a stock KSampler. Works after LoRA loaders, "
             "with ControlNet and with IP-Adapter (which lives on cross-attention).")
    inputs = [
        io.Model.Input("model", tooltip="The SD1.5 or SDXL model you sample with (DressingNet)."),
        GarmentFeaturesType.Input("features", tooltip="From AnyDressing Encode Garments."),
        io.Float.Input("strength", default=0.7, min=STRENGTH_RANGE[0], max=STRENGTH_RANGE[1], step=0.05,
                       tooltip="lambda: weight of the garment attention (paper: 0.7). 0 = off, exactly."),
        io.Float.Input("start_percent", default=0.0, min=0.0, max=1.0, step=0.01,
                       tooltip="Sampling progress at which garments start to apply."),
        io.Float.Input("end_percent", default=1.0, min=0.0, max=1.0, step=0.01,
                       tooltip="Sampling progress after which garments stop applying."),
        io.Combo.Input("form", options=list(DAForm.CHOICES), default=DAForm.AUTO,
                       tooltip="separate: the paper's self-attention + lambda * garment attention; joint: one softmax "
                               "over image and garment tokens (reference style). auto: what the weights were trained "
                               "with; joint in zero-shot."),
        io.Combo.Input("cfg_policy", options=CFGPolicy.ALL, default=CFGPolicy.PAPER,
                       tooltip="Paper: the negative (unconditional) branch drops text and garments together. 'both' "
                               "also dresses the negative branch."),
        Adapter.Input("adapter", optional=True,
                      tooltip="Optional, from AnyDressing Loader: checks the weights fit this MODEL and brings their "
                              "trained K'/V' projections if the features were encoded without them."),
        io.Mask.Input("region_masks", optional=True,
                      tooltip="Optional: one mask per garment (chain order) on the output image. Pixels inside garment "
                              "k's region attend only to garment k (training-free localization)."),
        region_hooks.Regions.Input("regions", optional=True,
                                   tooltip="Optional, from AnyDressing Regions: automatic per-garment regions (pose, "
                                           "attention or prompt) instead of masks."),
        io.Int.Input("garment_token_budget", default=BUDGET_DEFAULT, min=0, max=MAX_BUDGET, step=256, optional=True,
                     tooltip="Most garment tokens per self-attention layer, all garments together; 0 = no limit. Layers "
                             "above it average their garment tokens 2x2 (the highest-resolution layers first), which "
                             "bounds the cost at 1024 px and with many garments. SDXL at 1024 px: 4096."),
    ]
    outputs = [io.Model.Output("dressed_model", tooltip="The patched model (a clone; the input MODEL is unchanged).")]

    @classmethod
    def validate_inputs(cls, start_percent=None, end_percent=None, form=None, cfg_policy=None):
        return cls.check_widgets(start_percent=start_percent, end_percent=end_percent, form=form, cfg_policy=cfg_policy)

    @classmethod
    def check_settings(cls, start_percent=None, end_percent=None, **_):
        return settings_message(None, start_percent, end_percent)

    @classmethod
    def execute(cls, model, features, strength, start_percent, end_percent, form, cfg_policy, adapter=None,
                region_masks=None, regions=None, garment_token_budget=0) -> io.NodeOutput:
        return io.NodeOutput(apply_dressing(model, features, strength, start_percent, end_percent, form, cfg_policy,
                                            region_masks, adapter, regions, garment_token_budget))
