"""Readers for the DressCode and VITON-HD folder layouts, building the paper's triplets.

Triplet construction [paper]: the in-shop garment of the pair, plus the OTHER garment cut from
the model photo with the human-parse map (upper-garment data gets its lower garment from the
photo, and the mirror for lower-garment data), plus a hat cut from the photo when one is there.
Whether a cropped garment is really present (enough pixels) is decided when the sample is read.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from ..errors import AnyDressingError
from .records import GarmentRef, SampleRecord, check_records

log = logging.getLogger(__name__)

#: DressCode ``label_maps`` classes (18-class ATR-style parse shipped with the dataset).
DRESSCODE_LABELS = {"hat": (1,), "upper": (4,), "lower": (5, 6), "dress": (7,)}
#: VITON-HD ``image-parse-v3`` classes (LIP/CIHP 20-class parse).
VITONHD_LABELS = {"hat": (1,), "upper": (5, 6, 7), "lower": (9, 12)}
DRESSCODE_CATEGORIES = {"upper_body": "upper", "lower_body": "lower", "dresses": "dress"}
#: Which garments are cut from the photo for each in-shop slot [paper: the other one, and hats].
CROP_PARTNERS = {"upper": ("lower", "hat"), "lower": ("upper", "hat"), "dress": ("hat",)}


def default_caption(slots: Sequence[str]) -> str:
    """Caption used when the dataset has none [choice; the paper captions with a VLM]."""
    names = {"upper": "a top", "lower": "a bottom", "hat": "a hat", "dress": "a dress"}
    return "a photo of a person wearing " + " and ".join(names.get(s, s) for s in slots)


def _load_captions(path: Optional[Path]) -> Dict[str, str]:
    if path is None:
        return {}
    path = Path(path)
    if not path.is_file():
        raise AnyDressingError(f"captions file {path} does not exist; give a JSON object {{image_name: caption}}")
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise AnyDressingError(f"captions file {path} must hold one JSON object {{image_name: caption}}")
    return {str(k): str(v) for k, v in data.items()}


def _read_pairs(path: Path) -> List[str]:
    names = []
    for line in path.read_text(encoding="utf-8").splitlines():
        parts = line.split()
        if parts:
            names.append(parts[0])
    return names


def _triplet(person: Path, caption_key: str, captions: Dict[str, str], slot: str, image: Path,
             garment_mask: Optional[Path], parse: Path, labels: Dict[str, tuple], where: str) -> SampleRecord:
    garments = [GarmentRef(slot=slot, image=image, garment_mask=garment_mask, parse=parse, labels=labels[slot])]
    for other in CROP_PARTNERS[slot]:
        if other in labels:
            garments.append(GarmentRef(slot=other, parse=parse, labels=labels[other]))
    caption = captions.get(caption_key) or default_caption([g.slot for g in garments])
    return SampleRecord(person=person, caption=caption, garments=garments, source=where)


def read_dresscode(root, split: str = "train", categories: Sequence[str] = tuple(DRESSCODE_CATEGORIES),
                   captions: Optional[Path] = None) -> List[SampleRecord]:
    """DressCode: ``<root>/<category>/images/<id>_0.jpg`` (person), ``<id>_1.jpg`` (in-shop garment),
    ``label_maps/<id>_4.png`` (parse), optional ``cloth_mask/<id>_1.png``; pairs from
    ``<category>/<split>_pairs.txt`` (or ``<split>_pairs_paired.txt``), else every ``*_0.jpg``.
    """
    root = Path(root)
    caps = _load_captions(captions)
    records: List[SampleRecord] = []
    for cat in categories:
        if cat not in DRESSCODE_CATEGORIES:
            raise AnyDressingError(f"unknown DressCode category {cat!r}; use {list(DRESSCODE_CATEGORIES)}")
        d = root / cat
        if not (d / "images").is_dir():
            log.warning("DressCode: %s has no images/ folder; category skipped", d)
            continue
        pairs = next((p for p in (d / f"{split}_pairs.txt", d / f"{split}_pairs_paired.txt") if p.is_file()), None)
        names = _read_pairs(pairs) if pairs else sorted(p.name for p in (d / "images").glob("*_0.jpg"))
        for name in names:
            stem = name.rsplit("_", 1)[0]
            cmask = d / "cloth_mask" / f"{stem}_1.png"
            records.append(_triplet(
                person=d / "images" / name, caption_key=name, captions=caps,
                slot=DRESSCODE_CATEGORIES[cat], image=d / "images" / f"{stem}_1.jpg",
                garment_mask=cmask if cmask.is_file() else None,
                parse=d / "label_maps" / f"{stem}_4.png", labels=DRESSCODE_LABELS, where=f"{d}/{name}"))
    kept = check_records(records)
    if not kept:
        raise AnyDressingError(f"no usable DressCode sample under {root} (categories {list(categories)}, split {split})")
    return kept


def read_vitonhd(root, split: str = "train", captions: Optional[Path] = None) -> List[SampleRecord]:
    """VITON-HD: ``<root>/<split>/{image,cloth,cloth-mask,image-parse-v3}/<name>``; pairs from
    ``<root>/<split>_pairs.txt`` (first column: person image), else every file in ``image/``.
    """
    root = Path(root)
    d = root / split
    if not (d / "image").is_dir():
        raise AnyDressingError(f"VITON-HD: {d}/image does not exist; give the folder holding train/ and test/")
    caps = _load_captions(captions)
    pairs = root / f"{split}_pairs.txt"
    names = _read_pairs(pairs) if pairs.is_file() else sorted(p.name for p in (d / "image").glob("*.jpg"))
    records = []
    for name in names:
        stem = Path(name).stem
        cmask = d / "cloth-mask" / name
        records.append(_triplet(
            person=d / "image" / name, caption_key=name, captions=caps, slot="upper",
            image=d / "cloth" / name, garment_mask=cmask if cmask.is_file() else None,
            parse=d / "image-parse-v3" / f"{stem}.png", labels=VITONHD_LABELS, where=f"{d}/{name}"))
    kept = check_records(records)
    if not kept:
        raise AnyDressingError(f"no usable VITON-HD sample under {d}")
    return kept
