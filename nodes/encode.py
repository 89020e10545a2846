"""AnyDressingEncodeGarments: one GarmentsNet pass at t=0 over all garments, recording attn1 inputs."""

from __future__ import annotations

import logging

import numpy as np
import torch

import comfy.model_management
import comfy.utils

from ..anydressing_core.bases import LATENT_SCALE, base_of_vae_scale, name
from ..anydressing_core.errors import AnyDressingError
from ..anydressing_core.features import GarmentFeatures
from ..anydressing_core.garments import GarmentList, prepare_garment
from ..anydressing_core.resampler import Resampler
from .common import (ANYDRESSING, CATEGORY, GARMENT_FEATURES, GARMENTS, attn1_modules, compute_dtype, diffusion_model_of,
                     latent_channels, model_base)
from .loader import adapter_encode_options, adapter_features, check_adapter_for
from .sdxl import garment_adm

log = logging.getLogger(__name__)


class AllRecorded(Exception):
    """Raised by :class:`FeatureRecorder` once every layer's features are in: the rest of the pass (the
    last self-attention, its cross-attention and MLP, the output blocks after it, the output conv)
    computes nothing the features need, so the garment pass stops there."""


class FeatureRecorder:
    """attn1 patch that keeps F, the normalised hidden state entering each self-attention layer."""

    def __init__(self, keys, pbar=None):
        self.keys = set(keys)
        self.tokens = {}
        self.pbar = pbar

    def __call__(self, n, context_attn1, value_attn1, extra_options):
        comfy.model_management.throw_exception_if_processing_interrupted()
        block = extra_options.get("block")
        key = (block[0], int(block[1]), int(extra_options.get("block_index", 0))) if block else None
        if key in self.keys and key not in self.tokens:
            self.tokens[key] = n.detach()
            if self.pbar is not None:
                self.pbar.update(1)
            if len(self.tokens) == len(self.keys):
                raise AllRecorded
        return n, context_attn1, value_attn1

    def __deepcopy__(self, memo):
        return self


def _skip_attn2(q, k, v, extra_options):
    # GarmentsNet has no text cross-attention [paper]; the output patch below zeroes the branch,
    # so skip computing the attention itself.
    return q


def _zero_attn2(n, extra_options):
    return torch.zeros_like(n)


def garments_net_options(model, recorder: FeatureRecorder, keys) -> dict:
    """The model's transformer_options plus recording and attn2 removal, without touching the model."""
    base = model.model_options.get("transformer_options", {})
    to = dict(base)
    patches = {k: list(v) for k, v in base.get("patches", {}).items()}
    patches["attn1_patch"] = patches.get("attn1_patch", []) + [recorder]
    patches["attn2_output_patch"] = patches.get("attn2_output_patch", []) + [_zero_attn2]
    replace = {k: dict(v) for k, v in base.get("patches_replace", {}).items()}
    replace["attn2"] = {key: _skip_attn2 for key in keys}
    to["patches"], to["patches_replace"] = patches, replace
    return to


def check_vae(vae, model):
    if not hasattr(vae, "encode") or not hasattr(vae, "first_stage_model"):
        raise AnyDressingError(f"the vae input is not a ComfyUI VAE (got {type(vae).__name__}); connect a VAE output")
    vae_ch = getattr(vae, "latent_channels", None)
    model_ch = latent_channels(model)
    if vae_ch is not None and int(vae_ch) != model_ch:
        raise AnyDressingError(
            f"the VAE makes {vae_ch}-channel latents but the model expects {model_ch} channels. Connect the VAE that "
            "belongs to this checkpoint (SD1.5 models use a 4-channel VAE)."
        )
    # ComfyUI marks a TAESD with its base's latent scale; full-size SD1.5 and SDXL VAEs share one architecture
    # and key set, so nothing in them says which base they belong to (docs/BAD_INPUT.md)
    scale = getattr(getattr(vae, "first_stage_model", None), "vae_scale", None)
    vae_base = base_of_vae_scale(float(scale.detach()) if torch.is_tensor(scale) else scale)
    mine = model_base(model)
    if vae_base and mine and vae_base != mine:
        raise AnyDressingError(
            f"the VAE is a TAESD for {name(vae_base)} (latent scale {LATENT_SCALE[vae_base]}), but the MODEL is "
            f"{name(mine)} (latent scale {LATENT_SCALE[mine]}). Connect the {name(mine)} checkpoint's own VAE "
            f"(or the {'taesdxl' if mine == 'sdxl' else 'taesd'} approximation)."
        )


def image_token_context(adapter, clip_vision, pixels):
    """IMAGDressing's GarmentsNet context: its resampler over CLIP-vision tokens of each garment, ``[N, Q, D]``."""
    if adapter is None or getattr(adapter, "resampler", None) is None or \
            adapter.meta.garments_net_context != "image_tokens":
        if clip_vision is not None:
            log.info("AnyDressing: clip_vision is only used by weights with an image-token context; ignored")
        return None
    if clip_vision is None:
        log.warning("AnyDressing: %s reads garment image tokens; connect a CLIP vision model (ViT-H) to Encode "
                    "Garments, otherwise the empty prompt stands in and garments transfer worse", adapter.name)
        return None
    if not hasattr(clip_vision, "encode_image"):
        raise AnyDressingError(f"'clip_vision' must be a CLIP_VISION (Load CLIP Vision); got {type(clip_vision).__name__}")
    tokens = clip_vision.encode_image(pixels)["penultimate_hidden_states"]
    with torch.inference_mode():
        return Resampler(adapter.resampler)(tokens.float().cpu())


def encode_garments(model, vae, garments: GarmentList, width: int, height: int, adapter=None,
                    clip_vision=None, clip=None) -> GarmentFeatures:
    if not isinstance(garments, GarmentList) or len(garments) == 0:
        raise AnyDressingError("no garments: connect at least one AnyDressing Garment node to 'garments'")
    if width % 64 or height % 64 or not (64 <= width <= 2048 and 64 <= height <= 2048):
        raise AnyDressingError(f"garment size {width}x{height}: width and height must be multiples of 64 from 64 to 2048")
    dm = diffusion_model_of(model, "model")
    check_vae(vae, model)
    modules = attn1_modules(dm)
    if not modules:
        raise AnyDressingError("this UNet has no self-attention layers to take garment features from")
    keys = list(modules)
    if adapter is not None:  # the same fit check adapter_features makes at the end, before any heavy work
        check_adapter_for(adapter, model, "the MODEL")
    prepared = [prepare_garment(g.image, g.mask, width, height) for g in garments.items]
    pixels = torch.from_numpy(np.stack([p[0] for p in prepared]))
    adm = garment_adm(model, len(prepared), width, height, clip)  # SDXL: before the VAE, it may refuse the CLIP

    comfy.model_management.throw_exception_if_processing_interrupted()
    latents = vae.encode(pixels)
    comfy.model_management.load_models_gpu([model])
    device, dtype = model.load_device, compute_dtype(model)
    x = model.model.process_latent_in(latents).to(device=device, dtype=dtype)
    n = x.shape[0]
    ctx_dim = model.model.model_config.unet_config.get("context_dim") or 768
    kwargs = {} if adm is None else {"y": adm.to(device=device, dtype=dtype)}
    recorder = FeatureRecorder(keys, comfy.utils.ProgressBar(len(keys)))
    options = garments_net_options(model, recorder, keys)
    # trained weights: each garment row gets its slot's GFE LoRA (issue 4; nodes/loader.py)
    context = image_token_context(adapter, clip_vision, pixels)
    options = adapter_encode_options(adapter, options, [g.slot for g in garments.items], keys, model, context=context)
    with torch.inference_mode():
        try:
            dm(x, timesteps=torch.zeros(n, device=device), context=torch.zeros(n, 1, ctx_dim, device=device,
                                                                                  dtype=dtype),
               transformer_options=options, **kwargs)
        except AllRecorded:  # every feature is in: the rest of the pass is not needed
            pass
    missing = [k for k in keys if k not in recorder.tokens]
    if missing:
        raise AnyDressingError(f"the garment pass did not reach layers {missing}; another pack may be skipping blocks")
    store = comfy.model_management.intermediate_device()
    tokens = {}
    for k in keys:
        # outside inference_mode: a moved copy is already a normal tensor; clone only when .to() moved nothing
        t = recorder.tokens[k]
        moved = t.to(device=store, dtype=dtype)
        tokens[k] = moved.clone() if moved.data_ptr() == t.data_ptr() else moved
    log.info("AnyDressing: encoded %d garments at %dx%d into %d layers (%.1f MiB)", n, width, height, len(keys),
             sum(t.numel() * t.element_size() for t in tokens.values()) / 2**20)
    features = GarmentFeatures(
        tokens=tokens,
        slots=[g.slot for g in garments.items],
        weights=[g.weight for g in garments.items],
        names=[g.name for g in garments.items],
        base=model_base(model),
        latent_hw=tuple(int(v) for v in latents.shape[-2:]),
    )
    # trained Wk'/Wv': K'/V' once per encode, never per step (issue 4); also sets the weights' DA form
    return adapter_features(adapter, features, model, dtype=dtype)


class AnyDressingEncodeGarments:
    DESCRIPTION = (
        "Runs GarmentsNet once (t=0, no text) over all garments together and keeps each self-attention layer's input. "
        "Zero-shot: connect the same MODEL you sample with. The result is reused at every sampling step, and ComfyUI "
        "caches it while the garments do not change."
    )
    CATEGORY = CATEGORY
    FUNCTION = "encode"
    RETURN_TYPES = (GARMENT_FEATURES,)
    RETURN_NAMES = ("features",)
    OUTPUT_TOOLTIPS = ("Garment features for Apply AnyDressing.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "GarmentsNet. In zero-shot mode, the base SD1.5 MODEL itself (LoRAs allowed)."}),
                "vae": ("VAE", {"tooltip": "The checkpoint's VAE, used to turn the garment pictures into latents."}),
                "garments": (GARMENTS, {"tooltip": "The chain of AnyDressing Garment nodes."}),
                "width": ("INT", {"default": 384, "min": 64, "max": 2048, "step": 64,
                                  "tooltip": "Width each garment is encoded at. Larger keeps finer texture, costs more attention."}),
                "height": ("INT", {"default": 512, "min": 64, "max": 2048, "step": 64,
                                   "tooltip": "Height each garment is encoded at (the paper uses 3:4 portraits)."}),
            },
            "optional": {
                "adapter": (ANYDRESSING, {"tooltip": "Optional, from AnyDressing Loader (connect its garments_net to model): "
                                                     "garment LoRA per slot and trained K'/V' projections. Empty = zero-shot."}),
                "clip_vision": ("CLIP_VISION", {"tooltip": "Only for IMAGDressing weights: the CLIP vision model (ViT-H) whose "
                                                           "garment tokens their resampler turns into GarmentsNet's context."}),
                "clip": ("CLIP", {"tooltip": "SDXL-family models: the checkpoint's CLIP, for the empty prompt's pooled "
                                             "embedding the garment pass needs. Unconnected: zeros. SD1.5 ignores it."}),
            },
        }

    def encode(self, model, vae, garments, width, height, adapter=None, clip_vision=None, clip=None):
        return (encode_garments(model, vae, garments, width, height, adapter, clip_vision, clip),)


NODE_CLASS_MAPPINGS = {"AnyDressingEncodeGarments": AnyDressingEncodeGarments}
NODE_DISPLAY_NAME_MAPPINGS = {"AnyDressingEncodeGarments": "Encode Garments (AnyDressing)"}
