"""AnyDressing Regions and the region hooks of the patch: automatic per-garment regions in ComfyUI.

The node turns a pose (an OpenPose picture or POSE_KEYPOINT) and/or the prompt's tokens into a typed
request (``ANYDRESSING_REGIONS``) for one AnyDressing Apply. Apply makes it a ``RegionSpec`` for its
garments; during sampling a ``RegionPlan`` (anydressing_core/regions) gives every DA layer its allowed
garments. Votes are fed from the positive rows of the coarse layers; the plan closes them once per step.
See docs/REGIONS.md.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import numpy as np
import torch

from ..anydressing_core.attention import garment_maps, tokens_hw
from ..anydressing_core.errors import AnyDressingError
from ..anydressing_core.features import GarmentFeatures
from ..anydressing_core.regions import (PoseFrame, RegionPlan, RegionSource, RegionSpec, keypoints_from_openpose,
                                        parse_pose_keypoint, parse_region_words, region_spec)
from ..anydressing_core.regions.prompt import SLOT_WORDS, phrase_positions, position_matrix, word_maps
from .common import AnyDressingNode
from .host_api import io

log = logging.getLogger(__name__)

Regions = io.Custom("ANYDRESSING_REGIONS")  # RegionRequest
PoseKeypoint = io.Custom("POSE_KEYPOINT")  # the pose estimator packs' keypoint frames
#: [choice, measured: docs/REGIONS.md] pose regions closed the whole IoU gap to given masks; the vote added nothing
DEFAULT_SOURCE = RegionSource.POSE


@dataclass
class RegionRequest:
    """What the Regions node hands to Apply: the source, the pose, the prompt's token ids and the phrases' ids."""

    source: str
    pose: Optional[PoseFrame] = None
    prompt_ids: Optional[List[List[int]]] = None
    phrase_ids: Dict[str, List[int]] = field(default_factory=dict)
    words: str = ""

    def __deepcopy__(self, memo):
        return self


def _token_ids(clip, text: str) -> List[List[int]]:
    """The text encoder's token ids of ``text``, chunk by chunk (the SD1.5 CLIP-L stream when there are several)."""
    tokens = clip.tokenize(text)
    stream = tokens.get("l", next(iter(tokens.values()))) if isinstance(tokens, dict) else tokens
    return [[int(t[0]) if isinstance(t[0], (int, np.integer)) else -1 for t in chunk] for chunk in stream]


def _phrase_ids(clip, phrase: str, end_id: int) -> List[int]:
    ids = _token_ids(clip, phrase)[0][1:]  # drop the start token
    return ids[: ids.index(end_id)] if end_id in ids else ids


def make_request(source: str, pose_image=None, pose_keypoints=None, clip=None, prompt: str = "",
                 region_words: str = "") -> RegionRequest:
    """Check the inputs of the Regions node and read them (pose parsed, prompt tokenised); no model runs."""
    if source not in RegionSource.ALL:
        raise AnyDressingError(f"unknown region source {source!r}; use one of {list(RegionSource.ALL)}")
    pose = None
    wants_pose = source in (RegionSource.POSE, RegionSource.COMBINED)
    if wants_pose and pose_keypoints is not None:
        pose = parse_pose_keypoint(pose_keypoints)
        if pose_image is not None:
            log.info("AnyDressing regions: both pose inputs connected; the keypoints are used")
    elif wants_pose and pose_image is not None:
        if not torch.is_tensor(pose_image) or pose_image.ndim != 4 or pose_image.shape[-1] < 3:
            raise AnyDressingError(f"pose_image must be an IMAGE [B, H, W, 3]; got {type(pose_image).__name__} "
                                   f"{tuple(getattr(pose_image, 'shape', ()))}")
        if pose_image.shape[0] > 1:
            log.info("AnyDressing regions: %d pose pictures; the first one is used for every image", pose_image.shape[0])
        pose = keypoints_from_openpose(pose_image[0].detach().cpu().float().numpy())
    if source == RegionSource.POSE and pose is None:
        raise AnyDressingError("region source 'pose' needs a pose: connect an OpenPose picture (pose_image) or the "
                               "keypoints of a pose estimator (pose_keypoints), or choose the attention source")
    request = RegionRequest(source, pose, words=region_words or "")
    if source in (RegionSource.PROMPT, RegionSource.COMBINED) and clip is not None and (prompt or "").strip():
        request.prompt_ids = _token_ids(clip, prompt)
        end_id = _token_ids(clip, "")[0][1]
        phrases = {p for words in SLOT_WORDS.values() for p in words}
        phrases |= {p.strip() for entry in (region_words or "").replace("\n", ";").split(";")
                    for p in entry.split(",") if p.strip()}
        request.phrase_ids = {p: _phrase_ids(clip, p, end_id) for p in sorted(phrases)}
    elif source == RegionSource.PROMPT:
        raise AnyDressingError("region source 'prompt' needs the positive prompt: connect the CLIP and give the prompt "
                               "text, or choose the attention source")
    return request


def spec_for(request, features: GarmentFeatures, masks_given: bool = False) -> Optional[RegionSpec]:
    """The request made concrete for these garments (None: no regions; given region masks win)."""
    if request is None:
        return None
    if not isinstance(request, RegionRequest):
        raise AnyDressingError(f"'regions' must come from AnyDressing Regions (got {type(request).__name__})")
    if masks_given:
        log.info("AnyDressing regions: region_masks are connected, so they are used and the %s regions are not",
                 request.source)
        return None
    slots = list(features.slots)
    positions = phrases = None
    if request.prompt_ids is not None:
        try:
            phrases = parse_region_words(request.words, slots)
        except ValueError as exc:
            raise AnyDressingError(str(exc)) from None
        positions = [sorted({p for ph in garment for p in phrase_positions(request.prompt_ids, request.phrase_ids.get(ph, []))})
                     for garment in phrases]
    names = [f"{i + 1} {slot}" for i, slot in enumerate(slots)]
    return region_spec(request.source, slots, names, pose=request.pose, word_positions=positions, phrases=phrases)


class AnyDressingRegions(AnyDressingNode):
    node_id = "AnyDressingRegions"
    title = "AnyDressing Regions"
    about = ("Automatic per-garment regions for AnyDressing Apply, so garments stop bleeding into each other without "
             "hand-drawn masks: from a pose (an OpenPose picture or a pose estimator's keypoints), from the garments' "
             "own attention, or from where the prompt's garment words are read. Connect the output to AnyDressing "
             "Apply's 'regions'.")
    inputs = [
        io.Combo.Input("source", options=list(RegionSource.ALL), default=DEFAULT_SOURCE, tooltip=(
            "pose: body parts from the pose (best measured). attention: each pixel commits to the garment it attends "
            "to most over the steps. prompt: where the cross-attention reads each garment's words. combined: pose "
            "regions, the attention/prompt vote deciding where they meet. none: off.")),
        io.Image.Input("pose_image", optional=True, tooltip=(
            "An OpenPose skeleton picture (the image output of an OpenPose or DWPose preprocessor), the shape of the "
            "output image.")),
        PoseKeypoint.Input("pose_keypoints", optional=True, tooltip=(
            "Keypoints of a pose estimator node (DWPose/OpenPose POSE_KEYPOINT); used instead of pose_image when both "
            "come.")),
        io.Clip.Input("clip", optional=True, tooltip="For the prompt source: the CLIP that encodes the positive prompt."),
        io.String.Input("prompt", optional=True, multiline=True, default="", tooltip=(
            "For the prompt source: the positive prompt text, as given to CLIP Text Encode.")),
        io.String.Input("region_words", optional=True, default="", tooltip=(
            "For the prompt source: words per garment in chain order, ';' between garments, ',' between alternatives "
            "(e.g. 'shirt; jeans, trousers; cap'). Empty: each slot's usual nouns.")),
    ]
    outputs = [Regions.Output("regions", tooltip="Regions for one AnyDressing Apply.")]

    @classmethod
    def validate_inputs(cls, source=None):
        return cls.check_widgets(source=source)

    @classmethod
    def execute(cls, source, pose_image=None, pose_keypoints=None, clip=None, prompt="", region_words="") -> io.NodeOutput:
        return io.NodeOutput(make_request(source, pose_image, pose_keypoints, clip, prompt, region_words))


# ------------------------------------------------------------------ the patch side (called by nodes/patch.py)

class RegionRun:
    """One sampling run's plan, and the UNet's cross-attention modules the prompt vote projects with (found once
    per run, only when a prompt vote needs them)."""

    def __init__(self, spec: RegionSpec, noise: torch.Tensor, diffusion_model, device):
        self.plan = RegionPlan(spec, noise.shape[-2:], device=device)
        self.image_hw = (int(noise.shape[-2]) * 8, int(noise.shape[-1]) * 8)
        self.word_select: Dict[int, torch.Tensor] = {}  # garment-word selection [S, N] per context length
        self.attn2 = attn2_modules(diffusion_model) if self.plan.word_vote is not None else None


def attn2_modules(diffusion_model) -> dict:
    """Every cross-attention module of a UNet by key ``(block, id, transformer_index)``."""
    found = {}
    for name, blocks in (("input", diffusion_model.input_blocks), ("middle", [diffusion_model.middle_block]),
                         ("output", diffusion_model.output_blocks)):
        for i, blk in enumerate(blocks):
            for sub in blk.modules():
                for idx, tb in enumerate(getattr(sub, "transformer_blocks", None) or []):
                    if getattr(tb, "attn2", None) is not None:
                        found[(name, i, idx)] = tb.attn2
    return found


def positive_rows(extra, rows: int, whole_batch: bool) -> Optional[slice]:
    """The positive (cond) rows of a dressed segment of ``rows`` rows, or None when it has none.

    A segment split off by the paper's CFG policy is the positive chunk; a whole batch is cut into the equal
    chunks of ``cond_or_uncond`` (0 = positive), as ComfyUI stacks them.
    """
    if not whole_batch:
        return slice(None)
    cou = extra.get("cond_or_uncond") or [0]
    if 0 not in cou:
        return None
    chunk = max(1, rows // len(cou))
    i = cou.index(0)
    return slice(i * chunk, (i + 1) * chunk)


def layer_regions(run: RegionRun, extra, q, gk, heads: int, lengths, whole_batch: bool):
    """Regions ``[Br, T, N]`` of a dressed segment ``q [rows, T, C]`` (None: none now); feeds the attention vote."""
    plan = run.plan
    tokens = q.shape[1]
    hw = tokens_hw(extra["original_shape"][2:], tokens)
    if plan.wants_garment_maps(tokens):
        rows = positive_rows(extra, q.shape[0], whole_batch)
        if rows is not None:
            plan.add_garment_maps(garment_maps(q[rows], gk, heads, lengths), hw)
    return plan.tokens(hw, q.shape[0])


class WordMapPatch:
    """attn2 patch (a list entry: it chains with every other attn2 patch and replace) that records where each
    garment's words are read, for the prompt vote. Returns its inputs unchanged."""

    def __init__(self, patch):
        self.patch = patch

    def __deepcopy__(self, memo):
        return self

    def __call__(self, n, context, value, extra):
        run = self.patch.state.auto_regions
        block = extra.get("block")
        if run is None or run.attn2 is None or block is None or not self.patch.active(extra):
            return n, context, value
        if not run.plan.wants_word_maps(n.shape[1]):
            return n, context, value
        module = run.attn2.get((block[0], int(block[1]), int(extra.get("block_index", 0))))
        rows = positive_rows(extra, n.shape[0], True)
        if module is None or rows is None:
            return n, context, value
        select = run.word_select.get(context.shape[1])
        if select is None:
            select = run.word_select[context.shape[1]] = position_matrix(run.plan.spec.word_positions, context.shape[1],
                                                                     device=n.device)
        with torch.no_grad():
            q, k = module.to_q(n[rows]), module.to_k(context[rows])
            maps = word_maps(q, k, extra["n_heads"], select)
        run.plan.add_word_maps(maps, tokens_hw(extra["original_shape"][2:], n.shape[1]))
        return n, context, value


def install(model_patcher, patch) -> None:
    """Register the attn2 patch when the spec votes on prompt words."""
    spec = patch.region_spec
    if spec is not None and spec.uses_words:
        model_patcher.set_model_attn2_patch(WordMapPatch(patch))


def begin_run(patch, executor_args, diffusion_model, device) -> None:
    """Start the run's plan (refusing a pose of another aspect ratio before any step)."""
    patch.state.auto_regions = None
    if patch.region_spec is not None and executor_args:
        patch.state.auto_regions = RegionRun(patch.region_spec, executor_args[0], diffusion_model, device)


def used_regions(patch, image_hw):
    """What AnyDressing Attention Maps shows of the regions: ``(masks [N, H, W], labels)`` or None without regions.

    The regions of the last sampling run (a vote's are those of its last step); static pose regions also before
    any run. Read it before the maps node's own one-step evaluation, which would replace them.
    """
    spec = getattr(patch, "region_spec", None)
    if spec is None:
        return None
    masks = getattr(patch, "last_regions", None)
    if masks is None and spec.pose_masks is not None and spec.source == RegionSource.POSE:
        plan = RegionPlan(spec, (image_hw[0] // 8, image_hw[1] // 8))
        plan.begin_step()
        masks = plan.picture(image_hw)
    pending = masks is None
    if pending:
        masks = torch.zeros(spec.count, *image_hw)
    elif tuple(masks.shape[-2:]) != tuple(image_hw):
        masks = torch.nn.functional.interpolate(masks[None], size=tuple(image_hw), mode="nearest")[0]
    labels = [f"{name}: " + ("no region" if free else ("after sampling" if pending else spec.source))
              for name, free in zip(spec.names, spec.unconstrained)]
    return masks, labels


def end_run(patch) -> None:
    """Keep the regions the run used (for AnyDressing Attention Maps) and drop the plan."""
    run = patch.state.auto_regions
    if run is not None and run.plan.steps > 1:
        patch.last_regions = run.plan.picture(run.image_hw)
    patch.state.auto_regions = None


