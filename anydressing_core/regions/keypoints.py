"""Body keypoints as pose estimators hand them over, read into one form: OpenPose BODY-18 in pixels.

Three layouts are read [choice: the ones ComfyUI pose packs and our synthetic data emit]:

* OpenPose BODY-18 (what ControlNet's OpenPose/DWPose preprocessors draw and what
  ``POSE_KEYPOINT`` carries): 0 nose, 1 neck, 2-4 right shoulder/elbow/wrist, 5-7 left,
  8-10 right hip/knee/ankle, 11-13 left, 14/15 right/left eye, 16/17 right/left ear;
* OpenPose BODY-25 (18 of its points are BODY-18's; mid-hip and the feet are dropped);
* COCO-17 (``anydressing_core.synthetic.COCO17``; the neck is the shoulders' midpoint).

``POSE_KEYPOINT`` is a list of frames ``{"people": [{"pose_keypoints_2d": [x, y, c, ...]}],
"canvas_width": W, "canvas_height": H}``; comfyui_controlnet_aux writes x, y normalised to 0..1
and ``[0, 0, 0]`` for a missing point, other packs write pixels. Both are accepted: a frame whose
points all lie in 0..1 is read as normalised.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..errors import AnyDressingError

log = logging.getLogger(__name__)

NOSE, NECK = 0, 1
R_SHOULDER, R_ELBOW, R_WRIST, L_SHOULDER, L_ELBOW, L_WRIST = 2, 3, 4, 5, 6, 7
R_HIP, R_KNEE, R_ANKLE, L_HIP, L_KNEE, L_ANKLE = 8, 9, 10, 11, 12, 13
R_EYE, L_EYE, R_EAR, L_EAR = 14, 15, 16, 17
BODY18 = 18
#: BODY-25 index of every BODY-18 point
FROM_BODY25 = (0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18)
#: COCO-17 index of every BODY-18 point (the neck, -1, is made from the shoulders)
FROM_COCO17 = (0, -1, 6, 8, 10, 5, 7, 9, 12, 14, 16, 11, 13, 15, 2, 1, 4, 3)
#: a point below this confidence counts as missing [choice: estimators write 0 for "not found"]
MIN_CONFIDENCE = 0.05
#: points may stick out of their canvas by this share of its side before they count as made for another image
CANVAS_SLACK = 0.05


@dataclass
class PoseFrame:
    """The people of one picture: ``people [P, 18, 3]`` as (x, y) pixels of a ``width x height`` canvas and a
    confidence (0 = missing)."""

    people: np.ndarray
    width: int
    height: int

    @property
    def count(self) -> int:
        return int(self.people.shape[0])

    def scaled(self, width: int, height: int) -> "PoseFrame":
        """The same people on a canvas of another size (same aspect ratio assumed by the caller)."""
        people = self.people.copy()
        people[..., 0] *= width / self.width
        people[..., 1] *= height / self.height
        return PoseFrame(people, int(width), int(height))


def to_body18(points: np.ndarray) -> np.ndarray:
    """One person's ``[K, 2|3]`` points (K = 18, 25 or 17) as BODY-18 ``[18, 3]``; missing points are zeros."""
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] not in (2, 3):
        raise AnyDressingError(f"a person's keypoints must be [K, 2] or [K, 3]; got shape {list(pts.shape)}")
    if pts.shape[1] == 2:
        pts = np.concatenate([pts, np.ones((pts.shape[0], 1))], axis=1)
    pts = np.where(np.isfinite(pts), pts, 0.0)
    pts[pts[:, 2] < MIN_CONFIDENCE] = 0.0
    k = pts.shape[0]
    if k == BODY18:
        return pts
    if k == 25:
        return pts[list(FROM_BODY25)]
    if k == 17:
        out = np.zeros((BODY18, 3))
        for dst, src in enumerate(FROM_COCO17):
            if src >= 0:
                out[dst] = pts[src]
        out[NECK] = _midpoint(out[R_SHOULDER], out[L_SHOULDER])
        return out
    raise AnyDressingError(
        f"a person has {k} keypoints; expected OpenPose BODY-18 (18), BODY-25 (25) or COCO-17 (17) body points")


def _midpoint(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if a[2] <= 0 or b[2] <= 0:
        return np.zeros(3)
    return np.array([(a[0] + b[0]) / 2, (a[1] + b[1]) / 2, min(a[2], b[2])])


def _person_points(person) -> np.ndarray:
    flat = person.get("pose_keypoints_2d") if isinstance(person, dict) else None
    if flat is None:
        return np.zeros((0, 3))
    arr = np.asarray(flat, dtype=np.float64)
    if arr.ndim == 1:
        if arr.size % 3:
            raise AnyDressingError(f"pose_keypoints_2d has {arr.size} numbers; expected x, y, confidence triples")
        arr = arr.reshape(-1, 3)
    return arr


def parse_pose_keypoint(data) -> PoseFrame:
    """The first frame of a ``POSE_KEYPOINT`` value (a list of frames, or one frame dict) as a :class:`PoseFrame`.

    Refuses, naming the fix: no frame, no canvas size, a frame without people, points outside the canvas
    (keypoints made for another image size).
    """
    frames = [data] if isinstance(data, dict) else data
    if not isinstance(frames, (list, tuple)) or not frames or not isinstance(frames[0], dict):
        raise AnyDressingError(
            "pose_keypoints must be a POSE_KEYPOINT value (a list of frames with 'people', 'canvas_width' and "
            f"'canvas_height', as DWPose/OpenPose estimator nodes output); got {type(data).__name__}")
    if len(frames) > 1:
        log.info("AnyDressing regions: POSE_KEYPOINT has %d frames; the first one is used for every image",
                 len(frames))
    frame = frames[0]
    try:
        width, height = int(frame["canvas_width"]), int(frame["canvas_height"])
    except (KeyError, TypeError, ValueError):
        raise AnyDressingError("the POSE_KEYPOINT frame has no canvas_width/canvas_height; connect the keypoints "
                               "output of a pose estimator node") from None
    if width <= 0 or height <= 0:
        raise AnyDressingError(f"the POSE_KEYPOINT canvas is {width}x{height}; it must be at least 1x1")
    people = [to_body18(_person_points(p)) for p in frame.get("people") or []]
    people = [p for p in people if (p[:, 2] > 0).any()]
    if not people:
        raise AnyDressingError(
            "the POSE_KEYPOINT frame holds no person (no keypoint above confidence 0): use a picture the pose "
            "estimator finds a person in, or set the region source to attention")
    stack = np.stack(people)
    present = stack[..., 2] > 0
    coords = stack[..., :2][present]
    if coords.size and float(np.abs(coords).max()) <= 1.0:
        stack[..., 0] *= width
        stack[..., 1] *= height
    _check_inside(stack, width, height)
    return PoseFrame(stack, width, height)


def _check_inside(people: np.ndarray, width: int, height: int) -> None:
    present = people[..., 2] > 0
    xs, ys = people[..., 0][present], people[..., 1][present]
    over_x = float(xs.max()) > width * (1 + CANVAS_SLACK) or float(xs.min()) < -width * CANVAS_SLACK
    over_y = float(ys.max()) > height * (1 + CANVAS_SLACK) or float(ys.min()) < -height * CANVAS_SLACK
    if over_x or over_y:
        raise AnyDressingError(
            f"keypoints reach x {xs.min():.0f}..{xs.max():.0f}, y {ys.min():.0f}..{ys.max():.0f} but their canvas is "
            f"{width}x{height}: they were made for an image of another size. Connect the keypoints and the canvas "
            "size from the same pose estimator run")


def frame_from_points(people: Sequence[np.ndarray], width: int, height: int) -> PoseFrame:
    """A :class:`PoseFrame` from per-person ``[K, 2|3]`` pixel points (K = 18, 25 or 17)."""
    stack = np.stack([to_body18(p) for p in people]) if len(people) else np.zeros((0, BODY18, 3))
    return PoseFrame(stack, int(width), int(height))
