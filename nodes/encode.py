"""AnyDressing Encode Garments: one GarmentsNet pass at t=0 over all garments, recording attn1 inputs."""

from __future__ import annotations

import logging

import numpy as np
import torch

from ..anydressing_core.bases import LATENT_SCALE, base_of_vae_scale, name
from ..anydressing_core.errors import AnyDressingError
from ..anydressing_core.features import GarmentFeatures, GarmentsNetContext, key_from_options
from ..anydressing_core.garments import GarmentList, place_garment
from ..anydressing_core.resampler import Resampler
from . import adapter as adapter_side
from .common import (Adapter, AnyDressingNode, GarmentFeaturesType, Garments, attn1_modules, compute_dtype,
                     diffusion_model_of, latent_channels, model_base, model_channels)
from .host_api import io, model_management, utils
from .sdxl import garment_adm

log = logging.getLogger(__name__)

#: Encode sizes: multiples of 64 (the latent must halve cleanly at every UNet level).
SIZE_RANGE = (64, 2048)


class AllRecorded(Exception):
    """Raised by :class:`FeatureRecorder` once every layer's features are in: the rest of the pass (the
    last self-attention, its cross-attention and MLP, the output blocks after it, the output conv)
    computes nothing the features need, so the garment pass stops there."""


class FeatureRecorder:
    """attn1 patch that keeps F, the normalised hidden state entering each self-attention layer."""

    def __init__(self, keys, progress=None):
        self.keys = set(keys)
        self.tokens = {}
        self.progress = progress

    def __call__(self, n, context_attn1, value_attn1, extra_options):
        model_management.throw_exception_if_processing_interrupted()
        key = key_from_options(extra_options)
        if key in self.keys and key not in self.tokens:
            self.tokens[key] = n.detach()
            if self.progress is not None:
                self.progress.update(1)
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
    options = dict(base)
    patches = {k: list(v) for k, v in base.get("patches", {}).items()}
    patches["attn1_patch"] = patches.get("attn1_patch", []) + [recorder]
    patches["attn2_output_patch"] = patches.get("attn2_output_patch", []) + [_zero_attn2]
    replace = {k: dict(v) for k, v in base.get("patches_replace", {}).items()}
    replace["attn2"] = {key: _skip_attn2 for key in keys}
    options["patches"], options["patches_replace"] = patches, replace
    return options


def check_vae(vae, model):
    if not hasattr(vae, "encode") or not hasattr(vae, "first_stage_model"):
        raise AnyDressingError(f"the vae input is not a ComfyUI VAE (got {type(vae).__name__}); connect a VAE output")
    vae_channels = getattr(vae, "latent_channels", None)
    model_latent = latent_channels(model)
    if vae_channels is not None and int(vae_channels) != model_latent:
        raise AnyDressingError(
            f"the VAE makes {vae_channels}-channel latents but the model expects {model_latent} channels. Connect the "
            "VAE that belongs to this checkpoint (SD1.5 models use a 4-channel VAE)."
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


def check_size(width, height):
    lo, hi = SIZE_RANGE
    if width % 64 or height % 64 or not (lo <= width <= hi and lo <= height <= hi):
        return f"garment size {width}x{height}: width and height must be multiples of 64 from {lo} to {hi}"
    return True


def image_token_context(adapter, clip_vision, pixels):
    """IMAGDressing's GarmentsNet context: its resampler over CLIP-vision tokens of each garment, ``[N, Q, D]``."""
    if adapter is None or getattr(adapter, "resampler", None) is None or \
            adapter.meta.garments_net_context != GarmentsNetContext.IMAGE_TOKENS:
        if clip_vision is not None:
            log.info("AnyDressing: clip_vision is only used by weights with an image-token context; ignored")
        return None
    if clip_vision is None:
        log.warning("AnyDressing: %s reads garment image tokens; connect a CLIP vision model (ViT-H) to "
                    "AnyDressing Encode Garments, otherwise the empty prompt stands in and garments transfer worse", adapter.name)
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
    size_ok = check_size(width, height)
    if size_ok is not True:
        raise AnyDressingError(size_ok)
    diffusion_model = diffusion_model_of(model, "model")
    check_vae(vae, model)
    modules = attn1_modules(diffusion_model)
    if not modules:
        raise AnyDressingError("this UNet has no self-attention layers to take garment features from")
    keys = list(modules)
    if adapter is not None:  # before any heavy work
        adapter_side.check_base(adapter, model)
        adapter_side.check_adapter(adapter, model_channels(model), "the MODEL")
        adapter_side.warn_if_other_base(adapter, model, "the GarmentsNet MODEL")
    placed = [place_garment(g.image, g.mask, width, height)[0] for g in garments.items]
    pixels = torch.from_numpy(np.stack(placed))
    adm = garment_adm(model, len(placed), width, height, clip)  # SDXL: before the VAE, it may refuse the CLIP

    model_management.throw_exception_if_processing_interrupted()
    latents = vae.encode(pixels)
    lora = adapter_side.managed_lora(adapter, model)
    model_management.load_models_gpu([model] + ([lora] if lora is not None else []))
    device, dtype = model.load_device, compute_dtype(model)
    x = model.model.process_latent_in(latents).to(device=device, dtype=dtype)
    n = x.shape[0]
    context_dim = model.model.model_config.unet_config.get("context_dim") or 768
    kwargs = {} if adm is None else {"y": adm.to(device=device, dtype=dtype)}
    recorder = FeatureRecorder(keys, utils.ProgressBar(len(keys)))
    options = garments_net_options(model, recorder, keys)
    context = image_token_context(adapter, clip_vision, pixels)
    options = adapter_side.encode_options(adapter, options, [g.slot for g in garments.items], keys, model,
                                          context=context)
    with torch.inference_mode():
        try:
            diffusion_model(x, timesteps=torch.zeros(n, device=device),
                            context=torch.zeros(n, 1, context_dim, device=device, dtype=dtype),
                            transformer_options=options, **kwargs)
        except AllRecorded:  # every feature is in: the rest of the pass is not needed
            pass
    missing = [k for k in keys if k not in recorder.tokens]
    if missing:
        raise AnyDressingError(f"the garment pass did not reach layers {missing}; another pack may be skipping blocks")
    store = model_management.intermediate_device()
    tokens = {}
    for k in keys:
        # outside inference_mode: a moved copy is already a normal tensor; clone only when .to() moved nothing
        recorded = recorder.tokens[k]
        moved = recorded.to(device=store, dtype=dtype)
        tokens[k] = moved.clone() if moved.data_ptr() == recorded.data_ptr() else moved
    log.info("AnyDressing: encoded %d garments at %dx%d into %d layers (%.1f MiB)", n, width, height, len(keys),
             sum(t.numel() * t.element_size() for t in tokens.values()) / 2**20)
    features = GarmentFeatures(tokens=tokens, garments=list(garments.items),
                               gfe=adapter is not None and adapter.gfe is not None, base=model_base(model),
                               latent_hw=tuple(int(v) for v in latents.shape[-2:]))
    # the adapter's form and trained Wk'/Wv' travel with the features; K'/V' are projected once per run
    return adapter_side.attach(adapter, features, model)


class AnyDressingEncodeGarments(AnyDressingNode):
    node_id = "AnyDressingEncodeGarments"
    title = "AnyDressing Encode Garments"
    about = ("Runs GarmentsNet once (t=0, no text) over all garments together and keeps each self-attention layer's "
             "input. Zero-shot: connect the same MODEL you sample with. The result is reused at every sampling step, "
             "and ComfyUI caches it while the garments do not change.")
    inputs = [
        io.Model.Input("model", tooltip="GarmentsNet. In zero-shot mode, the base SD1.5 MODEL itself (LoRAs allowed)."),
        io.Vae.Input("vae", tooltip="The checkpoint's VAE, used to turn the garment pictures into latents."),
        Garments.Input("garments", tooltip="The chain of AnyDressing Garment nodes."),
        io.Int.Input("width", default=384, min=SIZE_RANGE[0], max=SIZE_RANGE[1], step=64,
                     tooltip="Width each garment is encoded at. Larger keeps finer texture, costs more attention."),
        io.Int.Input("height", default=512, min=SIZE_RANGE[0], max=SIZE_RANGE[1], step=64,
                     tooltip="Height each garment is encoded at (the paper uses 3:4 portraits)."),
        Adapter.Input("adapter", optional=True,
                      tooltip="Optional, from AnyDressing Loader (connect its garments_net to model): garment LoRA "
                              "per slot and trained K'/V' projections. Empty = zero-shot."),
        io.ClipVision.Input("clip_vision", optional=True,
                            tooltip="Only for IMAGDressing weights: the CLIP vision model (ViT-H) whose garment tokens "
                                    "their resampler turns into GarmentsNet's context."),
        io.Clip.Input("clip", optional=True,
                      tooltip="SDXL-family models: the checkpoint's CLIP, for the empty prompt's pooled embedding the "
                              "garment pass needs. Unconnected: zeros. SD1.5 ignores it."),
    ]
    outputs = [GarmentFeaturesType.Output("features", display_name="features",
                                          tooltip="Garment features for AnyDressing Apply.")]

    @classmethod
    def validate_inputs(cls, width=None, height=None):
        return cls.check_widgets(width=width, height=height)

    @classmethod
    def check_settings(cls, width=None, height=None, **_):
        return True if width is None or height is None else check_size(int(width), int(height))

    @classmethod
    def execute(cls, model, vae, garments, width, height, adapter=None, clip_vision=None, clip=None) -> io.NodeOutput:
        return io.NodeOutput(encode_garments(model, vae, garments, width, height, adapter, clip_vision, clip))
