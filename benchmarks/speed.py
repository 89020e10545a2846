"""Speed and memory of AnyDressing against the same sampling without it.

Run from the repo root::

    python -m benchmarks.speed                      # tiny CPU model, minutes
    python -m benchmarks.speed --quick              # smoke run, under a minute
    python -m benchmarks.speed --gpu --time-limit 480          # full-size random SD1.5, 512x512 and 576x768

For every resolution and N = 1..4 garments it alternates plain and dressed KSampler runs (same model,
seed, sampler, steps, CFG) and reports medians, the time ratio, the FLOP ratio counted by
``torch.utils.flop_counter.FlopCounterMode`` over the same runs, their quotient, peak memory above the
level before the run, the garment feature size, and the encoding time against one plain UNet step
(batch 2: the cond and uncond rows of one CFG step). Results go to ``benchmarks/results/<label>.json``.
Timings on a shared machine are noisy: each line is a median of ``--repeats`` runs, and the JSON keeps
every run and the load average. See docs/PERFORMANCE.md for how to read the numbers.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
log = logging.getLogger("benchmarks.speed")
#: glibc settings of the CPU memory phase's own process: large frees go back to the OS, so RSS peaks of
#: later runs are visible. They slow every run down, so timed runs never use them (benchmarks/measure.py).
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "131072"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="AnyDressing speed and memory benchmark")
    p.add_argument("--gpu", action="store_true", help="full-size random SD1.5 on CUDA (512x512 and 576x768)")
    p.add_argument("--quick", action="store_true", help="smoke run: small resolutions, N=1,2, 2 repeats")
    p.add_argument("--preset", default=None, help="UNet: tiny preset (smallest/recommended) or sd15")
    p.add_argument("--res", action="append", default=None, help="WxH, multiples of 64, repeatable (default 64x64, 128x128)")
    p.add_argument("--n", default="1,2,3,4", help="garment counts, comma separated")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default 3 on CPU, 20 on GPU)")
    p.add_argument("--repeats", type=int, default=None, help="runs per configuration (median; default 3)")
    p.add_argument("--form", default="auto", choices=["auto", "joint", "separate"])
    p.add_argument("--attention", default="default", choices=["default", "pytorch", "split"],
                   help="host attention (default: what ComfyUI picks on this device)")
    p.add_argument("--time-limit", type=float, default=None, help="seconds; stop adding configurations after this")
    p.add_argument("--label", default=None, help="name of the JSON under benchmarks/results/")
    p.add_argument("--no-save", action="store_true")
    p.add_argument("--memory-phase", default=None, help=argparse.SUPPRESS)  # internal: the CPU memory child
    ns = p.parse_args(argv)
    ns.preset = ns.preset or ("sd15" if ns.gpu else ("smallest" if ns.quick else "recommended"))
    ns.steps = ns.steps or (20 if ns.gpu else (2 if ns.quick else 3))
    ns.repeats = ns.repeats or (2 if ns.quick else 3)
    default_res = ["512x512", "576x768"] if ns.gpu else (["128x128", "64x128"] if ns.quick else ["64x64", "128x128"])
    ns.res = [tuple(int(v) for v in r.lower().split("x")) for r in (ns.res or default_res)]
    ns.n = [int(v) for v in ("1,2" if ns.quick and ns.n == "1,2,3,4" else ns.n).split(",")]
    ns.label = ns.label or ("gpu" if ns.gpu else ("quick" if ns.quick else "cpu"))
    return ns


class Bench:
    def __init__(self, ns):
        import torch

        from .harness import Host, build_unet, build_vae, conditioning

        self.ns, self.torch = ns, torch
        self.t_start = time.monotonic()
        self.host = Host(gpu=ns.gpu, attention=ns.attention)
        self.cuda = ns.gpu and torch.cuda.is_available()
        if ns.gpu and not self.cuda:
            raise SystemExit("--gpu asked for, but torch sees no CUDA device")
        t0 = time.perf_counter()
        self.model = build_unet(self.host, ns.preset)
        self.vae = build_vae(self.host)
        self.build_s = time.perf_counter() - t0
        self.pos, self.neg = conditioning(1), conditioning(2)
        common = self.host.module("nodes.common")
        self.attn1_modules = common.attn1_modules
        self.compute_dtype = str(common.compute_dtype(self.model))
        self.find_patch = self.host.module("nodes.patch").find_patch
        self.partial = False

    def out_of_time(self) -> bool:
        lim = self.ns.time_limit
        if lim is not None and time.monotonic() - self.t_start > lim:
            self.partial = True
            return True
        return False

    def sample(self, model, latent):
        with self.torch.inference_mode():  # as ComfyUI's executor runs nodes
            return self.host.run("KSampler", model=model, seed=0, steps=self.ns.steps, cfg=6.0, sampler_name="ddim",
                                 scheduler="ddim_uniform", positive=self.pos, negative=self.neg, latent_image=latent,
                                 denoise=1.0)[0]

    def plain_step(self, w, h):
        """Median time of one plain UNet forward at batch 2 (one CFG step) and the tokens T of each layer."""
        from .measure import TokenProbe, measure

        torch, mm = self.torch, self.host.mm
        mm.load_models_gpu([self.model])
        dm = self.model.model.diffusion_model
        dev, dt = self.model.load_device, self.model.model.get_dtype()
        g = torch.Generator().manual_seed(3)
        x = torch.randn(2, 4, h // 8, w // 8, generator=g).to(dev, dt)
        ctx = torch.randn(2, 77, 768, generator=g).to(dev, dt)
        ts = torch.full((2,), 500.0, device=dev)
        probe = TokenProbe(self.attn1_modules(dm))

        def step():
            with torch.inference_mode():
                dm(x, timesteps=ts, context=ctx)
        step()
        probe.close()
        s = measure(step, self.ns.repeats, self.cuda, memory=False)
        return s, probe.tokens

    def encode(self, n, w, h):
        from .harness import garment_chain
        from .measure import measure

        garments = garment_chain(self.host, n)
        box = {}

        def run():
            with self.torch.inference_mode():
                box["f"] = self.host.run("AnyDressingEncodeGarments", model=self.model, vae=self.vae, garments=garments,
                                         width=w, height=h)[0]
        run()  # warm-up
        s = measure(run, 2 if n == 3 else 1, self.cuda, memory=False)  # N=3 is the target's point: one more run
        pixels = self.torch.rand(n, h, w, 3)

        def vae_only():
            with self.torch.inference_mode():
                self.vae.encode(pixels)
        v = measure(vae_only, 1, self.cuda, memory=False)
        return box["f"], s, v

    def resolution(self, w, h, sink: list, on_row=lambda: None) -> dict:
        from .measure import count_flops, da_flops, kernel_floor

        ns, torch = self.ns, self.torch
        latent = {"samples": torch.zeros(1, 4, h // 8, w // 8)}
        log.info("resolution %dx%d: warm-up and plain step", w, h)
        self.sample(self.model, latent)
        step, tokens = self.plain_step(w, h)
        plain_flops = count_flops(lambda: self.sample(self.model, latent))
        rows = []
        res = {"width": w, "height": h, "plain_step": step.as_dict(), "rows": rows, "memory_fit": None}
        sink.append(res)  # visible to on_row's incremental save
        for n in ns.n:
            if self.out_of_time():
                log.warning("time limit reached: skipping N=%d at %dx%d and later", n, w, h)
                break
            log.info("  N=%d: encode", n)
            feats, enc, vae = self.encode(n, w, h)
            dressed = self.apply(feats)
            shared = self.find_patch(dressed)
            dressed_flops = count_flops(lambda: self.sample(dressed, latent))  # doubles as the warm-up run
            calls_one_run = shared.calls
            log.info("  N=%d: %d alternating plain/dressed runs", n, ns.repeats)
            plain_s, dressed_s = self._alternate(lambda: self.sample(self.model, latent),
                                                 lambda: self.sample(dressed, latent))
            layers = {k: {"T": tokens[k], "S": int(t.shape[0] * t.shape[1]), "C": int(t.shape[2])}
                      for k, t in feats.tokens.items()}
            log.info("  N=%d: kernel floor", n)
            floor = self.kernel_floor(layers, shared, kernel_floor)
            ana = da_flops(layers, n_rows=1)  # paper CFG policy: garments only in the cond row
            ratio = dressed_s.median_s / plain_s.median_s
            cpu_ratio = (dressed_s.as_dict()["cpu_median_s"] / plain_s.as_dict()["cpu_median_s"]) if plain_s.cpu else None
            pred = dressed_flops / plain_flops
            feat_bytes = feats.nbytes()
            floor_ovh = floor["added_s_per_run"] / plain_s.median_s  # the overhead the kernel alone charges
            rows.append({
                "n": n, "with": dressed_s.as_dict(), "without": plain_s.as_dict(),
                "ratio": ratio, "cpu_ratio": cpu_ratio, "flops_with": dressed_flops, "flops_without": plain_flops,
                "flop_ratio": pred,
                "measured_over_predicted": ratio / pred,
                "overhead_measured_over_predicted": (ratio - 1) / (pred - 1) if pred > 1 else None,
                "analytic_added_flops_per_run": ns.steps * ana["per_step"] + ana["kv_per_run"],
                "counted_added_flops_per_run": dressed_flops - plain_flops,
                "da_calls_per_run": calls_one_run,
                "kernel_floor": floor, "kernel_floor_overhead": floor_ovh,
                "overhead_measured_over_kernel_floor": (ratio - 1) / floor_ovh if floor_ovh > 0 else None,
                "kernel_floor_over_predicted": floor_ovh / (pred - 1) if pred > 1 else None,
                "matmul_bound_over_predicted": (floor["matmul_only_s_per_run"] / plain_s.median_s / (pred - 1)
                                                if pred > 1 else None),
                "plain_gflops_per_s": plain_flops / plain_s.median_s / 1e9,
                "features_mib": feat_bytes / 2**20, "features_dtype": str(next(iter(feats.tokens.values())).dtype),
                "kv_cache_mib": 2 * feat_bytes / 2**20,  # K'/V' of every layer, held for the run
                "encode": enc.as_dict(), "vae_encode": vae.as_dict(),
                "encode_over_step": enc.median_s / step.median_s,
                "encode_over_step_cpu": (enc.as_dict()["cpu_median_s"] / step.as_dict()["cpu_median_s"]) if step.cpu else None,
                "encode_unet_over_step": max(enc.median_s - vae.median_s, 0.0) / step.median_s,
            })
            del dressed, shared, feats
            on_row()
        return res

    def apply(self, feats):
        return self.host.run("AnyDressingApply", model=self.model, features=feats, strength=0.7, start_percent=0.0,
                             end_percent=1.0, form=self.ns.form, cfg_policy="garments in positive only (paper)")[0]

    def memory(self, jobs: list) -> list:
        """Peak memory of alternating plain and dressed runs (2 each) for ``[[w, h, n], ...]``: run in a child
        process started with :data:`MALLOC_ENV` on the CPU (see :func:`memory_phase`)."""
        from .harness import garment_chain

        out = []
        for w, h, n in jobs:
            latent = {"samples": self.torch.zeros(1, 4, h // 8, w // 8)}
            with self.torch.inference_mode():
                feats = self.host.run("AnyDressingEncodeGarments", model=self.model, vae=self.vae,
                                      garments=garment_chain(self.host, n), width=w, height=h)[0]
            dressed = self.apply(feats)
            self.sample(dressed, latent)  # warm-up
            plain_m, dressed_m = self._alternate(lambda: self.sample(self.model, latent),
                                                 lambda: self.sample(dressed, latent), repeats=2, memory=True)
            out.append({"w": w, "h": h, "n": n, "without": plain_m.as_dict(), "with": dressed_m.as_dict()})
            del dressed, feats
        return out

    def kernel_floor(self, layers, shared, fn):
        """The host attention kernel's own cost of the added work (``measure.kernel_floor``), per run."""
        import comfy.ldm.modules.attention as host_attention

        modules = self.attn1_modules(self.model.model.diffusion_model)
        shapes = {k: dict(d, heads=int(modules[k].heads)) for k, d in layers.items()}
        return fn(host_attention.optimized_attention, shapes, self.ns.steps, shared.form, shared.strength,
                  self.model.load_device, self.model.model.get_dtype(), cuda=self.cuda)

    def _alternate(self, plain, dressed, repeats=None, memory=None):
        """Interleave the two so that load changes on a shared machine hit both alike."""
        from .measure import Sample, measure

        a, b = Sample(), Sample()
        for _ in range(repeats or self.ns.repeats):
            for fn, acc in ((plain, a), (dressed, b)):
                s = measure(fn, 1, self.cuda, memory=self.cuda if memory is None else memory)
                acc.times += s.times
                acc.cpu += s.cpu
                acc.peak_delta += s.peak_delta
                acc.peak_abs += s.peak_abs
        return a, b

    @staticmethod
    def _memory_fit(rows):
        from .measure import linear_fit

        rows = [r for r in rows if r["with"]["peak_delta_mib"] is not None]
        if len(rows) < 2:
            return None
        ns_ = [r["n"] for r in rows]
        peak = [r["with"]["peak_delta_mib"] for r in rows]
        total = [r["with"]["peak_delta_mib"] + r["features_mib"] for r in rows]
        return {"peak_delta_vs_n": linear_fit(ns_, peak), "peak_plus_features_vs_n": linear_fit(ns_, total),
                "features_mib_per_garment": rows[0]["features_mib"] / rows[0]["n"]}

    def env(self) -> dict:
        torch = self.torch
        from .measure import load_average

        try:
            commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                                    text=True, timeout=10).stdout.strip()
        except Exception:  # noqa: BLE001 - the commit is informative only
            commit = None
        return {"time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "git": commit,
                "torch": torch.__version__, "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
                "device": torch.cuda.get_device_name() if self.cuda else platform.processor() or "cpu",
                "attention": self.host.attention_name, "compute_dtype": self.compute_dtype,
                "load_average_1m": load_average(), "model_build_s": self.build_s,
                "note": "timings on a shared machine are noisy; medians of repeats, interleaved with/without"}


def memory_phase(ns, result: dict) -> None:
    """CPU peak memory of every measured row, from a child process started with :data:`MALLOC_ENV` (the
    setting must be there before torch loads, and it would slow this process's timed runs)."""
    import tempfile

    jobs = [[res["width"], res["height"], r["n"]] for res in result["resolutions"] for r in res["rows"]]
    if not jobs:
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "memory.json"
        path.write_text(json.dumps(jobs))
        cmd = [sys.executable, "-m", "benchmarks.speed", "--preset", ns.preset, "--steps", str(ns.steps), "--form", ns.form,
               "--attention", ns.attention, "--memory-phase", str(path), "--no-save"]
        setting = " ".join(f"{k}={v}" for k, v in MALLOC_ENV.items())
        log.info("memory runs (a child process with %s)", setting)
        done = subprocess.run(cmd, cwd=REPO, env=dict(os.environ, **MALLOC_ENV))
        measured = json.loads(path.read_text()) if done.returncode == 0 else []
    if done.returncode != 0:
        log.warning("the memory child failed (exit %d): no memory columns", done.returncode)
    result["env"]["memory"] = f"CPU RSS peaks from a child process with {setting}"
    by_job = {(m["w"], m["h"], m["n"]): m for m in measured}
    for res in result["resolutions"]:
        for r in res["rows"]:
            m = by_job.get((res["width"], res["height"], r["n"]))
            if m:
                for side in ("with", "without"):
                    r[side].update(peak_delta_mib=m[side]["peak_delta_mib"], peak_abs_mib=m[side]["peak_abs_mib"])
        res["memory_fit"] = Bench._memory_fit(res["rows"])


def main(argv=None) -> int:
    ns = parse_args(argv)
    os.environ.setdefault("TQDM_DISABLE", "1")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    log.setLevel(logging.INFO)
    from .report import print_report

    bench = Bench(ns)
    if ns.memory_phase:  # the child of memory_phase: measure, write, done
        path = Path(ns.memory_phase)
        path.write_text(json.dumps(bench.memory(json.loads(path.read_text()))))
        return 0
    result = {"label": ns.label, "settings": {k: v for k, v in vars(ns).items() if k != "no_save"}, "env": bench.env(),
              "resolutions": []}
    out = REPO / "benchmarks" / "results" / f"{ns.label}.json"

    def save():
        result["partial"] = bench.partial
        result["env"]["load_average_1m_end"] = bench.env()["load_average_1m"]
        result["wall_s"] = time.monotonic() - bench.t_start
        if not ns.no_save:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(result, indent=1))

    for w, h in ns.res:
        if bench.out_of_time():
            break
        bench.resolution(w, h, result["resolutions"], on_row=save)
    if bench.cuda:  # the CUDA allocator's peak was recorded by the timed runs at no cost
        for res in result["resolutions"]:
            res["memory_fit"] = bench._memory_fit(res["rows"])
    else:
        memory_phase(ns, result)
    save()
    print_report(result)
    if not ns.no_save:
        print(f"saved {out.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
