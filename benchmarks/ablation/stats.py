"""Statistics over training seeds: means, seed-to-seed spread, paired differences and verdicts.

Scores arrive per seed as ``{metric: [n, N]}`` arrays over (sample, garment) items, NaN where an
item is not scored (a garment region under ``scores.MIN_PIXELS`` pixels; the same items in every
seed and setting, since validity depends on the ground truth only).

Paired difference of two settings: ``d[s, i] = after[s, i] - before[s, i]`` over seeds ``s`` and
items ``i`` (same samples and, within a seed, the same sampling noise).  Items and seeds are
crossed random factors, so the variance of the mean difference is estimated from the two-way
ANOVA mean squares [choice]::

    var(mean d) = sigma_item^2 / I + sigma_seed^2 / S + sigma_resid^2 / (I S)

with negative component estimates set to 0 and Satterthwaite's degrees of freedom for the
Student-t interval.  With one seed it falls back to the item-only standard error.
"""

from __future__ import annotations

import math
from typing import Dict, Mapping, Optional, Sequence, Tuple

import numpy as np

PerSeed = Mapping[int, Mapping[str, np.ndarray]]


def t_quantile(p: float, df: float) -> float:
    """Quantile of Student's t with ``df`` (may be fractional) degrees of freedom, ``0.5 < p < 1``."""
    if not 0.5 < p < 1 or df <= 0:
        raise ValueError(f"t quantile needs 0.5 < p < 1 and df > 0, got p={p}, df={df}")
    log_norm = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)

    def cdf(x: float) -> float:  # Simpson's rule on the density from 0 to x
        grid = np.linspace(0.0, x, 4001)
        f = np.exp(log_norm - (df + 1) / 2 * np.log1p(grid * grid / df))
        return 0.5 + (x / 4000 / 3) * (f[0] + f[-1] + 4 * f[1:-1:2].sum() + 2 * f[2:-1:2].sum())

    lo, hi = 0.0, 1.0
    while cdf(hi) < p:
        lo, hi = hi, hi * 2
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cdf(mid) < p else (lo, mid)
    return (lo + hi) / 2


def seed_summary(per_seed: PerSeed, metric: str, slots: Sequence[str] = ()) -> Dict[str, object]:
    """Mean over seeds of the per-seed means, their spread (sample sd over seeds), per-slot means."""
    seeds = sorted(per_seed)
    if not seeds or metric not in per_seed[seeds[0]]:
        return {}
    means = [float(np.nanmean(per_seed[s][metric])) if np.isfinite(per_seed[s][metric]).any() else float("nan")
             for s in seeds]
    out = {"mean": float(np.mean(means)), "spread": float(np.std(means, ddof=1)) if len(means) > 1 else float("nan"),
           "per_seed": dict(zip(map(str, seeds), means)), "n_items": int(np.isfinite(per_seed[seeds[0]][metric]).sum())}
    for k, slot in enumerate(slots):
        cols = [per_seed[s][metric][:, k] for s in seeds]
        vals = [float(np.nanmean(c)) for c in cols if np.isfinite(c).any()]
        out[slot] = float(np.mean(vals)) if vals else float("nan")
    return out


def summaries(per_seed: PerSeed, metrics: Sequence[str], slots: Sequence[str] = ()) -> Dict[str, object]:
    """:func:`seed_summary` of each of ``metrics`` that the scores have."""
    first = next(iter(per_seed.values()))
    return {m: seed_summary(per_seed, m, slots) for m in metrics if m in first}


def _two_way(d: np.ndarray) -> Tuple[float, float]:
    """Variance of the grand mean of ``d [S, I]`` and its degrees of freedom (see module docstring)."""
    seeds, items = d.shape
    if seeds == 1 or items == 1:
        flat = d.reshape(-1)
        return float(flat.var(ddof=1) / flat.size), float(flat.size - 1)
    grand = d.mean()
    item_means, seed_means = d.mean(axis=0), d.mean(axis=1)
    ms_item = seeds * ((item_means - grand) ** 2).sum() / (items - 1)
    ms_seed = items * ((seed_means - grand) ** 2).sum() / (seeds - 1)
    resid = d - item_means[None, :] - seed_means[:, None] + grand
    ms_resid = (resid ** 2).sum() / ((items - 1) * (seeds - 1))
    keep_item, keep_seed = ms_item > ms_resid, ms_seed > ms_resid
    n = items * seeds
    coef = {"item": keep_item / n, "seed": keep_seed / n, "resid": (1 - keep_item - keep_seed) / n}
    ms = {"item": ms_item, "seed": ms_seed, "resid": ms_resid}
    dfs = {"item": items - 1, "seed": seeds - 1, "resid": (items - 1) * (seeds - 1)}
    var = sum(coef[k] * ms[k] for k in ms)
    denom = sum((coef[k] * ms[k]) ** 2 / dfs[k] for k in ms)
    df = var ** 2 / denom if denom > 0 else float(n - 1)
    return float(max(var, 0.0)), float(max(df, 1.0))


def paired(after: PerSeed, before: PerSeed, metric: str, level: float = 0.95) -> Dict[str, object]:
    """Paired difference ``after - before`` over (sample, garment, seed): mean, CI, per-seed means."""
    seeds = sorted(set(after) & set(before))
    if not seeds or metric not in after[seeds[0]] or metric not in before[seeds[0]]:
        return {}
    d = np.stack([(after[s][metric] - before[s][metric]).reshape(-1) for s in seeds])  # [S, I]
    d = d[:, np.isfinite(d).all(axis=0)]
    if d.size < 2:
        return {"mean": float("nan"), "ci": [float("nan")] * 2, "per_seed": {}, "n_items": int(d.shape[1])}
    var, df = _two_way(d)
    half = t_quantile(0.5 + level / 2, df) * math.sqrt(var)
    mean = float(d.mean())
    return {"mean": mean, "ci": [mean - half, mean + half], "level": level, "df": df,
            "per_seed": {str(s): float(m) for s, m in zip(seeds, d.mean(axis=1))}, "n_items": int(d.shape[1]),
            "seeds": len(seeds)}


def verdict(better: int, delta: float, result: Mapping[str, object], condition_met: Optional[bool] = None,
            condition: str = "") -> Tuple[str, str]:
    """The pre-registered rule (docs/BENCHMARK.md, "Verdicts") -> ``(verdict, why)``.

    ``better`` is +1 when higher is better; ``delta`` the smallest improvement that counts.
    """
    if condition_met is False:
        return "not measurable", f"its condition ({condition}) was not met"
    if not result or not np.isfinite(result["mean"]):
        return "not measurable", "no items to compare"
    lo, hi = sorted(better * x for x in result["ci"])
    seeds_agree = all(better * v > 0 for v in result["per_seed"].values())
    ci = f"improvement {better * result['mean']:+.3g}, 95% CI [{lo:+.3g}, {hi:+.3g}]"
    if lo > 0 and seeds_agree:
        size = "" if hi >= delta else f"; smaller than the {delta:g} that counts"
        return "confirmed", f"{ci}, every seed improves{size}"
    if hi < delta:
        return "refuted", f"{ci}: with 95% confidence under the {delta:g} that counts"
    why = "the seeds disagree" if lo > 0 else "the CI is too wide to decide"
    return "not measurable", f"{ci}: {why} at {result['seeds']} seeds"


def condition_verdict(better: int, result: Mapping[str, object]) -> Tuple[bool, str]:
    """A condition is met when its difference is significant in its direction in every seed."""
    if not result or not np.isfinite(result["mean"]):
        return False, "no items"
    lo = min(better * x for x in result["ci"])
    met = lo > 0 and all(better * v > 0 for v in result["per_seed"].values())
    return met, f"{better * result['mean']:+.3g} (95% CI lower bound {lo:+.3g})"


def fmt_ci(result: Mapping[str, object], digits: int = 3) -> str:
    if not result or not np.isfinite(result.get("mean", float("nan"))):
        return "n/a"
    lo, hi = result["ci"]
    return f"{result['mean']:+.{digits}f} [{lo:+.{digits}f}, {hi:+.{digits}f}]"


def fmt_seeds(result: Mapping[str, object], digits: int = 3) -> str:
    return " / ".join(f"{v:+.{digits}f}" for v in result.get("per_seed", {}).values()) or "n/a"
