"""AnyDressing ablation on synthetic data, CPU: base / +GFE / +IGL / +GTL / zero-shot.

    python -m benchmarks.ablation --out outputs/ablation          # full (~15-20 min, 2 cores)
    python -m benchmarks.ablation --out outputs/abl --quick       # seconds, for tests

Prints the table, writes ablation.json, ablation.md and samples.png (docs/BENCHMARK.md).
"""

from __future__ import annotations

import argparse
import json
import logging

import torch

from .run import config, format_paired, format_table, run_ablation
from .train import SETTINGS


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="outputs/ablation", help="folder for ablation.json/.md and samples.png")
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run in seconds")
    p.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=SETTINGS)
    p.add_argument("--seed", type=int)
    p.add_argument("--steps", type=int, help="training steps per setting (the fixed budget)")
    p.add_argument("--base-steps", type=int, help="steps of the frozen base denoiser")
    p.add_argument("--n-train", type=int)
    p.add_argument("--n-val", type=int)
    p.add_argument("--lambda-loc", type=float, help="IGL weight (paper: 0.01)")
    p.add_argument("--lambda-tex", type=float, help="GTL weight (paper: 0.001)")
    p.add_argument("--vgg16", help="local VGG16 weights: adds DISTS to GTL (off without them)")
    p.add_argument("--prediction", choices=("x0", "eps"), help="what the denoiser predicts (default x0)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (1: on a shared 2-core machine 2 threads ran 2-4x slower, measured)")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(a.threads)
    cfg = config(a.quick, seed=a.seed, steps=a.steps, base_steps=a.base_steps, n_train=a.n_train, n_val=a.n_val,
                 lambda_loc=a.lambda_loc, lambda_tex=a.lambda_tex, vgg16=a.vgg16,
                 prediction=a.prediction)
    report = run_ablation(cfg, a.out, a.settings)
    print(format_table(report["results"]))
    print()
    print(format_paired(report["paired"]))
    print(json.dumps({"timing_s": {k: round(v, 1) for k, v in report["timing_s"].items()},
                      "load_avg": report["load_avg"], "out": a.out}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
