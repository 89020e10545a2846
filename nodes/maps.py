"""AnyDressingAttentionMaps: where each garment lands, from one evaluation of the patched model."""

from __future__ import annotations

import torch
import torch.nn.functional as F

import comfy.sample
import comfy.samplers

from ..anydressing_core.attention import tokens_hw
from ..anydressing_core.errors import AnyDressingError
from ..anydressing_core.maps_picture import render_maps_picture
from .common import CATEGORY, latent_channels
from .patch import MapStore, find_shared

def average_maps(store: MapStore, out_hw) -> torch.Tensor:
    """Mean over layers of the per-garment maps, each resized to ``out_hw``: ``[N, H, W]`` in [0, 1]."""
    acc = None
    for maps in store.maps.values():
        m = maps[0]  # first conditional row: [T, N]
        h, w = tokens_hw(store.latent_hw, m.shape[0])
        grid = m.t().reshape(1, -1, h, w).float()
        up = F.interpolate(grid, size=out_hw, mode="bilinear", align_corners=False)[0]
        acc = up if acc is None else acc + up
    return (acc / len(store.maps)).clamp(0, 1)


def maps_picture(maps: torch.Tensor, names, thumbnails=None) -> torch.Tensor:
    """The core's attention-map picture of ``maps [N, H, W]`` as an IMAGE ``[1, H', W', 3]``."""
    picture = render_maps_picture(maps.float().cpu().numpy(), names, thumbnails)
    return torch.from_numpy(picture.image)[None]


class AnyDressingAttentionMaps:
    DESCRIPTION = (
        "Shows where each garment lands: runs the AnyDressing-patched model once on the sampled latent (re-noised to "
        "at_percent) and averages each garment's attention share over all layers."
    )
    CATEGORY = CATEGORY
    FUNCTION = "maps"
    RETURN_TYPES = ("IMAGE", "MASK")
    RETURN_NAMES = ("maps_image", "garment_masks")
    OUTPUT_TOOLTIPS = ("One row per garment: its thumbnail, its map in its own colour and a colour scale.", "One map per garment (chain order), 0..1.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The MODEL output of Apply AnyDressing."}),
                "positive": ("CONDITIONING", {"tooltip": "The positive prompt used for sampling."}),
                "latent": ("LATENT", {"tooltip": "The sampled latent (KSampler output), or any latent of the output size."}),
                "at_percent": ("FLOAT", {"default": 0.5, "min": 0.0, "max": 0.99, "step": 0.01,
                                         "tooltip": "Noise level to look at, as sampling progress (0 = pure noise)."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "tooltip": "Seed of the re-noising."}),
            }
        }

    def maps(self, model, positive, latent, at_percent, seed):
        shared = find_shared(model)
        if shared is None:
            raise AnyDressingError("this MODEL carries no AnyDressing patch; connect the MODEL output of Apply AnyDressing")
        if not (0.0 <= at_percent <= 0.99):
            raise AnyDressingError(f"at_percent {at_percent} is out of range; use 0..0.99")
        if not isinstance(latent, dict) or not torch.is_tensor(latent.get("samples")) or latent["samples"].ndim != 4:
            raise AnyDressingError("'latent' must be a LATENT (a KSampler or Empty Latent Image output) with samples "
                                   "[B, C, H, W]")
        want = latent_channels(model)
        if latent["samples"].shape[1] != want or latent["samples"].shape[0] == 0:
            raise AnyDressingError(
                f"the latent has shape {tuple(latent['samples'].shape)} but this model takes {want}-channel latents; "
                "connect a latent made for this model (the KSampler output that used it)")
        samples = latent["samples"][:1]
        sampling = model.get_model_object("model_sampling")
        sigma = float(sampling.percent_to_sigma(at_percent))
        if not (shared.sigma_end <= sigma <= shared.sigma_start):
            raise AnyDressingError(
                f"at_percent {at_percent} lies outside the Apply node's start/end range; choose a value inside it")
        m = model.clone()
        store = MapStore()
        m.model_options.setdefault("transformer_options", {})[MapStore.OPTION] = store
        noise = comfy.sample.prepare_noise(samples, seed)
        sigmas = torch.tensor([sigma, 0.0])
        comfy.sample.sample_custom(m, noise, 1.0, comfy.samplers.sampler_object("euler"), sigmas, positive, positive,
                                   samples, disable_pbar=True, seed=seed)
        if not store.maps:
            raise AnyDressingError("no garment maps were recorded; is the model's AnyDressing active at this noise level?")
        hw = (samples.shape[-2] * 8, samples.shape[-1] * 8)
        maps = average_maps(store, hw)
        return (maps_picture(maps, shared.features.names), maps)


NODE_CLASS_MAPPINGS = {"AnyDressingAttentionMaps": AnyDressingAttentionMaps}
NODE_DISPLAY_NAME_MAPPINGS = {"AnyDressingAttentionMaps": "Garment Attention Maps (AnyDressing)"}
