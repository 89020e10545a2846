"""Timing, peak memory and FLOP counting for the benchmarks.

On the CPU each run also records the process CPU time (``time.process_time``, all threads): on a
machine shared with other jobs, wall time includes waiting for a core, CPU time mostly does not, so the
CPU-time ratio is the steadier of the two (both are reported).

Memory on the CPU is the process RSS sampled every ~2 ms by a thread while the measured call runs
(``peak - rss_before``).  glibc keeps freed blocks mapped, which would hide later peaks, so
``benchmarks.speed`` re-executes itself with ``MALLOC_MMAP_THRESHOLD_=65536`` (large tensors are then
mmapped and returned to the OS on free) before importing torch.  On CUDA the allocator's own peak
(``torch.cuda.max_memory_allocated``) is used instead, which is exact.
"""

from __future__ import annotations

import statistics
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import psutil
import torch
from torch.utils.flop_counter import FlopCounterMode

MiB = 2**20


class RssPeak:
    """Context manager: highest RSS of this process while inside, polled on a thread."""

    def __init__(self, interval: float = 0.002):
        self.interval = interval
        self.proc = psutil.Process()
        self.before = self.peak = 0
        self._stop = threading.Event()

    def _poll(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(self.interval)

    def __enter__(self):
        self.before = self.peak = self.proc.memory_info().rss
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.peak = max(self.peak, self.proc.memory_info().rss)
        self._stop.set()
        self._thread.join()
        return False


@dataclass
class Sample:
    """Medians over repeats: seconds, peak memory above the level before the call (MiB), absolute peak (MiB)."""

    times: List[float] = field(default_factory=list)
    cpu: List[float] = field(default_factory=list)  # process CPU seconds (all threads): robust to other load
    peak_delta: List[float] = field(default_factory=list)
    peak_abs: List[float] = field(default_factory=list)

    @property
    def median_s(self) -> float:
        return statistics.median(self.times)

    @property
    def spread(self) -> float:
        """(max - min) / median of the times: how noisy this configuration was."""
        return (max(self.times) - min(self.times)) / self.median_s if self.times else 0.0

    def as_dict(self) -> dict:
        return {"median_s": self.median_s, "times_s": self.times, "spread": self.spread,
                "cpu_median_s": statistics.median(self.cpu) if self.cpu else None, "cpu_s": self.cpu,
                "peak_delta_mib": statistics.median(self.peak_delta), "peak_abs_mib": statistics.median(self.peak_abs)}


def measure(fn: Callable[[], object], repeats: int, cuda: bool) -> Sample:
    """Run ``fn`` ``repeats`` times; time each run and record its memory peak."""
    s = Sample()
    for _ in range(repeats):
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            t0 = time.perf_counter()
            fn()
            torch.cuda.synchronize()
            s.times.append(time.perf_counter() - t0)
            peak = torch.cuda.max_memory_allocated()
            s.peak_delta.append((peak - base) / MiB)
            s.peak_abs.append(peak / MiB)
        else:
            with RssPeak() as rss:
                t0, c0 = time.perf_counter(), time.process_time()
                fn()
                s.times.append(time.perf_counter() - t0)
                s.cpu.append(time.process_time() - c0)
            s.peak_delta.append((rss.peak - rss.before) / MiB)
            s.peak_abs.append(rss.peak / MiB)
    return s


def count_flops(fn: Callable[[], object]) -> int:
    """Total FLOPs of the matmuls, convolutions and SDPA calls that ``fn`` runs (softmax, norms and
    elementwise ops are not counted: FlopCounterMode's convention)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


class TokenProbe:
    """Forward pre-hooks on attn1 modules that record the image token count T of each layer."""

    def __init__(self, modules: Dict[tuple, torch.nn.Module]):
        self.tokens: Dict[tuple, int] = {}
        self.handles = [m.register_forward_pre_hook(self._hook(k)) for k, m in modules.items()]

    def _hook(self, key):
        def hook(module, args, kwargs=None):
            self.tokens[key] = int(args[0].shape[1])
        return hook

    def close(self):
        for h in self.handles:
            h.remove()


def da_flops(layers: Dict[tuple, dict], n_rows: int) -> dict:
    """Analytic FLOPs that Dressing-Attention adds, per step and per run.

    ``layers[key] = {"T": image tokens, "S": garment tokens N*L, "C": channels}``. Per dressed row and
    layer the garment attention costs ``2*T*S*C`` for ``Q K'^T`` and ``2*T*S*C`` for ``P V'`` (both forms:
    the joint form's longer key axis costs the same extra). K' and V' are projected once per run:
    ``2 * 2*S*C*C`` per layer (bias adds are ignored).
    """
    per_step = sum(4 * d["T"] * d["S"] * d["C"] for d in layers.values()) * n_rows
    per_run = sum(4 * d["S"] * d["C"] * d["C"] for d in layers.values())
    return {"per_step": per_step, "kv_per_run": per_run}


def linear_fit(xs: List[float], ys: List[float]) -> dict:
    """Least-squares ``y = a + b x``; returns slope, intercept and R^2."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys))
    b = sxy / sxx if sxx else 0.0
    a = my - b * mx
    ss_tot = sum((y - my) ** 2 for y in ys)
    ss_res = sum((y - a - b * x) ** 2 for x, y in zip(xs, ys))
    return {"slope": b, "intercept": a, "r2": 1.0 - ss_res / ss_tot if ss_tot else 1.0}


def load_average() -> Optional[float]:
    try:
        return psutil.getloadavg()[0]
    except (AttributeError, OSError):
        return None
