"""IMAGDressing's garment-image resampler: CLIP-vision tokens -> GarmentsNet's cross-attention context.

IMAGDressing feeds its reference UNet's attn2 with a perceiver-style resampler (the IP-Adapter-plus
design) over the penultimate hidden states of CLIP ViT-H: learned latent queries attend to the
image tokens and to themselves through ``depth`` (attention, feed-forward) pairs.  Written here from
that published design, not from IMAGDressing's (non-commercial) code.

State-dict layout (``resampler.*`` in our checkpoint, ``proj.*`` in the IMAGDressing file)::

    latents [1, Q, D]; proj_in.{weight,bias} [D, E]; proj_out.{weight,bias}; norm_out.{weight,bias}
    layers.{i}.0.{norm1,norm2}.{weight,bias}; layers.{i}.0.{to_q [I, D], to_kv [2I, D], to_out [D, I]}.weight
    layers.{i}.1.0.{weight,bias} (LayerNorm); layers.{i}.1.1.weight [M*D, D]; layers.{i}.1.3.weight [D, M*D]

The head count is not stored: ``heads = I / dim_head`` with ``dim_head`` 64 [choice: the IP-Adapter-plus
value for SD1.5, which IMAGDressing builds on].
"""

from __future__ import annotations

import math
import re
from typing import Dict

import torch
import torch.nn.functional as F

from .errors import AnyDressingError

DIM_HEAD = 64


class Resampler(torch.nn.Module):
    """``forward(tokens [N, T, E]) -> context [N, Q, D]``."""

    def __init__(self, sd: Dict[str, torch.Tensor], dim_head: int = DIM_HEAD):
        super().__init__()
        for need in ("latents", "proj_in.weight", "proj_out.weight", "norm_out.weight"):
            if need not in sd:
                raise AnyDressingError(f"resampler weights lack {need!r}; the file is not an IMAGDressing resampler")
        depths = sorted({int(m.group(1)) for k in sd for m in [re.match(r"layers\.(\d+)\.", k)] if m})
        if not depths or depths != list(range(len(depths))):
            raise AnyDressingError(f"resampler layers are {depths}; expected 0..n-1")
        inner = sd["layers.0.0.to_q.weight"].shape[0]
        if inner % dim_head:
            raise AnyDressingError(f"resampler attention width {inner} is not a multiple of dim_head {dim_head}")
        self.heads, self.depth = inner // dim_head, len(depths)
        self.params = torch.nn.ParameterDict(
            {k.replace(".", "__"): torch.nn.Parameter(v.detach().clone(), requires_grad=False) for k, v in sd.items()})

    def _p(self, name: str) -> torch.Tensor:
        return self.params[name.replace(".", "__")]

    def _norm(self, x, name):
        return F.layer_norm(x, x.shape[-1:], self._p(f"{name}.weight"), self._p(f"{name}.bias"))

    def _attend(self, i: int, x, latents):
        pre = f"layers.{i}.0"
        x, latents = self._norm(x, f"{pre}.norm1"), self._norm(latents, f"{pre}.norm2")
        q = F.linear(latents, self._p(f"{pre}.to_q.weight"))
        k, v = F.linear(torch.cat([x, latents], dim=1), self._p(f"{pre}.to_kv.weight")).chunk(2, dim=-1)
        b, n, inner = q.shape
        h = self.heads

        def split(t):
            return t.reshape(b, -1, h, inner // h).transpose(1, 2)

        w = (split(q) @ split(k).transpose(-1, -2)) / math.sqrt(inner // h)
        out = (w.float().softmax(dim=-1).to(q.dtype) @ split(v)).transpose(1, 2).reshape(b, n, inner)
        return F.linear(out, self._p(f"{pre}.to_out.weight"))

    def _feed_forward(self, i: int, latents):
        pre = f"layers.{i}.1"
        y = self._norm(latents, f"{pre}.0")
        y = F.gelu(F.linear(y, self._p(f"{pre}.1.weight")))
        return F.linear(y, self._p(f"{pre}.3.weight"))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        want = self._p("proj_in.weight").shape[1]
        if tokens.ndim != 3 or tokens.shape[-1] != want:
            raise AnyDressingError(
                f"the resampler takes CLIP-vision tokens [N, T, {want}] (ViT-H penultimate states for IMAGDressing); got "
                f"{tuple(tokens.shape)}. Connect the CLIP vision model the weights were trained with.")
        tokens = tokens.to(self._p("proj_in.weight").dtype)
        x = F.linear(tokens, self._p("proj_in.weight"), self._p("proj_in.bias"))
        latents = self._p("latents").expand(tokens.shape[0], -1, -1)
        for i in range(self.depth):
            latents = self._attend(i, x, latents) + latents
            latents = self._feed_forward(i, latents) + latents
        latents = F.linear(latents, self._p("proj_out.weight"), self._p("proj_out.bias"))
        return self._norm(latents, "norm_out")
