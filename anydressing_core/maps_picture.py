"""The garment attention-map picture: where each garment lands, readable at a glance.

One row per garment: its thumbnail (or a swatch of its colour), its map in its own colour, and a colour
scale with the values at both ends. Every row uses one scale, from the lowest to the highest share over all
garments [choice]: rows compare with each other, and shares that all sit near 1/N (the usual case when no
garment dominates) still show where they differ, where a 0..max scale would paint every map flat.
A map runs from near black (lowest share) through the garment's colour to a pale tint of it (highest), so
its brightness grows with the share whatever the hue. Labels sit on a bar of the garment's colour in black
or white, whichever contrasts more (WCAG 2 contrast ratio).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from .errors import AnyDressingError

# distinct, colour-blind-friendlier hues (Tableau 10 order), RGB 0..1; at most 8 garments are allowed
PALETTE = np.array([(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
                    (140, 86, 75), (227, 119, 194), (188, 189, 34)], np.float32) / 255.0
DARK, PAGE, BOX = 0.06, 1.0, 0.92  # map floor, page background, thumbnail box (grey levels)
FONT = cv2.FONT_HERSHEY_SIMPLEX


def relative_luminance(rgb) -> np.ndarray:
    """WCAG 2 relative luminance of sRGB colours in 0..1 (``[..., 3]`` -> ``[...]``)."""
    c = np.asarray(rgb, np.float64)
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    return linear @ np.array([0.2126, 0.7152, 0.0722])


def contrast_ratio(a, b) -> float:
    """WCAG 2 contrast ratio of two colours, 1 (same) .. 21 (black on white)."""
    la, lb = float(relative_luminance(a)), float(relative_luminance(b))
    return (max(la, lb) + 0.05) / (min(la, lb) + 0.05)


def text_colour(background) -> np.ndarray:
    """Black or white, whichever reads better on ``background``."""
    black, white = np.zeros(3, np.float32), np.ones(3, np.float32)
    return black if contrast_ratio(black, background) >= contrast_ratio(white, background) else white


def ramp(values: np.ndarray, hue: np.ndarray) -> np.ndarray:
    """``values [H, W]`` in 0..1 -> RGB ``[H, W, 3]``: near black -> ``hue`` (at 0.5) -> pale tint of it."""
    t = np.clip(values, 0.0, 1.0)[..., None]
    low = DARK + (hue - DARK) * (t / 0.5)
    high = hue + (0.85 + 0.15 * hue - hue) * ((t - 0.5) / 0.5)
    return np.where(t <= 0.5, low, high).astype(np.float32)


@dataclass
class MapsPicture:
    """The picture and where things are in it (boxes are ``(x0, y0, x1, y1)`` pixel bounds, end exclusive)."""

    image: np.ndarray  # [H, W, 3] float32 in 0..1
    low: float  # share at the bottom of the scale
    high: float  # share at the top
    labels: list = field(default_factory=list)  # one box per garment label bar
    maps: list = field(default_factory=list)  # one box per map panel
    thumbnails: list = field(default_factory=list)  # one box per thumbnail box
    scales: list = field(default_factory=list)  # one box per colour-scale bar


def _u8(rgb) -> np.ndarray:
    return np.clip(np.round(np.asarray(rgb, np.float32) * 255.0), 0, 255).astype(np.uint8)


def _put_text(canvas, text, x, y_base, scale, colour, thickness):
    """Anti-aliased text on the uint8 canvas (OpenCV draws text on 8-bit pictures only)."""
    cv2.putText(canvas, text, (int(x), int(y_base)), FONT, scale, tuple(int(c) for c in _u8(colour)), thickness,
                cv2.LINE_AA)


def _fit(picture: np.ndarray, height: int, width: int) -> np.ndarray:
    """``picture`` resized to fit ``height x width`` (aspect kept), centred on the thumbnail box colour."""
    pic = np.asarray(picture, np.float32)
    if pic.ndim == 2:
        pic = np.repeat(pic[..., None], 3, axis=2)
    if pic.ndim != 3 or pic.shape[2] not in (3, 4) or min(pic.shape[:2]) < 1:
        raise AnyDressingError(f"a garment thumbnail must be an RGB picture [H, W, 3] in 0..1; got shape "
                               f"{pic.shape}")
    pic = np.clip(pic[..., :3], 0.0, 1.0)
    scale = min(height / pic.shape[0], width / pic.shape[1])
    h, w = max(1, round(pic.shape[0] * scale)), max(1, round(pic.shape[1] * scale))
    box = np.full((height, width, 3), BOX, np.float32)
    y0, x0 = (height - h) // 2, (width - w) // 2
    box[y0:y0 + h, x0:x0 + w] = cv2.resize(pic, (w, h), interpolation=cv2.INTER_AREA)
    return box


def render_maps_picture(maps, names, thumbnails=None, panel_height: int | None = None) -> MapsPicture:
    """Render the attention-map picture.

    ``maps``: ``[N, H, W]`` shares in 0..1 (one map per garment, chain order). ``names``: N labels (missing
    ones become numbers). ``thumbnails``: optional N garment pictures, RGB ``[h, w, 3]`` floats in 0..1
    (None entries allowed). ``panel_height``: map height in pixels (default: H clamped to 160..320).
    """
    maps = np.asarray(maps, np.float32)
    if maps.ndim != 3 or maps.shape[0] < 1 or min(maps.shape[1:]) < 1:
        raise AnyDressingError(f"attention maps must be [N, H, W] with N >= 1; got shape {maps.shape}")
    if not np.isfinite(maps).all() or maps.min() < -1e-4 or maps.max() > 1 + 1e-4:
        raise AnyDressingError("attention maps must hold finite shares in 0..1")
    n, map_h, map_w = maps.shape
    thumbnails = list(thumbnails or []) + [None] * n
    names = [str(names[i]) if i < len(names) else str(i + 1) for i in range(n)]
    ph = int(panel_height or min(max(map_h, 160), 320))
    pw = max(1, round(ph * map_w / map_h))
    bar_h = max(18, round(ph * 0.12))
    font = bar_h * 0.55 / 22.0  # Hershey simplex capitals are about 22 px tall at scale 1
    thick = max(1, round(font * 1.6))
    gap = max(6, ph // 24)
    scale_w = max(10, ph // 14)
    low, high = float(maps.min()), float(maps.max())
    spread = high - low
    tick = f"{high:.3f}"
    tick_w = cv2.getTextSize(tick, FONT, font, thick)[0][0]
    row_w = gap + ph + gap + pw + gap + scale_w + gap + tick_w + gap
    header_h = bar_h + gap
    row_h = bar_h + ph + gap
    image = np.full((header_h + n * row_h, row_w, 3), _u8(PAGE), np.uint8)
    picture = MapsPicture(image, low, high)
    header = "share of attention per garment, one scale for all rows"
    header_font = min(font * 0.9, font * (row_w - 2 * gap) / cv2.getTextSize(header, FONT, font, thick)[0][0])
    _put_text(image, header, gap, bar_h * 0.8, header_font, (0, 0, 0), thick)

    for i in range(n):
        hue = PALETTE[i % len(PALETTE)]
        top = header_h + i * row_h
        # label bar across the row, in the garment's colour
        image[top:top + bar_h, gap:row_w - gap] = _u8(hue)
        _put_text(image, f"{i + 1}. {names[i]}", 2 * gap, top + bar_h * 0.75, font, text_colour(hue), thick)
        picture.labels.append((gap, top, row_w - gap, top + bar_h))
        y0 = top + bar_h
        x = gap
        if thumbnails[i] is not None:
            image[y0:y0 + ph, x:x + ph] = _u8(_fit(thumbnails[i], ph, ph))
        else:
            image[y0:y0 + ph, x:x + ph] = _u8(BOX + (hue - BOX) * 0.35)
        picture.thumbnails.append((x, y0, x + ph, y0 + ph))
        x += ph + gap
        values = (maps[i] - low) / spread if spread > 1e-6 else np.full_like(maps[i], 0.5)
        values = cv2.resize(values, (pw, ph), interpolation=cv2.INTER_LINEAR)
        image[y0:y0 + ph, x:x + pw] = _u8(ramp(values, hue))
        picture.maps.append((x, y0, x + pw, y0 + ph))
        x += pw + gap
        column = np.linspace(1.0, 0.0, ph, dtype=np.float32)[:, None].repeat(scale_w, axis=1)
        image[y0:y0 + ph, x:x + scale_w] = _u8(ramp(column, hue))
        picture.scales.append((x, y0, x + scale_w, y0 + ph))
        x += scale_w + gap
        _put_text(image, tick, x, y0 + bar_h * 0.6, font, (0, 0, 0), thick)
        _put_text(image, f"{low:.3f}", x, y0 + ph - 2, font, (0, 0, 0), thick)
    picture.image = image.astype(np.float32) / 255.0
    return picture
