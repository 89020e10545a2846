"""Automatic per-garment regions for zero-shot dressing: from a pose, the garments' own attention or the prompt.

``region_spec`` prepares what one Apply asks for; ``plan.RegionPlan`` applies it during one sampling run.
See docs/REGIONS.md.
"""

from __future__ import annotations

import logging
from typing import List, Optional, Sequence

import torch

from ..errors import AnyDressingError
from .body import slot_masks
from .keypoints import PoseFrame, parse_pose_keypoint
from .openpose_image import keypoints_from_openpose
from .plan import RegionPlan, RegionSource, RegionSpec
from .prompt import SLOT_WORDS, parse_region_words

__all__ = ["RegionPlan", "RegionSource", "RegionSpec", "region_spec", "parse_pose_keypoint",
           "keypoints_from_openpose", "parse_region_words", "SLOT_WORDS", "PoseFrame"]

log = logging.getLogger(__name__)


def region_spec(source: str, slots: Sequence[str], names: Optional[Sequence[str]] = None, *,
                pose: Optional[PoseFrame] = None, word_positions: Optional[List[List[int]]] = None,
                phrases: Optional[List[List[str]]] = None, **vote) -> Optional[RegionSpec]:
    """The regions ``source`` gives these garments, or None when it gives none (``none``, or nothing to separate).

    ``pose``: a :class:`PoseFrame` (needed by ``pose``; used by ``combined`` when given). ``word_positions``: per
    garment the context positions of its ``phrases`` (needed by ``prompt``; used by ``combined``). Garments the
    source cannot place stay unconstrained; the log says which and why.
    """
    if source not in RegionSource.ALL:
        raise AnyDressingError(f"unknown region source {source!r}; use one of {list(RegionSource.ALL)}")
    names = list(names) if names else [f"{i + 1} ({s})" for i, s in enumerate(slots)]
    if source == RegionSource.NONE:
        return None
    if source == RegionSource.POSE and pose is None:
        raise AnyDressingError("region source 'pose' needs a pose: connect an OpenPose image (pose_image) or "
                               "keypoints (pose_keypoints), or choose the attention source")
    if source == RegionSource.PROMPT and word_positions is None:
        raise AnyDressingError("region source 'prompt' needs the prompt's tokens: connect the CLIP and the positive "
                               "prompt text, or choose the attention source")
    if len(slots) < 2:
        log.info("AnyDressing regions: one garment, nothing to separate; regions are off")
        return None
    notes: List[Optional[str]] = [None] * len(slots)
    masks = None
    if pose is not None and source in (RegionSource.POSE, RegionSource.COMBINED):
        drawn, reasons = slot_masks(pose, slots)
        if source == RegionSource.POSE:
            notes = reasons
        else:  # combined: a garment the pose cannot place is a candidate everywhere and the vote decides
            for k, reason in enumerate(reasons):
                if reason is not None:
                    drawn[k] = 1.0
                    log.info("AnyDressing regions (combined): garment %s has no pose region (%s); the attention "
                             "vote places it", names[k], reason)
        masks = torch.from_numpy(drawn)
    positions = None
    if word_positions is not None and source in (RegionSource.PROMPT, RegionSource.COMBINED):
        positions = [list(p) for p in word_positions]
        if source == RegionSource.PROMPT:
            for k, pos in enumerate(positions):
                if not pos:
                    words = ", ".join((phrases or [[]] * len(slots))[k]) or "(no words for this slot)"
                    notes[k] = f"none of its words ({words}) is in the prompt"
    if source == RegionSource.PROMPT and sum(1 for p in positions if p) < 2:
        log.warning("AnyDressing regions (prompt): fewer than two garments have their words in the prompt, so the "
                    "prompt cannot separate them; sampling runs without regions")
    spec = RegionSpec(source, names, masks, positions, notes, vote=dict(vote))
    for name, note in zip(names, notes):
        if note is not None:
            log.warning("AnyDressing regions (%s): garment %s has no region (%s); it may attend everywhere",
                        source, name, note)
    if all(spec.unconstrained):
        log.warning("AnyDressing regions (%s): no garment has a region; sampling runs without regions", source)
    return spec
