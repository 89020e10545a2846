"""The ablation's tables (markdown) and pictures."""

from __future__ import annotations

from typing import Dict, List, Mapping

import cv2
import numpy as np
import torch

from . import stats

#: columns of the settings table: (metric, header, format); "^" higher is better, "v" lower
COLUMNS = (("loc_iou", "loc IoU ^", "{:.3f}"), ("confused", "confusion v", "{:.3f}"),
           ("colour_err", "colour err v", "{:.1f}"), ("edge_err", "edge err v", "{:.2f}"),
           ("edge_err_tex", "texture edge err v", "{:.2f}"), ("pixel_err", "pixel err v", "{:.1f}"))
METRICS = tuple(m for m, _, _ in COLUMNS)


def _cell(entry: Mapping[str, object], fmt: str) -> str:
    if not entry or not np.isfinite(entry.get("mean", float("nan"))):
        return "n/a"
    spread = entry.get("spread", float("nan"))
    return fmt.format(entry["mean"]) + ("" if not np.isfinite(spread) else " ± " + fmt.format(spread))


def settings_table(result: Mapping[str, object]) -> str:
    """One row per setting: mean over seeds ± seed-to-seed spread (sd of the per-seed means)."""
    lines = ["| world | setting | " + " | ".join(h for _, h, _ in COLUMNS) + " |", "|" + "---|" * (len(COLUMNS) + 2)]
    for s in result["settings"]:
        r = result["results"][s["name"]]
        lines.append(f"| {s['world']} | {s['name']} | " + " | ".join(_cell(r.get(m, {}), f) for m, _, f in COLUMNS) + " |")
    for world, r in result.get("ground_truth", {}).items():
        lines.append(f"| {world} | ground truth | " + " | ".join(_cell(r.get(m, {}), f) for m, _, f in COLUMNS) + " |")
    return "\n".join(lines)


def rows_table(results: Mapping[str, Mapping[str, object]]) -> str:
    """``{row: {metric: seed_summary}}`` as a table (the side benchmarks' rows: regions, pooling)."""
    lines = ["| row | " + " | ".join(h for _, h, _ in COLUMNS) + " |", "|" + "---|" * (len(COLUMNS) + 1)]
    for name, r in results.items():
        lines.append(f"| {name} | " + " | ".join(_cell(r.get(m, {}), f) for m, _, f in COLUMNS) + " |")
    return "\n".join(lines)


def paired_table(paired: Mapping[str, Mapping[str, object]]) -> str:
    """``{"a - b": {metric: stats.paired}}``: the difference [95% CI] of every metric."""
    lines = ["| after - before | " + " | ".join(h for _, h, _ in COLUMNS) + " |", "|" + "---|" * (len(COLUMNS) + 1)]
    for name, r in paired.items():
        cells = [stats.fmt_ci(r.get(m, {}), 3 if m in ("confused", "loc_iou") else 2) for m, _, _ in COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def slot_table(result: Mapping[str, object], metrics=("confused", "loc_iou")) -> str:
    """Per-slot means (over seeds) of ``metrics``."""
    slots = ("upper", "lower", "hat")
    head = " | ".join(f"{m} {s}" for m in metrics for s in slots)
    lines = [f"| setting | {head} |", "|" + "---|" * (1 + len(metrics) * len(slots))]
    for s in result["settings"]:
        r = result["results"][s["name"]]
        cells = [("n/a" if m not in r or not np.isfinite(r[m].get(k, float("nan"))) else f"{r[m][k]:.3f}")
                 for m in metrics for k in slots]
        lines.append(f"| {s['name']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def comparisons_table(result: Mapping[str, object]) -> str:
    """Paired differences over (sample, garment, seed) with their 95% CI, per-seed means and verdicts."""
    lines = ["| comparison | after - before | metric | difference [95% CI] | per seed | items | verdict |",
             "|---|---|---|---|---|---|---|"]
    for c in result["comparisons"]:
        digits = 3 if c["metric"] in ("confused", "loc_iou") else 2
        tag = "" if c["primary"] or c["claim"] == "condition" else " (secondary)"
        lines.append(f"| {c['name']}{tag} | {c['after']} - {c['before']} | {c['metric']} "
                     f"({'higher' if c['better'] > 0 else 'lower'} is better) | {stats.fmt_ci(c, digits)} | "
                     f"{stats.fmt_seeds(c, digits)} | {c.get('n_items', 0)} | **{c['verdict']}**: {c['why']} |")
    return "\n".join(lines)


def markdown(result: Mapping[str, object]) -> str:
    cfg = result["config"]
    t = result["timing_s"]
    head = (f"{cfg['size']}x{cfg['size']} px, {len(cfg['seeds'])} seeds {list(cfg['seeds'])}, {cfg['n_val']} held-out "
            f"samples, {cfg['steps']} steps per setting (base {cfg['base_steps']}); wall {t['total'] / 60:.1f} min, "
            f"CPU {t['total_cpu'] / 60:.1f} min, {result['jobs']} job(s) x {result['threads']} thread(s), load "
            f"average mean {result['load']['mean']:.1f} (max {result['load']['max']:.1f})")
    return "\n\n".join([head, "Settings: mean over seeds ± seed-to-seed spread (sd of the per-seed means).",
                        settings_table(result), "Per slot (mean over seeds):", slot_table(result),
                        "Paired differences and verdicts:", comparisons_table(result)])


def coarse(values: List[float], points: int = 20) -> List[float]:
    """A loss curve as ``points`` chunk means (the JSON keeps the shape, not every step)."""
    if len(values) <= points:
        return [round(v, 5) for v in values]
    chunks = np.array_split(np.asarray(values), points)
    return [round(float(c.mean()), 5) for c in chunks]


def _tile(img: torch.Tensor, scale: int) -> np.ndarray:
    a = ((img.clamp(-1, 1) + 1) * 127.5).permute(1, 2, 0).numpy().astype(np.uint8)
    return cv2.resize(a, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)


def _map_tile(m: torch.Tensor, scale: int) -> np.ndarray:
    """Maps ``[N, S, S]`` as RGB (upper red, lower green, hat blue), each normalised to its max."""
    m = m / m.flatten(1).amax(1).clamp_min(1e-6).view(-1, 1, 1)
    rgb = torch.zeros(3, *m.shape[1:])
    rgb[: m.shape[0]] = m[:3]
    return _tile(rgb * 2 - 1, scale)


def picture(val, images: Dict[str, torch.Tensor], maps: Dict[str, torch.Tensor], settings: List[str],
            rows: int = 4, scale: int = 2) -> np.ndarray:
    """Per row: ground truth, pose, the in-shop garments | per setting: image (and its maps)."""
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


def write_png(path: str, rgb: np.ndarray) -> None:
    if not cv2.imwrite(path, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write {path}")
