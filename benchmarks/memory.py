"""Estimated GPU memory AnyDressing adds on full-size SD1.5, per ComfyUI memory mode (no weights, no GPU).

    python -m benchmarks.memory                          # output 512x768, garments 384x512, N = 1..4, fp16
    python -m benchmarks.memory --res 576x768 --garment 384x512 --dtype-bytes 2

The UNet runs on the meta device once at the output size and once at the garment size to learn, per
self-attention layer, the image tokens T, the garment tokens L and the width C.  Then, with N garments:

* F, the garment tokens held by the GarmentStore: ``sum_k N * L_k * C_k`` values;
* K', V' projected once per sampling run: ``2 F``;
* the largest per-call transient of the joint form: the concatenated keys and values of one dressed row,
  ``2 * (T_k + N * L_k) * C_k`` (the separate form needs less); attention kernels that materialise the scores
  (ComfyUI's CPU/split kernels) add more, SDPA/xformers on a GPU do not.

Per mode (ComfyUI's flags): normal / ``--highvram`` / ``--lowvram`` keep F on the GPU with the UNet (the store is
an additional model of it); ``--novram`` leaves F on the CPU and moves one layer's F at a time while K'/V' are
made; ``--cpu`` uses no GPU.  These are ESTIMATES from this count, to be replaced by a GPU measurement.
"""

from __future__ import annotations

import argparse
import json

from .flops import unet_step_flops

MIB = 2 ** 20


def estimate(tokens: dict, garment_tokens: dict, channels: dict, n: int, dtype_bytes: int) -> dict:
    features = sum(n * garment_tokens[k] * channels[k] for k in channels) * dtype_bytes
    kv = 2 * features
    joint = max(2 * (tokens[k] + n * garment_tokens[k]) * channels[k] for k in channels) * dtype_bytes
    one_layer = max(n * garment_tokens[k] * channels[k] for k in channels) * dtype_bytes
    return {
        "n": n,
        "features_mib": features / MIB,
        "kv_mib": kv / MIB,
        "transient_mib": joint / MIB,
        "modes_mib": {
            "normal / --highvram / --lowvram": (features + kv + joint) / MIB,
            "--novram": (kv + one_layer + joint) / MIB,
            "--cpu": 0.0,
        },
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="sd15")
    p.add_argument("--res", default="512x768", help="output WIDTHxHEIGHT")
    p.add_argument("--garment", default="384x512", help="garment encode WIDTHxHEIGHT (Encode Garments' default)")
    p.add_argument("--n", default="1,2,3,4")
    p.add_argument("--dtype-bytes", type=int, default=2, help="2 for fp16/bf16 (the usual GPU dtype), 4 for fp32")
    p.add_argument("--json", default=None)
    ns = p.parse_args(argv)
    from .harness import Host

    host = Host(gpu=False, attention="pytorch")
    w, h = (int(v) for v in ns.res.lower().split("x"))
    gw, gh = (int(v) for v in ns.garment.lower().split("x"))
    _, tokens, channels = unet_step_flops(host, ns.preset, w, h)
    _, garment_tokens, _ = unet_step_flops(host, ns.preset, gw, gh)
    rows = [estimate(tokens, garment_tokens, channels, int(n), ns.dtype_bytes) for n in ns.n.split(",")]
    print(f"ESTIMATE, {ns.preset}: output {w}x{h}, garments {gw}x{gh}, {len(channels)} DA layers, "
          f"{ns.dtype_bytes}-byte values; MiB added on the GPU")
    modes = list(rows[0]["modes_mib"])
    print(f"{'N':>2} {'F':>8} {'K/V':>8} {'transient':>10} " + " ".join(f"{m:>32}" for m in modes))
    for r in rows:
        print(f"{r['n']:>2} {r['features_mib']:8.1f} {r['kv_mib']:8.1f} {r['transient_mib']:10.1f} "
              + " ".join(f"{r['modes_mib'][m]:32.1f}" for m in modes))
    if ns.json:
        with open(ns.json, "w") as f:
            json.dump({"output": [w, h], "garment": [gw, gh], "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
