"""GarmentsNet-side trainable pieces: GFE LoRA sets per slot and the DA projections Wk', Wv'.

Garment-Specific Feature Extractor (GFE) [paper]: every self-attention layer of GarmentsNet
carries one LoRA set per garment slot (kind: upper, lower, hat, ...) on q, k, v [paper] and the
output projection [paper, figure].  Garments are stacked on the batch axis, one garment per row;
row ``i`` uses the LoRA set of its slot ``slot_ids[i]``.  All rows run in ONE batched pass: the
A/B matrices are gathered by slot id and applied with ``bmm``.  Attention is the layer's own
self-attention per row, so each garment attends only to its own tokens [paper].

Several garments of the same slot share that slot's LoRA set [choice]: a set belongs to a garment
kind, not to an instance, and the garments stay apart because each is its own batch row.  A slot
the checkpoint has no set for is an error (:func:`GFELoRA.slot_ids`), never a silent fallback.

Shapes: per layer and target, ``A [S, r, C_in]``, ``B [S, C_out, r]`` (S slots, rank r); the delta
is ``(alpha / r) * x A_s^T B_s^T``.  ``B`` starts at zero, so a fresh GFE is the base UNet.

:class:`DAProjections` holds Wk', Wv' per DressingNet layer (``[C, C]`` each, nn.Linear layout
``[out, in]``, bias-free like SD's to_k/to_v), initialised as copies of Wk, Wv [paper].
"""

from __future__ import annotations

import math
from typing import Callable, Dict, Iterable, Mapping, Sequence, Tuple

import torch
import torch.nn as nn

from .attention import sdpa_attention
from .errors import AnyDressingError
from .features import BlockKey, GarmentFeatures, key_from_options, key_from_str, key_to_str

#: LoRA targets of a self-attention layer [paper: q, k, v; out from the paper's figure].
LORA_TARGETS = ("q", "k", "v", "out")
#: [choice] rank 64, alpha 8, like the closest released sibling work (the paper gives no rank).
DEFAULT_RANK = 64
DEFAULT_ALPHA = 8.0

#: ``extra_options`` entries the ComfyUI hooks use to pass state between the attn1 patch, the
#: attn1 replace and the attn1 output patch of ONE transformer-block call (ComfyUI hands the
#: same dict to all three).
_N_KEY = "anydressing_gfe_n"
_O_KEY = "anydressing_gfe_o"


def _mod_name(key: BlockKey) -> str:
    return key_to_str(key).replace(".", "_")


class GFELoRA(nn.Module):
    """LoRA sets per slot for every GarmentsNet self-attention layer.

    Args:
        channels: ``{key: C}`` attn1 width per layer (q/k/v/out are all ``C -> C`` in SD UNets).
        slots: slot names, one LoRA set each (index = position).
        rank, alpha: LoRA rank and alpha (scale ``alpha / rank``).
        targets: subset of :data:`LORA_TARGETS`.
    """

    def __init__(self, channels: Mapping[BlockKey, int], slots: Sequence[str], rank: int = DEFAULT_RANK,
                 alpha: float = DEFAULT_ALPHA, targets: Sequence[str] = LORA_TARGETS, dtype=None, device=None):
        super().__init__()
        if not slots:
            raise AnyDressingError("a GFE needs at least one slot (e.g. ['upper', 'lower'])")
        bad = [t for t in targets if t not in LORA_TARGETS]
        if bad:
            raise AnyDressingError(f"unknown LoRA targets {bad}; use a subset of {LORA_TARGETS}")
        self.slots = list(slots)
        self.rank = int(rank)
        self.alpha = float(alpha)
        self.targets = tuple(targets)
        self.keys = list(channels)
        self.layers = nn.ModuleDict()
        s = len(self.slots)
        for key, c in channels.items():
            layer = nn.ParameterDict()
            for t in self.targets:
                a = torch.empty(s, self.rank, int(c), dtype=dtype, device=device)
                nn.init.kaiming_uniform_(a.view(-1, int(c)), a=math.sqrt(5))
                layer[f"{t}_A"] = nn.Parameter(a)
                layer[f"{t}_B"] = nn.Parameter(torch.zeros(s, int(c), self.rank, dtype=dtype, device=device))
            self.layers[_mod_name(key)] = layer

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def slot_ids(self, slots: Sequence[str], device=None) -> torch.Tensor:
        """LongTensor ``[N]`` of LoRA-set indices for garments of ``slots`` (shared by kind)."""
        ids = []
        for s in slots:
            if s not in self.slots:
                raise AnyDressingError(
                    f"garment slot {s!r} has no GFE LoRA set in these weights (they have {self.slots}); "
                    f"set the garment's slot to one of those or use weights trained with {s!r}")
            ids.append(self.slots.index(s))
        return torch.tensor(ids, dtype=torch.long, device=device)

    def has(self, key: BlockKey) -> bool:
        return _mod_name(key) in self.layers

    def delta(self, key: BlockKey, target: str, x: torch.Tensor, slot_ids: torch.Tensor) -> torch.Tensor:
        """LoRA delta of one target: ``x [B, L, C_in]`` -> ``[B, L, C_out]`` (row i uses slot_ids[i]).

        ``B`` may be a multiple of ``len(slot_ids)`` (e.g. a host that repeats the garment batch).
        """
        layer = self.layers[_mod_name(key)]
        a, b = layer[f"{target}_A"], layer[f"{target}_B"]
        ids = slot_ids.to(a.device)
        if x.shape[0] != ids.shape[0]:
            if x.shape[0] % ids.shape[0]:
                raise AnyDressingError(f"GFE got a batch of {x.shape[0]} rows for {ids.shape[0]} garments")
            ids = ids.repeat(x.shape[0] // ids.shape[0])
        a_g = a.index_select(0, ids).to(device=x.device, dtype=x.dtype)  # [B, r, in]
        b_g = b.index_select(0, ids).to(device=x.device, dtype=x.dtype)  # [B, out, r]
        return torch.bmm(torch.bmm(x, a_g.transpose(1, 2)), b_g.transpose(1, 2)) * self.scale

    def qkv(self, key: BlockKey, n: torch.Tensor, q, k, v, slot_ids):
        """Add the q/k/v deltas of the normed input ``n [B, L, C]`` to base projections."""
        if "q" in self.targets:
            q = q + self.delta(key, "q", n, slot_ids)
        if "k" in self.targets:
            k = k + self.delta(key, "k", n, slot_ids)
        if "v" in self.targets:
            v = v + self.delta(key, "v", n, slot_ids)
        return q, k, v

    def out(self, key: BlockKey, o: torch.Tensor, projected: torch.Tensor, slot_ids) -> torch.Tensor:
        """Add the out delta of the attention output ``o`` (before to_out) to ``to_out(o)``."""
        if "out" not in self.targets:
            return projected
        return projected + self.delta(key, "out", o, slot_ids)

    def tensors(self) -> Dict[str, torch.Tensor]:
        """Checkpoint tensors ``gfe.<layer>.<target>.lora_A|lora_B`` (docs/FORMAT.md)."""
        out = {}
        for key in self.keys:
            layer = self.layers[_mod_name(key)]
            for t in self.targets:
                out[f"gfe.{key_to_str(key)}.{t}.lora_A"] = layer[f"{t}_A"].detach()
                out[f"gfe.{key_to_str(key)}.{t}.lora_B"] = layer[f"{t}_B"].detach()
        return out

    @classmethod
    def from_tensors(cls, tensors: Mapping[str, torch.Tensor], slots: Sequence[str], rank: int, alpha: float,
                     targets: Sequence[str] = LORA_TARGETS) -> "GFELoRA":
        """Inverse of :meth:`tensors`; shapes are checked by ``checkpoint.validate``."""
        channels = {}
        for name, t in tensors.items():
            if name.startswith("gfe.") and name.endswith(".lora_A"):
                key = key_from_str(name[4:].rsplit(".", 2)[0])
                channels[key] = int(t.shape[-1])
        lora = cls(channels, slots, rank, alpha, targets, device="meta")
        for key in lora.keys:
            layer = lora.layers[_mod_name(key)]
            for t in lora.targets:
                for ab in ("A", "B"):
                    layer[f"{t}_{ab}"] = nn.Parameter(tensors[f"gfe.{key_to_str(key)}.{t}.lora_{ab}"].clone(),
                                                      requires_grad=False)
        return lora


class GFEHooks:
    """GFE inside a host's GarmentsNet pass, for hosts that patch attention piecewise (ComfyUI).

    The host registers :meth:`attn1_patch` (sees the normed input ``n``), :meth:`attn1_replace`
    (gets base-projected ``q, k, v``) and :meth:`attn1_output_patch` (gets ``to_out(o)``) for
    every layer.  They pass ``n`` and ``o`` through ``extra_options``, which the host hands to all
    three within one transformer-block call, so the object itself holds no per-call state.
    Layers the LoRA does not cover run unchanged.
    """

    def __init__(self, lora: GFELoRA, slot_ids: torch.Tensor, attention: Callable = sdpa_attention):
        self.lora = lora
        self.slot_ids = slot_ids
        self.attention = attention

    def attn1_patch(self, n, context, value, extra_options):
        extra_options[_N_KEY] = n
        return n, context, value

    def attn1_replace(self, q, k, v, extra_options):
        key = key_from_options(extra_options)
        heads = extra_options["n_heads"]
        if self.lora.has(key):
            q, k, v = self.lora.qkv(key, extra_options.pop(_N_KEY), q, k, v, self.slot_ids)
        o = self.attention(q, k, v, heads)
        extra_options[_O_KEY] = o
        return o

    def attn1_output_patch(self, out, extra_options):
        o = extra_options.pop(_O_KEY, None)
        key = key_from_options(extra_options)
        if o is None or not self.lora.has(key):
            return out
        return self.lora.out(key, o, out, self.slot_ids)

    def __deepcopy__(self, memo):
        return self


class DAProjections(nn.Module):
    """Wk', Wv' per DressingNet layer [paper, Eq. 6], bias-free ``[C, C_in]`` each."""

    def __init__(self, weights: Mapping[BlockKey, Tuple[torch.Tensor, torch.Tensor]], trainable: bool = False):
        super().__init__()
        self.keys = list(weights)
        self.k = nn.ParameterDict()
        self.v = nn.ParameterDict()
        for key, (wk, wv) in weights.items():
            self.k[_mod_name(key)] = nn.Parameter(wk.detach().clone(), requires_grad=trainable)
            self.v[_mod_name(key)] = nn.Parameter(wv.detach().clone(), requires_grad=trainable)

    @classmethod
    def from_modules(cls, to_k: Mapping[BlockKey, nn.Module], to_v: Mapping[BlockKey, nn.Module],
                     trainable: bool = True) -> "DAProjections":
        """Initialise as copies of the base layers' to_k / to_v [paper]."""
        return cls({key: (to_k[key].weight, to_v[key].weight) for key in to_k}, trainable=trainable)

    def has(self, key: BlockKey) -> bool:
        return _mod_name(key) in self.k

    def weights(self, key: BlockKey) -> Tuple[torch.Tensor, torch.Tensor]:
        return self.k[_mod_name(key)], self.v[_mod_name(key)]

    def kv(self, key: BlockKey, f: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``f [B, S, C_in]`` -> ``(K' [B, S, C], V' [B, S, C])``."""
        wk, wv = self.weights(key)
        wk, wv = wk.to(device=f.device, dtype=f.dtype), wv.to(device=f.device, dtype=f.dtype)
        return f @ wk.t(), f @ wv.t()

    def attach(self, features: GarmentFeatures) -> GarmentFeatures:
        """``features`` carrying these projections (checked to cover every layer); K', V' are computed from
        them once per sampling run (:func:`.features.garment_kv`) [paper: K', V' depend only on the garments]."""
        missing = [key_to_str(k) for k in features.tokens if not self.has(k)]
        if missing:
            raise AnyDressingError(
                f"the adapter has no DA projections for layers {missing[:6]} of these garment features "
                f"({len(self.keys)} adapter layers, {len(features.tokens)} feature layers); it was made "
                "for a different UNet shape")
        out = features.to()
        out.projections = self
        return out

    def tensors(self) -> Dict[str, torch.Tensor]:
        """Checkpoint tensors ``da.<layer>.to_k|to_v`` (docs/FORMAT.md)."""
        out = {}
        for key in self.keys:
            wk, wv = self.weights(key)
            out[f"da.{key_to_str(key)}.to_k"] = wk.detach()
            out[f"da.{key_to_str(key)}.to_v"] = wv.detach()
        return out

    @classmethod
    def from_tensors(cls, tensors: Mapping[str, torch.Tensor]) -> "DAProjections":
        keys = sorted({key_from_str(n[3:].rsplit(".", 1)[0]) for n in tensors if n.startswith("da.")})
        return cls({k: (tensors[f"da.{key_to_str(k)}.to_k"], tensors[f"da.{key_to_str(k)}.to_v"]) for k in keys})


def layer_keys(names: Iterable[str]) -> list:
    """Layer keys named in checkpoint tensor names ``gfe.<layer>...`` / ``da.<layer>...``."""
    keys = set()
    for n in names:
        if n.startswith("gfe."):
            keys.add(key_from_str(n[4:].rsplit(".", 2)[0]))
        elif n.startswith("da."):
            keys.add(key_from_str(n[3:].rsplit(".", 1)[0]))
    return sorted(keys)
