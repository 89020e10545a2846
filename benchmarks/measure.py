"""Timing, peak memory and FLOP counting for the benchmarks.

On the CPU each run also records the process CPU time (``time.process_time``, all threads): on a
machine shared with other jobs, wall time includes waiting for a core, CPU time mostly does not, so the
CPU-time ratio is the steadier of the two (both are reported).

Time and memory are measured in SEPARATE runs.  Memory on the CPU is the process RSS sampled every
~2 ms by a thread while the measured call runs (``peak - rss_before``); glibc keeps freed blocks
mapped, which would hide later peaks, so memory runs happen in a child process started with
``MALLOC_MMAP_THRESHOLD_=65536`` (large tensors are mmapped and returned to the OS on free;
``benchmarks.speed.memory_phase``).  Both of those distort time: the polling thread takes CPU from
the run, and with every tensor over 64 KiB freshly mmapped, page faults made the tiny UNet's runs 70%
slower and inflated any extra allocation's cost (measured, docs/PERFORMANCE.md).  So timed runs use
the default allocator and no polling (``measure(..., memory=False)``).  On CUDA the allocator's own peak
(``torch.cuda.max_memory_allocated``) is used instead, which is exact and costs nothing.
"""

from __future__ import annotations

import math
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
                "peak_delta_mib": statistics.median(self.peak_delta) if self.peak_delta else None,
                "peak_abs_mib": statistics.median(self.peak_abs) if self.peak_abs else None}


def _trim_heap() -> None:
    import ctypes
    import ctypes.util

    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def measure(fn: Callable[[], object], repeats: int, cuda: bool, memory: bool = True) -> Sample:
    """Run ``fn`` ``repeats`` times; time each run and, with ``memory``, record its memory peak
    (on the CPU that polls RSS on a thread, so timed runs pass ``memory=False``)."""
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
        elif not memory:
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            s.times.append(time.perf_counter() - t0)
            s.cpu.append(time.process_time() - c0)
        else:
            _trim_heap()  # free heap pages still resident would hide this run's peak
            with RssPeak() as rss:
                t0, c0 = time.perf_counter(), time.process_time()
                fn()
                s.times.append(time.perf_counter() - t0)
                s.cpu.append(time.process_time() - c0)
            s.peak_delta.append((rss.peak - rss.before) / MiB)
            s.peak_abs.append(rss.peak / MiB)
    return s


def _count_cpu_flash_sdpa() -> None:
    """FlopCounterMode knows the CUDA SDPA kernels but not PyTorch's CPU flash kernel, which
    ``--use-pytorch-cross-attention`` runs on the CPU: without this its attention counted 0 FLOPs.
    Same formula as the other SDPA kernels (``4 * B * heads * Tq * Tk * d``)."""
    from torch.utils import flop_counter

    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if op is None or op.default in flop_counter.flop_registry or op in flop_counter.flop_registry:
        return

    @flop_counter.register_flop_formula(op)
    def _flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
        return flop_counter.sdpa_flop_count(query, key, value)


def count_flops(fn: Callable[[], object]) -> int:
    """Total FLOPs of the matmuls, convolutions and SDPA calls that ``fn`` runs (softmax, norms and
    elementwise ops are not counted: FlopCounterMode's convention)."""
    _count_cpu_flash_sdpa()
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


def _median_call_s(fn: Callable[[], object], cuda: bool, inner: int = 20, outer: int = 5) -> float:
    """Median over ``outer`` batches of the mean time of ``inner`` back-to-back calls (seconds per call)."""
    fn()
    times = []
    for _ in range(outer):
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        if cuda:
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) / inner)
    return statistics.median(times)


def kernel_floor(attention: Callable, layers: Dict[tuple, dict], steps: int, form: str, strength: float,
                 device, dtype, cuda: bool = False) -> dict:
    """What the attention kernel alone charges for Dressing-Attention: the floor of any implementation
    that uses this kernel, with none of our code (no concatenation, bias building, row slicing, Python).

    For every layer shape (``layers[key] = {"T", "S", "C", "heads"}``; equal shapes are timed once) it
    times, on random tensors prepared beforehand, the exact kernel calls of one CFG step:

    * plain: one call on the batch of 2 rows (what ComfyUI does without AnyDressing);
    * dressed, paper CFG policy: the positive row with the garment tokens (joint: one call on the
      concatenated keys, with the log-strength bias row when strength != 1; separate: the own-token call
      plus the garment-token call) and the negative row alone;

    and adds the once-per-run K'/V' projections (two ``[S, C] x [C, C]`` matmuls per layer). Returns the
    seconds added per run and the kernel's FLOP rate on the added work, so a run's measured overhead can
    be compared with what the kernel alone costs (``docs/PERFORMANCE.md``).  It also times the added
    FLOPs as two bare batched matrix products (``Q K'^T`` then times ``V'``, no softmax): a lower bound
    for any attention implementation on this device, kernel or ours.
    """
    gen = torch.Generator().manual_seed(5)

    def rnd(*shape):
        return torch.randn(*shape, generator=gen).to(device, dtype)

    per_shape: Dict[tuple, float] = {}
    added_step = proj = matmul_step = 0.0
    for d in layers.values():
        shape = (d["T"], d["S"], d["C"], d["heads"])
        if shape not in per_shape:
            t, s, c, h = shape
            q, k, v = rnd(2, t, c), rnd(2, t, c), rnd(2, t, c)
            gk, gv = rnd(1, s, c), rnd(1, s, c)
            with torch.inference_mode():
                plain = _median_call_s(lambda: attention(q, k, v, h), cuda)
                neg = _median_call_s(lambda: attention(q[1:], k[1:], v[1:], h), cuda)
                if form == "separate":
                    pos = _median_call_s(lambda: (attention(q[:1], k[:1], v[:1], h), attention(q[:1], gk, gv, h)), cuda)
                else:
                    kk, vv = torch.cat([k[:1], gk], 1), torch.cat([v[:1], gv], 1)
                    mask = None
                    if strength != 1.0:
                        mask = torch.cat([torch.zeros(1, t, dtype=dtype), torch.full((1, s), math.log(strength), dtype=dtype)],
                                         1).to(device)
                    pos = _median_call_s(lambda: attention(q[:1], kk, vv, h, mask=mask), cuda)
                w_k, w_v = rnd(c, c), rnd(c, c)
                f = rnd(s, c)
                kv = _median_call_s(lambda: (f @ w_k, f @ w_v), cuda)
                # the added FLOPs as bare matrix products (no softmax, no scaling): Q K'^T and P V' per head
                qh, kh, vh = rnd(h, t, c // h), rnd(h, c // h, s), rnd(h, s, c // h)
                mm = _median_call_s(lambda: torch.bmm(torch.bmm(qh, kh), vh), cuda)
            per_shape[shape] = (pos + neg - plain, kv, mm)
        step_s, kv_s, mm_s = per_shape[shape]
        added_step += step_s
        proj += kv_s
        matmul_step += mm_s
    added_attention_flops = sum(4 * d["T"] * d["S"] * d["C"] for d in layers.values()) * steps
    attention_s = added_step * steps
    return {"added_s_per_run": attention_s + proj, "attention_s_per_run": attention_s, "kv_s_per_run": proj,
            "added_attention_gflops_per_s": added_attention_flops / attention_s / 1e9 if attention_s > 0 else None,
            "matmul_only_s_per_run": matmul_step * steps + proj,
            "matmul_only_gflops_per_s": added_attention_flops / (matmul_step * steps) / 1e9 if matmul_step > 0 else None,
            "shapes": {f"T{t}_S{s}_C{c}_h{h}": {"added_step_s": a, "kv_s": b, "matmul_only_step_s": m}
                       for (t, s, c, h), (a, b, m) in per_shape.items()}}
