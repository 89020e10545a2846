"""What automatic regions add to a zero-shot run, per step and per run, on the tiny CPU UNet (or SD1.5 on a GPU).

Run from the repo root (pinned to one core, as docs/PERFORMANCE.md does)::

    taskset -c 0 env OMP_NUM_THREADS=1 python -m benchmarks.regions_cost                 # 64x64, 2 garments
    taskset -c 0 env OMP_NUM_THREADS=1 python -m benchmarks.regions_cost --res 128x128
    python -m benchmarks.regions_cost --gpu --preset sd15 --res 512x512                    # on a CUDA machine

For each region source it alternates KSampler runs of plain zero-shot and zero-shot with that source
(same model, garments, seed, sampler, CFG 6), at 2 and 6 steps, and fits the added process CPU time (GPU:
wall time) as ``fixed + per_step * steps`` (medians of ``--repeats``). The pose and the prompt's word
positions are prepared once, as the Garment Regions node does; what is timed is what sampling pays: the
plan, the votes' maps on the coarse layers, the once-per-step vote, the regions' bias rows.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

SOURCES = ("pose", "attention", "prompt", "combined")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--res", default="64x64", help="WxH, multiples of 64 (default 64x64)")
    p.add_argument("--n", type=int, default=2, help="garments (default 2: upper and lower)")
    p.add_argument("--preset", default="recommended", help="tiny UNet preset, or sd15")
    p.add_argument("--gpu", action="store_true")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--sources", nargs="+", default=list(SOURCES), choices=SOURCES)
    a = p.parse_args(argv)
    w, h = (int(v) for v in a.res.lower().split("x"))

    from .harness import Host, build_unet, build_vae, conditioning, garment_chain
    from .measure import linear_fit, load_average

    host = Host(gpu=a.gpu)
    model, vae = build_unet(host, a.preset), build_vae(host)
    pos, neg = conditioning(1), conditioning(2)
    with torch.inference_mode():
        feats = host.run("AnyDressingEncodeGarments", model=model, vae=vae, garments=garment_chain(host, a.n),
                         width=w, height=h)[0]
    hooks = host.module("nodes.regions")
    keypoints = host.module("anydressing_core.regions.keypoints")
    synthetic = host.module("anydressing_core.synthetic")
    side = max(w, h)
    pts = keypoints.to_body18(synthetic.render_sample(0, side, 0, slots=("upper", "lower", "hat")).keypoints)
    pose = keypoints.frame_from_points([pts], side, side).scaled(w, h)
    latent = {"samples": torch.zeros(1, 4, h // 8, w // 8)}
    cuda = a.gpu and torch.cuda.is_available()

    def apply(request=None):
        return host.run("AnyDressingApply", model=model, features=feats, strength=0.7, start_percent=0.0, end_percent=1.0,
                        form="auto", cfg_policy="garments in positive only (paper)", regions=request)[0]

    def request(source):
        # word positions as the node finds them in a prompt: two words per garment, in the random conditioning
        words = {f"w{k}": [2 + 3 * k, 3 + 3 * k] for k in range(a.n)}
        req = hooks.RegionRequest(source, pose if source in ("pose", "combined") else None, words=";".join(words))
        if source in ("prompt", "combined"):
            req.prompt_ids = [list(range(77))]
            req.phrase_ids = words
        return req

    def seconds(m, steps):
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter() if cuda else time.process_time()
        with torch.inference_mode():
            host.run("KSampler", model=m, seed=0, steps=steps, cfg=6.0, sampler_name="ddim", scheduler="ddim_uniform",
                     positive=pos, negative=neg, latent_image=latent, denoise=1.0)
        if cuda:
            torch.cuda.synchronize()
        return (time.perf_counter() if cuda else time.process_time()) - t0

    plain = apply()
    clock = "wall" if cuda else "process CPU"
    print(f"regions cost at {w}x{h}, N={a.n}, {a.preset} UNet, {clock} time, medians of {a.repeats} "
          f"(load average {load_average()})")
    for source in a.sources:
        dressed = apply(request(source))
        steps_list, added, base = (2, 6), [], []
        for steps in steps_list:
            seconds(plain, steps), seconds(dressed, steps)  # warm-up
            without, with_ = [], []
            for _ in range(a.repeats):
                without.append(seconds(plain, steps))
                with_.append(seconds(dressed, steps))
            added.append(statistics.median(with_) - statistics.median(without))
            base.append(statistics.median(without))
        fit = linear_fit(list(steps_list), added)
        step_plain = (base[1] - base[0]) / (steps_list[1] - steps_list[0])
        print(f"  {source:9s}: +{fit['slope'] * 1e3:7.2f} ms per step ({100 * fit['slope'] / step_plain:5.1f}% of a "
              f"zero-shot step, {step_plain * 1e3:.1f} ms), fixed {fit['intercept'] * 1e3:+.2f} ms per run")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
