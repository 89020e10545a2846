"""Sample inputs drawn on the spot (numpy/opencv, no downloads): garments, a person photo, its clothing mask,
an OpenPose-style pose picture and a face crop, under the file names the shipped workflows use.

The pictures come from the project's procedural mannequin (``anydressing_core.synthetic``, pure numpy).
"""

from __future__ import annotations

import sys
from pathlib import Path

from .errors import RunnerError
from .server import PACK_DIR
from .workflow_specs import GARMENT_FILES

PERSON, PERSON_MASK, POSE, FACE = ("anydressing_person.png", "anydressing_person_mask.png", "anydressing_pose.png",
                                   "anydressing_face.png")


def _synthetic():
    if str(PACK_DIR) not in sys.path:
        sys.path.insert(0, str(PACK_DIR))
    try:
        import cv2  # noqa: F401
        from anydressing_core import synthetic
    except ImportError as exc:
        raise RunnerError(f"sample pictures need numpy and opencv-python-headless ({exc}); "
                          "pip install numpy opencv-python-headless") from None
    return synthetic


def write_samples(folder, size: int = 384, seed: int = 0) -> dict:
    """Write the sample inputs into ``folder``; returns ``{file name: Path}`` (also ``"caption"``: str).

    Garments (upper, lower, hat) come from one mannequin, the person photo from another, so a try-on visibly
    changes the clothes. Pictures are ``size`` x ``size`` RGB PNGs; the mask is white where clothes are.
    """
    import cv2
    import numpy as np

    syn = _synthetic()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    dressed = syn.render_sample(1, size=size, seed=seed, slots=("upper", "lower", "hat"))
    person = syn.render_sample(0, size=size, seed=seed, slots=("upper", "lower"))
    out = {}

    def save(name, rgb):
        path = folder / name
        arr = rgb if rgb.ndim == 2 else cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR)
        if not cv2.imwrite(str(path), arr):
            raise RunnerError(f"could not write the sample picture {path}")
        out[name] = path

    for garment in dressed.garments:
        save(GARMENT_FILES[garment.spec.slot], garment.image)
    save(PERSON, person.person)
    clothes = np.zeros((size, size), bool)
    for garment in person.garments:
        clothes |= garment.mask
    save(PERSON_MASK, clothes.astype(np.uint8) * 255)
    save(POSE, syn.pose_image(person.keypoints, size))
    head = person.keypoints[0]
    half = max(8, size // 8)
    x0, y0 = int(np.clip(head[0] - half, 0, size - 2 * half)), int(np.clip(head[1] - half, 0, size - 2 * half))
    save(FACE, person.person[y0:y0 + 2 * half, x0:x0 + 2 * half])
    out["caption"] = dressed.caption
    return out
