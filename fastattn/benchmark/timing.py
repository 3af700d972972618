"""Timing, peak memory and the device's ceilings.

CUDA: CUDA events around every call, warm-up first, the L2 cache flushed (a 256 MiB buffer
zeroed) before each timed call, repetitions sized from a first estimate (as
``triton.testing.do_bench``); quantiles p20 / p50 / p80 over the repetitions.  Peak memory is
``torch.cuda.max_memory_allocated`` over one call, reset before it (inputs included).
CPU: ``time.perf_counter`` around every call, the same quantiles; no peak memory.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Callable, List, Optional

import torch

L2_FLUSH_BYTES = 256 * 1024 * 1024


@dataclasses.dataclass
class Timing:
    """Milliseconds per call: median and the 20th / 80th percentiles over ``reps`` calls."""
    median_ms: float
    p20_ms: float
    p80_ms: float
    reps: int


@dataclasses.dataclass
class Settings:
    """How long to warm up and to repeat each case, in milliseconds of the case's own time."""
    warmup_ms: float = 25.0
    rep_ms: float = 100.0
    min_reps: int = 3
    max_reps: int = 1000

    @classmethod
    def quick(cls) -> "Settings":
        return cls(warmup_ms=2.0, rep_ms=10.0, min_reps=3, max_reps=100)


def quantiles(times_ms: List[float]) -> Timing:
    """p20, median, p80 of ``times_ms`` (linear interpolation, as numpy's default)."""
    if not times_ms:
        raise ValueError("times_ms must hold at least one time")
    t = torch.tensor(times_ms, dtype=torch.float64)
    p20, p50, p80 = torch.quantile(t, torch.tensor([0.2, 0.5, 0.8], dtype=torch.float64)).tolist()
    return Timing(median_ms=p50, p20_ms=p20, p80_ms=p80, reps=len(times_ms))


def _rep_count(estimate_ms: float, budget_ms: float, settings: Settings) -> int:
    n = int(budget_ms / max(estimate_ms, 1e-6))
    return max(settings.min_reps, min(settings.max_reps, n))


def time_cpu(fn: Callable[[], object], settings: Settings,
             estimate_ms: Optional[float] = None) -> Timing:
    """Wall-clock time of ``fn()`` on the host.  ``estimate_ms``: the time of a call already
    made (it served as the first warm-up); without it one more call measures it."""
    if estimate_ms is None:
        start = time.perf_counter()
        fn()
        estimate_ms = (time.perf_counter() - start) * 1e3
    for _ in range(min(settings.max_reps, int(settings.warmup_ms / max(estimate_ms, 1e-6)))):
        fn()
    times = []
    for _ in range(_rep_count(estimate_ms, settings.rep_ms, settings)):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return quantiles(times)


def time_cuda(fn: Callable[[], object], settings: Settings,
              device: Optional[torch.device] = None) -> Timing:
    """CUDA-event time of ``fn()`` with the L2 cache flushed before every timed call."""
    flush = torch.empty(L2_FLUSH_BYTES, dtype=torch.int8, device=device or "cuda")
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(3):
        flush.zero_()
        fn()
    end.record()
    torch.cuda.synchronize()
    estimate_ms = start.elapsed_time(end) / 3
    for _ in range(_rep_count(estimate_ms, settings.warmup_ms, settings)):
        fn()
    n = _rep_count(estimate_ms, settings.rep_ms, settings)
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(n)]
    for s, e in zip(starts, ends):
        flush.zero_()
        s.record()
        fn()
        e.record()
    torch.cuda.synchronize()
    return quantiles([s.elapsed_time(e) for s, e in zip(starts, ends)])


def measure(fn: Callable[[], object], device: torch.device, settings: Settings,
            estimate_ms: Optional[float] = None) -> Timing:
    """Quantiles of ``fn()``'s time; ``estimate_ms`` (CPU only) spares one estimating call."""
    if device.type == "cuda":
        return time_cuda(fn, settings, device)
    return time_cpu(fn, settings, estimate_ms)


def first_call(fn: Callable[[], object], device: torch.device):
    """Run ``fn()`` once: (its result, peak bytes allocated during it (None on CPU), ms taken)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed_ms = (time.perf_counter() - start) * 1e3
    peak = int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None
    return out, peak, elapsed_ms


@dataclasses.dataclass
class Ceilings:
    """What this device reaches on the simplest kernels: a large matmul and a large copy."""
    matmul_tflops: float
    matmul_desc: str
    copy_gbps: float
    copy_desc: str


def measure_ceilings(device: torch.device, quick: bool = False) -> Ceilings:
    """Dense matmul TFLOP/s (bf16 8192^3 on CUDA, fp32 on CPU) and copy GB/s (read + write)."""
    settings = Settings.quick() if quick else Settings()
    if device.type == "cuda":
        n, dtype, copy_bytes = (4096 if quick else 8192), torch.bfloat16, 2 ** 30
    else:
        n, dtype, copy_bytes = (768 if quick else 2048), torch.float32, 2 ** 26
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    a @ b
    mm = measure(lambda: a @ b, device, settings)
    src = torch.randn(copy_bytes // 4, device=device, generator=g)
    dst = torch.empty_like(src)
    dst.copy_(src)
    cp = measure(lambda: dst.copy_(src), device, settings)
    dname = str(dtype).replace("torch.", "")
    return Ceilings(
        matmul_tflops=2 * n ** 3 / (mm.median_ms * 1e-3) / 1e12,
        matmul_desc=f"{dname} matmul {n}x{n}x{n}",
        copy_gbps=2 * copy_bytes / (cp.median_ms * 1e-3) / 1e9,
        copy_desc=f"copy of {copy_bytes // 2 ** 20} MiB (read + write counted)",
    )
