"""Fidelity cost of the garment-token budget on the synthetic benchmark: pooling 1 vs 2.

    python -m benchmarks.ablation.pooling --out outputs/pooling          # base + settings at the full budget
    python -m benchmarks.ablation.pooling --out outputs/pooling --quick  # seconds, for tests

Same frozen base, same trained setting (the same training budget), same validation samples and sampling
noise; the only change is that at inference the garment tokens of the benchmark's two 16x16 DA layers are
average-pooled 2x2 by the product's rule (``anydressing_core.budget``, a budget of N * 64 tokens per layer,
so the 8x8 middle layer keeps its tokens). The benchmark's DA is the separate form, where pooled tokens need
no logit offset. Scores and paired differences are those of the ablation (``scores.region_scores``,
``scores.localization_iou``, ``scores.paired``).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import time
from typing import Dict, Sequence

import torch

from anydressing_core.budget import pool_factor, pool_tokens

from . import scores
from .run import COLUMNS, config
from .train import SLOTS, VAL_OFFSET, Config, make_data, sample, train_base, train_setting

log = logging.getLogger(__name__)

DEFAULT_SETTINGS = ("zero_shot", "gfe_igl_gtl")


def pool_batch_features(feats: Dict[tuple, torch.Tensor], count: int, budget: int) -> Dict[tuple, torch.Tensor]:
    """``{key: F_all [B, N*L, C]}`` with each garment's square ``L``-token grid pooled by the budget rule."""
    out = {}
    for key, f in feats.items():
        b, s, c = f.shape
        length = s // count
        side = math.isqrt(length)
        p = pool_factor(side, side, count, budget)
        out[key] = pool_tokens(f.reshape(b * count, length, c), (side, side), p).reshape(b, -1, c)
    return out


class PooledDresser:
    """A trained setting whose garment features pass through the budget before every use."""

    def __init__(self, model, budget: int):
        self.model, self.budget, self.dress = model, budget, model.dress

    def features(self, garments: torch.Tensor):
        return pool_batch_features(self.model.features(garments), garments.shape[1], self.budget)

    def ctx(self, feats, count: int, want_maps: bool):
        return self.model.ctx(feats, count, want_maps)


def score(images, maps, val) -> Dict[str, object]:
    per = scores.region_scores(images, val["person"], val["masks"], val["garments"], val["garment_masks"])
    per["loc_iou"] = scores.localization_iou(maps, val["masks"])
    return per


def run_pooling(cfg: Config, settings: Sequence[str] = DEFAULT_SETTINGS) -> Dict[str, object]:
    """Train ``settings`` once and score each with pooling 1 and 2; returns results and paired differences."""
    t0, c0 = time.time(), time.process_time()
    train = make_data(cfg.n_train, cfg.size, cfg.seed)
    val = make_data(cfg.n_val, cfg.size, cfg.seed, offset=VAL_OFFSET)
    base = train_base(train, cfg)
    count = val["garments"].shape[1]
    top = (cfg.size // 2) ** 2  # tokens per garment of the 16x16 (at size 32) layers
    budget = count * top // 4  # pools exactly those layers 2x2
    results, paired = {}, {}
    for s in settings:
        model, _ = train_setting(base, train, s, cfg)
        per = {}
        for pool, m in ((1, model), (2, PooledDresser(model, budget))):
            images, maps = sample(m, val, cfg, s)
            per[pool] = score(images, maps, val)
            results[f"{s} pool {pool}"] = scores.summarize(per[pool], list(SLOTS))
        paired[f"{s}: pool 2 - pool 1"] = scores.paired(per[2], per[1])
    return {"results": results, "paired": paired, "budget": budget, "garments": count, "config": vars(cfg),
            "timing_s": {"total": time.time() - t0, "total_cpu": time.process_time() - c0},
            "threads": torch.get_num_threads(), "load_avg": list(os.getloadavg())}


def format_report(report: Dict[str, object]) -> str:
    cols = [c for c in COLUMNS if c[0] in ("loc_iou", "colour_err", "confused", "edge_err")]
    lines = ["| setting | " + " | ".join(h for _, h, _ in cols) + " |", "|" + "---|" * (len(cols) + 1)]
    for name, r in report["results"].items():
        lines.append(f"| {name} | " + " | ".join(fmt.format(r[k]["mean"]) + " ± " + fmt.format(r[k]["sem"])
                                                 for k, _, fmt in cols) + " |")
    lines += ["", "| paired difference | " + " | ".join(h.split()[0] + " diff" for _, h, _ in cols) + " |",
              "|" + "---|" * (len(cols) + 1)]
    for name, r in report["paired"].items():
        lines.append(f"| {name} | " + " | ".join(fmt.format(r[k]["mean"]) + " ± " + fmt.format(r[k]["sem"])
                                                 for k, _, fmt in cols) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="outputs/pooling")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--settings", nargs="+", default=list(DEFAULT_SETTINGS))
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(a.threads)
    report = run_pooling(config(a.quick), a.settings)
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "pooling.json"), "w") as f:
        json.dump(report, f, indent=1)
    print(format_report(report))
    print(json.dumps({"timing_s": report["timing_s"], "load_avg": report["load_avg"]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
