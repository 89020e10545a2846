"""Run the whole ablation: data, one base per seed, every (seed, setting), scores, statistics, files.

Work is split into independent tasks (a base per seed, then one task per seed and setting) that
run in this process or, with ``jobs > 1``, in forked worker processes; every task seeds its own
generators, so the numbers do not depend on ``jobs`` or on the order tasks finish in.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import multiprocessing
import os
import time
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from . import report, scores, stats
from .settings import BY_NAME, COMPARISONS, SETTINGS, WORLDS, Setting, select
from .train import SLOTS, TEXTURED, VAL_OFFSET, Config, check_config, make_data, sample, take, train_base, train_setting
from .model import TinyUNet

log = logging.getLogger(__name__)

QUICK = dict(size=16, patch=2, channels=8, n_train=16, n_val=4, base_steps=2, steps=2, batch=2, sample_steps=2,
             seeds=(0, 1, 2))
#: what forked workers read (set before the pool forks, so the data are shared, not copied)
_SHARED: Dict[str, object] = {}


def config(quick: bool = False, **overrides) -> Config:
    """The full benchmark's config, or the seconds-long ``quick`` one, with ``overrides`` (None = keep)."""
    base = dataclasses.asdict(Config())
    if quick:
        base.update(QUICK)
    base.update({k: v for k, v in overrides.items() if v is not None})
    base["seeds"] = tuple(base["seeds"])
    return Config(**base)


class LoadLog:
    """The 1-minute load average, sampled at the start, after every task and at the end (no thread:
    the workers are forked)."""

    def __init__(self):
        self.samples: List[float] = [os.getloadavg()[0]]

    def tick(self, *_ignored) -> None:
        self.samples.append(os.getloadavg()[0])

    def summary(self) -> Dict[str, float]:
        return {"start": self.samples[0], "end": self.samples[-1], "mean": float(np.mean(self.samples)),
                "max": float(np.max(self.samples)), "samples": len(self.samples)}


def _base_task(seed: int):
    cfg, train = _SHARED["cfg"], _SHARED["train"]
    t, cpu = time.time(), time.process_time()
    net = train_base(next(iter(train.values())), cfg, seed)
    return seed, {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}, time.time() - t, \
        time.process_time() - cpu


def _setting_task(job):
    seed, name = job
    cfg, train, val = _SHARED["cfg"], _SHARED["train"], _SHARED["val"]
    setting = BY_NAME[name]
    t, cpu = time.time(), time.process_time()
    base = TinyUNet(cfg.channels, cfg.heads, 3 * cfg.patch ** 2).to(cfg.device)
    base.load_state_dict(_SHARED["bases"][seed])
    base.requires_grad_(False).eval()
    model, curves = train_setting(base, train[setting.world], setting, cfg, seed)
    t_train = time.time() - t
    v = val[setting.world]
    images, maps = sample(model, v, cfg, seed)
    textured = np.isin(v["pattern"].numpy(), TEXTURED)
    per = scores.region_scores(images, v["person"], v["masks"], v["garments"], v["garment_masks"], textured)
    if maps is not None:
        per["loc_iou"] = scores.localization_iou(maps, v["masks"])
    keep_pictures = seed == cfg.seeds[0]
    return {"seed": seed, "setting": name, "scores": per, "curves": curves if keep_pictures else {},
            "images": images if keep_pictures else None, "maps": maps if keep_pictures else None,
            "wall_s": time.time() - t, "train_s": t_train, "cpu_s": time.process_time() - cpu}


def _map(fn, work: list, jobs: int, threads: int, load: LoadLog) -> list:
    """``[fn(w) for w in work]``, in ``jobs`` forked processes of ``threads`` torch threads each."""
    if jobs <= 1:
        out = []
        for w in work:
            out.append(fn(w))
            load.tick()
        return out
    ctx = multiprocessing.get_context("fork")
    pool = ctx.Pool(min(jobs, len(work)), initializer=torch.set_num_threads, initargs=(threads,))
    try:
        pending = [pool.apply_async(fn, (w,), callback=load.tick) for w in work]
        out = [p.get() for p in pending]
    finally:
        pool.close()
        pool.join()
    return out


def run_ablation(cfg: Config, out: str, names: Optional[Sequence[str]] = None, jobs: int = 1) -> Dict[str, object]:
    """Train and score the settings ``names`` (default all) over ``cfg.seeds``; writes the result files.

    Files under ``out``: ``ablation.json`` (everything), ``ablation.md`` (the tables) and one
    ``samples_<world>.png`` per world (the first seed's pictures).
    """
    check_config(cfg)
    settings = select(names or [s.name for s in SETTINGS])
    os.makedirs(out, exist_ok=True)
    threads = torch.get_num_threads()
    t_start, cpu_start, children_start = time.time(), time.process_time(), os.times()
    timing: Dict[str, float] = {}
    load = LoadLog()
    worlds = sorted({s.world for s in settings}, key=list(WORLDS).index)
    t = time.time()
    train = make_data(cfg.n_train, cfg, worlds)
    val = {w: take(v, slice(None)) for w, v in make_data(cfg.n_val, cfg, worlds, offset=VAL_OFFSET).items()}
    timing["data"] = time.time() - t
    _SHARED.update(cfg=cfg, train=train, val=val)
    try:
        t = time.time()
        bases = _map(_base_task, list(cfg.seeds), jobs, threads, load)
        _SHARED["bases"] = {seed: state for seed, state, _, _ in bases}
        timing["bases"] = time.time() - t
        t = time.time()
        tasks = _map(_setting_task, [(seed, s.name) for seed in cfg.seeds for s in settings], jobs, threads, load)
        timing["settings"] = time.time() - t
    finally:
        _SHARED.clear()
    load.tick()
    children = os.times()
    timing["total"] = time.time() - t_start
    timing["total_cpu"] = (time.process_time() - cpu_start + children.children_user + children.children_system
                           - children_start.children_user - children_start.children_system)
    per = {s.name: {} for s in settings}
    for task in tasks:
        per[task["setting"]][task["seed"]] = task["scores"]
    result = _statistics(per, settings)
    result["ground_truth"] = {w: {m: stats.seed_summary({0: _truth(val[w])}, m, SLOTS) for m in report.METRICS
                                  if m != "loc_iou"} for w in worlds}
    result.update(
        config=dataclasses.asdict(cfg), settings=[dataclasses.asdict(s) for s in settings],
        worlds={w: dataclasses.asdict(WORLDS[w]) for w in worlds}, jobs=jobs, threads=threads, load=load.summary(),
        timing_s=dict(timing, base_each=[b[3] for b in bases],
                      tasks={f"{t['seed']}/{t['setting']}": {k: round(t[k], 1) for k in ("wall_s", "train_s", "cpu_s")}
                             for t in tasks}),
        curves={t["setting"]: {k: report.coarse(v) for k, v in t["curves"].items() if v} for t in tasks if t["curves"]})
    with open(os.path.join(out, "ablation.json"), "w") as f:
        json.dump(result, f, indent=1)
    with open(os.path.join(out, "ablation.md"), "w") as f:
        f.write(report.markdown(result) + "\n")
    first = {t["setting"]: t for t in tasks if t["seed"] == cfg.seeds[0]}
    for w in worlds:
        names_w = [s.name for s in settings if s.world == w]
        report.write_png(os.path.join(out, f"samples_{w}.png"),
                         report.picture(val[w], {n: first[n]["images"] for n in names_w},
                                        {n: first[n]["maps"] for n in names_w}, names_w))
    return result


def _truth(v) -> Dict[str, np.ndarray]:
    """The true person images scored as if generated: the floor of every score."""
    return scores.region_scores(v["person"], v["person"], v["masks"], v["garments"], v["garment_masks"],
                                np.isin(v["pattern"].numpy(), TEXTURED))


def _statistics(per: Dict[str, Dict[int, Dict[str, np.ndarray]]], settings: Sequence[Setting]) -> Dict[str, object]:
    """Per-setting summaries, the truth's own scores, and every comparison with its verdict."""
    metrics = report.METRICS
    results = {s.name: {m: stats.seed_summary(per[s.name], m, SLOTS) for m in metrics
                        if m in next(iter(per[s.name].values()))} for s in settings}
    comparisons, met = [], {}
    for c in COMPARISONS:
        if c.after not in per or c.before not in per:
            continue
        res = stats.paired(per[c.after], per[c.before], c.metric)
        entry = {**dataclasses.asdict(c), **res}
        if c.claim == "condition":
            met[c.name], why = stats.condition_verdict(c.better, res)
            entry.update(verdict="met" if met[c.name] else "not met", why=why)
        else:
            condition = met.get(c.requires, False) if c.requires else None  # a condition not run is not met
            entry["verdict"], entry["why"] = stats.verdict(c.better, c.delta, res, condition, c.requires or "")
        comparisons.append(entry)
    return {"results": results, "comparisons": comparisons}
