"""Automatic regions on the synthetic benchmark: the zero-shot row with each region source, paired.

    python -m benchmarks.ablation.regions --out outputs/regions           # ~3 min on one core
    python -m benchmarks.ablation.regions --out outputs/reg --quick       # seconds, for tests

Every row samples the same held-out samples from the same noise with the same frozen base (the
ablation's zero-shot setting: GarmentsNet = the base, K' = Wk, V' = Wv); only the regions differ:

* ``zero_shot``: none (today's zero-shot);
* ``masks``: the true garment masks as ``region_masks`` (what a user drawing perfect masks gets);
* ``pose``: body-part regions from the sample's keypoints (``anydressing_core.regions.body``);
* ``pose_image``: the same keypoints drawn as a standard OpenPose picture at 512 px and read back
  (``regions.openpose_image``), as a ControlNet pose workflow would hand them over;
* ``attention``: the vote on the garments' own DA maps (``regions.vote``);
* ``combined``: pose regions, the vote deciding where they meet.

The prompt source needs a text path: the bench model has no cross-attention (its garments carry all
appearance), so it is not measured here (docs/REGIONS.md). Writes regions.json, regions.md and
regions.png (regions of the first samples) under ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import time
from typing import Dict, List

import numpy as np
import torch

from anydressing_core.attention import garment_maps, tokens_hw
from anydressing_core.regions import RegionPlan, RegionSource, RegionSpec
from anydressing_core.regions.body import slot_masks
from anydressing_core.regions.keypoints import frame_from_points
from anydressing_core.regions.openpose_image import draw_openpose, keypoints_from_openpose

from . import report, scores, stats
from .report import _tile
from .settings import BY_NAME
from .train import SLOTS, TEXTURED, VAL_OFFSET, Dresser, config, make_data, sample, take, train_base

log = logging.getLogger(__name__)

SOURCES = ("zero_shot", "masks", "pose", "pose_image", "attention", "combined")
PICTURE_ROWS = 3
POSE_IMAGE_SIDE = 512  # the OpenPose picture is drawn at a workflow's size, not the bench's 32 px


class BenchRegions:
    """Feeds a :class:`RegionPlan` from the bench's DA layers (the role ``nodes/`` plays in ComfyUI)."""

    def __init__(self, spec: RegionSpec, latent_hw, device="cpu"):
        self.plan = RegionPlan(spec, latent_hw, device=device)
        self.latent_hw = latent_hw

    def begin_step(self, step: int) -> None:
        self.plan.begin_step()

    def layer(self, key, q, gk, heads, lengths):
        hw = tokens_hw(self.latent_hw, q.shape[1])
        if self.plan.wants_garment_maps(q.shape[1]):
            self.plan.add_garment_maps(garment_maps(q, gk, heads, lengths), hw)
        return self.plan.tokens(hw, q.shape[0])


def keypoints(view) -> List[np.ndarray]:
    """COCO-17 pixel keypoints of a view's samples, as the generator drew them."""
    return [kp.numpy() for kp in view["keypoints"]]


def pose_masks(points: List[np.ndarray], size: int, via_image: bool) -> torch.Tensor:
    """``[n, N, S, S]`` body-part regions per sample, from the keypoints or from their OpenPose picture."""
    out = []
    for kp in points:
        frame = frame_from_points([kp], size, size)
        if via_image:
            frame = keypoints_from_openpose(draw_openpose(frame.scaled(POSE_IMAGE_SIDE, POSE_IMAGE_SIDE)))
            frame = frame.scaled(size, size)
        masks, _ = slot_masks(frame, SLOTS)
        out.append(torch.from_numpy(masks))
    return torch.stack(out)


def spec_for(source: str, val, points, size: int, vote=None) -> RegionSpec:
    """The regions of one row; ``vote`` overrides the vote's settings (``regions.vote.MapVote``)."""
    names = list(SLOTS)
    vote = dict(vote or {})
    if source == "masks":
        return RegionSpec(RegionSource.POSE, names, pose_masks=val["masks"].float())
    if source in ("pose", "pose_image"):
        return RegionSpec(RegionSource.POSE, names, pose_masks=pose_masks(points, size, source == "pose_image"))
    if source == "attention":
        return RegionSpec(RegionSource.ATTENTION, names, vote=vote)
    if source == "combined":
        return RegionSpec(RegionSource.COMBINED, names, pose_masks=pose_masks(points, size, False), vote=vote)
    raise ValueError(f"unknown region row {source!r}; use one of {SOURCES}")


def run_regions(cfg, out: str, sources=SOURCES, vote=None) -> Dict[str, object]:
    """The zero-shot row with each region source over ``cfg.seeds``; writes regions.json/.md/.png under ``out``."""
    os.makedirs(out, exist_ok=True)
    t_start, cpu_start = time.time(), time.process_time()
    timing: Dict[str, float] = {}
    setting = BY_NAME["zero_shot"]
    train = make_data(cfg.n_train, cfg, [setting.world])[setting.world]
    val = take(make_data(cfg.n_val, cfg, [setting.world], VAL_OFFSET)[setting.world], slice(None))
    points = keypoints(val)
    textured = np.isin(val["pattern"].numpy(), TEXTURED)
    latent_hw = (cfg.size // cfg.patch, cfg.size // cfg.patch)
    per: Dict[str, Dict[int, Dict[str, np.ndarray]]] = {s: {} for s in sources}
    images, used = {}, {}
    for seed in cfg.seeds:
        t = time.time()
        model = Dresser(train_base(train, cfg, seed), setting, cfg)
        timing[f"base_{seed}"] = time.time() - t
        for s in sources:
            t = time.time()
            hook = None if s == "zero_shot" else BenchRegions(spec_for(s, val, points, cfg.size, vote), latent_hw,
                                                                 cfg.device)
            img, maps = sample(model, val, cfg, seed, regions=hook)
            timing[f"sample_{s}_{seed}"] = time.time() - t
            scored = scores.region_scores(img, val["person"], val["masks"], val["garments"], val["garment_masks"],
                                          textured)
            scored["loc_iou"] = scores.localization_iou(maps, val["masks"])
            per[s][seed] = scored
            if seed == cfg.seeds[0]:
                images[s] = img
                used[s] = None if hook is None else [hook.plan.picture((cfg.size, cfg.size), i)
                                                     for i in range(min(PICTURE_ROWS, cfg.n_val))]
            log.info("seed %d %s: %s", seed, s, {k: round(float(np.nanmean(v)), 3) for k, v in scored.items()})
    results = {s: stats.summaries(per[s], report.METRICS, SLOTS) for s in sources}
    paired = {}
    for ref in ("zero_shot", "masks"):
        for s in sources:
            if s != ref and ref in per and not (ref == "masks" and s == "zero_shot"):
                paired[f"{s} - {ref}"] = {m: stats.paired(per[s], per[ref], m) for m in report.METRICS}
    timing["total"] = time.time() - t_start
    timing["total_cpu"] = time.process_time() - cpu_start
    result = {"config": dataclasses.asdict(cfg), "results": results, "paired": paired, "vote": dict(vote or {}),
              "gap_closed": gap_closed(results), "timing_s": timing, "threads": torch.get_num_threads(),
              "load_avg": list(os.getloadavg())}
    with open(os.path.join(out, "regions.json"), "w") as f:
        json.dump(result, f, indent=1)
    with open(os.path.join(out, "regions.md"), "w") as f:
        f.write(markdown(result) + "\n")
    report.write_png(os.path.join(out, "regions.png"), picture(val, images, used, list(sources)))  # columns: docs/REGIONS.md
    return result


def markdown(result) -> str:
    cfg, t = result["config"], result["timing_s"]
    head = (f"{cfg['size']}x{cfg['size']} px, seeds {list(cfg['seeds'])}, {cfg['n_val']} held-out samples, base "
            f"{cfg['base_steps']} steps; wall {t['total'] / 60:.1f} min, CPU {t['total_cpu'] / 60:.1f} min")
    gap = ", ".join(f"{k} {v:.2f}" for k, v in result["gap_closed"].items())
    return "\n\n".join([head, "Rows: mean over seeds ± seed-to-seed spread.", report.rows_table(result["results"]),
                         "Paired differences over (sample, garment, seed) [95% CI]:", report.paired_table(result["paired"]),
                         f"Share of the loc-IoU gap (zero-shot to true masks) closed: {gap}"])


def gap_closed(results) -> Dict[str, float]:
    """Share of the loc-IoU gap between zero-shot and the true masks that each row closes."""
    if "zero_shot" not in results or "masks" not in results:
        return {}
    lo, hi = results["zero_shot"]["loc_iou"]["mean"], results["masks"]["loc_iou"]["mean"]
    return {s: (r["loc_iou"]["mean"] - lo) / (hi - lo) for s, r in results.items() if hi > lo}


def _regions_tile(m, scale: int) -> np.ndarray:
    """Allowed masks ``[N, S, S]`` as RGB (upper red, lower green, hat blue); black where none is restricted."""
    rgb = torch.zeros(3, *m.shape[1:])
    rgb[: m.shape[0]] = m[:3]
    rgb[:, m.sum(0) >= m.shape[0]] = 0.0  # open to every garment: no region
    return _tile(rgb * 2 - 1, scale)


def picture(val, images, used, sources: List[str], scale: int = 4) -> np.ndarray:
    """Per sample: truth, pose, true masks | per row: the generated image and the regions in force at the end."""
    lines = []
    for i in range(min(PICTURE_ROWS, val["person"].shape[0])):
        tiles = [_tile(val["person"][i], scale), _tile(val["pose"][i], scale), _regions_tile(val["masks"][i], scale)]
        for s in sources:
            tiles.append(_tile(images[s][i], scale))
            if used.get(s) is not None:
                regions = used[s][i]
                tiles.append(np.zeros_like(tiles[0]) if regions is None else _regions_tile(regions, scale))
        sep = np.full((tiles[0].shape[0], 2, 3), 255, np.uint8)
        lines.append(np.concatenate([x for t in tiles for x in (t, sep)], 1))
    return np.concatenate([np.pad(x, ((0, 2), (0, 0), (0, 0)), constant_values=255) for x in lines], 0)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="outputs/regions")
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run in seconds")
    p.add_argument("--sources", nargs="+", default=list(SOURCES), choices=SOURCES)
    p.add_argument("--seeds", type=int, nargs="+", help="training seeds of the base (default 0 1 2)")
    p.add_argument("--n-val", type=int)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--vote", nargs="*", default=[], metavar="KEY=VALUE",
                   help="vote settings of the attention/combined rows, e.g. temperature=1.0 warmup=5")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(a.threads)
    cfg = config(a.quick, seeds=a.seeds, n_val=a.n_val)
    vote = {}
    for item in a.vote:
        key, _, value = item.partition("=")
        vote[key] = int(value) if key in ("smooth", "warmup") else float(value)
    result = run_regions(cfg, a.out, a.sources, vote)
    print(markdown(result))
    print(json.dumps({"timing_s": {k: round(v, 1) for k, v in result["timing_s"].items()},
                      "load_avg": result["load_avg"], "out": a.out}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
