"""Procedural multi-garment dressing data: a mannequin wearing up to three garments.

Every sample is a pure function of ``(seed, index, size)`` and the options: a person image, each
garment's in-shop image on a plain background, the garment's mask on the person image and on its own
image, a caption and COCO-17 keypoints.  Garments (upper, lower, hat) come from a family of shapes,
colours and patterns (plain, stripes, checks, dots, a small printed mark), all distinct within one
sample, so a metric can tell which garment a region copied.  Written in the JSONL manifest of
docs/DESIGN.md::

    python -m anydressing_core.synthetic --out DIR --count N --size S [--seed 0] [--val 0.1]
        [--swatch] [--pattern-scale 1.0]

Options (docs/BENCHMARK.md says which claim each one is for):

* ``swatch``: the in-shop picture is a square swatch of the garment's fabric, the same frame for
  every kind, so the picture alone does not tell which slot a garment fills.
* ``pattern_scale``: multiplies the pattern period (stripes, checks, dots, prints), e.g. 2 for
  textures a 64-pixel image can hold.

With random garments (``slots=None``, what the dataset writer uses) a garment that would cover
less than ``MIN_GARMENT_FRACTION`` of the person image (a hat at 16-24 pixels) is not drawn: the
trainer refuses such garments, so the data and its pre-flight check agree at every size.

[choice] Everything is drawn at 4x the size and area-downsampled, so edges and stripes are
anti-aliased like photographs; masks are the downsampled coverage thresholded at 0.5.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np

log = logging.getLogger(__name__)

SLOTS = ("upper", "lower", "hat")
SHAPES = {
    "upper": ("t-shirt", "long-sleeve top", "tank top"),
    "lower": ("trousers", "shorts", "skirt"),
    "hat": ("cap", "beanie", "top hat"),
}
PATTERNS = ("plain", "stripes", "checks", "dots", "print")
PATTERN_WORDS = {"plain": "", "stripes": "striped ", "checks": "checked ", "dots": "polka-dot ", "print": ""}
MARKS = ("star", "circle", "square", "triangle")
#: Named colours (RGB); distinct enough that a mean colour identifies them.
PALETTE = {
    "red": (200, 30, 40), "orange": (240, 130, 20), "yellow": (240, 210, 40), "green": (40, 150, 60),
    "teal": (20, 140, 140), "blue": (40, 70, 200), "navy": (25, 30, 90), "purple": (120, 50, 160),
    "pink": (240, 120, 170), "brown": (110, 70, 30), "black": (25, 25, 25), "white": (245, 245, 245),
}
SKIN = ((235, 200, 170), (200, 150, 110), (150, 100, 70), (95, 65, 45))
#: COCO-17 keypoint order (what pose-region metrics consume).
COCO17 = ("nose", "l_eye", "r_eye", "l_ear", "r_ear", "l_shoulder", "r_shoulder", "l_elbow", "r_elbow",
          "l_wrist", "r_wrist", "l_hip", "r_hip", "l_knee", "r_knee", "l_ankle", "r_ankle")
LIMBS = ((5, 7), (7, 9), (6, 8), (8, 10), (11, 13), (13, 15), (12, 14), (14, 16), (5, 6), (11, 12), (5, 11),
         (6, 12), (0, 5), (0, 6))
SUPER = 4  # supersampling factor
XS = 1.4  # [choice] horizontal stretch of the mannequin so garments fill a square canvas
MIN_COUNT, MAX_COUNT = 100, 100_000
#: the trainer's default ``data.min_crop_fraction``: a garment covering less of the person image is refused
MIN_GARMENT_FRACTION = 0.01
HEAD_R = 0.075  # [choice] a doll-like head, so a hat covers over 1% of the picture at every scale
PERIODS = (0.06, 0.08)  # pattern period, fraction of the canvas height; the same for every slot


@dataclass
class GarmentSpec:
    """What a garment looks like; the caption and the confusion metric read it."""

    slot: str
    shape: str
    colour: str
    pattern: str
    accent: str  # second colour of stripes/checks/dots/print
    period: float  # pattern period, fraction of the canvas height
    vertical: bool = False  # stripe orientation
    mark: str = "star"

    def words(self) -> str:
        text = f"{self.colour} {PATTERN_WORDS[self.pattern]}{self.shape}"
        if self.pattern == "print":
            text += f" with a {self.accent} {self.mark} print"
        elif self.pattern != "plain":
            text = f"{self.colour} and {self.accent} {PATTERN_WORDS[self.pattern]}{self.shape}"
        return text


@dataclass
class Garment:
    spec: GarmentSpec
    image: np.ndarray  # [S, S, 3] uint8 in-shop image on a plain background
    garment_mask: np.ndarray  # [S, S] bool, the garment in its own image
    mask: np.ndarray  # [S, S] bool, where the garment is visible on the person image


@dataclass
class Sample:
    index: int
    person: np.ndarray  # [S, S, 3] uint8
    garments: List[Garment]
    caption: str
    keypoints: np.ndarray  # [17, 2] float (x, y) pixels, COCO-17 order
    background: Tuple[int, int, int] = (255, 255, 255)
    extra: Dict[str, object] = field(default_factory=dict)


def _rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(index), 0xAD])


def _skeleton(rng: Optional[np.random.Generator]) -> Dict[str, object]:
    """Body geometry in unit coordinates (x, y in [0, 1] of the canvas); ``rng=None`` = canonical."""
    j = (lambda lo, hi: rng.uniform(lo, hi)) if rng is not None else (lambda lo, hi: (lo + hi) / 2)
    cx, s = 0.5 + j(-0.06, 0.06), j(0.88, 1.0)
    top = 0.04 + j(0.0, 0.04)
    y = lambda v: top + v * s  # noqa: E731
    x = lambda v: cx + v * s * XS  # noqa: E731
    arm = np.radians(j(12, 40)), np.radians(j(12, 40))
    fore = np.radians(j(-10, 20)), np.radians(j(-10, 20))
    spread = j(0.0, 0.05)
    g = {"head": (x(0.0), y(0.095)), "head_r": HEAD_R * s, "neck": (x(0.0), y(0.17)),
         "shoulders": ((x(0.105), y(0.21)), (x(-0.105), y(0.21))),
         "hips": ((x(0.075), y(0.50)), (x(-0.075), y(0.50))), "limb_w": 0.065 * s, "leg_w": 0.085 * s}
    elbows, wrists = [], []
    for side, sign in ((0, 1), (1, -1)):
        sx, sy = g["shoulders"][side]
        a = arm[side]
        ex, ey = sx + sign * np.sin(a) * 0.15 * s * XS, sy + np.cos(a) * 0.15 * s
        b = a + fore[side]
        elbows.append((ex, ey))
        wrists.append((ex + sign * np.sin(b) * 0.14 * s * XS, ey + np.cos(b) * 0.14 * s))
    knees, ankles = [], []
    for side, sign in ((0, 1), (1, -1)):
        hx, hy = g["hips"][side]
        knees.append((hx + sign * spread * 0.5 * XS, y(0.71)))
        ankles.append((hx + sign * spread * XS, y(0.92)))
    g.update(elbows=elbows, wrists=wrists, knees=knees, ankles=ankles, scale=s)
    return g


def _keypoints(g) -> np.ndarray:
    hx, hy = g["head"]
    r = g["head_r"]
    pts = [(hx, hy + 0.2 * r), (hx + 0.35 * r, hy - 0.1 * r), (hx - 0.35 * r, hy - 0.1 * r),
           (hx + 0.9 * r, hy), (hx - 0.9 * r, hy)]
    for name in ("shoulders", "elbows", "wrists", "hips", "knees", "ankles"):
        pts += [g[name][0], g[name][1]]
    return np.asarray(pts, dtype=np.float64)


def _px(p, n) -> Tuple[int, int]:
    return int(round(p[0] * n)), int(round(p[1] * n))


def _line(img, a, b, w, n, value=255):
    cv2.line(img, _px(a, n), _px(b, n), value, max(1, int(round(w * n))), lineType=cv2.LINE_8)
    cv2.circle(img, _px(b, n), max(1, int(round(w * n / 2))), value, -1)


def _shape_mask(slot: str, shape: str, g, n: int) -> Tuple[np.ndarray, Tuple[float, float]]:
    """Coverage of one garment on a hi-res canvas ``[n, n]`` uint8 and its print anchor (unit xy)."""
    m = np.zeros((n, n), np.uint8)
    (lsx, lsy), (rsx, rsy) = g["shoulders"]
    (lhx, lhy), (rhx, rhy) = g["hips"]
    if slot == "upper":
        inset = 0.03 * g["scale"] if shape == "tank top" else 0.0
        lift = 0.015 * g["scale"]
        poly = [(lsx - inset, lsy - lift), (rsx + inset, rsy - lift), (rhx - 0.01, rhy + 0.02), (lhx + 0.01, lhy + 0.02)]
        cv2.fillPoly(m, [np.array([_px(p, n) for p in poly], np.int32)], 255)
        for side in (0, 1):
            s, e, w = g["shoulders"][side], g["elbows"][side], g["limb_w"] * 1.25
            if shape == "t-shirt":
                _line(m, s, ((s[0] + e[0]) / 2, (s[1] + e[1]) / 2), w, n)
            elif shape == "long-sleeve top":
                _line(m, s, e, w, n)
                _line(m, e, g["wrists"][side], w * 0.9, n)
        anchor = ((lsx + rsx) / 2, lsy + 0.09 * g["scale"])
    elif slot == "lower":
        waist = lhy - 0.02 * g["scale"]
        if shape == "skirt":
            kn = g["knees"]
            poly = [(lhx + 0.005, waist), (rhx - 0.005, waist), (kn[1][0] - 0.05 * g["scale"], kn[1][1] - 0.02),
                    (kn[0][0] + 0.05 * g["scale"], kn[0][1] - 0.02)]
            cv2.fillPoly(m, [np.array([_px(p, n) for p in poly], np.int32)], 255)
            anchor = ((lhx + rhx) / 2, (waist + kn[0][1]) / 2)
        else:
            poly = [(lhx + 0.02, waist), (rhx - 0.02, waist), (rhx - 0.02, lhy + 0.06), (lhx + 0.02, lhy + 0.06)]
            cv2.fillPoly(m, [np.array([_px(p, n) for p in poly], np.int32)], 255)
            for side in (0, 1):
                h, k = g["hips"][side], g["knees"][side]
                if shape == "shorts":
                    _line(m, h, (h[0] + 0.55 * (k[0] - h[0]), h[1] + 0.55 * (k[1] - h[1])), g["leg_w"] * 1.1, n)
                else:
                    _line(m, h, k, g["leg_w"] * 1.05, n)
                    _line(m, k, g["ankles"][side], g["leg_w"] * 0.95, n)
            anchor = (g["hips"][0][0], (lhy + g["knees"][0][1]) / 2 - 0.02)
    elif slot == "hat":
        (hx, hy), r = g["head"], g["head_r"]
        brim = 0.35 * r
        if shape == "cap":
            cv2.ellipse(m, _px((hx, hy - 0.1 * r), n), (int(r * 1.25 * n), int(r * 1.2 * n)), 0, 180, 360, 255, -1)
            _line(m, (hx - 1.2 * r, hy - 0.1 * r), (hx + 2.0 * r, hy - 0.1 * r), brim, n)
            anchor = (hx, hy - 0.65 * r)
        elif shape == "beanie":
            cv2.ellipse(m, _px((hx, hy + 0.05 * r), n), (int(r * 1.25 * n), int(r * 1.45 * n)), 0, 180, 360, 255, -1)
            anchor = (hx, hy - 0.7 * r)
        else:
            box = [(hx - 0.85 * r, hy - 1.6 * r), (hx + 0.85 * r, hy - 0.45 * r)]
            cv2.rectangle(m, _px(box[0], n), _px(box[1], n), 255, -1)
            _line(m, (hx - 1.5 * r, hy - 0.45 * r), (hx + 1.5 * r, hy - 0.45 * r), brim, n)
            anchor = (hx, hy - 1.0 * r)
    else:
        raise ValueError(f"unknown synthetic slot {slot!r}; use one of {SLOTS}")
    return m, anchor


def _texture(spec: GarmentSpec, n: int, anchor, scale: float) -> np.ndarray:
    """Pattern image ``[n, n, 3]`` uint8; the pattern is locked to the garment's anchor and scale."""
    base, acc = np.array(PALETTE[spec.colour], np.uint8), np.array(PALETTE[spec.accent], np.uint8)
    img = np.empty((n, n, 3), np.uint8)
    img[:] = base
    period = spec.period * scale * n
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32)
    ax, ay = anchor[0] * n, anchor[1] * n
    u, v = (xx - ax) / period, (yy - ay) / period
    if spec.pattern == "stripes":
        sel = (np.floor(u if spec.vertical else v) % 2) == 1
        img[sel] = acc
    elif spec.pattern == "checks":
        img[((np.floor(u) + np.floor(v)) % 2) == 1] = acc
    elif spec.pattern == "dots":
        img[((u - np.round(u)) ** 2 + (v - np.round(v)) ** 2) < 0.28 ** 2] = acc
    elif spec.pattern == "print":
        r = 0.55 * period
        c = (int(ax), int(ay))
        if spec.mark == "circle":
            cv2.circle(img, c, int(r), acc.tolist(), -1)
        elif spec.mark == "square":
            cv2.rectangle(img, (int(ax - r), int(ay - r)), (int(ax + r), int(ay + r)), acc.tolist(), -1)
        else:
            k = 5 if spec.mark == "star" else 3
            ang = np.linspace(-np.pi / 2, 1.5 * np.pi, 2 * k if k == 5 else k, endpoint=False)
            rad = np.where(np.arange(ang.size) % 2 == 0, r * 1.2, r * 0.5) if k == 5 else np.full(ang.size, r * 1.2)
            pts = np.stack([ax + rad * np.cos(ang), ay + rad * np.sin(ang)], 1).astype(np.int32)
            cv2.fillPoly(img, [pts], acc.tolist())
    return img


def _down(img: np.ndarray, size: int) -> np.ndarray:
    return cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)


def _specs(rng, slots: Sequence[str], pattern_scale: float = 1.0) -> List[GarmentSpec]:
    names = list(PALETTE)
    colours = rng.choice(len(names), size=len(slots), replace=False)
    used = {names[i] for i in colours}
    specs = []
    for slot, ci in zip(slots, colours):
        pattern = PATTERNS[rng.integers(len(PATTERNS))]
        accents = [c for c in names if c not in used]
        accent = accents[rng.integers(len(accents))]
        period = float(rng.choice(PERIODS)) * pattern_scale
        specs.append(GarmentSpec(slot, SHAPES[slot][rng.integers(3)], names[ci], pattern, accent, period,
                                 bool(rng.integers(2)), MARKS[rng.integers(len(MARKS))]))
    return specs


def _pick_slots(rng) -> Tuple[str, ...]:
    while True:
        picked = tuple(s for s, p in zip(SLOTS, (0.9, 0.85, 0.4)) if rng.random() < p)
        if picked:
            return picked


def _caption(specs: Sequence[GarmentSpec]) -> str:
    parts = [s.words() for s in specs]
    body = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return f"a mannequin wearing {'an' if body[0] in 'aeiou' else 'a'} {body}"


def _in_shop(spec: GarmentSpec, size: int, n: int, rgb_bg, swatch: bool = False) -> Tuple[np.ndarray, np.ndarray]:
    """The garment alone, centred with a 10% margin on a plain background: image, foreground mask.

    ``swatch``: a square of the fabric instead, its pattern at the scale it has on the person, so
    every kind of garment looks alike apart from its colours and pattern.
    """
    g = _skeleton(None)
    if swatch:
        cover = np.zeros((n, n), np.uint8)
        cover[n // 10:n - n // 10, n // 10:n - n // 10] = 255
        tex = _texture(spec, n, (0.5, 0.5), g["scale"])
    else:
        cover, anchor = _shape_mask(spec.slot, spec.shape, g, n)
        tex = _texture(spec, n, anchor, g["scale"])
        ys, xs = np.nonzero(cover)
        cy, cx = (ys.min() + ys.max()) / 2, (xs.min() + xs.max()) / 2
        half = max(ys.max() - ys.min(), xs.max() - xs.min()) / 2 / 0.8
        # affine zoom: crop square around the garment, resize to the hi-res canvas
        m = np.float32([[n / (2 * half), 0, n / 2 - cx * n / (2 * half)],
                        [0, n / (2 * half), n / 2 - cy * n / (2 * half)]])
        cover = cv2.warpAffine(cover, m, (n, n), flags=cv2.INTER_NEAREST)
        tex = cv2.warpAffine(tex, m, (n, n), flags=cv2.INTER_NEAREST)
    img = np.empty((n, n, 3), np.uint8)
    img[:] = rgb_bg
    img[cover > 0] = tex[cover > 0]
    return _down(img, size), _down(cover, size) >= 128


def render_sample(index: int, size: int = 64, seed: int = 0, slots: Optional[Sequence[str]] = None, *,
                  swatch: bool = False, pattern_scale: float = 1.0) -> Sample:
    """One sample, a pure function of ``(seed, index, size, slots)`` and the options.

    ``slots`` fixes which garments the mannequin wears (in the order given, drawn at any size);
    default: a random non-empty subset of upper (90%), lower (85%), hat (40%), without garments that
    would cover less than ``MIN_GARMENT_FRACTION`` of the image (an upper one takes the place of a
    lone hat that is too small).  ``swatch`` and ``pattern_scale``: see the module docstring; the
    person image does not depend on ``swatch``.
    """
    if size < 16 or size > 1024:
        raise ValueError(f"synthetic size {size} is out of range; use 16..1024 pixels")
    if not 0.25 <= pattern_scale <= 8.0:
        raise ValueError(f"pattern_scale {pattern_scale} is out of range; use 0.25..8")
    rng = _rng(seed, index)
    chosen = tuple(slots) if slots is not None else _pick_slots(rng)
    for s in chosen:
        if s not in SLOTS:
            raise ValueError(f"unknown synthetic slot {s!r}; use some of {SLOTS}")
    specs = _specs(rng, chosen, pattern_scale)
    g = _skeleton(rng)
    look = {"bg": tuple(int(v) for v in rng.integers(190, 250, size=3)), "skin": SKIN[rng.integers(len(SKIN))]}
    sample = _draw(index, specs, g, size, look, swatch)
    if slots is None:
        kept = [gar.spec for gar in sample.garments if gar.mask.mean() >= MIN_GARMENT_FRACTION]
        if len(kept) < len(specs):
            sample = _draw(index, kept or _specs(rng, ("upper",), pattern_scale), g, size, look, swatch)
    return sample


def _draw(index: int, specs: Sequence[GarmentSpec], g, size: int, look, swatch: bool) -> Sample:
    """Render the person wearing ``specs`` on skeleton ``g`` and every garment's in-shop picture."""
    n = size * SUPER
    img = np.empty((n, n, 3), np.uint8)
    img[:] = look["bg"]
    body = np.zeros((n, n), np.uint8)
    kp = _keypoints(g)
    for a, b in LIMBS[:8]:
        w = g["limb_w"] if a < 11 else g["leg_w"]
        _line(body, (kp[a][0], kp[a][1]), (kp[b][0], kp[b][1]), w, n)
    (lsx, lsy), (rsx, rsy) = g["shoulders"]
    (lhx, lhy), (rhx, rhy) = g["hips"]
    torso = [(lsx, lsy), (rsx, rsy), (rhx, rhy), (lhx, lhy)]
    cv2.fillPoly(body, [np.array([_px(p, n) for p in torso], np.int32)], 255)
    _line(body, g["neck"], g["head"], g["limb_w"], n)
    cv2.circle(body, _px(g["head"], n), int(g["head_r"] * n), 255, -1)
    img[body > 0] = look["skin"]
    draw = ("lower", "upper", "hat")  # the top is worn over the waistband; the hat last
    order = sorted(range(len(specs)), key=lambda i: draw.index(specs[i].slot))
    covers = {}
    for i in order:
        cover, anchor = _shape_mask(specs[i].slot, specs[i].shape, g, n)
        tex = _texture(specs[i], n, anchor, g["scale"])
        img[cover > 0] = tex[cover > 0]
        covers[i] = cover > 0
    cov = {}
    for pos, i in enumerate(order):
        v = covers[i].copy()
        for later in order[pos + 1:]:
            v &= ~covers[later]
        cov[i] = _down(v.astype(np.float32), size)
    # a pixel belongs to the garment covering most of it, if that covers at least half (disjoint masks)
    stack = np.stack([cov[i] for i in range(len(specs))])
    best = stack.argmax(0)
    visible = {i: (best == i) & (stack[i] >= 0.5) for i in range(len(specs))}
    garments = []
    for i, spec in enumerate(specs):
        shop, fg = _in_shop(spec, size, n, (255, 255, 255), swatch)
        garments.append(Garment(spec, shop, fg, visible[i]))
    return Sample(index, _down(img, size), garments, _caption(specs), kp * size, look["bg"])


def in_shop_picture(spec: GarmentSpec, size: int, swatch: bool = False) -> Tuple[np.ndarray, np.ndarray]:
    """A garment's in-shop picture ``[S, S, 3]`` uint8 on white and its mask ``[S, S]`` bool, as
    :func:`render_sample` draws it (e.g. the swatch view of a sample's garments without redrawing the person)."""
    return _in_shop(spec, size, size * SUPER, (255, 255, 255), swatch)


def pose_image(keypoints: np.ndarray, size: int, width: float = 0.04) -> np.ndarray:
    """OpenPose-like stick figure ``[S, S, 3]`` uint8 from COCO-17 keypoints in pixels (one colour per limb)."""
    n = size * SUPER
    img = np.zeros((n, n, 3), np.uint8)
    for i, (a, b) in enumerate(LIMBS):
        hue = int(180 * i / len(LIMBS))
        colour = cv2.cvtColor(np.uint8([[[hue, 255, 255]]]), cv2.COLOR_HSV2RGB)[0, 0].tolist()
        pa, pb = keypoints[a] / size, keypoints[b] / size
        cv2.line(img, _px(pa, n), _px(pb, n), colour, max(1, int(width * n)))
    return _down(img, size)


def _png(path: str, arr: np.ndarray) -> None:
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    if arr.ndim == 3:
        arr = cv2.cvtColor(arr, cv2.COLOR_RGB2BGR)
    if not cv2.imwrite(path, arr):
        raise OSError(f"could not write {path}")


def write_dataset(out: str, count: int, size: int = 64, seed: int = 0, val_fraction: float = 0.1, *,
                  swatch: bool = False, pattern_scale: float = 1.0) -> Dict[str, int]:
    """Write ``count`` samples under ``out``: ``train.jsonl``, ``val.jsonl`` and PNG folders.

    The first ``round(count * val_fraction)`` indices are the validation split, so a larger
    dataset with the same seed keeps the same validation samples. Returns split sizes.
    """
    if not MIN_COUNT <= count <= MAX_COUNT:
        raise ValueError(f"count {count} is out of range; use {MIN_COUNT}..{MAX_COUNT} samples")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction {val_fraction} must be in (0, 1)")
    for sub in ("persons", "garments", "masks"):
        os.makedirs(os.path.join(out, sub), exist_ok=True)
    n_val = max(1, int(round(count * val_fraction)))
    files = {"val": open(os.path.join(out, "val.jsonl"), "w"), "train": open(os.path.join(out, "train.jsonl"), "w")}
    try:
        for i in range(count):
            s = render_sample(i, size, seed, swatch=swatch, pattern_scale=pattern_scale)
            stem = f"{i:06d}"
            _png(os.path.join(out, "persons", stem + ".png"), s.person)
            rec = {"person": f"persons/{stem}.png", "caption": s.caption, "garments": [],
                   "keypoints": np.round(s.keypoints, 2).tolist()}
            for gar in s.garments:
                base = f"{stem}_{gar.spec.slot}"
                _png(os.path.join(out, "garments", base + ".png"), gar.image)
                _png(os.path.join(out, "garments", base + "_mask.png"), gar.garment_mask)
                _png(os.path.join(out, "masks", base + ".png"), gar.mask)
                rec["garments"].append({"slot": gar.spec.slot, "image": f"garments/{base}.png",
                                        "mask": f"masks/{base}.png", "garment_mask": f"garments/{base}_mask.png",
                                        "attributes": {"shape": gar.spec.shape, "colour": gar.spec.colour,
                                                       "pattern": gar.spec.pattern, "accent": gar.spec.accent}})
            files["val" if i < n_val else "train"].write(json.dumps(rec) + "\n")
    finally:
        for f in files.values():
            f.close()
    with open(os.path.join(out, "synthetic.json"), "w") as f:
        json.dump({"generator": "anydressing_core.synthetic", "count": count, "size": size, "seed": seed,
                   "swatch": swatch, "pattern_scale": pattern_scale, "val": n_val, "train": count - n_val}, f, indent=1)
    return {"train": count - n_val, "val": n_val}


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m anydressing_core.synthetic", description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="output folder (created)")
    p.add_argument("--count", type=int, default=1000, help=f"samples, {MIN_COUNT}..{MAX_COUNT}")
    p.add_argument("--size", type=int, default=64, help="square image side in pixels, 16..1024")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--val", type=float, default=0.1, help="validation fraction")
    p.add_argument("--swatch", action="store_true", help="in-shop pictures are fabric swatches (slot not visible)")
    p.add_argument("--pattern-scale", type=float, default=1.0, help="pattern period multiplier, 0.25..8")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    sizes = write_dataset(a.out, a.count, a.size, a.seed, a.val, swatch=a.swatch, pattern_scale=a.pattern_scale)
    print(json.dumps({"out": a.out, **sizes}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
