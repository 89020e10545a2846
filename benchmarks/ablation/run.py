"""Run the whole ablation: data, base, every setting, sampling, scores, table, JSON and pictures."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from typing import Dict, List, Sequence

import cv2
import numpy as np
import torch

from . import scores
from .train import SETTINGS, SLOTS, VAL_OFFSET, Config, make_data, sample, train_base, train_setting

log = logging.getLogger(__name__)

#: the ablation chain: each pair adds one component [paper, Table 3]
STEPS = (("base", "gfe"), ("gfe", "gfe_igl"), ("gfe_igl", "gfe_igl_gtl"), ("zero_shot", "base"))
QUICK = dict(size=16, n_train=16, n_val=4, base_steps=2, steps=2, batch=2, channels=8, sample_steps=2)
#: columns of the table: (result key, header, format)
COLUMNS = (("loc_iou", "loc IoU ^", "{:.3f}"), ("confused", "confusion v", "{:.3f}"),
           ("colour_err", "colour err v", "{:.1f}"), ("edge_err", "edge err v", "{:.2f}"),
           ("pixel_err", "pixel err v", "{:.1f}"))


def run_ablation(cfg: Config, out: str, settings: Sequence[str] = SETTINGS) -> Dict[str, object]:
    """Train and score ``settings``; writes ``ablation.json``, ``ablation.md`` and PNGs under ``out``."""
    os.makedirs(out, exist_ok=True)
    t_start, cpu_start = time.time(), time.process_time()
    timing: Dict[str, float] = {}
    t = time.time()
    train = make_data(cfg.n_train, cfg.size, cfg.seed)
    val = make_data(cfg.n_val, cfg.size, cfg.seed, offset=VAL_OFFSET)
    timing["data"] = time.time() - t
    t = time.time()
    base = train_base(train, cfg)
    timing["base"] = time.time() - t
    results, images, maps, curves, pers = {}, {}, {}, {}, {}
    for s in settings:
        t = time.time()
        model, curves[s] = train_setting(base, train, s, cfg)
        timing[f"train_{s}"] = time.time() - t
        t = time.time()
        images[s], maps[s] = sample(model, val, cfg, s)
        timing[f"sample_{s}"] = time.time() - t
        per = scores.region_scores(images[s], val["person"], val["masks"], val["garments"], val["garment_masks"])
        if maps[s] is not None:
            per["loc_iou"] = scores.localization_iou(maps[s], val["masks"])
        results[s] = scores.summarize(per, list(SLOTS))
        pers[s] = per
        log.info("%s done: %s", s, {k: round(v["mean"], 3) for k, v in results[s].items()})
    ref = scores.region_scores(val["person"], val["person"], val["masks"], val["garments"], val["garment_masks"])
    results["ground_truth"] = scores.summarize(ref, list(SLOTS))
    timing["total"] = time.time() - t_start
    timing["total_cpu"] = time.process_time() - cpu_start
    paired = {f"{b} - {a}": scores.paired(pers[b], pers[a]) for a, b in STEPS if a in pers and b in pers}
    report = {"config": dataclasses.asdict(cfg), "results": results, "paired": paired, "timing_s": timing,
              "threads": torch.get_num_threads(), "load_avg": list(os.getloadavg()),
              "curves": {s: {k: _coarse(v) for k, v in c.items() if v} for s, c in curves.items()}}
    with open(os.path.join(out, "ablation.json"), "w") as f:
        json.dump(report, f, indent=1)
    table = format_table(results) + "\n\n" + format_paired(paired)
    with open(os.path.join(out, "ablation.md"), "w") as f:
        f.write(table + "\n")
    _png(os.path.join(out, "samples.png"), picture(val, images, maps, list(settings)))
    return report


def format_paired(paired: Dict[str, Dict[str, Dict[str, float]]]) -> str:
    """Markdown table of paired differences (same samples, same noise): mean ± standard error."""
    lines = ["| added component | " + " | ".join(h.replace(" ^", "").replace(" v", "") + " diff" for _, h, _ in COLUMNS) + " |",
             "|" + "---|" * (len(COLUMNS) + 1)]
    for name, r in paired.items():
        cells = [("n/a" if key not in r else (fmt.format(r[key]["mean"]) + " ± " + fmt.format(r[key]["sem"])))
                 for key, _, fmt in COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _coarse(values: List[float], points: int = 20) -> List[float]:
    """Loss curve averaged into ``points`` chunks (keeps the JSON small)."""
    chunks = np.array_split(np.asarray(values), min(points, len(values)))
    return [round(float(c.mean()), 5) for c in chunks]


def format_table(results: Dict[str, Dict[str, Dict[str, float]]]) -> str:
    """Markdown table: mean +- standard error per column (^ higher is better, v lower)."""
    head = "| setting | " + " | ".join(h for _, h, _ in COLUMNS) + " |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 1)]
    for s, r in results.items():
        cells = []
        for key, _, fmt in COLUMNS:
            if key not in r or np.isnan(r[key]["mean"]):
                cells.append("n/a")
            else:
                sem = r[key]["sem"]
                cells.append(fmt.format(r[key]["mean"]) + ("" if np.isnan(sem) else " ± " + fmt.format(sem)))
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _tile(img: torch.Tensor, scale: int) -> np.ndarray:
    a = ((img.clamp(-1, 1) + 1) * 127.5).permute(1, 2, 0).numpy().astype(np.uint8)
    return cv2.resize(a, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)


def _map_tile(m: torch.Tensor, scale: int) -> np.ndarray:
    """Maps ``[N, S, S]`` as RGB (upper red, lower green, hat blue), each normalised to its max."""
    m = m / m.flatten(1).amax(1).clamp_min(1e-6).view(-1, 1, 1)
    rgb = torch.zeros(3, *m.shape[1:])
    rgb[: m.shape[0]] = m[:3]
    return _tile(rgb * 2 - 1, scale)


def picture(val, images, maps, settings: List[str], rows: int = 4, scale: int = 3) -> np.ndarray:
    """Samples and maps side by side: ground truth, pose, garments | per setting: image, maps."""
    lines = []
    for i in range(min(rows, val["person"].shape[0])):
        tiles = [_tile(val["person"][i], scale), _tile(val["pose"][i], scale)]
        tiles += [_tile(g, scale) for g in val["garments"][i]]
        for s in settings:
            tiles.append(_tile(images[s][i], scale))
            if maps[s] is not None:
                tiles.append(_map_tile(maps[s][i], scale))
        sep = np.full((tiles[0].shape[0], 2, 3), 255, np.uint8)
        lines.append(np.concatenate([x for t in tiles for x in (t, sep)], 1))
    return np.concatenate([np.pad(x, ((0, 2), (0, 0), (0, 0)), constant_values=255) for x in lines], 0)


def _png(path: str, rgb: np.ndarray) -> None:
    if not cv2.imwrite(path, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write {path}")


def config(quick: bool = False, **overrides) -> Config:
    """The full benchmark's config, or the seconds-long ``quick`` one, with ``overrides``."""
    base = dataclasses.asdict(Config())
    if quick:
        base.update(QUICK)
    base.update({k: v for k, v in overrides.items() if v is not None})
    return Config(**base)
