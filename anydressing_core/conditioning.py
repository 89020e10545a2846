"""SDXL's added conditioning (pooled text embedding + size/crop ids), built one way for the trainer and the nodes.

SDXL's UNet takes, beside the token context, a vector per image: the pooled OpenCLIP text embedding and six
numbers (original height, width, crop top, crop left, target height, width), each number embedded with a
256-wide sinusoid.  diffusers passes ``added_cond_kwargs={"text_embeds", "time_ids"}``; ComfyUI passes the
already embedded ``y [B, 2816]`` (``model_base.SDXL.encode_adm``).  Both are built here.

Garment pass [choice, the nodes do the same]: GarmentsNet sees the EMPTY prompt's pooled embedding and the
garment canvas's own size (no crop), as ComfyUI builds conditioning for an empty prompt at that size.  The
person pass (DressingNet) sees the caption's pooled embedding (the empty prompt's when CFG drops it) and the
training image's size.
"""

from __future__ import annotations

import math
from typing import Dict, Sequence, Tuple

import torch

#: Width of each size/crop id's sinusoidal embedding in SDXL (``addition_time_embed_dim``).
TIME_EMBED_DIM = 256


def time_ids(height: int, width: int, crop: Tuple[int, int] = (0, 0), target: Tuple[int, int] | None = None,
             batch: int = 1, device=None, dtype=torch.float32) -> torch.Tensor:
    """``[batch, 6]``: (height, width, crop top, crop left, target height, target width) in pixels.

    ``target`` defaults to ``(height, width)``, as ComfyUI's CLIPTextEncode does for SDXL.
    """
    th, tw = target if target is not None else (height, width)
    row = torch.tensor([height, width, crop[0], crop[1], th, tw], dtype=dtype, device=device)
    return row.expand(batch, 6).clone()


def added_cond(pooled: torch.Tensor, ids: torch.Tensor) -> Dict[str, torch.Tensor]:
    """diffusers' ``added_cond_kwargs`` for ``UNet2DConditionModel``: ``pooled [B, P]``, ``ids [B, 6]``."""
    if pooled.shape[0] != ids.shape[0]:
        raise ValueError(f"pooled embedding for {pooled.shape[0]} rows, size ids for {ids.shape[0]}")
    return {"text_embeds": pooled, "time_ids": ids.to(pooled)}


def sinusoid(values: torch.Tensor, dim: int = TIME_EMBED_DIM, max_period: float = 10000.0) -> torch.Tensor:
    """``[N] -> [N, dim]``: cosine half first, then sine, frequencies ``max_period ** (-i / (dim / 2))``
    (ComfyUI's ``timestep_embedding`` and diffusers' ``Timesteps(flip_sin_to_cos=True, shift=0)``)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=values.device) / half)
    args = values.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def adm_vector(pooled: torch.Tensor, ids: torch.Tensor, dim: int = TIME_EMBED_DIM) -> torch.Tensor:
    """ComfyUI's ``y``: ``[B, P + 6 * dim]`` = pooled embedding, then each of the six ids embedded
    (SDXL: P = 1280, y is 2816 wide)."""
    b = ids.shape[0]
    emb = sinusoid(ids.reshape(-1), dim).reshape(b, 6 * dim)
    return torch.cat([pooled.float(), emb.to(pooled.device)], dim=1).to(pooled.dtype)


def garment_cond(empty_pooled: torch.Tensor, count: int, size: Sequence[int]) -> Dict[str, torch.Tensor]:
    """Added conditioning of GarmentsNet's pass over ``count`` garments of ``size = (height, width)``
    pixels: the empty prompt's pooled embedding ``[1, P]`` and the garment canvas's size ids."""
    pooled = empty_pooled.reshape(1, -1).expand(count, -1)
    return added_cond(pooled, time_ids(int(size[0]), int(size[1]), batch=count, device=pooled.device))
