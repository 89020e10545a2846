"""Predicted AnyDressing overhead of a full-size UNet, from FLOP counts alone (no weights, no GPU).

    python -m benchmarks.flops                                     # SD1.5, 512x512 and 576x768, N = 1..4
    python -m benchmarks.flops --res 576x768 --steps 30
    python -m benchmarks.flops --preset sdxl --res 1024x1024 --res 832x1216 --budget 0 --budget 4096

The plain UNet is instantiated on the meta device (no memory, no compute) and one CFG step (batch 2) is
run under ``FlopCounterMode``; the Dressing-Attention additions are counted analytically
(``benchmarks.measure.da_flops``: ``4*T*S*C`` per dressed row and layer per step, ``4*S*C^2`` per layer per
run for K'/V'), with garments encoded at the sampling size (L = T per layer, the paper's setting) and, with
``--budget B``, the garment tokens per layer the budget rule leaves (``anydressing_core.budget``).
This is the prediction the GPU benchmark (``benchmarks.speed --gpu``) is measured against.
"""

from __future__ import annotations

import argparse
import json
import os

from .measure import TokenProbe, da_flops

#: The full-size SDXL base UNet (``comfy/supported_models.py`` SDXL: 2.6 B parameters).
SDXL_UNET = dict(num_res_blocks=[2, 2, 2], channel_mult=[1, 2, 4], transformer_depth=[0, 0, 2, 2, 10, 10],
                 transformer_depth_output=[0, 0, 0, 2, 2, 2, 10, 10, 10], transformer_depth_middle=10)
PRESETS = ("sd15", "sdxl", "sdxl-tiny", "smallest", "recommended")


def unet_config(host, preset: str) -> dict:
    """``UNetModel`` keyword arguments: full-size SD1.5 / SDXL, the tiny SDXL checkpoint's UNet, or a tiny SD1.5."""
    from .harness import SD15_UNET

    from devtools import tiny_models as tiny

    if preset in ("sdxl", "sdxl-tiny"):
        cfg = tiny.sdxl_unet_config()
        if preset == "sdxl":
            cfg.update(SDXL_UNET)
        return cfg
    cfg = tiny.unet_config("recommended")
    cfg.update(SD15_UNET) if preset == "sd15" else cfg.update(tiny.PRESETS[preset])
    return cfg


def unet_step_flops(host, preset: str, w: int, h: int):
    """FLOPs of one plain batch-2 UNet forward, and per attn1 layer its image tokens T, channels C and
    token grid (h, w) (a garment encoded at the sampling size has the same grid)."""
    import torch
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel
    from torch.utils.flop_counter import FlopCounterMode

    cfg = unet_config(host, preset)
    tokens_hw = host.module("anydressing_core.attention").tokens_hw
    with torch.device("meta"):
        dm = UNetModel(**cfg, operations=comfy.ops.disable_weight_init)
        x = torch.empty(2, 4, h // 8, w // 8)
        ctx = torch.empty(2, 77, cfg["context_dim"])
        ts = torch.empty(2)
        extra = {"y": torch.empty(2, cfg["adm_in_channels"])} if cfg.get("adm_in_channels") else {}
    modules = host.module("nodes.common").attn1_modules(dm)
    probe = TokenProbe(modules)
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        dm(x, timesteps=ts, context=ctx, **extra)
    probe.close()
    channels = {k: m.to_k.in_features for k, m in modules.items()}
    grids = {k: tokens_hw((h // 8, w // 8), t) for k, t in probe.tokens.items()}
    return int(counter.get_total_flops()), probe.tokens, channels, grids


def predict(host, preset: str, w: int, h: int, ns, steps: int, budget: int = 0, step=None) -> dict:
    """Predicted time ratio (dressed / plain) per garment count; ``step`` reuses a ``unet_step_flops`` result."""
    budget_mod = host.module("anydressing_core.budget")
    flops, tokens, channels, grids = step or unet_step_flops(host, preset, w, h)
    rows = []
    for n in ns:
        garment = budget_mod.garment_tokens(grids, n, budget)
        layers = {k: {"T": tokens[k], "S": garment[k], "C": channels[k]} for k in tokens}
        da = da_flops(layers, n_rows=1)
        base = steps * flops
        added = steps * da["per_step"] + da["kv_per_run"]
        top = max(tokens, key=lambda k: tokens[k])
        rows.append({"n": n, "predicted_ratio": (base + added) / base, "added_gflop_per_step": da["per_step"] / 1e9,
                     "kv_gflop_per_run": da["kv_per_run"] / 1e9, "top_layer_garment_tokens": garment[top],
                     "pooled_layers": sum(garment[k] < n * tokens[k] for k in tokens)})
    return {"preset": preset, "width": w, "height": h, "steps": steps, "budget": budget,
            "unet_step_gflop": flops / 1e9, "layers": len(tokens), "rows": rows}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="sd15", choices=PRESETS)
    p.add_argument("--res", action="append", default=None)
    p.add_argument("--n", default="1,2,3,4")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--budget", type=int, action="append", default=None,
                   help="garment tokens per layer (0 = no budget); repeat to compare")
    p.add_argument("--json", default=None, help="also write the result here")
    ns = p.parse_args(argv)
    from .harness import Host

    host = Host(gpu=False, attention="pytorch")  # SDPA: counted on meta tensors like any matmul
    out = []
    for r in ns.res or (["1024x1024", "832x1216"] if ns.preset == "sdxl" else ["512x512", "576x768"]):
        w, h = (int(v) for v in r.lower().split("x"))
        step = unet_step_flops(host, ns.preset, w, h)
        for budget in ns.budget or [0]:
            res = predict(host, ns.preset, w, h, [int(v) for v in ns.n.split(",")], ns.steps, budget, step)
            out.append(res)
            print(f"{ns.preset} {w}x{h}: plain CFG step (batch 2) {res['unet_step_gflop']:.0f} GFLOP, {res['layers']} DA "
                  f"layers, {ns.steps} steps, garments at the sampling size, garments in the positive row only, "
                  f"budget {budget or 'off'}")
            for row in res["rows"]:
                print(f"  N={row['n']}: +{row['added_gflop_per_step']:.1f} GFLOP per step, K'/V' "
                      f"{row['kv_gflop_per_run']:.1f} GFLOP per run -> predicted time ratio {row['predicted_ratio']:.3f}")
    if ns.json:
        os.makedirs(os.path.dirname(os.path.abspath(ns.json)), exist_ok=True)
        with open(ns.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
