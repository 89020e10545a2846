"""Predicted AnyDressing overhead of the full-size SD1.5 UNet, from FLOP counts alone (no weights, no GPU).

    python -m benchmarks.flops                     # 512x512 and 576x768, N = 1..4
    python -m benchmarks.flops --res 576x768 --steps 30

The plain UNet is instantiated on the meta device (no memory, no compute) and one CFG step (batch 2) is
run under ``FlopCounterMode``; the Dressing-Attention additions are counted analytically
(``benchmarks.measure.da_flops``: ``4*T*S*C`` per dressed row and layer per step, ``4*S*C^2`` per layer per
run for K'/V'), with garments encoded at the sampling size (L = T per layer, the paper's setting).
This is the prediction the GPU benchmark (``benchmarks.speed --gpu``) is measured against.
"""

from __future__ import annotations

import argparse
import json
import os

from .measure import TokenProbe, da_flops


def unet_step_flops(host, preset: str, w: int, h: int):
    """FLOPs of one plain batch-2 UNet forward and the image tokens T of every attn1 layer."""
    import torch
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel
    from torch.utils.flop_counter import FlopCounterMode

    from .harness import SD15_UNET

    from devtools import tiny_models as tiny
    cfg = tiny.unet_config("recommended")
    cfg.update(SD15_UNET) if preset == "sd15" else cfg.update(tiny.PRESETS[preset])
    with torch.device("meta"):
        dm = UNetModel(**cfg, operations=comfy.ops.disable_weight_init)
        x = torch.empty(2, 4, h // 8, w // 8)
        ctx = torch.empty(2, 77, 768)
        ts = torch.empty(2)
    modules = host.module("nodes.common").attn1_modules(dm)
    probe = TokenProbe(modules)
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        dm(x, timesteps=ts, context=ctx)
    probe.close()
    channels = {k: m.to_k.in_features for k, m in modules.items()}
    return int(counter.get_total_flops()), probe.tokens, channels


def predict(host, preset: str, w: int, h: int, ns, steps: int) -> dict:
    step, tokens, channels = unet_step_flops(host, preset, w, h)
    rows = []
    for n in ns:
        layers = {k: {"T": tokens[k], "S": n * tokens[k], "C": channels[k]} for k in tokens}
        da = da_flops(layers, n_rows=1)
        base = steps * step
        added = steps * da["per_step"] + da["kv_per_run"]
        rows.append({"n": n, "predicted_ratio": (base + added) / base, "added_gflop_per_step": da["per_step"] / 1e9,
                     "kv_gflop_per_run": da["kv_per_run"] / 1e9})
    return {"width": w, "height": h, "steps": steps, "unet_step_gflop": step / 1e9, "layers": len(tokens), "rows": rows}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="sd15")
    p.add_argument("--res", action="append", default=None)
    p.add_argument("--n", default="1,2,3,4")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--json", default=None, help="also write the result here")
    ns = p.parse_args(argv)
    from .harness import Host

    host = Host(gpu=False, attention="pytorch")  # SDPA: counted on meta tensors like any matmul
    out = []
    for r in ns.res or ["512x512", "576x768"]:
        w, h = (int(v) for v in r.lower().split("x"))
        res = predict(host, ns.preset, w, h, [int(v) for v in ns.n.split(",")], ns.steps)
        out.append(res)
        print(f"{ns.preset} {w}x{h}: plain CFG step (batch 2) {res['unet_step_gflop']:.0f} GFLOP, {res['layers']} DA layers, "
              f"{ns.steps} steps, garments at the sampling size, garments in the positive row only")
        for row in res["rows"]:
            print(f"  N={row['n']}: +{row['added_gflop_per_step']:.1f} GFLOP per step, K'/V' {row['kv_gflop_per_run']:.1f} "
                  f"GFLOP per run -> predicted time ratio {row['predicted_ratio']:.3f}")
    if ns.json:
        os.makedirs(os.path.dirname(os.path.abspath(ns.json)), exist_ok=True)
        with open(ns.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
