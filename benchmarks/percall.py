"""Where AnyDressing's overhead beyond the attention kernel goes, on the tiny CPU UNet.

Run from the repo root (pinned, as docs/PERFORMANCE.md does)::

    taskset -c 0 env OMP_NUM_THREADS=1 python -m benchmarks.percall          # 64x64, N=1
    taskset -c 0 env OMP_NUM_THREADS=1 python -m benchmarks.percall --res 128x128 --n 2

It prints two figures:

1. **per DA call**: one ``DressingReplace`` call on a real layer's shapes (the first self-attention layer, a CFG
   batch of 2, the paper's policy) against the two bare host-attention calls it makes (the dressed positive
   row on prepared concatenated keys, the plain negative row): the difference is our code per call;
2. **per step and per run**: the added time of whole KSampler runs of 1, 3 and 6 steps (alternating with plain
   runs, process CPU time, medians), fitted as ``fixed + per_step * steps``, next to the kernel floor per step
   (``measure.kernel_floor``).
"""

from __future__ import annotations

import argparse
import math
import statistics
import time


def _per_call_us(fn, n: int = 2000, outer: int = 7) -> float:
    for _ in range(50):
        fn()
    times = []
    for _ in range(outer):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        times.append((time.perf_counter() - t0) / n * 1e6)
    return statistics.median(times)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--res", default="64x64", help="WxH (default 64x64)")
    p.add_argument("--n", type=int, default=1, help="garments (default 1)")
    p.add_argument("--repeats", type=int, default=15, help="alternating runs per step count (default 15)")
    ns = p.parse_args(argv)
    w, h = (int(v) for v in ns.res.lower().split("x"))

    import torch

    from .harness import garment_chain
    from .measure import kernel_floor
    from .speed import Bench, parse_args

    b = Bench(parse_args(["--no-save", "--res", ns.res]))
    import comfy.ldm.modules.attention as host_attention

    with torch.inference_mode():
        feats = b.host.run("AnyDressingEncodeGarments", model=b.model, vae=b.vae, garments=garment_chain(b.host, ns.n),
                           width=w, height=h)[0]
    dressed = b.apply(feats)
    shared = b.find_patch(dressed)
    replaces = dressed.model_options["transformer_options"]["patches_replace"]["attn1"]
    key = next(iter(feats.tokens))
    fn = replaces[key]
    modules = b.attn1_modules(b.model.model.diffusion_model)
    t, c, heads = int(feats.tokens[key].shape[1]), int(feats.tokens[key].shape[2]), int(modules[key].heads)

    # 1. per DA call
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, t, c, generator=gen) for _ in range(3))
    extra = {"n_heads": heads, "attn_precision": None, "cond_or_uncond": [0, 1], "sigmas": torch.tensor([5.0]),
             "original_shape": [2, 4, h // 8, w // 8]}
    oa = host_attention.optimized_attention
    shared.state.begin(b.model.model.diffusion_model)
    try:
        with torch.inference_mode():
            ours = _per_call_us(lambda: fn(q, k, v, extra))
            gk, gv = shared.garment_kv(key, q)
            kk, vv = torch.cat([k[:1], gk], 1), torch.cat([v[:1], gv], 1)
            mask = None
            if shared.form == "joint" and shared.strength != 1.0:
                mask = torch.cat([torch.zeros(1, t), torch.full((1, gk.shape[1]), math.log(shared.strength))], 1)
            if shared.form == "joint":
                bare = _per_call_us(lambda: (oa(q[:1], kk, vv, heads, mask=mask), oa(q[1:], k[1:], v[1:], heads)))
            else:
                bare = _per_call_us(lambda: (oa(q[:1], k[:1], v[:1], heads), oa(q[:1], gk, gv, heads),
                                             oa(q[1:], k[1:], v[1:], heads)))
    finally:
        shared.state.end()
    print(f"per DA call ({ns.res}, N={ns.n}, layer {key}, T={t}, {shared.form} form): DressingReplace {ours:.1f} us, "
          f"its bare host-attention calls {bare:.1f} us, our code {ours - bare:.1f} us")

    # 2. per step and per run
    latent = {"samples": torch.zeros(1, 4, h // 8, w // 8)}

    def run(model, steps):
        with torch.inference_mode():
            b.host.run("KSampler", model=model, seed=0, steps=steps, cfg=6.0, sampler_name="ddim",
                       scheduler="ddim_uniform", positive=b.pos, negative=b.neg, latent_image=latent, denoise=1.0)

    steps_list, added = (1, 3, 6), []
    for steps in steps_list:
        run(b.model, steps)
        run(dressed, steps)
        plain, with_ = [], []
        for _ in range(ns.repeats):
            for model, acc in ((b.model, plain), (dressed, with_)):
                t0 = time.process_time()
                run(model, steps)
                acc.append(time.process_time() - t0)
        added.append(statistics.median(with_) - statistics.median(plain))
        print(f"  {steps} step(s): plain {statistics.median(plain) * 1e3:.1f} ms, added {added[-1] * 1e3:.2f} ms")
    mx, my = sum(steps_list) / 3, sum(added) / 3
    slope = sum((x - mx) * (y - my) for x, y in zip(steps_list, added)) / sum((x - mx) ** 2 for x in steps_list)
    _, tokens = b.plain_step(w, h)
    layers = {kk_: {"T": tokens[kk_], "S": int(tt.shape[0] * tt.shape[1]), "C": int(tt.shape[2]),
                    "heads": int(modules[kk_].heads)} for kk_, tt in feats.tokens.items()}
    floor = kernel_floor(oa, layers, 1, shared.form, shared.strength, b.model.load_device, b.model.model.get_dtype())
    print(f"per run (fit over 1/3/6 steps): fixed {(my - slope * mx) * 1e3:.2f} ms + {slope * 1e3:.2f} ms per step; "
          f"kernel floor per step {floor['attention_s_per_run'] * 1e3:.2f} ms, K'/V' projection per run "
          f"{floor['kv_s_per_run'] * 1e3:.2f} ms, our code per step ~{(ours - bare) * len(layers) / 1e3:.2f} ms "
          f"({len(layers)} DA calls)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
