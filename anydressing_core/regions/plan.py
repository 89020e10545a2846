"""Which garments each pixel row may attend to, from an automatic region source, per layer and step.

A :class:`RegionSpec` is what one Apply asks for, prepared before sampling (pose masks drawn, prompt
words found). A :class:`RegionPlan` lives for one sampling run: it takes the per-layer maps the vote
sources need, closes the vote once per step (:meth:`RegionPlan.begin_step`) and hands each layer its
allowed-garment masks ``[Br, T, N]`` (1 = may attend), built once per step and layer size.

Rules [choice]:

* a pixel inside some garment's region attends to the garments whose region holds it, plus the
  unconstrained garments (no region: a slot without a body part, a missing keypoint, words not in the
  prompt); a pixel in no region attends to every garment (as with given ``region_masks``);
* ``pose``: the body-part masks (``body.slot_masks``); ``attention`` / ``prompt``: the vote of
  ``vote.MapVote`` on the DA maps / the garments' word maps; ``combined``: the pose masks where a pose
  is given (else everywhere), and where several garments' pose regions meet, the garment holding a
  majority of the vote (attention, averaged with prompt when words were found).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from ..attention import masks_to_tokens
from ..errors import AnyDressingError
from .vote import MapVote, grid_for

log = logging.getLogger(__name__)


class RegionSource:
    """Where automatic per-garment regions come from."""

    NONE = "none"
    POSE = "pose"
    ATTENTION = "attention"
    PROMPT = "prompt"
    COMBINED = "combined"
    ALL = (NONE, POSE, ATTENTION, PROMPT, COMBINED)


#: [choice] layers with at most this many tokens feed the votes (SD1.5 at 512 px: the 16x16 level and the middle
#: block): a vote's map is a second q.k pass, so only the coarse layers, where it is cheap, pay it
MAX_VOTE_TOKENS = 512
#: a pose canvas whose aspect ratio differs from the image's by more than this share is refused
ASPECT_TOLERANCE = 0.05


@dataclass
class RegionSpec:
    """One Apply's automatic regions, prepared before sampling.

    ``pose_masks [N, H, W]`` or ``[B, N, H, W]`` per image (CPU, 0/1, on the pose canvas; an empty mask = no
    pose region), ``word_positions``
    (context token positions per garment; empty = words not found), ``notes`` per garment (None, or why it is
    unconstrained).
    """

    source: str
    names: List[str]
    pose_masks: Optional[torch.Tensor] = None
    word_positions: Optional[List[List[int]]] = None
    notes: List[Optional[str]] = field(default_factory=list)
    max_vote_tokens: int = MAX_VOTE_TOKENS
    vote: Dict[str, float] = field(default_factory=dict)  # MapVote settings (temperature, momentum, ...)

    def __post_init__(self):
        if self.source not in RegionSource.ALL:
            raise AnyDressingError(f"unknown region source {self.source!r}; use one of {list(RegionSource.ALL)}")
        if not self.notes:
            self.notes = [None] * self.count

    def __deepcopy__(self, memo):
        return self  # immutable once built; hosts deep-copy model options on every clone

    @property
    def count(self) -> int:
        return len(self.names)

    @property
    def uses_attention(self) -> bool:
        return self.source in (RegionSource.ATTENTION, RegionSource.COMBINED)

    @property
    def uses_words(self) -> bool:
        return self.word_positions is not None and self.source in (RegionSource.PROMPT, RegionSource.COMBINED)

    @property
    def unconstrained(self) -> List[bool]:
        """Garments that never get a region (the notes say why)."""
        return [n is not None for n in self.notes]

    def check_canvas(self, latent_hw: Sequence[int]) -> None:
        """Refuse a pose made for a picture of another aspect ratio than the latent ``(h, w)``."""
        if self.pose_masks is None:
            return
        ph, pw = self.pose_masks.shape[-2:]
        want, got = float(latent_hw[1]) / float(latent_hw[0]), pw / ph
        if abs(got / want - 1.0) > ASPECT_TOLERANCE:
            raise AnyDressingError(
                f"the pose's canvas has aspect {got:.2f} (width / height) but the image is {int(latent_hw[1]) * 8}x"
                f"{int(latent_hw[0]) * 8} (aspect {want:.2f}): run the pose estimator on a picture of the output's shape, "
                "or resize the pose image to it")


def _finalise(soft: torch.Tensor, unconstrained: torch.Tensor) -> torch.Tensor:
    """Allowed masks ``[Br, T, N]`` (float 0/1) from soft regions: majority inside, all where none holds."""
    allowed = soft > 0.5
    allowed = allowed & ~unconstrained
    nowhere = ~allowed.any(dim=-1, keepdim=True)
    return (allowed | nowhere | unconstrained).to(soft.dtype)


class RegionPlan:
    """The regions of one sampling run for a latent of ``latent_hw`` (h, w)."""

    def __init__(self, spec: RegionSpec, latent_hw: Sequence[int], device=None):
        spec.check_canvas(latent_hw)
        self.spec = spec
        self.latent_hw = (int(latent_hw[0]), int(latent_hw[1]))
        self.device = device
        self.grid = grid_for(latent_hw, spec.max_vote_tokens)
        n = spec.count
        self._free = torch.tensor(spec.unconstrained, dtype=torch.bool, device=device).view(1, 1, n)
        self.attention_vote = MapVote(n, self.grid, **spec.vote) if spec.uses_attention and n > 1 else None
        self.word_vote = None
        if spec.uses_words:
            voters = [k for k, pos in enumerate(spec.word_positions) if pos]
            if len(voters) > 1 or (voters and self.attention_vote is not None):
                self.word_vote = MapVote(n, self.grid, voters, **spec.vote)
        self._pose = None if spec.pose_masks is None else spec.pose_masks.to(device=device, dtype=torch.float32)
        self._grid_allowed: Optional[torch.Tensor] = None  # [Bv, N, gh, gw] after a vote
        self._tokens: Dict[Tuple[int, int], torch.Tensor] = {}
        self.step_cache: dict = {}  # per-step cache for dressing_attention's bias rows (regions change per step)
        self.steps = 0

    @property
    def dynamic(self) -> bool:
        return self.attention_vote is not None or self.word_vote is not None

    @property
    def active(self) -> bool:
        """Whether any layer gets regions at all."""
        return self.dynamic or (self._pose is not None and self.spec.source in (RegionSource.POSE, RegionSource.COMBINED))

    def wants_garment_maps(self, tokens: int) -> bool:
        return self.attention_vote is not None and tokens <= self.spec.max_vote_tokens

    def wants_word_maps(self, tokens: int) -> bool:
        return self.word_vote is not None and tokens <= self.spec.max_vote_tokens

    def add_garment_maps(self, maps: torch.Tensor, hw: Sequence[int]) -> None:
        self.attention_vote.add(maps, hw)

    def add_word_maps(self, maps: torch.Tensor, hw: Sequence[int]) -> None:
        self.word_vote.add(maps, hw)

    def begin_step(self) -> None:
        """Close the previous step's votes and rebuild the regions (once per step, on the device)."""
        self.steps += 1
        if not self.dynamic:
            return  # static regions: built once per layer size for the whole run
        for vote in (self.attention_vote, self.word_vote):
            if vote is not None:
                vote.step()
        self._tokens, self.step_cache = {}, {}
        self._grid_allowed = self._vote_regions()

    def _vote_regions(self) -> Optional[torch.Tensor]:
        shares = [v.shares() for v in (self.attention_vote, self.word_vote) if v is not None]
        shares = [s for s in shares if s is not None]
        with_pose = self._pose is not None and self.spec.source == RegionSource.COMBINED
        if with_pose:
            cand = masks_to_tokens(self._pose, self.grid)
            cand = (cand.transpose(1, 2).reshape(cand.shape[0], -1, *self.grid) > 0.5) | self._free.view(1, -1, 1, 1)
        if not shares or len({s.shape[0] for s in shares}) > 1:
            return cand.float() if with_pose else None  # no vote yet: the pose alone
        vote = shares[0] if len(shares) == 1 else sum(shares) / len(shares)  # [B, N, gh, gw]
        if not with_pose:
            return (vote > 0.5).float()
        within = vote * cand
        within = within / within.sum(dim=1, keepdim=True).clamp_min(1e-6)
        strong = within > 0.5
        return torch.where(strong.any(dim=1, keepdim=True), strong, cand).float()

    def tokens(self, hw: Sequence[int], rows: int) -> Optional[torch.Tensor]:
        """Allowed masks ``[Br, T, N]`` for a layer of ``hw`` and a dressed segment of ``rows`` rows, or None (no
        restriction at this step). ``Br`` is 1 or ``rows`` (per-image vote regions tiled over CFG chunks)."""
        cached = self._cached(hw)
        if cached is None or cached.shape[0] == 1 or cached.shape[0] == rows:
            return cached
        if rows % cached.shape[0] == 0:  # CFG chunks of the same images: tile
            return cached.repeat(rows // cached.shape[0], 1, 1)
        return cached[:1]  # rows that are not whole chunks of the voted images: the first image's regions

    def _cached(self, hw) -> Optional[torch.Tensor]:
        """The allowed masks of every image ``[1 or B, T, N]`` at ``hw``, built once per step (static: per run)."""
        hw = (int(hw[0]), int(hw[1]))
        cached = self._tokens.get(hw)
        if cached is None:
            cached = self._build_tokens(hw)
            if cached is not None:
                self._tokens[hw] = cached
        return cached

    def _build_tokens(self, hw) -> Optional[torch.Tensor]:
        if self.dynamic:
            if self._grid_allowed is None:
                return None
            soft = masks_to_tokens(self._grid_allowed, hw)
        elif self._pose is not None and self.spec.source in (RegionSource.POSE, RegionSource.COMBINED):
            soft = masks_to_tokens(self._pose, hw)
        else:
            return None
        return _finalise(soft, self._free)

    def picture(self, image_hw: Sequence[int], index: int = 0) -> Optional[torch.Tensor]:
        """The allowed masks of image ``index`` at ``image_hw``: ``[N, H, W]`` float on the CPU (one copy, for the
        maps picture; call after sampling), or None when no region was in force."""
        h, w = self.grid if self.dynamic else self.latent_hw
        cur = self._cached((h, w))
        if cur is None:
            return None
        grid = cur[min(index, cur.shape[0] - 1)].transpose(0, 1).reshape(1, -1, h, w)
        up = F.interpolate(grid.float(), size=tuple(int(v) for v in image_hw), mode="nearest")
        return up[0].cpu()
