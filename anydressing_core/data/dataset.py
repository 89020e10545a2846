"""The training dataset: reads records, builds garments and masks, augments, checks.

Every item is deterministic in ``(seed, epoch, index)``, so a resumed run reads exactly the
same pixels.  A sample that cannot be read is logged with its path and replaced by the next
readable one (deterministically), never dropped silently.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import AnyDressingError
from ..garments import MAX_GARMENTS, SLOTS, prepare_garment
from . import augment
from .records import SampleRecord

log = logging.getLogger(__name__)


@dataclass
class DataConfig:
    height: int = 768             # person image [paper: 768x576]
    width: int = 576
    garment_height: int = 768     # garment canvas [choice: same as the person]
    garment_width: int = 576
    min_crop_fraction: float = 0.01  # a garment cut from the photo needs this share of pixels [choice]
    canny_low: int = 100          # Canny thresholds on the ground truth [choice]
    canny_high: int = 200
    max_garments: int = 3
    augment: augment.AugmentConfig = field(default_factory=augment.AugmentConfig)


def read_rgb(path: Path) -> np.ndarray:
    """``[H, W, 3]`` float32 in [0, 1]; raises AnyDressingError when unreadable."""
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise AnyDressingError(f"cannot read image {path} (missing, truncated or not an image)")
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    elif img.shape[2] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    else:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    scale = 65535.0 if img.dtype == np.uint16 else 255.0
    return img.astype(np.float32) / scale


def read_mask(path: Path) -> np.ndarray:
    """``[H, W]`` float32 in [0, 1] (alpha if present, else grey)."""
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise AnyDressingError(f"cannot read mask {path} (missing, truncated or not an image)")
    if img.ndim == 3:
        img = img[..., 3] if img.shape[2] == 4 else cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    scale = 65535.0 if img.dtype == np.uint16 else 255.0
    return img.astype(np.float32) / scale


def read_labels(path: Path) -> np.ndarray:
    """Parse map as integer labels ``[H, W]`` (palette PNGs keep their indices)."""
    from PIL import Image  # palette indices; cv2 would expand a palette PNG to colours

    try:
        with Image.open(path) as im:
            arr = np.array(im)
    except OSError as e:
        raise AnyDressingError(f"cannot read parse map {path}: {e}") from e
    if arr.ndim == 3:
        arr = arr[..., 0]
    return arr.astype(np.int32)


def _fit(mask: np.ndarray, hw: Tuple[int, int], path) -> np.ndarray:
    if mask.shape == tuple(hw):
        return mask
    if abs((mask.shape[1] / mask.shape[0]) / (hw[1] / hw[0]) - 1) > 0.02:
        raise AnyDressingError(f"mask {path} is {mask.shape[1]}x{mask.shape[0]}, person is {hw[1]}x{hw[0]}")
    return cv2.resize(mask, (hw[1], hw[0]), interpolation=cv2.INTER_LINEAR)


def canny_edges(rgb: np.ndarray, low: int, high: int) -> np.ndarray:
    """Canny edges of ``rgb [H, W, 3]`` in [0, 1] as ``[H, W]`` 0/1 float32."""
    grey = cv2.cvtColor((np.clip(rgb, 0, 1) * 255).astype(np.uint8), cv2.COLOR_RGB2GRAY)
    return (cv2.Canny(grey, low, high) > 0).astype(np.float32)


def _to_tensor(img: np.ndarray) -> torch.Tensor:
    """``[H, W, 3]`` in [0, 1] to ``[3, H, W]`` in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float() * 2 - 1


class DressingDataset(Dataset):
    """Items: ``person [3,H,W]`` and ``garments [N,3,Hg,Wg]`` in [-1, 1], ``masks [N,H,W]`` (M_k on
    the person), ``edges [1,H,W]`` (Canny of the person), ``slots [N]`` (index in SLOTS),
    ``caption`` and ``index``.  N varies per item (see :func:`collate`).
    """

    def __init__(self, records: Sequence[SampleRecord], cfg: DataConfig, seed: int = 0):
        if not records:
            raise AnyDressingError("the dataset has no sample; check the manifest or dataset root")
        self.records = list(records)
        self.cfg = cfg
        self.seed = int(seed)
        self.epoch = 0
        self.bad: Dict[int, str] = {}

    def __len__(self) -> int:
        return len(self.records)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __getitem__(self, index: int) -> dict:
        n = len(self.records)
        for attempt in range(min(n, 16)):
            i = (index + attempt) % n
            try:
                return self.load(i)
            except (AnyDressingError, OSError, cv2.error) as e:
                self.bad[i] = str(e)
                log.warning("bad sample %s skipped: %s", self.records[i].source or self.records[i].person, e)
        raise AnyDressingError(f"16 samples in a row from index {index} are unreadable; check the data (warnings above)")

    def load(self, i: int) -> dict:
        rec, cfg = self.records[i], self.cfg
        hw = (cfg.height, cfg.width)
        rng = np.random.default_rng([self.seed, self.epoch, i])
        person0 = read_rgb(rec.person)
        labels_cache: Dict[Path, np.ndarray] = {}
        slots, masks, garments = [], [], []
        for g in rec.garments:
            if g.parse is not None:
                if g.parse not in labels_cache:
                    labels_cache[g.parse] = read_labels(g.parse)
                lab = labels_cache[g.parse]
                m = np.isin(lab, g.labels).astype(np.float32)
                m = _fit(m, person0.shape[:2], g.parse)
            else:
                m = _fit(read_mask(g.mask), person0.shape[:2], g.mask)
            if m.mean() < cfg.min_crop_fraction:
                if g.cropped:
                    continue  # the photo simply has no such garment
                raise AnyDressingError(f"garment {g.slot!r} covers {m.mean():.4f} of the person image {rec.person} "
                                       f"(under min_crop_fraction={cfg.min_crop_fraction}); check its mask")
            if g.cropped:
                src, smask = person0, m
            else:
                src = read_rgb(g.image)
                smask = read_mask(g.garment_mask) if g.garment_mask is not None else None
            rgb, gm = prepare_garment(src, smask, width=cfg.garment_width, height=cfg.garment_height)
            slots.append(SLOTS.index(g.slot))
            masks.append(augment.cover_resize(m, hw, cv2.INTER_AREA))
            garments.append((rgb, gm))
            if len(slots) == cfg.max_garments:
                break
        if not slots:
            raise AnyDressingError(f"sample {rec.person} has no garment left")
        person = augment.cover_resize(person0, hw)
        d = augment.draw(rng, hw, cfg.augment)
        person, masks = augment.apply_person(d, person, masks)
        garments = [augment.apply_garment(d, rgb, gm)[0] for rgb, gm in garments]
        return {
            "person": _to_tensor(person),
            "garments": torch.stack([_to_tensor(g) for g in garments]),
            "masks": torch.from_numpy(np.stack(masks)).float(),
            "edges": torch.from_numpy(canny_edges(person, cfg.canny_low, cfg.canny_high))[None],
            "slots": torch.tensor(slots, dtype=torch.long),
            "caption": rec.caption,
            "index": i,
        }


def collate(items: List[dict]) -> dict:
    """Pad garments to the largest N in the batch.

    Returns ``person [B,3,H,W]``, ``garments [B,N,3,Hg,Wg]``, ``masks [B,N,H,W]``, ``edges [B,1,H,W]``,
    ``slots [B,N]`` (0 where padded), ``present [B,N]`` bool, ``captions`` list, ``index [B]``.
    """
    b = len(items)
    n = max(int(it["slots"].shape[0]) for it in items)
    if n > MAX_GARMENTS:
        raise AnyDressingError(f"a sample has {n} garments; at most {MAX_GARMENTS} are supported")
    g0, m0 = items[0]["garments"], items[0]["masks"]
    garments = torch.zeros(b, n, *g0.shape[1:])
    masks = torch.zeros(b, n, *m0.shape[1:])
    slots = torch.zeros(b, n, dtype=torch.long)
    present = torch.zeros(b, n, dtype=torch.bool)
    for i, it in enumerate(items):
        k = it["slots"].shape[0]
        garments[i, :k], masks[i, :k], slots[i, :k], present[i, :k] = it["garments"], it["masks"], it["slots"], True
    return {
        "person": torch.stack([it["person"] for it in items]),
        "garments": garments, "masks": masks, "slots": slots, "present": present,
        "edges": torch.stack([it["edges"] for it in items]),
        "captions": [it["caption"] for it in items],
        "index": torch.tensor([it["index"] for it in items], dtype=torch.long),
    }
