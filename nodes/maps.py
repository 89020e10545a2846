"""AnyDressing Attention Maps: where each garment lands, from one evaluation of the patched model."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..anydressing_core.attention import tokens_hw
from ..anydressing_core.errors import AnyDressingError
from ..anydressing_core.maps_picture import render_maps_picture
from . import regions as region_hooks
from .common import AnyDressingNode, latent_channels
from .host_api import io, sample, samplers
from .patch import MapStore, find_patch

AT_PERCENT_MAX = 0.99


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


def check_at_percent(at_percent):
    if not 0.0 <= float(at_percent) <= AT_PERCENT_MAX:
        return f"at_percent {at_percent} is out of range; use 0..{AT_PERCENT_MAX}"
    return True


def attention_maps(model, positive, latent, at_percent, seed):
    """``(maps picture [1, H', W', 3], maps [N, H, W])`` of the patched ``model`` at one noise level."""
    patch = find_patch(model)
    if patch is None:
        raise AnyDressingError("this MODEL carries no AnyDressing patch; connect the MODEL output of AnyDressing Apply")
    problem = check_at_percent(at_percent)
    if problem is not True:
        raise AnyDressingError(problem)
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
    if not (patch.sigma_end <= sigma <= patch.sigma_start):
        raise AnyDressingError(
            f"at_percent {at_percent} lies outside the AnyDressing Apply node's start/end range; choose a value "
            "inside it")
    hw = (samples.shape[-2] * 8, samples.shape[-1] * 8)
    used = region_hooks.used_regions(patch, hw)  # before this node's own run replaces them
    probe = model.clone()
    store = MapStore()
    probe.model_options.setdefault("transformer_options", {})[MapStore.OPTION] = store
    noise = sample.prepare_noise(samples, seed)
    sigmas = torch.tensor([sigma, 0.0])
    sample.sample_custom(probe, noise, 1.0, samplers.sampler_object("euler"), sigmas, positive, positive,
                         samples, disable_pbar=True, seed=seed)
    if not store.maps:
        raise AnyDressingError("no garment maps were recorded; is the model's AnyDressing active at this noise level?")
    maps = average_maps(store, hw)
    thumbnails = [g.image for g in patch.features.garments]  # None where only the slot is known: a swatch
    picture = maps_picture(maps, patch.features.names, thumbnails if all(t is not None for t in thumbnails) else None)
    if used is not None:  # a second row: the regions in force (bright = may attend)
        picture = torch.cat([picture, maps_picture(*used)], dim=1)
    return picture, maps


class AnyDressingAttentionMaps(AnyDressingNode):
    node_id = "AnyDressingAttentionMaps"
    title = "AnyDressing Attention Maps"
    about = ("Shows where each garment lands: runs the AnyDressing-patched model once on the sampled latent "
             "(re-noised to at_percent) and averages each garment's attention share over all layers.")
    inputs = [
        io.Model.Input("model", tooltip="The MODEL output of AnyDressing Apply."),
        io.Conditioning.Input("positive", tooltip="The positive prompt used for sampling."),
        io.Latent.Input("latent", tooltip="The sampled latent (KSampler output), or any latent of the output size."),
        io.Float.Input("at_percent", default=0.5, min=0.0, max=AT_PERCENT_MAX, step=0.01,
                       tooltip="Noise level to look at, as sampling progress (0 = pure noise)."),
        io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, tooltip="Seed of the re-noising."),
    ]
    outputs = [
        io.Image.Output("maps_image", display_name="maps_image",
                        tooltip="One row per garment: its thumbnail, its map in its own colour and a colour scale."),
        io.Mask.Output("garment_masks", display_name="garment_masks", tooltip="One map per garment (chain order), 0..1."),
    ]

    @classmethod
    def execute(cls, model, positive, latent, at_percent, seed) -> io.NodeOutput:
        return io.NodeOutput(*attention_maps(model, positive, latent, at_percent, seed))
