"""Run the whole ablation: data, one base per seed, every (seed, setting), scores, statistics, files.

Work is split into independent tasks (a base per seed, then one task per seed and setting) that
run in this process or, with ``jobs > 1``, in worker processes (spawned, not forked: a fork after
PyTorch started its thread pool can hang; the data reach the workers through shared memory);
every task seeds its own generators, so the numbers do not depend on ``jobs`` or on the order
tasks finish in.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.multiprocessing as mp

from . import regions, report, scores, stats
from .settings import BY_NAME, COMPARISONS, SETTINGS, WORLDS, Setting, select
from .train import SLOTS, TEXTURED, VAL_OFFSET, Config, check_config, make_data, sample, take, train_base, \
    train_setting
from .model import TinyUNet

log = logging.getLogger(__name__)

#: the data every task reads (in a worker, set once by ``_init_worker``)
_SHARED: Dict[str, object] = {}


class LoadLog:
    """The 1-minute load average, sampled at the start, after every task and at the end."""

    def __init__(self):
        self.samples: List[float] = [os.getloadavg()[0]]

    def tick(self, *_ignored) -> None:
        self.samples.append(os.getloadavg()[0])

    def summary(self) -> Dict[str, float]:
        return {"start": self.samples[0], "end": self.samples[-1], "mean": float(np.mean(self.samples)),
                "max": float(np.max(self.samples)), "samples": len(self.samples)}


def _base_task(job):
    seed, cfg = job
    train = _SHARED["train"]
    t, cpu = time.time(), time.process_time()
    net = train_base(next(iter(train.values())), cfg, seed)
    state = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
    return {"seed": seed, "state": state, "wall_s": time.time() - t, "cpu_s": time.process_time() - cpu}


def _setting_task(job):
    seed, name, state, cfg = job
    train, val = _SHARED["train"], _SHARED["val"]
    setting = BY_NAME[name]
    t, cpu = time.time(), time.process_time()
    base = TinyUNet(cfg.channels, cfg.heads, 3 * cfg.patch ** 2).to(cfg.device)
    base.load_state_dict(state)
    base.requires_grad_(False).eval()
    model, curves = train_setting(base, train[setting.world], setting, cfg, seed)
    t_train = time.time() - t
    v = val[setting.world]
    hook = None
    if setting.regions:
        hook = regions.BenchRegions(regions.spec_for(setting.regions, v, regions.keypoints(v), cfg.size),
                                    (cfg.size // cfg.patch, cfg.size // cfg.patch), cfg.device)
    images, maps = sample(model, v, cfg, seed, regions=hook)
    textured = np.isin(v["pattern"].numpy(), TEXTURED)
    per = scores.region_scores(images, v["person"], v["masks"], v["garments"], v["garment_masks"], textured)
    if maps is not None:
        per["loc_iou"] = scores.localization_iou(maps, v["masks"])
    keep_pictures = seed == cfg.seeds[0]
    return {"seed": seed, "setting": name, "scores": per, "curves": curves if keep_pictures else {},
            "images": images if keep_pictures else None, "maps": maps if keep_pictures else None,
            "wall_s": time.time() - t, "train_s": t_train, "cpu_s": time.process_time() - cpu}


def _calibration_task(job) -> float:
    """Seconds per training step of the costliest setting (GFE + IGL + GTL) from a fresh base."""
    steps, cfg = job
    view = next(iter(_SHARED["train"].values()))
    base = TinyUNet(cfg.channels, cfg.heads, 3 * cfg.patch ** 2).to(cfg.device).requires_grad_(False)
    train_setting(base, view, BY_NAME["gfe_igl_gtl_w1"], dataclasses.replace(cfg, steps=2), 0)  # warm-up
    t = time.time()
    train_setting(base, view, BY_NAME["gfe_igl_gtl_w1"], dataclasses.replace(cfg, steps=steps), 0)
    return (time.time() - t) / steps


def _init_worker(threads: int, shared: Dict[str, object], level: int) -> None:
    torch.set_num_threads(threads)
    _SHARED.update(shared)
    logging.basicConfig(level=level, format="%(asctime)s %(message)s")  # a spawned process starts without handlers


class _Runner:
    """Runs tasks here (``jobs`` 1) or in one pool of ``jobs`` spawned processes."""

    def __init__(self, jobs: int, threads: int, load: LoadLog):
        self.load, self.pool = load, None
        if jobs > 1:
            ctx = mp.get_context("spawn")
            self.pool = ctx.Pool(jobs, initializer=_init_worker,
                                 initargs=(threads, dict(_SHARED), logging.getLogger().getEffectiveLevel()))

    def submit(self, fn, arg):
        if self.pool is None:
            value = fn(arg)
            self.load.tick()
            return _Done(value)
        return self.pool.apply_async(fn, (arg,), callback=self.load.tick)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
            self.pool.join()


class _Done:
    def __init__(self, value):
        self.value = value

    def get(self):
        return self.value


def _order(settings: Sequence[Setting]) -> List[Setting]:
    """Costliest first (IGL's maps, then GTL, then the other trained rows), so the pool's tail is short."""
    return sorted(settings, key=lambda s: (not s.igl, not s.gtl, not s.trained))


def fit_budget(cfg: Config, seconds_per_step: float, jobs: int, trained: int, limit: float) -> Config:
    """``cfg`` with ``steps`` and ``base_steps`` scaled down (never up) so the training fits ``limit`` seconds.

    A base step costs about half a Dressing-Attention step [measured on the CPU]; 20% is kept for
    data, sampling and scoring [choice].
    """
    seeds = len(cfg.seeds)
    work = seconds_per_step * (seeds * cfg.base_steps * 0.5 + seeds * trained * cfg.steps) / max(1, jobs)
    scale = min(1.0, 0.8 * limit / max(work, 1e-9))
    if scale >= 1.0:
        return cfg
    return dataclasses.replace(cfg, steps=max(10, int(cfg.steps * scale)), base_steps=max(10, int(cfg.base_steps * scale)))


def run_ablation(cfg: Config, out: str, names: Optional[Sequence[str]] = None, jobs: int = 1,
                 threads: Optional[int] = None, time_limit: Optional[float] = None) -> Dict[str, object]:
    """Train and score the settings ``names`` (default all) over ``cfg.seeds``; writes the result files.

    ``threads``: torch threads per process (default: as set).  ``time_limit``: seconds the whole
    run should take; the budget is measured first and the steps scaled down to fit (recorded in
    the result).  Files under ``out``: ``ablation.json`` (everything), ``ablation.md`` (the tables)
    and one ``samples_<world>.png`` per world (the first seed's pictures).
    """
    check_config(cfg)
    settings = select(names or [s.name for s in SETTINGS])
    os.makedirs(out, exist_ok=True)
    previous_threads = torch.get_num_threads()
    threads = threads or previous_threads
    torch.set_num_threads(threads)
    t_start, cpu_start, children_start = time.time(), time.process_time(), os.times()
    timing: Dict[str, object] = {}
    load = LoadLog()
    worlds = sorted({s.world for s in settings}, key=list(WORLDS).index)
    requested = cfg
    try:
        t = time.time()
        train = make_data(cfg.n_train, cfg, worlds, jobs=jobs)
        val = {w: take(v, slice(None)) for w, v in make_data(cfg.n_val, cfg, worlds, VAL_OFFSET, jobs).items()}
        timing["data"] = time.time() - t
        _SHARED.update(train=train, val=val)
        runner = _Runner(jobs, threads, load)
        try:
            if time_limit:
                t = time.time()
                per_step = float(np.median([f.get() for f in [runner.submit(_calibration_task, (10, cfg))
                                                              for _ in range(jobs)]]))
                left = time_limit - (time.time() - t_start)
                cfg = fit_budget(cfg, per_step, jobs, sum(s.trained for s in settings), left)
                timing.update(calibration=time.time() - t, seconds_per_step=per_step)
                if cfg is not requested:
                    log.warning("budget scaled to %d steps (base %d) to fit %.0f s", cfg.steps, cfg.base_steps, left)
            t = time.time()
            base_futures = [runner.submit(_base_task, (seed, cfg)) for seed in cfg.seeds]
            bases, futures = [], []
            for f in base_futures:  # a seed's settings start as soon as its base is trained
                bases.append(f.get())
                futures += [runner.submit(_setting_task, (bases[-1]["seed"], s.name, bases[-1]["state"], cfg))
                            for s in _order(settings)]
            tasks = [f.get() for f in futures]
            timing["training_and_sampling"] = time.time() - t
        finally:
            runner.close()
    finally:
        _SHARED.clear()
        torch.set_num_threads(previous_threads)
    load.tick()
    children = os.times()
    timing["total"] = time.time() - t_start
    timing["total_cpu"] = (time.process_time() - cpu_start + children.children_user + children.children_system
                           - children_start.children_user - children_start.children_system)
    per = {s.name: {} for s in settings}
    for task in tasks:
        per[task["setting"]][task["seed"]] = task["scores"]
    result = _statistics(per, settings)
    result["ground_truth"] = {w: stats.summaries({0: _truth(val[w])}, report.METRICS, SLOTS) for w in worlds}
    result.update(
        config=dataclasses.asdict(cfg), requested_budget={"steps": requested.steps, "base_steps": requested.base_steps},
        settings=[dataclasses.asdict(s) for s in settings], worlds={w: dataclasses.asdict(WORLDS[w]) for w in worlds},
        jobs=jobs, threads=threads, load=load.summary(),
        timing_s=dict(timing, bases={str(b["seed"]): {k: round(b[k], 1) for k in ("wall_s", "cpu_s")} for b in bases},
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
    results = {s.name: stats.summaries(per[s.name], report.METRICS, SLOTS) for s in settings}
    comparisons, met = [], {}
    for c in COMPARISONS:
        if c.after not in per or c.before not in per:
            continue
        res = stats.paired(per[c.after], per[c.before], c.metric)
        entry = {**dataclasses.asdict(c), **res}
        if c.claim == "condition":
            met[c.name], why = stats.condition_verdict(c.better, res)
            entry.update(verdict="met" if met[c.name] else "not met", why=why)
        elif c.claim == "measure":
            entry.update(verdict="measured", why="an estimate with its interval; no claim to decide")
        else:
            condition = met.get(c.requires, False) if c.requires else None  # a condition not run is not met
            entry["verdict"], entry["why"] = stats.verdict(c.better, c.delta, res, condition, c.requires or "")
        comparisons.append(entry)
    return {"results": results, "comparisons": comparisons}
