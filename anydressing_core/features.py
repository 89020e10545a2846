"""What GarmentsNet hands to DressingNet."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import torch

#: ComfyUI-style layer key: ``(block_name, block_id, transformer_index)``, e.g. ``("input", 1, 0)``.
BlockKey = Tuple[str, int, int]


def key_to_str(key: BlockKey) -> str:
    return f"{key[0]}.{int(key[1])}.{int(key[2])}"


def key_from_str(text: str) -> BlockKey:
    name, block_id, index = text.split(".")
    if name not in ("input", "middle", "output"):
        raise ValueError(f"bad block key {text!r}: expected input|middle|output.<id>.<index>")
    return (name, int(block_id), int(index))


@dataclass
class GarmentFeatures:
    """Garment features for every self-attention layer.

    ``tokens[key]`` is ``[N, L, C]``: F, the normalised hidden state entering attn1 of that
    GarmentsNet block at t=0 (one row per garment).  ``kv[key]`` optionally holds K', V' as
    ``[1, N*L, C]`` each, computed by an adapter's trained projections at encode time.

    ``base`` names the model family that encoded them (``"sd15"``, ``"sdxl"``; None when unknown),
    ``latent_hw`` the garment latent's ``(h, w)`` (each layer's token grid follows from it), and
    ``pooled[key] = p`` says that layer's tokens are averages of ``p x p`` cells (:mod:`.budget`;
    absent = 1).
    """

    tokens: Dict[BlockKey, torch.Tensor]
    slots: List[str]
    weights: List[float]
    names: List[str] = field(default_factory=list)
    kv: Optional[Dict[BlockKey, Tuple[torch.Tensor, torch.Tensor]]] = None
    form: Optional[str] = None
    base: Optional[str] = None
    latent_hw: Optional[Tuple[int, int]] = None
    pooled: Dict[BlockKey, int] = field(default_factory=dict)

    def __post_init__(self):
        n = len(self.slots)
        if len(self.weights) != n:
            raise ValueError(f"{len(self.weights)} weights for {n} garments")
        for key, t in self.tokens.items():
            if t.ndim != 3 or t.shape[0] != n:
                raise ValueError(f"features of {key} have shape {tuple(t.shape)}; expected [{n}, tokens, channels]")

    @property
    def count(self) -> int:
        return len(self.slots)

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
        total = sum(t.numel() * t.element_size() for t in self.tokens.values())
        for k, v in (self.kv or {}).values():
            total += k.numel() * k.element_size() + v.numel() * v.element_size()
        return total

    def to(self, device=None, dtype=None) -> "GarmentFeatures":
        """A copy on ``device``/``dtype`` (tensors are only copied when they must move)."""
        def move(t):
            return t.to(device=device, dtype=dtype if t.is_floating_point() else None)
        return GarmentFeatures(
            tokens={k: move(t) for k, t in self.tokens.items()},
            slots=list(self.slots), weights=list(self.weights), names=list(self.names),
            kv=None if self.kv is None else {k: (move(a), move(b)) for k, (a, b) in self.kv.items()},
            form=self.form, base=self.base, latent_hw=self.latent_hw, pooled=dict(self.pooled),
        )

    def __deepcopy__(self, memo):
        # Features are immutable once encoded; ComfyUI deep-copies model_options on every clone.
        return self
