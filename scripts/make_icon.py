"""Draw the pack's registry icon: a T-shirt on a hanger, its body in three garment colours.

The registry shows the picture that ``[tool.comfy] Icon`` in pyproject.toml points at (PNG, at most
800x400). The picture is a pure function of ``size``, so rerunning this script reproduces the committed
file::

    python scripts/make_icon.py --out docs/icon.png [--size 256]

Drawn at 4x the size and area-downsampled, so edges are anti-aliased.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import cv2
import numpy as np

log = logging.getLogger(__name__)

SUPERSAMPLE = 4
#: Background gradient, top to bottom (RGB).
SKY_TOP = (34, 48, 92)
SKY_BOTTOM = (20, 110, 130)
HANGER = (236, 236, 240)
#: The three bands of the T-shirt body, left to right (RGB): one colour per garment.
BANDS = ((232, 84, 72), (246, 190, 60), (96, 178, 232))
OUTLINE = (24, 28, 44)

# The T-shirt outline on a unit square (x right, y down), clockwise from the left shoulder.
SHIRT = np.array([
    (0.36, 0.34), (0.45, 0.31), (0.50, 0.36), (0.55, 0.31), (0.64, 0.34),  # collar
    (0.82, 0.45), (0.75, 0.56), (0.68, 0.52),                              # right sleeve
    (0.68, 0.82), (0.32, 0.82),                                            # hem
    (0.32, 0.52), (0.25, 0.56), (0.18, 0.45),                              # left sleeve
])


def draw_icon(size: int = 256) -> np.ndarray:
    """The icon as an RGBA uint8 array ``[size, size, 4]``; the corners outside a rounded square are clear."""
    big = size * SUPERSAMPLE
    ramp = np.linspace(0.0, 1.0, big, dtype=np.float32)[:, None, None]
    rgb = (1 - ramp) * np.array(SKY_TOP, np.float32) + ramp * np.array(SKY_BOTTOM, np.float32)
    rgb = np.ascontiguousarray(np.broadcast_to(rgb, (big, big, 3)))

    def px(points) -> np.ndarray:
        return np.round(np.asarray(points) * big).astype(np.int32)

    line = max(1, big // 64)
    # hanger: a hook above a triangle whose base rests on the shoulders
    cv2.ellipse(rgb, tuple(px((0.50, 0.17))), tuple(px((0.045, 0.045))), 0, 180, 400, HANGER, line, cv2.LINE_AA)
    cv2.polylines(rgb, [px([(0.50, 0.215), (0.50, 0.25), (0.30, 0.36), (0.70, 0.36), (0.50, 0.25)])],
                  False, HANGER, line, cv2.LINE_AA)

    shirt = np.zeros((big, big), np.uint8)
    cv2.fillPoly(shirt, [px(SHIRT)], 255, cv2.LINE_AA)
    band_of_column = np.minimum((np.arange(big) / big - 0.18) / (0.64 / len(BANDS)), len(BANDS) - 1)
    band_colours = np.array(BANDS, np.float32)[np.clip(band_of_column, 0, None).astype(int)]
    alpha = (shirt.astype(np.float32) / 255)[..., None]
    rgb = (1 - alpha) * rgb + alpha * band_colours[None, :, :]
    cv2.polylines(rgb, [px(SHIRT)], True, OUTLINE, line, cv2.LINE_AA)

    corners = np.zeros((big, big), np.uint8)
    radius = big // 6
    cv2.rectangle(corners, (radius, 0), (big - 1 - radius, big - 1), 255, -1)
    cv2.rectangle(corners, (0, radius), (big - 1, big - 1 - radius), 255, -1)
    for cx in (radius, big - 1 - radius):
        for cy in (radius, big - 1 - radius):
            cv2.circle(corners, (cx, cy), radius, 255, -1, cv2.LINE_AA)

    rgba = np.concatenate([rgb, corners[..., None].astype(np.float32)], axis=-1)
    small = cv2.resize(rgba, (size, size), interpolation=cv2.INTER_AREA)
    return np.clip(np.round(small), 0, 255).astype(np.uint8)


def write_icon(path: Path, size: int = 256) -> Path:
    """Draw the icon and save it as a PNG at ``path`` (folders are created)."""
    rgba = draw_icon(size)
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, data = cv2.imencode(".png", cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGRA), [cv2.IMWRITE_PNG_COMPRESSION, 9])
    if not ok:
        raise RuntimeError(f"OpenCV could not encode the icon as PNG for {path}")
    path.write_bytes(data.tobytes())
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "icon.png",
                        help="where to write the PNG (default: docs/icon.png in this repository)")
    parser.add_argument("--size", type=int, default=256, help="width and height in pixels (the registry takes "
                        "at most 800x400)")
    args = parser.parse_args(argv)
    if not 16 <= args.size <= 400:
        parser.error(f"--size must be between 16 and 400 pixels (the registry shows at most 800x400), got {args.size}")
    print(write_icon(args.out, args.size))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
