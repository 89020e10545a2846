"""Score generated images listed in a JSONL manifest (docs/DESIGN.md format).

Each line: ``person`` = the GENERATED image to score, ``caption`` = its prompt, ``garments`` = the
in-shop garments (``slot``, ``image``, optional ``mask`` = the garment's region on the generated
image), optional ``keypoints`` (COCO-17 pixels) for pose regions.  CLIP-I* uses the mask when
given, else the pose region, else leaves the garment out.
"""

from __future__ import annotations

import json
import os
from typing import Dict, Iterable, List, Optional

import cv2
import numpy as np
import torch

from ..errors import AnyDressingError
from .aesthetic import AestheticHead
from .clip import ClipScorer, mean_std
from .regions import mask_region, pose_region


def read_rgb(path: str) -> np.ndarray:
    img = cv2.imread(path, cv2.IMREAD_COLOR)
    if img is None:
        raise AnyDressingError(f"cannot read image {path}")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def read_manifest(path: str) -> List[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def score_records(scorer: ClipScorer, records: Iterable[dict], root: str = ".",
                  head: Optional[AestheticHead] = None) -> Dict[str, object]:
    """Per-record and mean CLIP-T, CLIP-I, CLIP-I*, CLIP-AS (metrics without inputs are skipped)."""
    rows = []
    for rec in records:
        img = read_rgb(os.path.join(root, rec["person"]))
        gar = [read_rgb(os.path.join(root, g["image"])) for g in rec.get("garments", [])]
        row = {"person": rec["person"]}
        if rec.get("caption") and scorer.tokenizer is not None:
            row["clip_t"] = float(scorer.clip_t([img], [rec["caption"]])[0])
        if gar:
            row["clip_i"] = float(scorer.clip_i(img, gar))
            boxes = []
            for g in rec["garments"]:
                box = None
                if g.get("mask"):
                    m = cv2.imread(os.path.join(root, g["mask"]), cv2.IMREAD_GRAYSCALE)
                    if m is None:
                        raise AnyDressingError(f"cannot read mask {g['mask']}")
                    box = mask_region(cv2.resize(m, img.shape[1::-1], interpolation=cv2.INTER_NEAREST) / 255.0)
                elif rec.get("keypoints") is not None:
                    box = pose_region(rec["keypoints"], g.get("slot", "other"), img.shape[1], img.shape[0])
                boxes.append(box)
            if any(b is not None for b in boxes):
                row["clip_i_star"] = float(scorer.clip_i_star(img, gar, boxes))
        if head is not None:
            with torch.no_grad():
                row["clip_as"] = float(head(scorer.image_embeds([img]))[0])
        rows.append(row)
    keys = ("clip_t", "clip_i", "clip_i_star", "clip_as")
    summary = {k: mean_std([r[k] for r in rows if k in r]) for k in keys if any(k in r for r in rows)}
    return {"summary": summary, "rows": rows}
