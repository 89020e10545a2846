"""What the garment pass gives an SDXL-family UNet besides the garment latents: its ADM vector ``y``.

SDXL's UNet adds ``label_emb(y)`` to its timestep embedding, ``y [B, 2816]`` = the pooled CLIP-G text
embedding (1280) and the embeddings of height, width, crop top/left and target height/width (6 x 256),
built by the model itself (``comfy/model_base.py`` ``SDXL.encode_adm``). For the garment pass
[choice, docs/SDXL.md]: the pooled embedding of the empty prompt from the checkpoint's CLIP (what ComfyUI's
CLIPTextEncode makes of ""), and the garment's own encode size, uncropped, as original and target size.
Without a CLIP the pooled part is zeros: SDXL's training dropped captions by zeroing that embedding.
"""

from __future__ import annotations

import logging

import torch

from ..anydressing_core.bases import SDXL_POOLED_CHANNELS
from ..anydressing_core.errors import AnyDressingError
from .host_api import model_base

log = logging.getLogger(__name__)


def empty_prompt_pooled(clip, width: int = SDXL_POOLED_CHANNELS) -> torch.Tensor:
    """The pooled text embedding of "" from ``clip``, ``[1, width]``; a CLIP of another base is refused."""
    if not hasattr(clip, "tokenize") or not hasattr(clip, "encode_from_tokens"):
        raise AnyDressingError(f"'clip' must be a CLIP (the checkpoint's CLIP output); got {type(clip).__name__}")
    _, pooled = clip.encode_from_tokens(clip.tokenize(""), return_pooled=True)
    got = None if pooled is None else int(pooled.shape[-1])
    if got != width:
        raise AnyDressingError(
            f"the CLIP connected to Encode Garments gives a pooled embedding {got} wide, but this SDXL MODEL reads "
            f"CLIP-G's {width}: it is the CLIP of another base (SD1.5's CLIP-L gives 768). Connect the CLIP of the "
            "SDXL checkpoint you sample with, or leave 'clip' unconnected")
    return pooled.float().cpu()


def garment_adm(model, count: int, width: int, height: int, clip=None):
    """``y [count, adm]`` (float32, CPU) for the garment pass, or None for a UNet without ADM input (SD1.5)."""
    if getattr(model.model.diffusion_model, "num_classes", None) is None:
        if clip is not None:
            log.debug("AnyDressing: 'clip' is only read for SDXL-family models; ignored")
        return None
    adm = int(model.model.model_config.unet_config["adm_in_channels"])
    if not isinstance(model.model, model_base.SDXL):
        return torch.zeros(count, adm)  # an ADM UNet of another kind: no size conditioning we know of
    pooled_width = adm - 6 * 256
    if clip is not None:
        pooled = empty_prompt_pooled(clip, pooled_width)
    else:
        log.info("AnyDressing: no CLIP connected to Encode Garments; the SDXL garment pass gets a zero pooled text "
                 "embedding with its size embeddings (connect the checkpoint's CLIP for the empty prompt's)")
        pooled = torch.zeros(1, pooled_width)
    y = model.model.encode_adm(pooled_output=pooled, width=width, height=height, crop_w=0, crop_h=0,
                               target_width=width, target_height=height)
    return y.float().cpu().expand(count, -1)
