"""AnyDressing ablation on synthetic data: the paper's three claims, each where it can show, over seeds.

    python -m benchmarks.ablation --out outputs/ablation --jobs 2   # full: 64 px, 3 seeds (docs/BENCHMARK.md)
    python -m benchmarks.ablation --out outputs/abl --quick         # seconds, for tests

Prints the tables and writes ablation.json, ablation.md and samples_<world>.png under --out.
"""

from __future__ import annotations

import argparse
import json
import logging

from . import report
from .run import run_ablation
from .train import config
from .settings import SETTINGS


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="outputs/ablation", help="folder for ablation.json/.md and the pictures")
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run in seconds")
    p.add_argument("--settings", nargs="+", choices=[s.name for s in SETTINGS], help="default: every setting")
    p.add_argument("--seeds", type=int, nargs="+", help="training seeds (default 0 1 2)")
    p.add_argument("--size", type=int, help="image side in pixels (default 64)")
    p.add_argument("--patch", type=int, choices=(1, 2, 4, 8), help="pixels per latent cell (default 4)")
    p.add_argument("--channels", type=int, help="UNet width (default 32)")
    p.add_argument("--steps", type=int, help="training steps per setting (the fixed budget)")
    p.add_argument("--base-steps", type=int, help="steps of the frozen base denoiser")
    p.add_argument("--batch", type=int)
    p.add_argument("--n-train", type=int)
    p.add_argument("--n-val", type=int)
    p.add_argument("--pattern-scale", type=float, help="pattern period multiplier of the generator (default 2)")
    p.add_argument("--lambda-loc", type=float, help="IGL weight (paper: 0.01)")
    p.add_argument("--noise-shift", type=float, help="SNR divisor of the noise schedule (default patch**2)")
    p.add_argument("--vgg16", help="local VGG16 weights: adds DISTS to GTL (off without them)")
    p.add_argument("--prediction", choices=("x0", "eps"), help="what the denoiser predicts (default x0)")
    p.add_argument("--device", help="torch device for training and sampling (default cpu)")
    p.add_argument("--jobs", type=int, default=1, help="worker processes (tasks are independent)")
    p.add_argument("--time-limit", type=float,
                   help="seconds for the whole run: the step time is measured first and the steps scaled down to fit")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads per process (1: on a shared 2-core machine 2 threads ran 2-4x slower, measured)")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    cfg = config(a.quick, seeds=a.seeds, size=a.size, patch=a.patch, channels=a.channels, steps=a.steps,
                 base_steps=a.base_steps, batch=a.batch, n_train=a.n_train, n_val=a.n_val,
                 pattern_scale=a.pattern_scale, lambda_loc=a.lambda_loc, noise_shift=a.noise_shift, vgg16=a.vgg16,
                 prediction=a.prediction,
                 device=a.device)
    result = run_ablation(cfg, a.out, a.settings, jobs=a.jobs, threads=a.threads, time_limit=a.time_limit)
    print(report.markdown(result))
    print(json.dumps({"timing_s": {k: round(v, 1) for k, v in result["timing_s"].items() if isinstance(v, float)},
                      "load": result["load"], "out": a.out}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
