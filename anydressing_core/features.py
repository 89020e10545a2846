"""What GarmentsNet hands to DressingNet, and the block keys that name the layers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch

from .garments import Garment

#: ComfyUI-style layer key: ``(block_name, block_id, transformer_index)``, e.g. ``("input", 1, 0)``.
BlockKey = Tuple[str, int, int]


def key_to_str(key: BlockKey) -> str:
    return f"{key[0]}.{int(key[1])}.{int(key[2])}"


def key_from_str(text: str) -> BlockKey:
    name, block_id, index = text.split(".")
    if name not in ("input", "middle", "output"):
        raise ValueError(f"bad block key {text!r}: expected input|middle|output.<id>.<index>")
    return (name, int(block_id), int(index))


def key_from_options(extra_options: Mapping) -> Optional[BlockKey]:
    """The layer key of a host attention call from its ``extra_options`` (``block`` + ``block_index``)."""
    block = extra_options.get("block")
    if not block:
        return None
    return (block[0], int(block[1]), int(extra_options.get("block_index", 0)))


class GarmentsNetContext:
    """What GarmentsNet's text cross-attention (attn2) reads during the garment pass."""

    NONE = "none"                  # attn2 removed [paper]
    EMPTY_PROMPT = "empty_prompt"  # the empty prompt's embedding (MagicClothing)
    IMAGE_TOKENS = "image_tokens"  # a resampler over CLIP-vision tokens of the garment (IMAGDressing)
    ALL = (NONE, EMPTY_PROMPT, IMAGE_TOKENS)


@dataclass
class GarmentFeatures:
    """Garment features for every self-attention layer, plus the garments they came from.

    ``tokens[key]`` is ``[N, L, C]``: F, the normalised hidden state entering attn1 of that GarmentsNet
    block at t=0 (one row per garment, in the order of ``garments``).  ``projections`` are an adapter's
    trained Wk', Wv' (None: the sampling model's own to_k / to_v, zero-shot); K', V' are computed from them
    once per sampling run by :func:`garment_kv`.  ``form`` is the DA form the weights were trained with.

    ``base`` names the model family that encoded them (``"sd15"``, ``"sdxl"``; None when unknown),
    ``latent_hw`` the garment latent's ``(h, w)`` (each layer's token grid follows from it), and
    ``pooled[key] = p`` says that layer's tokens are averages of ``p x p`` cells (:mod:`.budget`; absent = 1).
    """

    tokens: Dict[BlockKey, torch.Tensor]
    garments: List[Garment]
    projections: Optional[Any] = None  # a gfe.DAProjections (not imported here: gfe imports this module)
    form: Optional[str] = None
    #: True when an adapter's GFE LoRA ran in the garment pass that made these features
    gfe: bool = False
    base: Optional[str] = None
    latent_hw: Optional[Tuple[int, int]] = None
    pooled: Dict[BlockKey, int] = field(default_factory=dict)

    def __post_init__(self):
        n = len(self.garments)
        for key, t in self.tokens.items():
            if t.ndim != 3 or t.shape[0] != n:
                raise ValueError(f"features of {key} have shape {tuple(t.shape)}; expected [{n}, tokens, channels]")

    @classmethod
    def of(cls, tokens: Dict[BlockKey, torch.Tensor], slots: Sequence[str], weights: Optional[Sequence[float]] = None,
           names: Optional[Sequence[str]] = None, **kw) -> "GarmentFeatures":
        """Features of garments known only by slot (and weight, name): no pictures."""
        weights = [1.0] * len(slots) if weights is None else list(weights)
        if len(weights) != len(slots):
            raise ValueError(f"{len(weights)} weights for {len(slots)} garments")
        names = list(names) if names else [""] * len(slots)
        garments = [Garment(slot=s, weight=float(w), name=nm) for s, w, nm in zip(slots, weights, names)]
        return cls(tokens=tokens, garments=garments, **kw)

    @property
    def count(self) -> int:
        return len(self.garments)

    @property
    def slots(self) -> List[str]:
        return [g.slot for g in self.garments]

    @property
    def weights(self) -> List[float]:
        return [float(g.weight) for g in self.garments]

    @property
    def names(self) -> List[str]:
        return [g.name for g in self.garments]

    def lengths(self, key: BlockKey) -> List[int]:
        return [int(self.tokens[key].shape[1])] * self.count

    def token_size(self, key: BlockKey) -> int:
        """How many encoded tokens each of this layer's tokens stands for (``p * p`` after pooling, else 1)."""
        p = int(self.pooled.get(key, 1))
        return p * p

    def flat(self, key: BlockKey) -> torch.Tensor:
        """All garments' tokens of one layer concatenated on the token axis: ``[1, N*L, C]``."""
        t = self.tokens[key]
        return t.reshape(1, -1, t.shape[-1])

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tokens.values())

    def to(self, device=None, dtype=None) -> "GarmentFeatures":
        """A copy on ``device``/``dtype`` (tensors are only copied when they must move)."""
        def move(t):
            return t.to(device=device, dtype=dtype if t.is_floating_point() else None)
        return GarmentFeatures(tokens={k: move(t) for k, t in self.tokens.items()}, garments=list(self.garments),
                               projections=self.projections, form=self.form, gfe=self.gfe, base=self.base,
                               latent_hw=self.latent_hw, pooled=dict(self.pooled))

    def __deepcopy__(self, memo):
        # Features are immutable once encoded; ComfyUI deep-copies model_options on every clone.
        return self


def project_garments(flat: torch.Tensor, key: BlockKey, projections, to_k, to_v):
    """K', V' ``[1, N*L, C]`` of one layer from the garments' tokens ``F_all [1, N*L, C]``: the one place
    they are projected.  ``projections`` is a ``gfe.DAProjections`` or None.

    With trained projections (an adapter's Wk', Wv') K' = F Wk', V' = F Wv' [paper, Eq. 6]; zero-shot they
    are the layer's own ``to_k`` / ``to_v`` modules, called (never their ``.weight``) so that weights patched
    for this run (a LoRA, low-VRAM casting) are the ones used [choice].  Callers cache the result for as long
    as the weights stay the same (one sampling run).
    """
    if projections is not None:
        return projections.kv(key, flat)
    return to_k(flat), to_v(flat)


def garment_kv(features: GarmentFeatures, key: BlockKey, to_k, to_v, like: torch.Tensor):
    """:func:`project_garments` of ``features`` at one layer, in ``like``'s device and dtype."""
    flat = features.flat(key).to(device=like.device, dtype=like.dtype)
    return project_garments(flat, key, features.projections, to_k, to_v)
