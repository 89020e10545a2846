"""Benchmark scores on generated images whose layout (pose) matches the ground truth.

All functions take images in [-1, 1] ``[n, 3, S, S]`` and masks ``[n, N, S, S]`` in {0, 1}.

* localization IoU [choice]: each garment pixel (inside the union of the masks) goes to the
  garment with the largest attention map ``A_k``; IoU of that assignment with ``M_k``, averaged over
  garments and samples.  The union is used because DA maps sum to 1 over garments everywhere, so
  background pixels cannot be "unassigned" (the IGL softmax over garments).
* confusion [choice]: the colour histogram (4 bins per channel) of the generated region ``M_k``
  (eroded by one pixel when enough is left, so blended outline pixels do not decide) is compared (L1) with each of the sample's in-shop garments; the region is confused when its
  nearest garment is not garment k.  Chance with three garments is about 2/3.
* colour error: distance (0..255 RGB) between the mean colours of the generated and true region.
* edge error: L1 distance (0..255 per pixel) between the texture energies
  ``(mean |dx|, mean |dy|)`` of the generated and true region, taken over pixel pairs inside the
  region, so the garment's outline does not count; phase-free, so a stripe that is shifted but
  of the right period and direction is not penalised.
* edge error on texture (``edge_err_tex``): the edge error of striped and checked garments only
  (NaN for the others), where texture energy is the garment's whole look.
* pixel error: mean absolute error (0..255) inside the region, aligned (strict).
Regions with fewer than ``MIN_PIXELS`` pixels are skipped.  Statistics over seeds: ``stats.py``.
"""

from __future__ import annotations

from typing import Dict, Optional

import cv2
import numpy as np
import torch

MIN_PIXELS = 4
BINS = 4


def _u8(img: torch.Tensor) -> np.ndarray:
    """``[n, 3, S, S]`` in [-1, 1] -> ``[n, S, S, 3]`` float in 0..255."""
    return ((img.clamp(-1, 1) + 1) * 127.5).permute(0, 2, 3, 1).cpu().numpy().astype(np.float64)


def _hist(pixels: np.ndarray) -> np.ndarray:
    """``[P, 3]`` 0..255 -> normalised ``[BINS**3]`` histogram."""
    q = np.clip((pixels / 256.0 * BINS).astype(int), 0, BINS - 1)
    h = np.bincount(q[:, 0] * BINS * BINS + q[:, 1] * BINS + q[:, 2], minlength=BINS ** 3).astype(np.float64)
    return h / max(h.sum(), 1.0)


def _energy(gray: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mean |dx|, |dy| over neighbour pairs both inside ``mask``: ``[2]``."""
    dx, mx = np.abs(np.diff(gray, axis=1)), mask[:, 1:] & mask[:, :-1]
    dy, my = np.abs(np.diff(gray, axis=0)), mask[1:] & mask[:-1]
    return np.array([dx[mx].mean() if mx.any() else 0.0, dy[my].mean() if my.any() else 0.0])


def localization_iou(maps: torch.Tensor, masks: torch.Tensor) -> np.ndarray:
    """IoU per sample and garment ``[n, N]`` (NaN where the garment has no pixels)."""
    m = masks.cpu().numpy() > 0.5
    union_fg = m.any(axis=1)
    assign = maps.cpu().numpy().argmax(axis=1)  # [n, S, S]
    out = np.full(m.shape[:2], np.nan)
    for i in range(m.shape[0]):
        for k in range(m.shape[1]):
            if m[i, k].sum() < MIN_PIXELS:
                continue
            pred = (assign[i] == k) & union_fg[i]
            out[i, k] = (pred & m[i, k]).sum() / max((pred | m[i, k]).sum(), 1)
    return out


def region_scores(gen: torch.Tensor, target: torch.Tensor, masks: torch.Tensor, garments: torch.Tensor,
                  garment_masks: torch.Tensor, textured: Optional[np.ndarray] = None) -> Dict[str, np.ndarray]:
    """Per sample and garment ``[n, N]``: confused (0/1), colour_err, edge_err, pixel_err (NaN = skipped).

    ``garments [n, N, 3, S, S]`` are the in-shop images, ``garment_masks [n, N, S, S]`` their
    foregrounds; ``textured [n, N]`` bool (striped or checked garments) adds ``edge_err_tex``.
    """
    g, t = _u8(gen), _u8(target)
    shop = _u8(garments.flatten(0, 1)).reshape(garments.shape[0], garments.shape[1], *g.shape[1:])
    m, gm = masks.cpu().numpy() > 0.5, garment_masks.cpu().numpy() > 0.5
    n, k_count = m.shape[:2]
    out = {key: np.full((n, k_count), np.nan) for key in ("confused", "colour_err", "edge_err", "pixel_err")}
    gray = lambda a: a @ np.array([0.299, 0.587, 0.114])  # noqa: E731
    for i in range(n):
        shop_h = [_hist(shop[i, j][gm[i, j]]) for j in range(k_count)]
        for k in range(k_count):
            r = m[i, k]
            if r.sum() < MIN_PIXELS:
                continue
            inner = cv2.erode(r.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
            core = inner if inner.sum() >= MIN_PIXELS else r  # edge pixels blend with the neighbours
            dists = [np.abs(_hist(g[i][core]) - h).sum() for h in shop_h]
            out["confused"][i, k] = float(int(np.argmin(dists)) != k)
            out["colour_err"][i, k] = np.linalg.norm(g[i][r].mean(0) - t[i][r].mean(0))
            out["edge_err"][i, k] = np.abs(_energy(gray(g[i]), r) - _energy(gray(t[i]), r)).sum()
            out["pixel_err"][i, k] = np.abs(g[i][r] - t[i][r]).mean()
    if textured is not None:
        out["edge_err_tex"] = np.where(np.asarray(textured, bool), out["edge_err"], np.nan)
    return out
