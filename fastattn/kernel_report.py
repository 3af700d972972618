"""The static kernel report: one row of figures per kernel a launcher really launches.

    rows = compile_launch(lambda: attention_forward(q, k, v, None, 0, False, 0.125), "sm_90a")

captures the launcher's kernel launches on CPU tensors (:mod:`fastattn.launch_capture`),
compiles each with the JIT's exact specialization for the arch, and reads the cubin's SASS
(:mod:`fastattn.sass`).  A row (dict) holds:

    name, kernel, fn, arch, block_m, block_n, block_k (if any), num_warps, num_stages,
    loop_threads, registers, spill_bytes (spill_stores, spill_loads), stack_bytes,
    shared_bytes, tma, mma, loop_instructions, loop_mma (loop_hgmma, loop_hmma), loop_mufu,
    loop_<tma|ldgsts|ldsm|ldg|lds|...>, loop_top_ops, non_mma_per_score,
    non_mma_per_mac (GEMMs: rows with block_k), divisible (parameters specialized as
    divisible by 16), cubin (file name when dumped), error

plus the labels the caller passes (dtype, head_dim, seqlen, mask, case...).  Definitions of the
figures: :mod:`fastattn.sass`.  ``shared_bytes`` is Triton's dynamic shared memory
(``metadata.shared``); registers and spills come from the cubin itself, so they describe the
binary Triton built.
"""
from __future__ import annotations

import os
import re
from typing import Any, Callable, Dict, List, Optional, Tuple

from fastattn import sass
from fastattn.launch_capture import (KernelSource, capture_sources, compile_source,
                                     loop_threads)

# Launched kernel (Triton function name) -> report name.
KERNEL_NAMES = {
    "attention_fwd_kernel": "attention_fwd",
    "attention_bwd_dkdv_kernel": "attention_bwd_dkdv",
    "attention_bwd_dq_kernel": "attention_bwd_dq",
    "attention_bwd_preprocess_kernel": "attention_bwd_preprocess",
    "varlen_attention_fwd_kernel": "varlen_fwd",
    "varlen_attention_bwd_dkdv_kernel": "varlen_bwd_dkdv",
    "varlen_attention_bwd_dq_kernel": "varlen_bwd_dq",
    "matmul_epilogue_kernel": "matmul",
}

# Columns of the printed table, in order.
COLUMNS = ["name", "kernel", "arch", "dtype", "head_dim", "seqlen", "mask", "block_m", "block_n",
           "num_warps", "num_stages", "loop_threads", "registers", "spill_bytes", "shared_bytes",
           "tma", "mma", "loop_instructions", "loop_mma", "loop_mufu", "non_mma_per_score",
           "cubin"]
GEMM_COLUMNS = ["name", "kernel", "case", "arch", "dtype", "block_m", "block_n", "block_k",
                "num_warps", "num_stages", "loop_threads", "registers", "spill_bytes",
                "shared_bytes", "tma", "mma", "loop_instructions", "loop_mma", "loop_ldsm",
                "non_mma_per_mac", "cubin"]


def kernel_name(fn_name: str) -> str:
    return KERNEL_NAMES.get(fn_name, re.sub(r"_kernel$", "", fn_name))


def measure(source: KernelSource, loop_warps: Optional[int] = None
            ) -> Tuple[Dict[str, Any], Optional[bytes]]:
    """Compile ``source``; return (its figures, its cubin).  A failure is reported in
    ``figures["error"]`` (and the cubin is None), not raised."""
    block_k = source.constexpr("BLOCK_K")
    row: Dict[str, Any] = dict(
        kernel=kernel_name(source.name), fn=source.fn, arch=source.arch,
        block_m=source.constexpr("BLOCK_M"), block_n=source.constexpr("BLOCK_N"),
        num_warps=source.options.get("num_warps"), num_stages=source.options.get("num_stages"),
        loop_threads=loop_threads(source, loop_warps),
        divisible=" ".join(source.divisible_args()), error=None)
    if block_k is not None:
        row["block_k"] = block_k
    try:
        compiled = compile_source(source)
        cubin = compiled.asm["cubin"]
        report = sass.analyze(cubin, function=getattr(compiled.metadata, "name", None))
    except Exception as exc:  # reported in the row (and a failure in the tests)
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        row["error"] = f"{type(exc).__name__}: {message}"[:300]
        return row, None
    row.update(registers=report.registers, spill_bytes=report.spill_bytes,
               spill_stores=report.spill_stores, spill_loads=report.spill_loads,
               stack_bytes=report.stack_bytes, shared_bytes=int(compiled.metadata.shared),
               tma=report.tma, mma=report.mma, sass_counts=report.counts,
               innermost_mma_loops=len(report.loops))
    row.update(report.loop_summary())
    bm, bn = row["block_m"], row["block_n"]
    if bm and bn:
        row["non_mma_per_score"] = _round(sass.non_mma_per_score(
            row["loop_instructions"], row["loop_mma"], row["loop_threads"], bm, bn))
        if block_k:
            row["non_mma_per_mac"] = _round(sass.non_mma_per_mac(
                row["loop_instructions"], row["loop_mma"], row["loop_threads"], bm, bn,
                block_k), 4)
    return row, cubin


def make_row(figures: Dict[str, Any], cubin: Optional[bytes], labels: Dict[str, Any],
             dump_dir: Optional[str] = None) -> Dict[str, Any]:
    """A report row: ``labels`` (with a unique ``name``) then the figures; with ``dump_dir``
    the cubin is written there as ``<name>.cubin`` and named in ``row["cubin"]``."""
    row = {"name": labels["name"]}
    row.update(labels)
    row.update(figures)
    row["cubin"] = None
    if dump_dir and cubin is not None:
        os.makedirs(dump_dir, exist_ok=True)
        row["cubin"] = f"{row['name']}.cubin"
        with open(os.path.join(dump_dir, row["cubin"]), "wb") as f:
            f.write(cubin)
    return row


def _round(x: Optional[float], digits: int = 2) -> Optional[float]:
    return None if x is None else round(x, digits)


def compile_launch(launcher: Callable[[], Any], arch: str = "sm_90a", *,
                   labels: Optional[Dict[str, Any]] = None, dump_dir: Optional[str] = None,
                   loop_warps: Optional[int] = None,
                   kernels: Optional[List[str]] = None) -> List[Dict[str, Any]]:
    """Rows for every kernel ``launcher()`` launches, compiled as on ``arch``.

    ``launcher``: a no-argument callable that calls a real launcher on CPU tensors shaped and
    strided like the real inputs.  ``labels``: added to every row (``name`` gets the kernel
    name appended).  ``kernels``: keep only these report names (e.g. ["attention_fwd"]).
    ``loop_warps``: warps that run the hot loop, for warp-specialized kernels.
    Must run with TRITON_INTERPRET unset.
    """
    rows = []
    for _, source in capture_sources(launcher, arch):
        name = kernel_name(source.name)
        if kernels is not None and name not in kernels:
            continue
        row_labels = dict(labels or {})
        row_labels["name"] = "-".join(str(p) for p in (name, row_labels.get("name"), arch) if p)
        rows.append(make_row(*measure(source, loop_warps), row_labels, dump_dir))
    return rows


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def format_table(rows: List[Dict[str, Any]], columns: Optional[List[str]] = None) -> str:
    """A Markdown table of ``rows`` (default columns: :data:`COLUMNS`, or
    :data:`GEMM_COLUMNS` when every row is a GEMM); failed rows show their error."""
    if columns is None:
        gemm = rows and all(r.get("block_k") is not None for r in rows)
        columns = GEMM_COLUMNS if gemm else COLUMNS
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        cells = [_cell(r.get(c)) for c in columns]
        if r.get("error"):
            cells[-1] = f"FAILED: {r['error']}"
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _measure_job(job):
    source, loop_warps = job
    return measure(source, loop_warps)


def report_cases(cases, archs=("sm_90a",), jobs: Optional[int] = None,
                 dump_dir: Optional[str] = None, progress: bool = False
                 ) -> List[Dict[str, Any]]:
    """Rows for every kernel the :class:`fastattn.kernel_cases.Case` s launch, on every arch.

    Launches are captured here (cheap); the distinct specializations are compiled once each, in
    ``jobs`` parallel processes; rows follow the cases' order.
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from fastattn.kernel_cases import AUXILIARY

    planned = []  # (labels, source key)
    sources: Dict[tuple, KernelSource] = {}
    for arch in archs:
        for case in cases:
            seen: Dict[str, int] = {}
            for _, source in capture_sources(case.run, arch):
                kernel = kernel_name(source.name)
                wanted = case.kernels if case.kernels is not None else None
                if (wanted is not None and kernel not in wanted) or (
                        wanted is None and kernel in AUXILIARY):
                    continue
                seen[kernel] = seen.get(kernel, 0) + 1
                suffix = "" if seen[kernel] == 1 else f"-{seen[kernel]}"
                labels = dict(case.labels)
                labels["name"] = f"{kernel}-{case.name}{suffix}-{arch}"
                key = source.key()
                sources.setdefault(key, source)
                planned.append((labels, key))
    keys = list(sources)
    jobs = max(1, min(jobs or os.cpu_count() or 1, len(keys) or 1))
    work = [(sources[k], None) for k in keys]
    if jobs == 1:
        it = map(_measure_job, work)
        results = _progress(it, len(work), progress)
    else:
        # fork: the workers inherit the imported modules (no re-import of a __main__ script)
        ctx = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(jobs, mp_context=ctx) as pool:
            results = _progress(pool.map(_measure_job, work), len(work), progress)
    measured = dict(zip(keys, results))
    return [make_row(*measured[key], labels, dump_dir) for labels, key in planned]


def _progress(it, total: int, enabled: bool) -> list:
    if enabled:
        try:
            from tqdm import tqdm
            it = tqdm(it, total=total, desc="compiling", unit="kernel")
        except ImportError:
            pass
    return list(it)
