"""CLIP-AS: an aesthetic head on L2-normalised CLIP image embeddings [paper: CLIP aesthetic score].

Layouts are detected from the state-dict keys, never from the file name:

* LAION "improved aesthetic predictor" (``sac+logos+ava1-l14-linearMSE``): ``layers.{0,2,4,6,7}``,
  Linear 768-1024-128-64-16-1 with dropout between and NO activation (as LAION trained it).
* LAION v1 linear head (``sa_0_4_vit_l_14_linear``): ``weight [1, D]``, ``bias [1]``.

Files are ``.safetensors``.  A ``.pth`` from LAION is a pickle: convert it once with
``python -m anydressing_core.metrics convert-aesthetic IN.pth OUT.safetensors`` (reads with
``weights_only=True``).  The head expects the CLIP it was trained on (ViT-L/14, 768-d) [choice:
the paper's reported 5-6 range fits it]; a width mismatch is an error.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import AnyDressingError


class AestheticHead(nn.Module):
    """``forward(embeds [B, D]) -> scores [B]``; embeddings are L2-normalised inside [LAION]."""

    def __init__(self, linears: Mapping[int, nn.Linear]):
        super().__init__()
        self.order = sorted(linears)
        self.layers = nn.ModuleDict({str(i): linears[i] for i in self.order})
        self.dim = linears[self.order[0]].in_features

    @classmethod
    def from_state_dict(cls, sd: Mapping[str, torch.Tensor]) -> "AestheticHead":
        linears: Dict[int, nn.Linear] = {}
        if "weight" in sd and "bias" in sd and len(sd) == 2:
            w = sd["weight"]
            lin = nn.Linear(w.shape[1], w.shape[0])
            lin.load_state_dict({"weight": w.float(), "bias": sd["bias"].float()})
            linears[0] = lin
        else:
            idx = sorted({int(m.group(1)) for k in sd if (m := re.fullmatch(r"layers\.(\d+)\.weight", k))})
            if not idx:
                raise AnyDressingError(
                    f"not an aesthetic head: expected keys layers.N.weight/bias (LAION MLP) or weight/bias "
                    f"(linear head); got {sorted(sd)[:6]}")
            for i in idx:
                w, b = sd[f"layers.{i}.weight"], sd.get(f"layers.{i}.bias")
                lin = nn.Linear(w.shape[1], w.shape[0], bias=b is not None)
                lin.load_state_dict({"weight": w.float(), **({"bias": b.float()} if b is not None else {})})
                linears[i] = lin
            for a, b in zip(idx, idx[1:]):
                if linears[a].out_features != linears[b].in_features:
                    raise AnyDressingError(f"aesthetic head layers {a} -> {b} do not chain "
                                           f"({linears[a].out_features} != {linears[b].in_features})")
        if linears[max(linears)].out_features != 1:
            raise AnyDressingError("the aesthetic head's last layer must output one score")
        return cls(linears).eval()

    def forward(self, embeds: torch.Tensor) -> torch.Tensor:
        if embeds.shape[-1] != self.dim:
            raise AnyDressingError(
                f"the aesthetic head takes {self.dim}-d CLIP embeddings but the CLIP model gives {embeds.shape[-1]}-d; "
                "use the CLIP the head was trained on (LAION's: ViT-L/14, 768-d)")
        x = F.normalize(embeds.float(), dim=-1)
        for i in self.order:
            x = self.layers[str(i)](x)
        return x.squeeze(-1)


def load_aesthetic(path: str) -> AestheticHead:
    """Load a ``.safetensors`` aesthetic head from a LOCAL path."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise AnyDressingError(f"aesthetic head file {p} does not exist; give a local .safetensors file")
    if p.suffix != ".safetensors":
        raise AnyDressingError(f"{p.name} is not .safetensors; convert it first: python -m anydressing_core.metrics "
                               f"convert-aesthetic {p} {p.with_suffix('.safetensors')}")
    from safetensors.torch import load_file

    return AestheticHead.from_state_dict(load_file(str(p)))


def convert_pickle(src: str, dst: str) -> int:
    """Convert a LAION ``.pth`` state dict to ``.safetensors`` (pickle read with ``weights_only=True``)."""
    from safetensors.torch import save_file

    sd = torch.load(src, map_location="cpu", weights_only=True)
    if isinstance(sd, dict) and "state_dict" in sd:
        sd = sd["state_dict"]
    AestheticHead.from_state_dict(sd)  # validate before writing
    save_file({k: v.contiguous() for k, v in sd.items()}, dst)
    return len(sd)
