"""Body-part regions of garment slots from BODY-18 keypoints: one mask per garment.

Rules [choice; the issue's anatomy, sized by one body unit u]:

* upper: the torso (shoulders to hips) and both arms (shoulder, elbow, wrist);
* lower: hips to ankles (the hip-knee quadrilateral and both legs);
* dress: shoulders to knees (torso and the hip-knee quadrilateral);
* hat: above the ears (a box on the ear line, one head tall; eyes, then nose, stand in for the ears);
* shoes: the ankles and just below;
* bag: the hands (beyond the wrists, along the forearms);
* other: no region (the garment stays unconstrained).

u is the shoulder width, or 1.5x the hip width or the neck-to-hip length / 1.3 when those are longer
(a person seen from the side has narrow shoulders). Limbs are capsules 0.2 u (arms) and 0.28 u (legs)
in radius. A missing point removes the parts that need it; a missing hip is put 1.4 u below its
shoulder so the torso survives. Several people: each garment's region is the union over people (every
person wears the outfit).
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import cv2
import numpy as np

from .keypoints import (L_ANKLE, L_EAR, L_ELBOW, L_EYE, L_HIP, L_KNEE, L_SHOULDER, L_WRIST, NECK, NOSE, R_ANKLE,
                        R_EAR, R_ELBOW, R_EYE, R_HIP, R_KNEE, R_SHOULDER, R_WRIST, PoseFrame)

ARM_RADIUS, LEG_RADIUS = 0.2, 0.28
TORSO_LENGTH = 1.4  # shoulder-to-hip drop in body units, for a missing hip
SLOTS_WITH_REGION = ("upper", "lower", "dress", "hat", "shoes", "bag")
#: [choice] regions are drawn with this long side whatever the pose canvas, so the same pose on canvases of
#: one shape gives the same masks; layers use them at 1/8 of the image or coarser (256 serves 2048 px images)
DRAW_SIDE = 256


def _pt(person: np.ndarray, i: int) -> Optional[np.ndarray]:
    return person[i, :2] if person[i, 2] > 0 else None


def body_unit(person: np.ndarray) -> Optional[float]:
    """u of one person ``[18, 3]``, or None when no two points measure the body."""
    def dist(a, b):
        pa, pb = _pt(person, a), _pt(person, b)
        return None if pa is None or pb is None else float(np.linalg.norm(pa - pb))

    cands = [dist(R_SHOULDER, L_SHOULDER)]
    hips = dist(R_HIP, L_HIP)
    cands.append(None if hips is None else 1.5 * hips)
    for hip in (R_HIP, L_HIP):
        torso = dist(NECK, hip)
        cands.append(None if torso is None else torso / 1.3)
    cands = [c for c in cands if c is not None and c > 0]
    return max(cands) if cands else None


def _capsule(canvas: np.ndarray, a, b, radius: float) -> None:
    r = max(1, int(round(radius)))
    pa, pb = tuple(int(round(v)) for v in a), tuple(int(round(v)) for v in b)
    cv2.line(canvas, pa, pb, 1, thickness=2 * r, lineType=cv2.LINE_8)
    cv2.circle(canvas, pa, r, 1, -1)
    cv2.circle(canvas, pb, r, 1, -1)


def _polygon(canvas: np.ndarray, points, grow: float) -> None:
    poly = np.round(np.asarray(points)).astype(np.int32)
    cv2.fillPoly(canvas, [poly], 1)
    if grow >= 1:
        cv2.polylines(canvas, [poly], True, 1, thickness=max(1, int(round(2 * grow))))


def _limb(canvas, person, chain: Sequence[int], radius: float) -> bool:
    drawn = False
    for a, b in zip(chain[:-1], chain[1:]):
        pa, pb = _pt(person, a), _pt(person, b)
        if pa is not None and pb is not None:
            _capsule(canvas, pa, pb, radius)
            drawn = True
    return drawn


def _hips(person: np.ndarray, u: float) -> Tuple[Optional[np.ndarray], Optional[np.ndarray]]:
    out = []
    for hip, shoulder in ((R_HIP, R_SHOULDER), (L_HIP, L_SHOULDER)):
        p = _pt(person, hip)
        s = _pt(person, shoulder)
        out.append(p if p is not None else (None if s is None else s + np.array([0.0, TORSO_LENGTH * u])))
    return out[0], out[1]


def _torso(canvas, person, u) -> bool:
    rs, ls = _pt(person, R_SHOULDER), _pt(person, L_SHOULDER)
    rh, lh = _hips(person, u)
    if rs is None or ls is None or rh is None or lh is None:
        return False
    _polygon(canvas, [rs, ls, lh, rh], ARM_RADIUS * u)
    return True


def _draw_slot(canvas: np.ndarray, person: np.ndarray, slot: str, u: float) -> bool:
    """Draw one person's region of ``slot`` into ``canvas`` (uint8 0/1); False when its points are missing."""
    if slot == "upper":
        drawn = _torso(canvas, person, u)
        for chain in ((R_SHOULDER, R_ELBOW, R_WRIST), (L_SHOULDER, L_ELBOW, L_WRIST)):
            drawn = _limb(canvas, person, chain, ARM_RADIUS * u) or drawn
        return drawn
    if slot in ("lower", "dress"):
        drawn = _torso(canvas, person, u) if slot == "dress" else False
        rh, lh = _pt(person, R_HIP), _pt(person, L_HIP)
        rk, lk = _pt(person, R_KNEE), _pt(person, L_KNEE)
        if all(p is not None for p in (rh, lh, rk, lk)):
            _polygon(canvas, [rh, lh, lk, rk], LEG_RADIUS * u)
            drawn = True
        legs = ((R_HIP, R_KNEE, R_ANKLE), (L_HIP, L_KNEE, L_ANKLE)) if slot == "lower" else ((R_HIP, R_KNEE), (L_HIP, L_KNEE))
        for chain in legs:
            drawn = _limb(canvas, person, chain, LEG_RADIUS * u) or drawn
        return drawn
    if slot == "hat":
        return _hat(canvas, person, u)
    if slot == "shoes":
        drawn = False
        for ankle in (R_ANKLE, L_ANKLE):
            p = _pt(person, ankle)
            if p is not None:
                _capsule(canvas, p, p + np.array([0.0, 0.3 * u]), LEG_RADIUS * u)
                drawn = True
        return drawn
    if slot == "bag":
        drawn = False
        for wrist, elbow in ((R_WRIST, R_ELBOW), (L_WRIST, L_ELBOW)):
            w, e = _pt(person, wrist), _pt(person, elbow)
            if w is not None:
                centre = w if e is None else w + 0.3 * (w - e)
                _capsule(canvas, centre, centre, 0.45 * u)
                drawn = True
        return drawn
    return False


def _hat(canvas, person, u) -> bool:
    for pair, scale in (((R_EAR, L_EAR), 1.0), ((R_EYE, L_EYE), 2.2)):
        a, b = _pt(person, pair[0]), _pt(person, pair[1])
        if a is not None and b is not None:
            head = max(float(abs(a[0] - b[0])) * scale, 0.35 * u)
            cx, cy = (a[0] + b[0]) / 2, (a[1] + b[1]) / 2
            break
    else:
        nose = _pt(person, NOSE)
        if nose is None:
            return False
        head = 0.5 * u
        cx, cy = nose[0], nose[1] - 0.1 * u
    box = [(cx - 0.8 * head, cy - 1.15 * head), (cx + 0.8 * head, cy - 1.15 * head), (cx + 0.8 * head, cy + 0.1 * head),
           (cx - 0.8 * head, cy + 0.1 * head)]
    _polygon(canvas, box, 0)
    return True


def slot_masks(frame: PoseFrame, slots: Sequence[str]) -> Tuple[np.ndarray, List[Optional[str]]]:
    """Region masks of ``slots`` from ``frame``: ``[N, H, W]`` float32 in {0, 1} on the frame's canvas scaled to a
    long side of :data:`DRAW_SIDE`, and per garment None or why it has no region (the mask is then empty).
    """
    scale = DRAW_SIDE / max(frame.width, frame.height)
    w, h = max(1, int(round(frame.width * scale))), max(1, int(round(frame.height * scale)))
    people = frame.people.copy()
    people[..., :2] *= scale
    masks = np.zeros((len(slots), h, w), np.uint8)
    reasons: List[Optional[str]] = []
    for i, slot in enumerate(slots):
        if slot not in SLOTS_WITH_REGION:
            reasons.append(f"slot {slot!r} has no body part")
            continue
        drawn = False
        for person in people:
            u = body_unit(person)
            if u is not None:
                drawn = _draw_slot(masks[i], person, slot, u) or drawn
        reasons.append(None if drawn and masks[i].any() else f"the keypoints its {slot} region needs are missing")
    return masks.astype(np.float32), reasons
