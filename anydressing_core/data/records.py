"""Sample records: what one training example is made of, before any pixel is read.

A record names files only; :mod:`.dataset` reads and checks them.  Three readers produce
records: our JSONL manifest (:func:`read_manifest`), DressCode and VITON-HD (:mod:`.layouts`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from ..errors import AnyDressingError
from ..garments import SLOTS

log = logging.getLogger(__name__)


@dataclass
class GarmentRef:
    """One garment of a sample.

    Either an in-shop picture (``image`` + optional ``garment_mask``), or, when ``image`` is
    None, a garment cropped from the person photo by its mask (the paper's triplets cut the
    "other" garment out of the model photo with a human parser [paper]).

    ``mask`` is M_k: where the garment is on the PERSON image.  When ``parse`` is set the mask
    is taken from that label map instead: pixels whose label is in ``labels``.
    """

    slot: str
    mask: Optional[Path] = None
    image: Optional[Path] = None
    garment_mask: Optional[Path] = None
    parse: Optional[Path] = None
    labels: Tuple[int, ...] = ()

    def __post_init__(self):
        if self.slot not in SLOTS:
            raise AnyDressingError(f"unknown garment slot {self.slot!r}; use one of {', '.join(SLOTS)}")
        if self.mask is None and self.parse is None:
            raise AnyDressingError(f"garment {self.slot!r} has neither a person-image mask nor a parse map")

    @property
    def cropped(self) -> bool:
        """True when the garment picture is cut from the person photo."""
        return self.image is None

    def files(self) -> List[Path]:
        return [p for p in (self.mask, self.image, self.garment_mask, self.parse) if p is not None]


@dataclass
class SampleRecord:
    """A person photo, its caption and its garments (1..MAX_GARMENTS)."""

    person: Path
    caption: str
    garments: List[GarmentRef] = field(default_factory=list)
    source: str = ""  # where the record came from, for error messages ("file.jsonl:12")

    def files(self) -> List[Path]:
        out = [self.person]
        for g in self.garments:
            out.extend(g.files())
        return out


def _path(base: Path, value, what: str, where: str) -> Path:
    if not isinstance(value, str) or not value:
        raise AnyDressingError(f"{where}: {what} must be a non-empty path string, got {value!r}")
    p = Path(value)
    return p if p.is_absolute() else base / p


def parse_manifest_line(obj, base: Path, where: str) -> SampleRecord:
    """One manifest object (see docs/DESIGN.md) to a record; raises AnyDressingError if malformed."""
    if not isinstance(obj, dict):
        raise AnyDressingError(f"{where}: expected a JSON object per line, got {type(obj).__name__}")
    person = _path(base, obj.get("person"), "'person'", where)
    caption = obj.get("caption", "")
    if not isinstance(caption, str):
        raise AnyDressingError(f"{where}: 'caption' must be a string, got {type(caption).__name__}")
    items = obj.get("garments")
    if not isinstance(items, list) or not items:
        raise AnyDressingError(f"{where}: 'garments' must be a non-empty list of {{slot, image, mask}} objects")
    garments = []
    for i, g in enumerate(items):
        gw = f"{where} garment {i}"
        if not isinstance(g, dict):
            raise AnyDressingError(f"{gw}: expected an object with slot, image, mask")
        slot = g.get("slot")
        if slot not in SLOTS:
            raise AnyDressingError(f"{gw}: slot {slot!r} is not one of {', '.join(SLOTS)}")
        gm = g.get("garment_mask")
        garments.append(GarmentRef(
            slot=slot,
            image=_path(base, g.get("image"), "'image'", gw),
            mask=_path(base, g.get("mask"), "'mask'", gw),
            garment_mask=_path(base, gm, "'garment_mask'", gw) if gm is not None else None,
        ))
    return SampleRecord(person=person, caption=caption, garments=garments, source=where)


def read_manifest(path, check_files: bool = True) -> List[SampleRecord]:
    """Read a JSONL manifest; paths are relative to its folder.

    Malformed lines and lines whose files are missing are logged with their line number and
    skipped (never silently).  Raises AnyDressingError when the file is missing or no line is usable.
    """
    path = Path(path)
    if not path.is_file():
        raise AnyDressingError(f"manifest {path} does not exist; give the path of a .jsonl file (docs/DESIGN.md)")
    base = path.parent
    records, bad = [], 0
    with path.open("r", encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{n}"
            try:
                rec = parse_manifest_line(json.loads(line), base, where)
                if check_files:
                    missing = [str(p) for p in rec.files() if not p.is_file()]
                    if missing:
                        raise AnyDressingError(f"{where}: missing files {missing}")
            except json.JSONDecodeError as e:
                bad += 1
                log.warning("skipping bad sample %s: not JSON (%s)", where, e)
                continue
            except AnyDressingError as e:
                bad += 1
                log.warning("skipping bad sample %s", e)
                continue
            records.append(rec)
    if bad:
        log.warning("%s: %d bad line(s) skipped, %d samples kept", path, bad, len(records))
    if not records:
        raise AnyDressingError(f"manifest {path} has no usable sample ({bad} bad lines); see the warnings above")
    return records


def check_records(records: Sequence[SampleRecord]) -> List[SampleRecord]:
    """Drop (and log) records with missing files."""
    kept = []
    for r in records:
        missing = [str(p) for p in r.files() if not p.is_file()]
        if missing:
            log.warning("skipping bad sample %s: missing files %s", r.source or r.person, missing)
            continue
        kept.append(r)
    return kept
