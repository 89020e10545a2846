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
from anydressing_core.synthetic import render_sample

from . import scores
from .run import _png, _tile, config, format_paired, format_table
from .train import SLOTS, VAL_OFFSET, Dresser, make_data, sample, train_base

log = logging.getLogger(__name__)

SOURCES = ("zero_shot", "masks", "pose", "pose_image", "attention", "combined")
PICTURE_ROWS = 3
POSE_IMAGE_SIDE = 512  # the OpenPose picture is drawn at a workflow's size, not the bench's 32 px


class BenchRegions:
    """Feeds a :class:`RegionPlan` from the bench's DA layers (the role ``nodes/`` plays in ComfyUI)."""

    def __init__(self, spec: RegionSpec, latent_hw):
        self.plan = RegionPlan(spec, latent_hw)
        self.latent_hw = latent_hw

    def begin_step(self, step: int) -> None:
        self.plan.begin_step()

    def layer(self, key, q, gk, heads, lengths):
        hw = tokens_hw(self.latent_hw, q.shape[1])
        if self.plan.wants_garment_maps(q.shape[1]):
            self.plan.add_garment_maps(garment_maps(q, gk, heads, lengths), hw)
        return self.plan.tokens(hw, q.shape[0])


def keypoints(count: int, size: int, seed: int) -> List[np.ndarray]:
    """COCO-17 pixel keypoints of the validation samples (the same renders as ``make_data``)."""
    return [render_sample(VAL_OFFSET + i, size, seed, slots=SLOTS).keypoints for i in range(count)]


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
    os.makedirs(out, exist_ok=True)
    t_start, cpu_start = time.time(), time.process_time()
    timing: Dict[str, float] = {}
    train = make_data(cfg.n_train, cfg.size, cfg.seed)
    val = make_data(cfg.n_val, cfg.size, cfg.seed, offset=VAL_OFFSET)
    points = keypoints(cfg.n_val, cfg.size, cfg.seed)
    t = time.time()
    base = train_base(train, cfg)
    timing["base"] = time.time() - t
    model = Dresser(base, "zero_shot", cfg)
    latent_hw = (cfg.size // 2, cfg.size // 2)
    results, pers, images, maps, used = {}, {}, {}, {}, {}
    for s in sources:
        t = time.time()
        hook = None if s == "zero_shot" else BenchRegions(spec_for(s, val, points, cfg.size, vote), latent_hw)
        images[s], maps[s] = sample(model, val, cfg, "zero_shot", regions=hook)
        timing[f"sample_{s}"] = time.time() - t
        used[s] = None if hook is None else [hook.plan.picture((cfg.size, cfg.size), i) for i in range(PICTURE_ROWS)]
        per = scores.region_scores(images[s], val["person"], val["masks"], val["garments"], val["garment_masks"])
        per["loc_iou"] = scores.localization_iou(maps[s], val["masks"])
        results[s], pers[s] = scores.summarize(per, list(SLOTS)), per
        log.info("%s: %s", s, {k: round(v["mean"], 3) for k, v in results[s].items()})
    paired = {}
    for ref in ("zero_shot", "masks"):
        for s in sources:
            if s != ref and ref in pers and not (ref == "masks" and s == "zero_shot"):
                paired[f"{s} - {ref}"] = scores.paired(pers[s], pers[ref])
    timing["total"] = time.time() - t_start
    timing["total_cpu"] = time.process_time() - cpu_start
    report = {"config": vars(cfg) if not hasattr(cfg, "__dataclass_fields__") else
              {k: getattr(cfg, k) for k in cfg.__dataclass_fields__}, "results": results, "paired": paired,
              "vote": dict(vote or {}), "gap_closed": gap_closed(results), "timing_s": timing, "threads": torch.get_num_threads(),
              "load_avg": list(os.getloadavg())}
    with open(os.path.join(out, "regions.json"), "w") as f:
        json.dump(report, f, indent=1)
    with open(os.path.join(out, "regions.md"), "w") as f:
        f.write(format_table(results) + "\n\n" + format_paired(paired) + "\n")
    _png(os.path.join(out, "regions.png"), picture(val, images, used, list(sources)))  # columns: docs/REGIONS.md
    return report


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
    p.add_argument("--seed", type=int)
    p.add_argument("--n-val", type=int)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--vote", nargs="*", default=[], metavar="KEY=VALUE",
                   help="vote settings of the attention/combined rows, e.g. temperature=1.0 warmup=5")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(a.threads)
    cfg = config(a.quick, seed=a.seed, n_val=a.n_val)
    vote = {}
    for item in a.vote:
        key, _, value = item.partition("=")
        vote[key] = int(value) if key in ("smooth", "warmup") else float(value)
    report = run_regions(cfg, a.out, a.sources, vote)
    print(format_table(report["results"]))
    print()
    print(format_paired(report["paired"]))
    print(json.dumps({"gap_closed": {k: round(v, 3) for k, v in report["gap_closed"].items()},
                      "timing_s": {k: round(v, 1) for k, v in report["timing_s"].items()},
                      "load_avg": report["load_avg"], "out": a.out}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
