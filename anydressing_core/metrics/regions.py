"""Per-garment body regions for CLIP-I* [paper: regions from pose keypoints], and crops.

Keypoints are COCO-17 ``[17, 2]`` (x, y) pixels or ``[17, 3]`` with a confidence (points under
``min_conf`` are ignored); ``anydressing_core.synthetic.COCO17`` lists the order.  Regions are
boxes ``(x0, y0, x1, y1)`` in pixels, end-exclusive.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np

from ..errors import AnyDressingError

Box = Tuple[int, int, int, int]

NOSE, L_EYE, R_EYE, L_EAR, R_EAR = 0, 1, 2, 3, 4
L_SH, R_SH, L_EL, R_EL, L_WR, R_WR = 5, 6, 7, 8, 9, 10
L_HIP, R_HIP, L_KN, R_KN, L_AN, R_AN = 11, 12, 13, 14, 15, 16

#: [choice] the keypoints whose bounding box is a slot's body region
SLOT_POINTS = {
    "upper": (L_SH, R_SH, L_EL, R_EL, L_WR, R_WR, L_HIP, R_HIP),
    "lower": (L_HIP, R_HIP, L_KN, R_KN, L_AN, R_AN),
    "dress": (L_SH, R_SH, L_HIP, R_HIP, L_KN, R_KN),
    "shoes": (L_AN, R_AN),
}


def _valid(kp: np.ndarray, idx: Sequence[int], min_conf: float) -> np.ndarray:
    pts = kp[list(idx)]
    if kp.shape[1] >= 3:
        pts = pts[pts[:, 2] >= min_conf]
    pts = pts[:, :2]
    return pts[np.isfinite(pts).all(axis=1) & (pts >= 0).all(axis=1)]


def _clip_box(x0, y0, x1, y1, w, h) -> Optional[Box]:
    x0, y0 = max(0, int(np.floor(x0))), max(0, int(np.floor(y0)))
    x1, y1 = min(w, int(np.ceil(x1))), min(h, int(np.ceil(y1)))
    return (x0, y0, x1, y1) if x1 > x0 and y1 > y0 else None


def pose_region(keypoints, slot: str, width: int, height: int, margin: float = 0.15,
                min_conf: float = 0.1) -> Optional[Box]:
    """The body region of ``slot`` from COCO-17 keypoints, or None when its points are missing.

    [choice] Boxes around the slot's keypoints, grown by ``margin`` of their size and by half a
    limb width (a sixth of the shoulder width, at least 2 px); the hat region is a box above the
    head, sized from the ear (or eye) distance.  Slots bag/other get the whole image.
    """
    kp = np.asarray(keypoints, dtype=np.float64)
    if kp.ndim != 2 or kp.shape[0] != 17 or kp.shape[1] not in (2, 3):
        raise AnyDressingError(f"keypoints must be COCO-17, shape [17, 2|3]; got {list(kp.shape)}")
    if slot in ("bag", "other"):
        return (0, 0, width, height)
    shoulders = _valid(kp, (L_SH, R_SH), min_conf)
    limb = max(2.0, abs(shoulders[0, 0] - shoulders[1, 0]) / 6) if len(shoulders) == 2 else 2.0
    if slot == "hat":
        for pair in ((L_EAR, R_EAR), (L_EYE, R_EYE)):
            p = _valid(kp, pair, min_conf)
            if len(p) == 2:
                head = max(2.0, abs(p[0, 0] - p[1, 0]) * (1.1 if pair[0] == L_EAR else 2.2))
                cx, cy = p[:, 0].mean(), p[:, 1].mean()
                return _clip_box(cx - head, cy - 1.6 * head, cx + head, cy, width, height)
        nose = _valid(kp, (NOSE,), min_conf)
        if len(nose):
            cx, cy = nose[0]
            return _clip_box(cx - 2 * limb, cy - 4 * limb, cx + 2 * limb, cy - 0.5 * limb, width, height)
        return None
    if slot not in SLOT_POINTS:
        raise AnyDressingError(f"no pose region for slot {slot!r}; use one of {sorted(SLOT_POINTS) + ['hat', 'bag', 'other']}")
    pts = _valid(kp, SLOT_POINTS[slot], min_conf)
    if len(pts) < 2:
        return None
    x0, y0 = pts.min(axis=0)
    x1, y1 = pts.max(axis=0)
    mx, my = margin * (x1 - x0) + limb, margin * (y1 - y0) + limb
    return _clip_box(x0 - mx, y0 - my, x1 + mx, y1 + my, width, height)


def mask_region(mask: np.ndarray, margin: float = 0.1) -> Optional[Box]:
    """Bounding box of a mask ``[H, W]`` (values > 0.5), grown by ``margin``; None when empty."""
    m = np.asarray(mask) > 0.5
    if not m.any():
        return None
    ys, xs = np.nonzero(m)
    h, w = m.shape
    x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    mx, my = margin * (x1 - x0), margin * (y1 - y0)
    return _clip_box(x0 - mx, y0 - my, x1 + mx, y1 + my, w, h)


def crop_square(image: np.ndarray, box: Box, fill: int = 255) -> np.ndarray:
    """Crop ``image [H, W, 3]`` to ``box`` and pad it to a square with ``fill`` (CLIP centre-crops)."""
    x0, y0, x1, y1 = box
    crop = np.asarray(image)[y0:y1, x0:x1]
    h, w = crop.shape[:2]
    side = max(h, w)
    out = np.full((side, side) + crop.shape[2:], fill, dtype=crop.dtype)
    oy, ox = (side - h) // 2, (side - w) // 2
    out[oy:oy + h, ox:ox + w] = crop
    return out
