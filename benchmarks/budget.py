"""The garment-token budget, side by side in one run: predicted cost on full-size SDXL, predicted and measured
CPU time on the tiny SDXL UNet, and the fidelity cost of pooling on the synthetic benchmark.

    python -m benchmarks.budget                                   # all three (the fidelity part trains: minutes)
    python -m benchmarks.budget --fidelity quick                  # smoke run
    python -m benchmarks.budget --budget 4096 --json benchmarks/results/sdxl-budget.json

1. FLOP prediction (``benchmarks.flops``): the full-size SDXL UNet (2.6 B) at 1024x1024 and 832x1216, N = 1..4
   garments encoded at the sampling size, ``--steps`` steps, budget off / ``--budget``.
2. The tiny SDXL-family UNet of ``devtools/tiny_models.py`` (random weights, no text encoders: random conditioning)
   at ``--tiny-res``: the same prediction, and the CPU time of stock KSampler runs, plain and dressed (budget
   off / the budget scaled to this resolution, so it pools the same layers as ``--budget`` does at 1024 px).
   Medians of ``--repeats`` runs; process CPU time is reported beside wall time (steadier on a shared machine).
3. Fidelity (the ablation's ``zero_shot`` and ``zero_shot_pool2`` rows, ``benchmarks/ablation``): localization
   IoU, confusion, colour and edge error with pooling 1 vs 2, paired over the same samples, noise and seeds.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import torch

from .flops import predict, unet_step_flops
from .harness import Host, build_vae, garment_chain
from .measure import load_average, measure


def tiny_sdxl_unet(host, seed: int = 0):
    """The tiny SDXL checkpoint's UNet with seeded random weights, as a ComfyUI MODEL (detected as SDXL family)."""
    import comfy.ops
    import comfy.sd
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel
    from devtools import tiny_models as tiny

    cfg = tiny.sdxl_unet_config()
    sd = tiny._fill(tiny._meta_state_dict(lambda: UNetModel(**cfg, operations=comfy.ops.disable_weight_init)), seed)
    model = comfy.sd.load_diffusion_model_state_dict(sd)
    if model is None:
        raise SystemExit("ComfyUI did not detect the tiny SDXL UNet")
    return model


def sdxl_conditioning(seed: int):
    gen = torch.Generator().manual_seed(seed)
    return [[torch.randn(1, 77, 2048, generator=gen), {"pooled_output": torch.randn(1, 1280, generator=gen)}]]


def tiny_timing(host, w: int, h: int, ns, steps: int, repeats: int, budget: int) -> dict:
    """Plain vs dressed KSampler CPU time on the tiny SDXL UNet, budget off / ``budget``, with the predictions."""
    model, vae = tiny_sdxl_unet(host), build_vae(host)
    pos, neg = sdxl_conditioning(1), sdxl_conditioning(2)
    (latent,) = host.run("EmptyLatentImage", width=w, height=h, batch_size=1)
    kw = dict(seed=0, steps=steps, cfg=6.0, sampler_name="ddim", scheduler="ddim_uniform", positive=pos,
              negative=neg, latent_image=latent, denoise=1.0)

    def run(m):
        return lambda: host.run("KSampler", model=m, **kw)

    run(model)()  # warm-up: loads the model, fills caches
    plain = measure(run(model), repeats, cuda=False, memory=False).as_dict()
    step = unet_step_flops(host, "sdxl-tiny", w, h)
    rows = []
    for n in ns:
        (feats,) = host.run("AnyDressingEncodeGarments", model=model, vae=vae, garments=garment_chain(host, n),
                            width=w, height=h)
        for b in (0, budget):
            patched = host.run("AnyDressingApply", model=model, features=feats, strength=0.7, start_percent=0.0,
                               end_percent=1.0, form="auto", cfg_policy="garments in positive only (paper)",
                               garment_token_budget=b)[0]
            run(patched)()
            dressed = measure(run(patched), repeats, cuda=False, memory=False).as_dict()
            pred = predict(host, "sdxl-tiny", w, h, [n], steps, b, step)["rows"][0]
            rows.append({"n": n, "budget": b, "predicted_ratio": pred["predicted_ratio"],
                         "cpu_ratio": dressed["cpu_median_s"] / plain["cpu_median_s"],
                         "wall_ratio": dressed["median_s"] / plain["median_s"], "dressed": dressed,
                         "top_layer_garment_tokens": pred["top_layer_garment_tokens"]})
    return {"width": w, "height": h, "steps": steps, "repeats": repeats, "plain": plain, "rows": rows,
            "threads": torch.get_num_threads()}


def fidelity(mode: str):
    if mode == "off":
        return None
    from .ablation.run import run_ablation
    from .ablation.train import config

    with tempfile.TemporaryDirectory() as out:
        return run_ablation(config(quick=mode == "quick"), out, ["zero_shot", "zero_shot_pool2"])


def print_report(out: dict) -> None:
    budget = out["budget"]
    print(f"## Predicted time ratio (dressed / plain), full-size SDXL, {out['steps']} steps, garments at the "
          "sampling size, FLOPs only")
    print("| resolution | N | budget off | budget " + str(budget) + " | garment tokens per first-level layer (off -> on) |")
    print("|---|---|---|---|---|")
    for off, on in zip(out["sdxl"][0::2], out["sdxl"][1::2]):
        for a, b in zip(off["rows"], on["rows"]):
            print(f"| {off['width']}x{off['height']} | {a['n']} | {a['predicted_ratio']:.3f} | {b['predicted_ratio']:.3f} "
                  f"| {a['top_layer_garment_tokens']} -> {b['top_layer_garment_tokens']} |")
    t = out["tiny"]
    if t:
        print(f"\n## Tiny SDXL UNet, {t['width']}x{t['height']}, {t['steps']} steps, median of {t['repeats']} "
              f"(plain: {t['plain']['cpu_median_s']:.2f} s CPU, {t['plain']['median_s']:.2f} s wall)")
        print("| N | budget | predicted ratio | CPU-time ratio | wall ratio | first-level garment tokens |")
        print("|---|---|---|---|---|---|")
        for r in t["rows"]:
            print(f"| {r['n']} | {r['budget'] or 'off'} | {r['predicted_ratio']:.3f} | {r['cpu_ratio']:.3f} | "
                  f"{r['wall_ratio']:.3f} | {r['top_layer_garment_tokens']} |")
    if out["fidelity"]:
        from .ablation import report

        print("\n## Fidelity on the synthetic benchmark (zero-shot, garment tokens of the 16x16 layers pooled 2x2)")
        print(report.settings_table(out["fidelity"]))
        print()
        print(report.comparisons_table(out["fidelity"]))
    print(json.dumps({"seconds": round(out["seconds"], 1), "load_avg": out["load_avg"]}))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget", type=int, default=4096, help="garment tokens per layer at 1024 px")
    p.add_argument("--steps", type=int, default=20, help="sampling steps of the full-size prediction")
    p.add_argument("--n", default="1,2,3,4")
    p.add_argument("--tiny-res", default="256x256")
    p.add_argument("--tiny-steps", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-timing", action="store_true", help="skip the tiny CPU timing")
    p.add_argument("--fidelity", default="full", choices=["full", "quick", "off"])
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 on a shared machine)")
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    t0 = time.time()
    host = Host(gpu=False, attention="pytorch")
    ns = [int(v) for v in a.n.split(",")]
    sdxl = []
    for w, h in ((1024, 1024), (832, 1216)):
        step = unet_step_flops(host, "sdxl", w, h)
        sdxl += [predict(host, "sdxl", w, h, ns, a.steps, b, step) for b in (0, a.budget)]
    tw, th = (int(v) for v in a.tiny_res.lower().split("x"))
    tiny_budget = max(1, a.budget * tw * th // (1024 * 1024))
    tiny = None if a.no_timing else tiny_timing(host, tw, th, ns, a.tiny_steps, a.repeats, tiny_budget)
    out = {"budget": a.budget, "tiny_budget": tiny_budget, "steps": a.steps, "sdxl": sdxl, "tiny": tiny,
           "fidelity": fidelity(a.fidelity), "seconds": time.time() - t0, "load_avg": load_average()}
    print_report(out)
    if a.json:
        os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
