"""How the runner times and weighs a callable.

CPU (``time_interleaved``): ``time.perf_counter``. Each candidate is warmed up (at least
``warmup`` calls and ``warmup_s`` seconds), its call time estimated, and an inner loop count
chosen so that one sample lasts about ``sample_s`` (a sample is the mean of the inner loop).
Then ``repeats`` rounds, each taking one sample of every candidate in a rotated order, so load
from other processes on a shared machine falls on all candidates alike. Reported: the median
and the 20th/80th percentiles of the samples.

GPU (``time_cuda``): ``triton.testing.do_bench`` (CUDA events around each call, the L2 cache
flushed between calls, after its own warm-up) with quantiles 0.5/0.2/0.8; without triton, CUDA
events around each of ``repeats`` calls after warm-up.

Peak memory beside time (``peak_memory``), one extra call after the timing:

* GPU: ``torch.cuda.max_memory_allocated() - memory_allocated()`` before the call (the caching
  allocator's peak of live tensor bytes during the call; ``reset_peak_memory_stats`` first).
* CPU: the growth of the process's peak resident set during the call: glibc's free memory is
  returned to the kernel (``malloc_trim(0)``), the kernel's high-water mark is reset
  (``echo 5 > /proc/self/clear_refs``, Linux >= 4.0), and the result is ``VmHWM`` after the call
  minus ``VmRSS`` before it. Limits: page granularity (4 KiB) and the allocator's own
  bookkeeping, so small workloads (under ~100 KiB) read as 0 or a few pages; it counts every
  allocation of the process (Python objects too), and it is a lower bound when the allocator
  reuses resident memory that ``malloc_trim`` could not return. Where ``clear_refs`` cannot
  be written (not Linux) the value is None. (``tracemalloc`` was not used: it sees only
  Python's allocator, not tensor storage.)
"""
from __future__ import annotations

import ctypes
import gc
import math
import time
from typing import Callable, Dict, List, Optional, Sequence

import torch

CPU_MEMORY_METHOD = "rss_hwm_delta"  # see the module docstring
GPU_MEMORY_METHOD = "cuda_max_memory_allocated"


def quantile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated quantile (numpy's default), without numpy."""
    v = sorted(values)
    if not v:
        return float("nan")
    pos = (len(v) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


def summary(samples_s: Sequence[float]) -> Dict[str, float]:
    return {"median_s": quantile(samples_s, 0.5), "p20_s": quantile(samples_s, 0.2),
            "p80_s": quantile(samples_s, 0.8), "samples": len(samples_s)}


def warm_up(fn: Callable[[], object], sample_s: float, warmup: int = 3, warmup_s: float = 0.05) -> int:
    """Run ``fn`` at least ``warmup`` times and ``warmup_s`` seconds (the first calls may compile or
    autotune), then return the inner loop count that makes one sample last about ``sample_s``."""
    t0 = time.perf_counter()
    calls = 0
    while calls < warmup or time.perf_counter() - t0 < warmup_s:
        fn()
        calls += 1
    t1 = time.perf_counter()
    for _ in range(2):
        fn()
    per_call = (time.perf_counter() - t1) / 2
    return max(1, int(sample_s / max(per_call, 1e-7)))


def time_interleaved(fns: Dict[str, Callable[[], object]], inner: Dict[str, int],
                     repeats: int) -> Dict[str, Dict[str, float]]:
    """``{name: summary}`` of warmed-up callables, one sample of each per round, rotated order."""
    names = list(fns)
    samples: Dict[str, List[float]] = {n: [] for n in names}
    for r in range(repeats):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            fn, k = fns[name], inner[name]
            t0 = time.perf_counter()
            for _ in range(k):
                fn()
            samples[name].append((time.perf_counter() - t0) / k)
    out = {}
    for name in names:
        out[name] = summary(samples[name])
        out[name]["inner"] = inner[name]
        out[name]["timer"] = "perf_counter"
    return out


def time_cuda(fn: Callable[[], object], rep_ms: float = 100.0, repeats: int = 50,
              warmup: int = 10) -> Dict[str, float]:
    """Median and 20th/80th percentiles of one callable on the GPU (see the module docstring).

    ``rep_ms``: do_bench's target running time; ``repeats``/``warmup``: calls of the fallback.
    """
    fn()
    torch.cuda.synchronize()
    try:
        from triton.testing import do_bench
    except Exception:  # no triton: plain CUDA events
        do_bench = None
    if do_bench is not None:
        med, lo, hi = do_bench(fn, warmup=25, rep=rep_ms, quantiles=[0.5, 0.2, 0.8])
        return {"median_s": med * 1e-3, "p20_s": lo * 1e-3, "p80_s": hi * 1e-3, "samples": None,
                "timer": "triton.testing.do_bench"}
    for _ in range(warmup):
        fn()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(repeats)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(repeats)]
    for s, e in zip(starts, ends):
        s.record()
        fn()
        e.record()
    torch.cuda.synchronize()
    out = summary([s.elapsed_time(e) * 1e-3 for s, e in zip(starts, ends)])
    out["timer"] = "cuda_events"
    return out


# ---------------------------------------------------------------------------------------------
# peak memory
# ---------------------------------------------------------------------------------------------
def _status_kib(field: str) -> Optional[int]:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _malloc_trim() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def peak_memory(fn: Callable[[], object], device: str) -> Dict[str, Optional[object]]:
    """``{"peak_mem_bytes": int or None, "mem_method": str}`` of one call of ``fn``."""
    if device == "cuda":
        torch.cuda.synchronize()
        gc.collect(1)  # the young generations: a full collection costs ~0.15 s with torch loaded
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        out = fn()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
        del out
        return {"peak_mem_bytes": int(peak), "mem_method": GPU_MEMORY_METHOD}
    gc.collect(1)
    _malloc_trim()
    if not _reset_hwm():
        return {"peak_mem_bytes": None, "mem_method": "unavailable (/proc/self/clear_refs not writable)"}
    base = _status_kib("VmRSS")
    out = fn()
    hwm = _status_kib("VmHWM")
    del out
    if base is None or hwm is None:
        return {"peak_mem_bytes": None, "mem_method": "unavailable (no /proc/self/status)"}
    return {"peak_mem_bytes": max(0, hwm - base) * 1024, "mem_method": CPU_MEMORY_METHOD}
