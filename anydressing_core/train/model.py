"""The trainable model: GarmentsNet (+ GFE LoRA) and the DA projections, around a frozen DressingNet.

GarmentsNet, the LoRA and the projections are the weights engineer's (:mod:`..diffusers_model`,
:mod:`..gfe`); what lives here is trainer-specific: a DressingNet attn1 processor that (a) takes per-sample garment
features ``[B, N*L, C]`` (inference shares one garment set across the batch), (b) skip the garment
term on CFG-dropped rows, (c) hide padded garment slots and (d) record the maps A_k for IGL.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import torch
import torch.nn as nn

from diffusers.models.attention_processor import AttnProcessor2_0

from ..attention import dressing_attention, sdpa_attention, split_rows
from ..diffusers_model import attn1_modules, build_garments_net
from ..errors import AnyDressingError
from ..features import BlockKey
from ..garments import SLOTS
from ..gfe import DAProjections
from ..keys import diffusers_layer_keys


@dataclass
class StepContext:
    """Per-forward state shared by the processors of one training step."""

    features: Dict[BlockKey, torch.Tensor] = field(default_factory=dict)  # F per layer [B*N, L, C]
    garments: int = 0                                # N (padded)
    present: Optional[torch.Tensor] = None           # [B, N] bool
    keep: Optional[torch.Tensor] = None              # [B] bool, rows that see garments
    keep_rows: List[bool] = field(default_factory=list)  # the same on the host, read once per step
    strength: float = 1.0
    form: str = "separate"
    maps: Dict[BlockKey, torch.Tensor] = field(default_factory=dict)  # A_k [B, T, N]
    record_maps: bool = True                         # IGL needs them; off when its weight is 0
    maps_max_tokens: int = 0                         # record only layers with T <= this (0: all [paper])


def _to_out(attn, o: torch.Tensor) -> torch.Tensor:
    return attn.to_out[1](attn.to_out[0](o))


class DATrainProcessor:
    """DressingNet attn1 with Dressing-Attention on per-sample garment features; records A_k."""

    def __init__(self, key: BlockKey, da: DAProjections, ctx: StepContext):
        self.key, self.da, self.ctx = key, da, ctx

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kw):
        ctx, h = self.ctx, hidden_states
        q, k, v = attn.to_q(h), attn.to_k(h), attn.to_v(h)
        f = ctx.features.get(self.key)
        if f is None or ctx.keep is None or not any(ctx.keep_rows):
            return _to_out(attn, sdpa_attention(q, k, v, attn.heads))
        b, t, c = q.shape
        n = ctx.garments
        length = f.shape[1]
        gk, gv = self.da.kv(self.key, f.reshape(b, n * length, f.shape[-1]).to(q.dtype))
        regions = None
        if not bool(ctx.present.all()):
            regions = ctx.present[:, None, :].expand(b, t, n).to(q.dtype)
        record = ctx.record_maps and (ctx.maps_max_tokens <= 0 or t <= ctx.maps_max_tokens)
        maps = torch.zeros(b, t, n, dtype=torch.float32, device=q.device)

        def with_garments(rows: slice):
            res = dressing_attention(
                q[rows], k[rows], v[rows], gk[rows], gv[rows], attn.heads, [length] * n, strength=ctx.strength,
                form=ctx.form, regions=None if regions is None else regions[rows], return_maps=record)
            if not record:
                return res
            maps[rows] = res[1]
            return res[0]

        def plain(rows: slice):
            return sdpa_attention(q[rows], k[rows], v[rows], attn.heads)

        o = split_rows(ctx.keep_rows, with_garments, plain)
        if record:
            ctx.maps[self.key] = maps
        return _to_out(attn, o)


class DressingTrainModel(nn.Module):
    """Everything trainable, as ONE module so DDP/FSDP wrap it: GarmentsNet (+ GFE LoRA) and Wk'/Wv'.

    GarmentsNet is the weights engineer's :class:`~anydressing_core.diffusers_model.GarmentsNet`
    on a copy of the base UNet (attn2 removed [paper]).  The frozen DressingNet is held outside
    the module tree (it is not synchronised, saved or optimised); move it with :meth:`to_device`.

    ``forward(noisy [B,4,h,w], timesteps [B], text [B,77,C], garment_latents [B*N,4,h,w],
    slot_ids [B*N] (indices into garments.SLOTS), present [B,N], keep [B], added, garment_added) -> eps_pred [B,4,h,w]``
    (``added`` / ``garment_added``: SDXL's added conditioning of the B person rows / B*N garment rows, None for
    SD1.5); the maps A_k of the step
    are in ``self.ctx.maps`` afterwards (``{key: [B, T, N]}``, zero on rows without garments).
    """

    def __init__(self, unet, slots: List[str], rank: int = 64, alpha: float = 8.0, form: str = "separate",
                 strength: float = 1.0, garments_trainable: str = "full"):
        super().__init__()
        self.slots = list(slots)
        self.form = form
        self.ctx = StepContext(form=form, strength=strength)
        self.garments = build_garments_net(copy.deepcopy(unet), slots=slots, rank=rank, alpha=alpha, context="none")
        g_attn = attn1_modules(self.garments.unet)
        if not g_attn:
            raise AnyDressingError("the base UNet has no transformer blocks; AnyDressing needs an SD1.5-shaped UNet")
        self.garments.unet.requires_grad_(garments_trainable == "full")  # [paper] fully trainable
        mods = dict(self.garments.unet.named_modules())
        for name in diffusers_layer_keys(self.garments.unet.config):
            block = mods[name]
            frozen = [block.attn1.to_q, block.attn1.to_k, block.attn1.to_v, block.attn1.to_out[0]]  # under the LoRA
            frozen += [m for m in (getattr(block, "attn2", None), getattr(block, "norm2", None)) if m is not None]
            for m in frozen:  # attn2 is removed [paper]: its processor returns zeros
                m.requires_grad_(False)
        d_attn = attn1_modules(unet)
        self.da = DAProjections.from_modules({k: m.to_k for k, m in d_attn.items()},
                                             {k: m.to_v for k, m in d_attn.items()}, trainable=True)
        unet.requires_grad_(False)
        unet.set_attn_processor({
            name: (DATrainProcessor(self._key_of(name, unet), self.da, self.ctx) if name.endswith("attn1.processor")
                   else AttnProcessor2_0())
            for name in unet.attn_processors})
        self._dressing = [unet]  # a list keeps it out of the module tree
        self.sharded = False  # set by .fsdp.shard

    @classmethod
    def from_config(cls, unet, m) -> "DressingTrainModel":
        """The trainable module as the config's ``model`` section describes it (training, export, FSDP twin)."""
        return cls(unet, m.slots, m.lora_rank, m.lora_alpha, m.form, m.train_strength, m.garments_net_trainable)

    @staticmethod
    def _key_of(processor_name: str, unet) -> BlockKey:
        return diffusers_layer_keys(unet.config)[processor_name.rsplit(".attn1.", 1)[0]]

    @property
    def dressing_net(self):
        return self._dressing[0]

    def to_device(self, device, dtype=None):
        self.dressing_net.to(device=device, dtype=dtype)
        return self

    def encode_garments(self, latents: torch.Tensor, slot_ids: torch.Tensor, rows: torch.Tensor,
                        added=None) -> Dict[BlockKey, torch.Tensor]:
        """GarmentsNet at t=0 [paper] on the clean latents of the garments in ``rows`` (``[M]`` bool);
        returns F per layer as ``[M, L, C]`` with zeros on the other rows.

        Same as ``GarmentsNet.encode`` except that the slot ids stay set after the call: gradient
        checkpointing re-runs GarmentsNet blocks during backward, and they must apply the same LoRA.
        """
        return self._run_garments(latents, slot_ids, rows, added)[0]

    def _run_garments(self, latents, slot_ids, rows, added=None):
        """:meth:`encode_garments`, plus GarmentsNet's own output ``[M, 4, h, w]`` (unused by the loss).

        ``added``: SDXL's added conditioning for all ``M`` garment rows (:func:`..conditioning.garment_cond`).
        """
        g = self.garments
        idx = rows.nonzero().flatten()
        lat = latents[idx]
        if added is not None:
            added = {k: v[idx] for k, v in added.items()}
        g._slot_ids = g.gfe.slot_ids([SLOTS[int(i)] for i in slot_ids[idx].tolist()], lat.device)
        g._recording = {}
        try:
            t = torch.zeros(lat.shape[0], device=lat.device)
            dim = g.unet.config.cross_attention_dim
            sample = g.unet(lat, t, encoder_hidden_states=lat.new_zeros(lat.shape[0], 1, dim),
                            added_cond_kwargs=added).sample
            tokens = {k: g._recording[k] for k in g.keys}
        finally:
            g._recording = None
        out = {}
        for key, t in tokens.items():
            full = t.new_zeros((latents.shape[0],) + tuple(t.shape[1:]))
            out[key] = full.index_copy(0, idx, t)
        return out, sample

    def forward(self, noisy, timesteps, text, garment_latents, slot_ids, present, keep, added=None,
                garment_added=None):
        ctx = self.ctx
        ctx.maps = {}
        ctx.garments = int(present.shape[1])
        ctx.present, ctx.keep = present, keep
        ctx.keep_rows = [bool(r) for r in keep.tolist()]
        rows = (present & keep.view(-1, 1)).flatten()
        # features stay in ctx until the next step: gradient checkpointing re-runs DressingNet blocks in backward
        ctx.features, sample = {}, None
        if bool(rows.any()):
            ctx.features, sample = self._run_garments(garment_latents, slot_ids, rows, garment_added)
        elif self.sharded:  # FSDP all-gathers are collective: every process runs GarmentsNet's units, here on
            first = torch.zeros_like(rows)  # one garment whose features are then thrown away
            first[0] = True
            sample = self._run_garments(garment_latents, slot_ids, first, garment_added)[1]
        out = self.dressing_net(noisy, timesteps, encoder_hidden_states=text, added_cond_kwargs=added).sample
        if torch.is_grad_enabled():
            zero = self._touch_all()
            if self.sharded:
                # GarmentsNet's output joins the graph so that backward enters every FSDP unit through its
                # outputs (FSDP gathers a unit's weights there) and every unit weight gets a gradient
                zero = zero + sample.reshape(-1)[0]
            out = out + 0.0 * zero
        return out

    def _touch_all(self) -> torch.Tensor:
        """A zero that depends on every trainable weight.  Slots absent from a batch, layers after
        the last attn1 of GarmentsNet and whole CFG-dropped batches would otherwise leave weights out
        of the graph: DDP then needs find_unused_parameters (a graph walk per step), and a batch
        without garments has no gradient to back-propagate at all.  Under FSDP every process must
        also produce gradients for the same weights (reduce-scatter is collective).  Weights of
        other FSDP units are sharded DTensors by now; they are reached through GarmentsNet's output."""
        from torch.distributed.tensor import DTensor

        return sum(p.reshape(-1)[0] for p in self.parameters() if p.requires_grad and not isinstance(p, DTensor))
