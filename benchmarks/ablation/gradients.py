"""How hard each loss term pulls: gradient norms of L_ldm, L_loc and L_texture at the start of training.

    python -m benchmarks.ablation.gradients [--base-steps 1000] [--batches 16] [--seed 0]

Trains the seed's frozen base as the ablation does, builds the ``gfe_igl`` setting (GarmentsNet,
Wk'/Wv', GFE LoRA) and, on ``--batches`` training batches, prints the norms of the gradients of each
term over the trainable weights, their cosine with L_ldm's, and what the paper's weights
(lambda1 = 0.01, lambda2 = 0.001) and the benchmark's sweep make of them.  L_texture is taken on the
rows the GTL gate lets through (the paper's noise level), as in training.
"""

from __future__ import annotations

import argparse
import json
import logging
from typing import Dict, List

import numpy as np
import torch

from anydressing_core import losses
from .settings import BY_NAME
from .train import GTL_MIN_ABAR, SLOTS, Dresser, _x0, _noised, config, make_data, schedule, take, to_image, \
    to_latent, train_base


def _flat_grad(loss: torch.Tensor, params: List[torch.Tensor]) -> torch.Tensor:
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(grads, params)])


def measure(cfg, batches: int, seed: int) -> Dict[str, object]:
    """Per batch: gradient norms of each term and cosines with L_ldm's (see the module docstring)."""
    view = make_data(cfg.n_train, cfg, ["shop"])["shop"]
    base = train_base(view, cfg, seed)
    torch.manual_seed(seed)
    model = Dresser(base, BY_NAME["gfe_igl"], cfg)
    params = [p for p in model.parameters() if p.requires_grad]
    gen = torch.Generator().manual_seed(seed * 1000 + 2)
    abar = schedule(cfg)
    latent_hw = (cfg.size // cfg.patch, cfg.size // cfg.patch)
    rows: Dict[str, list] = {k: [] for k in ("ldm", "loc", "tex", "g_ldm", "g_loc", "g_tex", "cos_loc", "cos_tex")}
    while len(rows["g_tex"]) < batches:
        b = take(view, torch.randint(0, view["person"].shape[0], (cfg.batch,), generator=gen))
        present = torch.ones(b["masks"].shape[:2], dtype=torch.bool)
        z0 = to_latent(b["person"], cfg.patch)
        zt, t, _ = _noised(z0, gen, abar)
        sel = abar[t] >= GTL_MIN_ABAR
        if not bool(sel.any()):
            continue
        ctx = model.ctx(model.features(b["garments"]), len(SLOTS), want_maps=True)
        pred = model.dress(zt, t.float(), to_latent(b["pose"], cfg.patch), ctx)
        ldm = losses.ldm_loss(pred, z0)
        loc = losses.localization_loss(ctx.maps, b["masks"], present, latent_hw)
        img = to_image(_x0(pred[sel], zt[sel], t[sel], abar, cfg), cfg.patch)
        tex = losses.edge_loss(img, b["person"][sel], b["masks"][sel], b["edges"][sel], present[sel]).mean()
        g = {k: _flat_grad(v, params) for k, v in (("ldm", ldm), ("loc", loc), ("tex", tex))}
        for k, v in (("ldm", ldm), ("loc", loc), ("tex", tex)):
            rows[k].append(v.item())
            rows[f"g_{k}"].append(float(g[k].norm()))
        for k in ("loc", "tex"):
            rows[f"cos_{k}"].append(float(torch.nn.functional.cosine_similarity(g[k], g["ldm"], dim=0)))
    mean = {k: float(np.mean(v)) for k, v in rows.items()}
    weights = {"lambda1 0.01 [paper]": 0.01 * mean["g_loc"] / mean["g_ldm"]}
    for lam in sorted({s.gtl for s in BY_NAME.values() if s.gtl}):
        weights[f"lambda2 {lam:g}"] = lam * mean["g_tex"] / mean["g_ldm"]
    return {"mean": mean, "weighted_gradient_over_ldm": weights, "batches": batches,
            "gated_share_of_rows": float((abar >= GTL_MIN_ABAR).float().mean())}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--base-steps", type=int, default=1000)
    p.add_argument("--batches", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(a.threads)
    print(json.dumps(measure(config(base_steps=a.base_steps), a.batches, a.seed), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
