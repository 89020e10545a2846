"""Regions that sampling finds for itself: per-garment maps of one step, voted into regions for the next.

Fed once per layer with maps ``[B, T, N]`` (the garments' own Dressing-Attention shares A_k, or the
cross-attention on each garment's words) and closed once per step, a :class:`MapVote` keeps, per image,
a soft region ``[B, N, h, w]`` in [0, 1] that sums to 1 over the voting garments [choice]:

1. average the step's maps over layers on one grid;
2. sharpen: divide each garment's map by its mean over the image (a garment that attracts every pixel
   a little, as the most image-like garment does in zero-shot, no longer wins everywhere), then
   ``softmax(log(ratio) / temperature)`` over garments;
3. smooth with a ``smooth x smooth`` box (neighbouring pixels agree);
4. EMA over steps with ``momentum``, so a position commits to one garment as sampling proceeds.

A pixel belongs to garment k's region where its share exceeds 1/2 (``attention.region_bias``): a pixel
no garment holds a majority of stays open to all. Everything stays on the device; nothing here waits for it.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F

EPS = 1e-6


class MapVote:
    """Per-step vote of ``count`` garments on a ``grid`` (h, w); ``voters`` are the garments that have maps."""

    def __init__(self, count: int, grid: Sequence[int], voters: Optional[Sequence[int]] = None, *,
                 temperature: float = 0.5, momentum: float = 0.5, smooth: int = 3, warmup: int = 1):
        if count < 1:
            raise ValueError("a vote needs at least one garment")
        if not (0.0 < temperature) or not (0.0 <= momentum < 1.0) or smooth < 1 or smooth % 2 == 0 or warmup < 1:
            raise ValueError(f"bad vote settings: temperature {temperature} > 0, momentum {momentum} in [0, 1), "
                             f"smooth {smooth} odd >= 1, warmup {warmup} >= 1")
        self.count = count
        self.grid = (int(grid[0]), int(grid[1]))
        self.voters = list(range(count)) if voters is None else sorted(set(int(v) for v in voters))
        self.temperature, self.momentum, self.smooth, self.warmup = temperature, momentum, smooth, warmup
        self._sum: Optional[torch.Tensor] = None
        self._layers = 0
        self.ema: Optional[torch.Tensor] = None  # [B, V, h, w] over the voters
        self.steps = 0

    def add(self, maps: torch.Tensor, hw: Sequence[int]) -> None:
        """One layer's maps ``[B, T, N]`` at a layer of ``hw`` (``T = h * w``)."""
        b, t, n = maps.shape
        if n != self.count or t != int(hw[0]) * int(hw[1]):
            raise ValueError(f"maps {tuple(maps.shape)} do not fit {self.count} garments at {tuple(hw)}")
        grid = maps[..., self.voters].float().transpose(1, 2).reshape(b, len(self.voters), int(hw[0]), int(hw[1]))
        if tuple(grid.shape[-2:]) != self.grid:
            grid = F.interpolate(grid, size=self.grid, mode="bilinear", align_corners=False)
        if self._sum is not None and self._sum.shape[0] != b:
            self._sum, self._layers = None, 0  # another batch size: start the step over
        self._sum = grid if self._sum is None else self._sum + grid
        self._layers += 1

    def step(self) -> None:
        """Close a step: fold the layers seen since the last call into the EMA (nothing seen: unchanged)."""
        if self._layers == 0:
            return
        mean = self._sum / self._layers
        self._sum, self._layers = None, 0
        ratio = mean / mean.mean(dim=(-2, -1), keepdim=True).clamp_min(EPS)
        share = torch.softmax(torch.log(ratio.clamp_min(EPS)) / self.temperature, dim=1)
        if self.smooth > 1:
            share = F.avg_pool2d(share, self.smooth, stride=1, padding=self.smooth // 2, count_include_pad=False)
        if self.ema is None or self.ema.shape != share.shape:
            self.ema = share
        else:
            self.ema = self.momentum * self.ema + (1.0 - self.momentum) * share
        self.steps += 1

    def shares(self) -> Optional[torch.Tensor]:
        """Soft regions of all ``count`` garments ``[B, N, h, w]`` (zeros for non-voters), or None before
        ``warmup`` steps were voted."""
        if self.ema is None or self.steps < self.warmup:
            return None
        if len(self.voters) == self.count:
            return self.ema
        out = self.ema.new_zeros((self.ema.shape[0], self.count) + self.grid)
        out[:, self.voters] = self.ema
        return out


def grid_for(latent_hw: Sequence[int], max_tokens: int) -> tuple:
    """The finest UNet level of a latent ``(h, w)`` (halved with ceil rounding) with at most ``max_tokens``."""
    h, w = int(latent_hw[0]), int(latent_hw[1])
    while h * w > max_tokens and (h > 1 or w > 1):
        h, w = (h + 1) // 2, (w + 1) // 2
    return h, w
