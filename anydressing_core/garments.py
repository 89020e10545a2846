"""Garment pictures with numpy/opencv: one normalisation when a garment is made, one placement per encode.

Input images are float arrays in [0, 1] (or uint8) shaped ``[H, W, C]`` with C = 1 (grey), 3 (RGB) or
4 (RGBA; alpha becomes the mask when no mask is given).

* :func:`normalize_garment` runs ONCE, when a garment is made (the Garment node, the diffusers pipeline,
  the trainer's dataset): it checks mode, size and range, finds the mask (given, alpha or automatic),
  crops to the garment and composites it on the plain background.  Nothing in it depends on the size
  the garment is later encoded at.
* :func:`place_garment` puts a normalised garment on the encode canvas: pad to the canvas aspect and
  resize to ``width x height``.
* :func:`prepare_garment` is the two in a row, for one-off use.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

import cv2
import numpy as np

from .errors import AnyDressingError

#: Garment kinds.  The first three are the paper's slots (0 upper, 1 lower, 2 hat) [paper];
#: the rest are additions that trained checkpoints may carry LoRA sets for [choice].
SLOTS: Tuple[str, ...] = ("upper", "lower", "hat", "dress", "shoes", "bag", "other")

#: Smallest garment side we accept: below this there is no texture to transfer.
MIN_SIDE = 16
#: Larger inputs are downscaled before any other work so a 20k-pixel photo cannot exhaust memory.
MAX_SIDE = 4096
#: auto_mask works on a copy at most this large: its morphology kernel grows with the picture, so the
#: cost grows with the 4th power of the side (15 s at 4096 px on 2 cores) [choice: 1024 px is plenty
#: to find a garment's outline].
AUTO_MASK_SIDE = 1024
#: Garments per generation.  Each adds N*L tokens to every self-attention layer (cost and memory
#: grow linearly); the paper shows up to 3-4; beyond 8 garments the per-garment attention mass
#: becomes too small to be useful.
MAX_GARMENTS = 8
#: Plain background the garment is placed on [choice: white, like in-shop photos].
BACKGROUND = 1.0


@dataclass
class Garment:
    """One garment, the record that travels from the Garment node to the attention patch.

    ``image [h, w, 3]`` float32 in [0, 1] and ``mask [h, w]`` are the output of :func:`normalize_garment`
    (cropped to the garment, on the plain background); both may be None where only the garment's kind is
    known (features computed from latents).  ``weight`` scales the garment against the others, ``name``
    labels it in pictures and messages.
    """

    image: Optional[np.ndarray] = None
    slot: str = "upper"
    weight: float = 1.0
    mask: Optional[np.ndarray] = None
    name: str = ""

    def __post_init__(self):
        if self.slot not in SLOTS:
            raise AnyDressingError(f"unknown garment slot {self.slot!r}; use one of {', '.join(SLOTS)}")
        if not (0.0 <= float(self.weight) <= 4.0):
            raise AnyDressingError(f"garment weight {self.weight} is out of range; use 0..4")


@dataclass
class GarmentList:
    """The ``GARMENTS`` wire: an ordered list of garments (chained nodes append)."""

    items: List[Garment] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.items)

    def appended(self, garments: Sequence[Garment]) -> "GarmentList":
        out = GarmentList(list(self.items) + list(garments))
        if len(out) > MAX_GARMENTS:
            raise AnyDressingError(
                f"{len(out)} garments chained; at most {MAX_GARMENTS} are supported (each one adds tokens to every "
                "self-attention layer). Remove some AnyDressingGarment nodes from the chain."
            )
        return out


#: IMAGE values are 0..1.  Slight overshoot (resamplers, upscalers) is clipped; a maximum above this
#: means a 0..255 picture, a minimum below ``-RANGE_SLACK`` a -1..1 one: refused, not silently
#: clipped to a white or black garment [choice].
RANGE_SLACK = 0.5


def to_rgb_alpha(image: np.ndarray, max_side: int = MAX_SIDE) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """Normalise an image to ``(rgb [h, w, 3], alpha [h, w] or None)``, float32 in [0, 1].

    Shape and mode are checked first and a picture larger than ``max_side`` is downscaled BEFORE any
    per-pixel work (range checks, clipping, copies), so a huge input costs one resize, not several
    full-size temporaries.
    """
    img = np.asarray(image)
    if img.ndim == 2:
        img = img[..., None]
    if img.ndim != 3:
        raise AnyDressingError(f"garment image has shape {img.shape}; expected [height, width, channels]")
    h, w, c = img.shape
    if c not in (1, 3, 4):
        raise AnyDressingError(f"garment image has {c} channels; expected 1 (grey), 3 (RGB) or 4 (RGBA)")
    if min(h, w) < MIN_SIDE:
        raise AnyDressingError(
            f"garment image is {w}x{h} pixels; it needs at least {MIN_SIDE}x{MIN_SIDE} to carry any texture. "
            "Connect a larger garment picture."
        )
    if img.dtype == np.bool_ or not (np.issubdtype(img.dtype, np.integer) or np.issubdtype(img.dtype, np.floating)):
        raise AnyDressingError(f"garment image has dtype {img.dtype}; expected float values in 0..1 or uint8")
    scale = 1.0 / 255.0 if img.dtype == np.uint8 else None
    source = img
    if img.dtype not in (np.uint8, np.float32, np.float64):  # what cv2.resize takes as is
        img = img.astype(np.float32)
    img = downscale(img, max_side)
    img = img.astype(np.float32) * scale if scale is not None else img.astype(np.float32, copy=False)
    owned = not np.shares_memory(img, source)  # clip in place only what we allocated ourselves
    if not np.isfinite(img).all():
        raise AnyDressingError("garment image contains NaN or infinite values; re-load the image")
    lo, hi = float(img.min()), float(img.max())
    if hi > 1.0 + RANGE_SLACK or lo < -RANGE_SLACK:
        raise AnyDressingError(
            f"garment image values span {lo:.3g}..{hi:.3g}, but IMAGE values are 0..1"
            + (" (this looks like a 0..255 picture: divide it by 255)" if hi > 1.0 + RANGE_SLACK else
               " (this looks like a -1..1 picture: map it with (x + 1) / 2)")
            + ". Load the garment with LoadImage or convert it before this node."
        )
    img = np.clip(img, 0.0, 1.0, out=img if owned else None)
    if c == 1:
        return np.repeat(img, 3, axis=2), None
    if c == 3:
        return img, None
    return img[..., :3], img[..., 3]


def downscale(img: np.ndarray, max_side: int) -> np.ndarray:
    """``img [H, W, C]`` with its longer side cut to ``max_side`` (area interpolation); C kept."""
    h, w, c = img.shape
    if max(h, w) <= max_side:
        return img
    scale = max_side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    out = cv2.resize(np.ascontiguousarray(img), size, interpolation=cv2.INTER_AREA)
    return out.reshape(size[1], size[0], c)


def fit_mask(mask: np.ndarray, hw: Tuple[int, int]) -> np.ndarray:
    """Bring a mask to the image size; only a pure rescale (same aspect within 2% or 1 px) is accepted."""
    m = np.asarray(mask, dtype=np.float32)
    if m.ndim == 3:
        m = m[..., 0] if m.shape[-1] in (1, 3, 4) else m[0]
    if m.ndim != 2:
        raise AnyDressingError(f"garment mask has shape {np.shape(mask)}; expected [height, width]")
    if not np.isfinite(m).all():
        raise AnyDressingError("garment mask contains NaN or infinite values; connect a 0..1 mask")
    if m.shape == tuple(hw):
        return np.clip(m, 0.0, 1.0)
    # A pure rescale keeps the aspect within 2%, or within one pixel of rounding measured at the smaller
    # of the two sizes (a mask made at another resolution; a thin picture that was downscaled).
    (sh, sw), (bh, bw) = sorted([m.shape, tuple(hw)], key=lambda s: s[0] * s[1])
    if abs(sw - bw * sh / bh) > max(0.02 * sw, 1.0) and abs(sh - bh * sw / bw) > max(0.02 * sh, 1.0):
        raise AnyDressingError(
            f"garment mask is {m.shape[1]}x{m.shape[0]} but the image is {hw[1]}x{hw[0]} (another aspect ratio). "
            "Connect the mask made from this garment image."
        )
    return np.clip(cv2.resize(m, (hw[1], hw[0]), interpolation=cv2.INTER_LINEAR), 0.0, 1.0)


def auto_mask(rgb: np.ndarray, threshold: float = 0.08) -> np.ndarray:
    """Foreground of a garment photographed on a plain background.

    The background colour is the median of the border pixels; pixels farther than ``threshold``
    (RGB distance) are garment.  Holes are closed and specks removed.  If nothing stands out from
    the border (a full-frame texture), the whole image is the garment.  Pictures larger than
    ``AUTO_MASK_SIDE`` are masked on a downscaled copy and the mask is scaled back.
    """
    h, w = rgb.shape[:2]
    if max(h, w) > AUTO_MASK_SIDE:
        small = auto_mask(downscale(rgb, AUTO_MASK_SIDE), threshold)
        return (cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR) > 0.5).astype(np.float32)
    border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]], axis=0)
    bg = np.median(border, axis=0)
    dist = np.sqrt(((rgb - bg) ** 2).sum(axis=2))
    fg = (dist > threshold).astype(np.uint8)
    k = max(1, min(h, w) // 64)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * k + 1, 2 * k + 1))
    fg = cv2.morphologyEx(fg, cv2.MORPH_OPEN, kernel)
    fg = cv2.morphologyEx(fg, cv2.MORPH_CLOSE, kernel)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(fg, connectivity=8)
    if count > 1:
        areas = stats[1:, cv2.CC_STAT_AREA]
        keep = 1 + np.nonzero(areas >= max(16, 0.01 * areas.max()))[0]
        fg = np.isin(labels, keep).astype(np.uint8)
    frac = fg.mean()
    if frac < 0.005 or frac > 0.98:
        return np.ones((h, w), dtype=np.float32)
    # fill interior holes (prints on the garment close to the background colour)
    contours, _ = cv2.findContours(fg, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    filled = np.zeros_like(fg)
    cv2.drawContours(filled, contours, -1, 1, thickness=cv2.FILLED)
    return filled.astype(np.float32)


def mask_bbox(mask: np.ndarray, margin: float = 0.04) -> Tuple[int, int, int, int]:
    """``(y0, y1, x0, x1)`` of the mask's support, widened by ``margin`` of its size."""
    # row and column maxima instead of np.nonzero: no index arrays of every garment pixel (90 MB at 4096 px)
    rows = np.flatnonzero(mask.max(axis=1) > 0.5)
    cols = np.flatnonzero(mask.max(axis=0) > 0.5)
    h, w = mask.shape
    y0, y1, x0, x1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    my, mx = int(round((y1 - y0) * margin)), int(round((x1 - x0) * margin))
    return max(0, y0 - my), min(h, y1 + my), max(0, x0 - mx), min(w, x1 + mx)


def pad_to_aspect(img: np.ndarray, aspect_wh: float, value: float) -> np.ndarray:
    """Centre ``img`` on a canvas of aspect ``width/height`` filled with ``value``."""
    h, w = img.shape[:2]
    if w / h > aspect_wh:
        nh, nw = int(round(w / aspect_wh)), w
    else:
        nh, nw = h, int(round(h * aspect_wh))
    canvas = np.full((nh, nw) + img.shape[2:], value, dtype=img.dtype)
    y, x = (nh - h) // 2, (nw - w) // 2
    canvas[y:y + h, x:x + w] = img
    return canvas


def normalize_garment(
    image: np.ndarray,
    mask: Optional[np.ndarray] = None,
    *,
    label: str = "the garment",
    margin: float = 0.04,
    background: float = BACKGROUND,
) -> Tuple[np.ndarray, np.ndarray]:
    """Check, mask, crop and composite a garment picture; independent of any encode size.

    The mask is ``mask`` when given (resized to the picture if it is a pure rescale), else the picture's
    alpha when it marks something, else :func:`auto_mask`.  The picture is cropped to the mask's support
    (widened by ``margin``) and composited on ``background``.  ``label`` names the garment in errors.

    Returns ``(rgb [h, w, 3], mask [h, w])`` float32 in [0, 1].
    """
    rgb, alpha = to_rgb_alpha(image)  # downscales to MAX_SIDE first, so everything below is bounded
    if mask is not None:
        m = fit_mask(mask, rgb.shape[:2])
        if m.max() <= 0.5:
            raise AnyDressingError(
                f"the mask of {label} is empty (no pixel above 0.5). Connect a mask that covers the garment, leave "
                "the mask unconnected (automatic mask), or, for LoadImage's mask of a picture without transparency, "
                "disconnect it."
            )
    elif alpha is not None and alpha.min() < 0.99 and alpha.max() > 0.5:
        m = alpha  # transparency marks the garment; an opaque alpha says nothing
    else:
        m = auto_mask(rgb)
    y0, y1, x0, x1 = mask_bbox(m, margin)
    rgb, m = rgb[y0:y1, x0:x1], np.ascontiguousarray(m[y0:y1, x0:x1])
    soft = m[..., None]
    out = rgb * soft
    out += background * (1.0 - soft)  # in place: the same values as rgb * soft + background * (1 - soft)
    return out, m


def check_canvas(width: int, height: int, multiple: int = 8) -> None:
    if width % multiple or height % multiple or width < multiple or height < multiple:
        raise AnyDressingError(f"garment size {width}x{height} must be a positive multiple of {multiple}")


def place_garment(rgb: np.ndarray, mask: np.ndarray, width: int, height: int, *, multiple: int = 8,
                  background: float = BACKGROUND) -> Tuple[np.ndarray, np.ndarray]:
    """A normalised garment centred on a ``width x height`` canvas of the plain background.

    Returns ``(rgb [height, width, 3], mask [height, width])`` float32 in [0, 1].
    """
    check_canvas(width, height, multiple)
    aspect = width / height
    rgb = pad_to_aspect(rgb, aspect, background)
    m = pad_to_aspect(mask, aspect, 0.0)
    interp = cv2.INTER_AREA if rgb.shape[0] > height else cv2.INTER_CUBIC
    rgb = np.clip(cv2.resize(rgb, (width, height), interpolation=interp), 0.0, 1.0)
    m = np.clip(cv2.resize(m, (width, height), interpolation=cv2.INTER_LINEAR), 0.0, 1.0)
    return rgb.astype(np.float32), m.astype(np.float32)


def prepare_garment(
    image: np.ndarray,
    mask: Optional[np.ndarray] = None,
    width: int = 384,
    height: int = 512,
    *,
    multiple: int = 8,
    margin: float = 0.04,
    background: float = BACKGROUND,
) -> Tuple[np.ndarray, np.ndarray]:
    """:func:`normalize_garment` then :func:`place_garment`: ``(rgb [height, width, 3], mask [height, width])``."""
    check_canvas(width, height, multiple)  # before any per-pixel work
    rgb, m = normalize_garment(image, mask, margin=margin, background=background)
    return place_garment(rgb, m, width, height, multiple=multiple, background=background)
