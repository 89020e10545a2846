"""Garment masks M_k at the resolution of every Dressing-Attention layer."""

from __future__ import annotations

from typing import Dict, Iterable, Sequence

import torch

from ..attention import masks_to_tokens, tokens_hw


def layer_masks(masks: torch.Tensor, latent_hw: Sequence[int], token_counts: Iterable[int]) -> Dict[int, torch.Tensor]:
    """M_k per layer resolution.

    Args:
        masks: ``[B, N, H, W]`` person-image masks in [0, 1].
        latent_hw: the latent's ``(h, w)`` (image / 8 for SD1.5).
        token_counts: tokens ``T`` of the DA layers (e.g. 4096, 1024, 256, 64 at 512x512).

    Returns:
        ``{T: [B, T, N]}``, area-averaged so a token holds the share of its pixels inside the garment.
    """
    out = {}
    for t in sorted(set(int(x) for x in token_counts), reverse=True):
        out[t] = masks_to_tokens(masks, tokens_hw(latent_hw, t))
    return out


def sd15_token_counts(latent_hw: Sequence[int]) -> list:
    """Token counts of SD1.5's DA layers: latent, /2, /4 and /8 (the middle block)."""
    h, w = int(latent_hw[0]), int(latent_hw[1])
    counts = []
    for _ in range(4):
        counts.append(h * w)
        h, w = (h + 1) // 2, (w + 1) // 2
    return counts
