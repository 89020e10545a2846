"""A tiny DressingNet / GarmentsNet pair for the CPU ablation benchmark.

The network works on a lossless space-to-depth "latent" [choice]: a ``[B, 3, p*h, p*w]`` image in
[-1, 1] becomes ``[B, 3*p*p, h, w]`` by ``pixel_unshuffle(p)`` (``p`` = patch, 2 or 4), so the
decoder D of GTL is the exact inverse ``pixel_shuffle(p)`` and no VAE has to be trained (nothing
learned can hide errors).

UNet layout (``c`` channels, e.g. 32; ``L = 3*p*p`` latent channels)::

    conv_in(L + L pose) -> Res -> DA block ("input", 1, 0)        at h x w
    down -> Res -> DA block ("middle", 0, 0) -> Res                at h/2 x w/2
    up, concat skip -> Res -> DA block ("output", 1, 0)           at h x w -> conv_out(L)

Each DA block is ``x + attn1(LN(x)); x + FF(LN(x))`` like SD's transformer block without attn2
(no text: the benchmark's garments carry all appearance information [choice]).  The pose map
(an OpenPose-like stick figure, concatenated to the input [choice, a built-in ControlNet]) fixes
the layout, so a generated image can be scored against the ground-truth masks.

Every attn1 runs through :class:`Attn1`, which is plain self-attention, GFE self-attention in
GarmentsNet (``anydressing_core.gfe.GFELoRA``) or Dressing-Attention in DressingNet
(``anydressing_core.attention.dressing_attention`` with ``gfe.DAProjections`` for K', V').
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from anydressing_core.attention import dressing_attention, sdpa_attention
from anydressing_core.budget import pool_factor, pool_tokens
from anydressing_core.features import BlockKey

DA_KEYS: List[BlockKey] = [("input", 1, 0), ("middle", 0, 0), ("output", 1, 0)]


@dataclass
class Ctx:
    """What one forward pass does in attn1.

    mode ``plain``: self-attention.  ``record``: GarmentsNet pass; stores F (the normed input of
    attn1, ``[B*N, L, C]``) per key in ``features`` and applies ``lora`` with ``slot_ids [B*N]``.
    ``dress``: DressingNet pass with ``garments[key] = F_all [B, N*L, C]`` of ``count`` = N garments,
    K'/V' from ``proj``; with ``want_maps`` the maps ``A [B, T, N]`` land in ``maps``.
    """

    mode: str = "plain"
    lora: Optional[nn.Module] = None
    slot_ids: Optional[torch.Tensor] = None
    features: Dict[BlockKey, torch.Tensor] = field(default_factory=dict)
    garments: Optional[Dict[BlockKey, torch.Tensor]] = None
    count: int = 0
    proj: Optional[nn.Module] = None
    strength: float = 1.0
    want_maps: bool = False
    maps: Dict[BlockKey, torch.Tensor] = field(default_factory=dict)
    #: optional ``fn(key, q, gk, heads, lengths) -> regions [Br, T, N] or None`` (benchmarks/ablation/regions.py)
    regions: Optional[Callable] = None


class Attn1(nn.Module):
    def __init__(self, c: int, heads: int, key: BlockKey):
        super().__init__()
        self.key, self.heads = key, heads
        self.to_q = nn.Linear(c, c, bias=False)
        self.to_k = nn.Linear(c, c, bias=False)
        self.to_v = nn.Linear(c, c, bias=False)
        self.to_out = nn.Linear(c, c)

    def forward(self, n: torch.Tensor, ctx: Ctx) -> torch.Tensor:
        """``n [B, T, C]`` (already normed) -> ``[B, T, C]``."""
        q, k, v = self.to_q(n), self.to_k(n), self.to_v(n)
        if ctx.mode == "record":
            ctx.features[self.key] = n
            if ctx.lora is not None and ctx.lora.has(self.key):
                q, k, v = ctx.lora.qkv(self.key, n, q, k, v, ctx.slot_ids)
                o = sdpa_attention(q, k, v, self.heads)
                return ctx.lora.out(self.key, o, self.to_out(o), ctx.slot_ids)
        elif ctx.mode == "dress" and ctx.garments is not None:
            gk, gv = ctx.proj.kv(self.key, ctx.garments[self.key])
            lengths = [gk.shape[1] // ctx.count] * ctx.count
            regions = None if ctx.regions is None else ctx.regions(self.key, q, gk, self.heads, lengths)
            res = dressing_attention(q, k, v, gk, gv, self.heads, lengths, strength=ctx.strength,
                                     regions=regions, return_maps=ctx.want_maps)
            if ctx.want_maps:
                res, ctx.maps[self.key] = res
            return self.to_out(res)
        return self.to_out(sdpa_attention(q, k, v, self.heads))


class DABlock(nn.Module):
    def __init__(self, c: int, heads: int, key: BlockKey):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(c), nn.LayerNorm(c)
        self.attn1 = Attn1(c, heads, key)
        self.ff = nn.Sequential(nn.Linear(c, 2 * c), nn.GELU(), nn.Linear(2 * c, c))

    def forward(self, h: torch.Tensor, ctx: Ctx) -> torch.Tensor:
        b, c, hh, ww = h.shape
        x = h.flatten(2).transpose(1, 2)
        x = x + self.attn1(self.norm1(x), ctx)
        x = x + self.ff(self.norm2(x))
        return x.transpose(1, 2).reshape(b, c, hh, ww)


class Res(nn.Module):
    def __init__(self, cin: int, cout: int, temb: int):
        super().__init__()
        self.n1, self.c1 = nn.GroupNorm(8, cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.t = nn.Linear(temb, cout)
        self.n2, self.c2 = nn.GroupNorm(8, cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x, t):
        h = self.c1(F.silu(self.n1(x))) + self.t(t)[:, :, None, None]
        return self.skip(x) + self.c2(F.silu(self.n2(h)))


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding ``[B] -> [B, dim]`` (as SD's UNet)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    a = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(a), torch.sin(a)], dim=1)


class TinyUNet(nn.Module):
    """``forward(z [B, L, h, w], t [B], pose [B, L, h, w], ctx) -> prediction [B, L, h, w]``.

    [choice] 2 heads: at 32 channels that is 16 per head; 4 heads of 8 made a training step 1.6x
    slower on the CPU (PyTorch's attention kernels are 3x slower at head width 8 than at 16).
    """

    def __init__(self, c: int = 32, heads: int = 2, latent_ch: int = 12):
        super().__init__()
        temb = 2 * c
        self.c = c
        self.temb = nn.Sequential(nn.Linear(c, temb), nn.SiLU(), nn.Linear(temb, temb))
        self.conv_in = nn.Conv2d(2 * latent_ch, c, 3, padding=1)
        self.r_in = Res(c, c, temb)
        self.da_in = DABlock(c, heads, DA_KEYS[0])
        self.down = nn.Conv2d(c, c, 3, stride=2, padding=1)
        self.r_mid1 = Res(c, c, temb)
        self.da_mid = DABlock(c, heads, DA_KEYS[1])
        self.r_mid2 = Res(c, c, temb)
        self.up = nn.Conv2d(c, c, 3, padding=1)
        self.r_out = Res(2 * c, c, temb)
        self.da_out = DABlock(c, heads, DA_KEYS[2])
        self.norm_out = nn.GroupNorm(8, c)
        self.conv_out = nn.Conv2d(c, latent_ch, 3, padding=1)

    def blocks(self) -> Dict[BlockKey, DABlock]:
        return {DA_KEYS[0]: self.da_in, DA_KEYS[1]: self.da_mid, DA_KEYS[2]: self.da_out}

    def forward(self, z, t, pose, ctx: Optional[Ctx] = None):
        ctx = ctx or Ctx()
        te = self.temb(timestep_embedding(t, self.c))
        h0 = self.da_in(self.r_in(self.conv_in(torch.cat([z, pose], 1)), te), ctx)
        h = self.r_mid1(self.down(h0), te)
        h = self.r_mid2(self.da_mid(h, ctx), te)
        h = self.up(F.interpolate(h, size=h0.shape[-2:], mode="nearest"))
        h = self.da_out(self.r_out(torch.cat([h, h0], 1), te), ctx)
        return self.conv_out(F.silu(self.norm_out(h)))


def to_latent(img: torch.Tensor, patch: int = 2) -> torch.Tensor:
    """``[B, 3, H, W]`` -> ``[B, 3*patch*patch, H/patch, W/patch]`` (lossless)."""
    return F.pixel_unshuffle(img, patch)


def to_image(z: torch.Tensor, patch: int = 2) -> torch.Tensor:
    """Inverse of :func:`to_latent` (the benchmark's decoder D)."""
    return F.pixel_shuffle(z, patch)


def encode_garments(garments_net: TinyUNet, garments: torch.Tensor, slot_ids: Optional[torch.Tensor] = None,
                    lora: Optional[nn.Module] = None, patch: int = 2) -> Dict[BlockKey, torch.Tensor]:
    """GarmentsNet at t=0 on clean garments ``[B, N, 3, H, W]`` -> ``{key: F_all [B, N*L, C]}``.

    All B*N garments run as one batch [paper: parallel], each attending only to itself;
    ``slot_ids [B*N]`` picks each row's GFE LoRA set.
    """
    b, n = garments.shape[:2]
    z = to_latent(garments.flatten(0, 1), patch)
    ctx = Ctx(mode="record", lora=lora, slot_ids=slot_ids)
    t = torch.zeros(z.shape[0], device=z.device)
    garments_net(z, t, torch.zeros_like(z), ctx)
    return {key: f.reshape(b, n * f.shape[1], f.shape[2]) for key, f in ctx.features.items()}


def pool_features(feats: Dict[BlockKey, torch.Tensor], count: int, budget: int) -> Dict[BlockKey, torch.Tensor]:
    """``{key: F_all [B, N*L, C]}`` with each garment's square ``L``-token grid pooled by the product's
    budget rule (``anydressing_core.budget``: ``budget`` garment tokens per layer, all ``count`` garments)."""
    out = {}
    for key, f in feats.items():
        b, s, c = f.shape
        length = s // count
        side = math.isqrt(length)
        p = pool_factor(side, side, count, budget)
        out[key] = pool_tokens(f.reshape(b * count, length, c), (side, side), p).reshape(b, -1, c)
    return out
