"""Garment-token budget: fewer garment tokens in the layers where they cost the most.

Dressing-Attention adds ``4 * T * S * C`` FLOPs per dressed row and layer and step (``T`` image
tokens, ``S = N * L`` garment tokens of N garments, ``C`` channels). With garments encoded near the
sampling size, ``S`` grows with N and with the resolution: SDXL's first attention level at 1024 px
has 4,096 tokens per garment, so four garments add 16,384 keys to each of its layers.

The rule [choice]: a budget ``B`` caps the garment tokens of every layer (all garments together).
A layer with ``N * L > B`` has each garment's ``h x w`` token grid average-pooled 2x2, again and
again, until ``N * L' <= B``; a grid with an odd side is not pooled further (so pooled tokens
always average exactly ``p * p`` encoded tokens). Layers have fewer tokens the deeper they sit, so
the highest-resolution layers pool first and the deep, low-resolution ones keep every token.
``B = 0`` means no budget: the features are returned unchanged (the same object).

What is pooled is F, the recorded GarmentsNet input; K'/V' are projected from the pooled F once per
sampling run, which equals pooling K'/V' themselves (a linear projection commutes with averaging).
Pooling happens once, when Apply AnyDressing runs (ComfyUI caches its result), never per step.
Each pooled token stands for ``p * p`` encoded tokens: :func:`.attention.dressing_attention`'s
``token_size`` adds ``log(p * p)`` to its joint-form logits, so where the ``p x p`` cell's tokens are
equal the pooled attention is exactly the unpooled one.
"""

from __future__ import annotations

import math
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from .attention import tokens_hw
from .errors import AnyDressingError
from .features import BlockKey, GarmentFeatures, key_to_str

#: the largest budget an input accepts: 16 garments of 64x64 tokens each.
MAX_BUDGET = 65536


def pool_factor(h: int, w: int, garments: int, budget: int) -> int:
    """The rule: the smallest ``p`` (1, 2, 4, ...) with ``garments * (h/p) * (w/p) <= budget``, pooling
    only while both sides of the grid are even. ``budget <= 0``: 1 (no budget)."""
    if budget < 0:
        raise ValueError(f"garment token budget {budget}: use 0 (no budget) or a positive number of tokens")
    p = 1
    while budget > 0 and garments * (h // p) * (w // p) > budget and (h // p) % 2 == 0 and (w // p) % 2 == 0:
        p *= 2
    return p


def layer_grid(features: GarmentFeatures, key: BlockKey) -> Tuple[int, int]:
    """``(h, w)`` of one layer's token grid, per garment, as the features hold it now (after any pooling)."""
    p = int(features.pooled.get(key, 1))
    encoded = features.tokens[key].shape[1] * p * p
    if features.latent_hw is not None:
        h, w = tokens_hw(features.latent_hw, encoded)
    else:
        side = math.isqrt(encoded)
        if side * side != encoded:
            raise AnyDressingError(
                f"the garment features of layer {key_to_str(key)} do not say their token grid ({encoded} tokens, "
                "no latent size); encode the garments again with Encode Garments")
        h = w = side
    return h // p, w // p


def pool_tokens(tokens: torch.Tensor, hw: Sequence[int], p: int) -> torch.Tensor:
    """Average-pool ``[N, h*w, C]`` tokens (row-major ``h x w`` grid, as the UNet flattens it) ``p x p``:
    ``[N, (h/p)*(w/p), C]``, same dtype (averaged in float32)."""
    h, w = int(hw[0]), int(hw[1])
    n, length, c = tokens.shape
    if length != h * w or h % p or w % p:
        raise ValueError(f"cannot pool {length} tokens as a {h}x{w} grid by {p}")
    if p == 1:
        return tokens
    grid = tokens.float().reshape(n, h, w, c).permute(0, 3, 1, 2)
    pooled = F.avg_pool2d(grid, p)
    return pooled.flatten(2).transpose(1, 2).to(tokens.dtype).contiguous()


def plan(features: GarmentFeatures, budget: int) -> Dict[BlockKey, int]:
    """Extra pooling factor per layer that the budget asks of these features (1 = leave the layer as it is)."""
    out = {}
    for key in features.tokens:
        h, w = layer_grid(features, key)
        out[key] = pool_factor(h, w, features.count, budget)
    return out


def apply_budget(features: GarmentFeatures, budget: int) -> GarmentFeatures:
    """Features with at most ``budget`` garment tokens per layer (see the module docstring).

    Returns ``features`` itself when no layer needs pooling (no budget, or every layer within it),
    else a copy whose ``tokens`` are pooled and whose ``pooled`` records each layer's total factor.
    """
    if not 0 <= int(budget) <= MAX_BUDGET:
        raise AnyDressingError(f"garment token budget {budget}: use 0 (no budget) up to {MAX_BUDGET} tokens per layer")
    factors = plan(features, int(budget))
    if all(p == 1 for p in factors.values()):
        return features
    out = features.to()  # the same tensors, garments, projections and form
    for key, t in features.tokens.items():
        p = factors[key]
        if p > 1:
            out.tokens[key] = pool_tokens(t, layer_grid(features, key), p)
            out.pooled[key] = int(features.pooled.get(key, 1)) * p
    return out


def garment_tokens(grids: Dict[BlockKey, Tuple[int, int]], garments: int, budget: int) -> Dict[BlockKey, int]:
    """``S`` per layer (all garments' tokens) for per-garment token grids ``grids`` under ``budget``: the
    rule without features, for FLOP predictions."""
    out = {}
    for key, (h, w) in grids.items():
        p = pool_factor(h, w, garments, budget)
        out[key] = garments * (h // p) * (w // p)
    return out


def describe(features: GarmentFeatures, before: Optional[GarmentFeatures] = None) -> str:
    """One line for the log: layers pooled and garment tokens per layer before -> after."""
    pooled = {k: p for k, p in features.pooled.items() if p > 1}
    if not pooled:
        return "no layer pooled"
    src = before or features
    sizes = sorted({(src.tokens[k].shape[1] * src.count, features.tokens[k].shape[1] * features.count, p)
                    for k, p in pooled.items()}, reverse=True)
    return f"{len(pooled)} of {len(features.tokens)} layers pooled: " + ", ".join(
        f"{a} -> {b} tokens ({p}x{p})" for a, b, p in sizes)
