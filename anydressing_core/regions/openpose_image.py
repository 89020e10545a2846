"""Keypoints from an OpenPose colour skeleton, the picture ControlNet pose preprocessors draw.

The standard drawing (ControlNet's ``draw_bodypose``, kept by OpenPose/DWPose preprocessors) puts each
of the 18 BODY-18 joints as a filled circle in a fixed colour (:data:`JOINT_COLOURS`) and each of the
17 limbs as an ellipse in 0.6x the colour of its index in the same list (:data:`LIMBS`), on black.

Reading it back [choice]: each connected skeleton (non-black pixels, closed over small gaps) is one
person; inside it, joint j is the centroid of the blob of colour j that touches most pixels of j's own
limb colours (hand keypoints are drawn in the knee's blue and face points in white: the limb test keeps
them out). People whose skeletons touch merge into one: each joint then follows the best blob and the
log says so.
"""

from __future__ import annotations

import logging
from typing import List

import cv2
import numpy as np

from ..errors import AnyDressingError
from .keypoints import BODY18, PoseFrame

log = logging.getLogger(__name__)

JOINT_COLOURS = np.array([
    [255, 0, 0], [255, 85, 0], [255, 170, 0], [255, 255, 0], [170, 255, 0], [85, 255, 0], [0, 255, 0],
    [0, 255, 85], [0, 255, 170], [0, 255, 255], [0, 170, 255], [0, 85, 255], [0, 0, 255], [85, 0, 255],
    [170, 0, 255], [255, 0, 255], [255, 0, 170], [255, 0, 85]], dtype=np.int32)
#: limbs as BODY-18 index pairs, in drawing order; limb i is drawn in 0.6 * JOINT_COLOURS[i]
LIMBS = ((1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10), (1, 11), (11, 12), (12, 13),
         (1, 0), (0, 14), (14, 16), (0, 15), (15, 17))
LIMB_SHADE = 0.6
#: a pixel matches a colour when every channel is within this distance [choice: neighbouring joint
#: colours differ by 85 in one channel]
TOLERANCE = 40
MIN_BLOB = 3  # pixels: smaller specks are resampling noise
MIN_JOINTS = 2  # a skeleton with fewer joints is not a person


def _matches(img: np.ndarray, colour) -> np.ndarray:
    c = np.asarray(colour, dtype=np.int16)
    return ((np.abs(img[..., 0] - c[0]) <= TOLERANCE) & (np.abs(img[..., 1] - c[1]) <= TOLERANCE)
            & (np.abs(img[..., 2] - c[2]) <= TOLERANCE))


def _limb_pixels(img: np.ndarray) -> List[np.ndarray]:
    """Per joint, the pixels of the limbs that end at it: ``[H, W]`` bool each."""
    shades = [_matches(img, np.round(LIMB_SHADE * c)) for c in JOINT_COLOURS[: len(LIMBS)]]
    per_joint = [np.zeros(img.shape[:2], bool) for _ in range(BODY18)]
    for i, (a, b) in enumerate(LIMBS):
        per_joint[a] |= shades[i]
        per_joint[b] |= shades[i]
    return per_joint


def _blobs(joint_mask: np.ndarray, limb_mask: np.ndarray, person_of: np.ndarray):
    """Candidate blobs of one joint colour: ``(person, score, (x, y))`` each.

    The score is how many pixels of the joint's own limb colours lie within 3 px of the blob; blobs that
    touch none are dropped when the picture has such limbs (a hand point or a stray pixel of this colour).
    """
    n, labels, stats, centroids = cv2.connectedComponentsWithStats(joint_mask.astype(np.uint8), connectivity=8)
    has_limbs = bool(limb_mask.any())
    out = []
    h, w = joint_mask.shape
    for lab in range(1, n):
        x0, y0, bw, bh, area = stats[lab]
        if area < MIN_BLOB:
            continue
        ya, yb, xa, xb = max(0, y0 - 3), min(h, y0 + bh + 3), max(0, x0 - 3), min(w, x0 + bw + 3)
        blob = (labels[ya:yb, xa:xb] == lab).astype(np.uint8)
        near = cv2.dilate(blob, np.ones((7, 7), np.uint8)).astype(bool)
        touch = int((near & limb_mask[ya:yb, xa:xb]).sum())
        if touch == 0 and has_limbs:
            continue
        inside = labels[y0:y0 + bh, x0:x0 + bw] == lab
        person = int(np.bincount(person_of[y0:y0 + bh, x0:x0 + bw][inside]).argmax())
        out.append((person, touch + area / 1e4, centroids[lab]))  # ties go to the bigger blob
    return out


def keypoints_from_openpose(image: np.ndarray) -> PoseFrame:
    """People of an OpenPose skeleton picture ``[H, W, 3]`` (uint8 0..255 or float 0..1, RGB).

    Raises :class:`AnyDressingError` when the picture shows no skeleton of the standard colours.
    """
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[-1] < 3:
        raise AnyDressingError(f"the pose image must be [H, W, 3]; got shape {list(img.shape)}")
    img = img[..., :3]
    if img.dtype != np.uint8:
        img = np.clip(np.asarray(img, dtype=np.float64) * 255.0 + 0.5, 0, 255)
    img = img.astype(np.int16)
    h, w = img.shape[:2]
    lit = (img.max(axis=-1) > 40).astype(np.uint8)
    n_people, person_of = cv2.connectedComponents(cv2.dilate(lit, np.ones((5, 5), np.uint8)), connectivity=8)
    limbs = _limb_pixels(img)
    found = np.zeros((n_people, BODY18, 3))
    score = np.full((n_people, BODY18), -1.0)
    twice = False
    for j, colour in enumerate(JOINT_COLOURS):
        for person, sc, (x, y) in _blobs(_matches(img, colour), limbs[j], person_of):
            twice = twice or score[person, j] >= 0
            if sc > score[person, j]:
                score[person, j] = sc
                found[person, j] = (x + 0.5, y + 0.5, 1.0)
    people = [found[p] for p in range(1, n_people) if int((found[p, :, 2] > 0).sum()) >= MIN_JOINTS]
    if not people:
        raise AnyDressingError(
            f"the pose image ({w}x{h}) shows no OpenPose skeleton (no joints in the standard OpenPose colours): connect "
            "the image output of an OpenPose/DWPose preprocessor, or set the region source to attention")
    if twice:
        log.warning("AnyDressing regions: people touch in the pose image; where a joint appears twice in one "
                    "skeleton, its regions follow one of them")
    return PoseFrame(np.stack(people), w, h)


def draw_openpose(frame: PoseFrame, stick: int = 4, radius: int = 4) -> np.ndarray:
    """The standard OpenPose drawing of ``frame``'s people: ``[H, W, 3]`` uint8 RGB on black.

    What pose preprocessors output, rebuilt for tests and benchmarks (limb ellipses ``stick`` wide,
    then joint circles of ``radius``).
    """
    canvas = np.zeros((frame.height, frame.width, 3), np.uint8)
    for person in frame.people:
        for i, (a, b) in enumerate(LIMBS):
            if person[a, 2] <= 0 or person[b, 2] <= 0:
                continue
            (xa, ya), (xb, yb) = person[a, :2], person[b, :2]
            length = float(np.hypot(xa - xb, ya - yb))
            angle = int(np.degrees(np.arctan2(ya - yb, xa - xb)))
            poly = cv2.ellipse2Poly((int((xa + xb) / 2), int((ya + yb) / 2)), (int(length / 2), stick), angle, 0, 360, 1)
            cv2.fillConvexPoly(canvas, poly, [int(LIMB_SHADE * float(c)) for c in JOINT_COLOURS[i]])
        for j in range(BODY18):
            if person[j, 2] > 0:
                cv2.circle(canvas, (int(person[j, 0]), int(person[j, 1])), radius, JOINT_COLOURS[j].tolist(), -1)
    return canvas
