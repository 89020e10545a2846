"""Tiny random weights in IMAGDressing's resampler layout (``proj.*`` there, ``resampler.*`` in our files)."""

import torch


def tiny_resampler(embed=48, dim=32, queries=4, inner=64, depth=2, mult=2, seed=0) -> dict:
    g = torch.Generator().manual_seed(seed)

    def r(*shape, std=0.1):
        return torch.randn(*shape, generator=g) * std

    sd = {"latents": r(1, queries, dim, std=1.0), "proj_in.weight": r(dim, embed), "proj_in.bias": r(dim),
          "proj_out.weight": r(dim, dim), "proj_out.bias": r(dim),
          "norm_out.weight": 1 + r(dim), "norm_out.bias": r(dim)}
    for i in range(depth):
        p = f"layers.{i}"
        sd.update({f"{p}.0.norm1.weight": 1 + r(dim), f"{p}.0.norm1.bias": r(dim),
                   f"{p}.0.norm2.weight": 1 + r(dim), f"{p}.0.norm2.bias": r(dim),
                   f"{p}.0.to_q.weight": r(inner, dim), f"{p}.0.to_kv.weight": r(2 * inner, dim),
                   f"{p}.0.to_out.weight": r(dim, inner),
                   f"{p}.1.0.weight": 1 + r(dim), f"{p}.1.0.bias": r(dim),
                   f"{p}.1.1.weight": r(mult * dim, dim), f"{p}.1.3.weight": r(dim, mult * dim)})
    return sd
