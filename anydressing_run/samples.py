"""Sample inputs: garments, a person photo, its clothing mask, an OpenPose-style pose picture and a face crop.

``write_samples`` draws them on the spot (numpy/opencv, no downloads) from the project's procedural mannequin
(``anydressing_core.synthetic``); the copies shipped in ``workflows/inputs/anydressing/`` are its output at
384x384, seed 0. ``upload_samples`` sends the shipped copies to a server under the names the workflows use.
"""

from __future__ import annotations

import sys
from pathlib import Path

from .errors import RunnerError
from .server import PACK_DIR
from .workflow_specs import SAMPLE_FILES, SAMPLE_SUBFOLDER, SAMPLES_DIR, sample

SHIPPED_SIZE, SHIPPED_SEED = 384, 0


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


def write_samples(folder, size: int = SHIPPED_SIZE, seed: int = SHIPPED_SEED) -> dict:
    """Draw the sample inputs into ``folder``; returns ``{key: Path}`` for the keys of ``SAMPLE_FILES``, plus
    ``"caption"``: str.

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

    def save(key, rgb):
        path = folder / SAMPLE_FILES[key]
        arr = rgb if rgb.ndim == 2 else cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR)
        if not cv2.imwrite(str(path), arr):
            raise RunnerError(f"could not write the sample picture {path}")
        out[key] = path

    for garment in dressed.garments:
        save(garment.spec.slot, garment.image)
    save("person", person.person)
    clothes = np.zeros((size, size), bool)
    for garment in person.garments:
        clothes |= garment.mask
    save("person_mask", clothes.astype(np.uint8) * 255)
    save("pose", syn.pose_image(person.keypoints, size))
    head = person.keypoints[0]
    half = max(8, size // 8)
    x0, y0 = int(np.clip(head[0] - half, 0, size - 2 * half)), int(np.clip(head[1] - half, 0, size - 2 * half))
    save("face", person.person[y0:y0 + 2 * half, x0:x0 + 2 * half])
    out["caption"] = dressed.caption
    return out


def shipped_samples() -> dict:
    """``{key: Path}`` of the sample pictures shipped in ``workflows/inputs/anydressing/``."""
    found = {key: SAMPLES_DIR / name for key, name in SAMPLE_FILES.items()}
    missing = [str(p) for p in found.values() if not p.is_file()]
    if missing:
        raise RunnerError(f"shipped sample pictures missing: {', '.join(missing)} (regenerate them with "
                          "python -m anydressing_run.make_workflows)")
    return found


def upload_samples(client) -> dict:
    """Upload the shipped samples into the server's ``input/anydressing/`` under their own names, so that the
    shipped API workflows run as they are. Nothing is overwritten: if another picture already has one of
    these names there, the server keeps it and this raises RunnerError. Returns ``{LoadImage value: Path}``."""
    done = {}
    for key, path in shipped_samples().items():
        got = client.upload_image(path, subfolder=SAMPLE_SUBFOLDER, name=path.name)
        if got != sample(key):
            raise RunnerError(f"the server already has another picture named {sample(key)} in its input folder "
                              f"(it stored the sample as {got}); move that picture away or use --garment/--image")
        done[got] = path
    return done
