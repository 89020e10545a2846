"""Augmentations that keep the person photo, its garment masks and the garments aligned.

One random draw per sample (from a numpy Generator seeded by ``(seed, epoch, index)`` so that a
resumed run sees exactly the same pixels) is applied to the person and to every mask M_k.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Tuple

import cv2
import numpy as np


@dataclass
class AugmentConfig:
    """[choice] the paper does not list its augmentations; these are mild and geometry-only."""

    hflip: float = 0.5          # probability of mirroring person, masks AND garments together
    scale: float = 0.05         # person zoom in [1 - scale, 1 + scale]
    shift: float = 0.03         # person shift, fraction of the side
    enabled: bool = True


def cover_resize(img: np.ndarray, hw: Tuple[int, int], interp=cv2.INTER_AREA) -> np.ndarray:
    """Resize so ``img`` covers ``hw`` and centre-crop the rest (keeps the aspect)."""
    h, w = img.shape[:2]
    th, tw = hw
    s = max(th / h, tw / w)
    nh, nw = max(th, int(round(h * s))), max(tw, int(round(w * s)))
    out = cv2.resize(img, (nw, nh), interpolation=interp if s < 1 else cv2.INTER_LINEAR)
    y, x = (nh - th) // 2, (nw - tw) // 2
    return out[y:y + th, x:x + tw]


@dataclass
class Draw:
    flip: bool
    matrix: np.ndarray  # 2x3 affine for the person side


def draw(rng: np.random.Generator, hw: Tuple[int, int], cfg: AugmentConfig) -> Draw:
    h, w = hw
    if not cfg.enabled:
        return Draw(False, np.array([[1.0, 0, 0], [0, 1.0, 0]]))
    flip = bool(rng.random() < cfg.hflip)
    s = float(rng.uniform(1 - cfg.scale, 1 + cfg.scale))
    tx, ty = (float(v) for v in rng.uniform(-cfg.shift, cfg.shift, size=2))
    m = cv2.getRotationMatrix2D((w / 2, h / 2), 0.0, s)
    m[0, 2] += tx * w
    m[1, 2] += ty * h
    return Draw(flip, m)


def apply_person(d: Draw, person: np.ndarray, masks: List[np.ndarray]):
    """Same flip + affine on ``person [H, W, 3]`` and each ``mask [H, W]``."""
    h, w = person.shape[:2]
    def warp(a, border):
        if d.flip:
            a = a[:, ::-1]
        return cv2.warpAffine(np.ascontiguousarray(a), d.matrix, (w, h), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_CONSTANT, borderValue=border)
    person = warp(person, (1.0, 1.0, 1.0))
    masks = [np.clip(warp(m, 0.0), 0.0, 1.0) for m in masks]
    return person, masks


def apply_garment(d: Draw, rgb: np.ndarray, mask: np.ndarray):
    """Garments follow the person's mirror so prints keep their handedness [choice]."""
    if d.flip:
        rgb, mask = rgb[:, ::-1], mask[:, ::-1]
    return np.ascontiguousarray(rgb), np.ascontiguousarray(mask)
