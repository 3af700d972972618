"""Ahead-of-time compile of the Triton kernels, with no GPU: what ``fastattn kernels`` runs.

Two views, both compiled with the exact specialization the launcher's JIT call gets
(:mod:`fastattn.launch_capture`: the real launchers run on CPU tensors, their launches are
captured and bound by Triton's own binder) and read from the cubin's SASS
(:mod:`fastattn.sass`):

* :func:`sweep` — every configuration the launchers can pick (:mod:`fastattn.kernel_sweep`),
  for sm_80 and sm_90a; ``sample`` compiles a deterministic stratified subset (``sample``
  specializations per kernel x arch x head_dim group) when the whole sweep costs too
  much (it has ~930 distinct specializations per arch).
* :func:`bert` — the kernels a BERT encoder launches (:func:`fastattn.kernel_cases.bert_cases`),
  with the hot-loop figures; ``dump`` writes each ``<name>.cubin`` and ``kernels.json``.

Must run without ``TRITON_INTERPRET`` (interpreted functions cannot be compiled); the CLI
re-executes itself without the variable.
"""
from __future__ import annotations

import json
import os
import random
from typing import Any, Dict, Iterable, List, Optional, Sequence

from fastattn import kernel_report
from fastattn.launch_capture import ARCHS

Row = Dict[str, Any]


def _check_env() -> None:
    if os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "yes", "on"):
        raise RuntimeError("ahead-of-time compilation needs TRITON_INTERPRET unset")


def stratum(labels: Row) -> tuple:
    """The sampling group of a sweep row: kernel, arch, head_dim (the dtype, mask and length
    bucket vary with the seed)."""
    return labels["kernel"], labels["arch"], labels.get("head_dim")


def sample_planned(planned, sample: int, seed: int = 0):
    """Keep ``sample`` distinct specializations per :func:`stratum` (chosen with ``seed``)."""
    groups: Dict[tuple, List[tuple]] = {}
    for labels, key in planned:
        group = groups.setdefault(stratum(labels), [])
        if key not in group:
            group.append(key)
    rng = random.Random(seed)
    chosen = set()
    for group_key in sorted(groups, key=str):
        keys = groups[group_key]
        chosen.update(rng.sample(keys, min(sample, len(keys))))
    return [(labels, key) for labels, key in planned if key in chosen]


def sweep(archs: Iterable[str] = tuple(ARCHS), families: Optional[Sequence[str]] = None,
          jobs: Optional[int] = None, sample: Optional[int] = None, seed: int = 0,
          progress: bool = False) -> List[Row]:
    """One row per distinct specialization of every pickable configuration.

    ``families``: kernel-name prefixes (``attention_fwd``, ``varlen``, ``layer_norm``,
    ``matmul``...).  ``sample``: per-stratum count (None: everything).
    """
    from fastattn.kernel_sweep import sweep_cases

    _check_env()
    planned, sources = kernel_report.plan_cases(sweep_cases(), list(archs))
    if families:
        planned = [(lb, k) for lb, k in planned
                   if any(lb["name"].startswith(f) for f in families)]
    if sample is not None:
        planned = sample_planned(planned, sample, seed)
    return kernel_report.compile_planned(planned, sources, jobs, progress=progress, unique=True)


def bert(archs: Iterable[str] = ("sm_90a",), jobs: Optional[int] = None,
         dump: Optional[str] = None, only: Optional[Sequence[str]] = None,
         families: Optional[Sequence[str]] = None, progress: bool = False) -> List[Row]:
    """Rows of the BERT cases; with ``dump``, cubins and ``kernels.json`` in that folder.
    ``only``: keep rows whose name contains one of these; ``families``: name prefixes."""
    from fastattn.kernel_cases import bert_cases

    _check_env()
    planned, sources = kernel_report.plan_cases(bert_cases(), list(archs),
                                                list(only) if only else None)
    if families:
        planned = [(lb, k) for lb, k in planned
                   if any(lb["name"].startswith(f) for f in families)]
    rows = kernel_report.compile_planned(planned, sources, jobs, dump, progress)
    if dump:
        os.makedirs(dump, exist_ok=True)
        with open(os.path.join(dump, "kernels.json"), "w") as f:
            json.dump(rows, f, indent=1)
    return rows


def tables(rows: List[Row]) -> str:
    """Markdown: the attention (and other) rows, then the GEMM rows."""
    gemm = [r for r in rows if r.get("kernel") == "matmul"]
    other = [r for r in rows if r.get("kernel") != "matmul"]
    parts = []
    if other:
        parts.append(kernel_report.format_table(other, kernel_report.COLUMNS))
    if gemm:
        parts.append(kernel_report.format_table(gemm, kernel_report.GEMM_COLUMNS))
    return "\n\n".join(parts)


SWEEP_COLUMNS = ["name", "kernel", "arch", "block_m", "block_n", "num_warps", "num_stages",
                 "registers", "spill_bytes", "shared_bytes", "tma", "mma", "loop_instructions",
                 "loop_mma", "divisible"]


def sweep_table(rows: List[Row]) -> str:
    return kernel_report.format_table(rows, SWEEP_COLUMNS)


def summary(rows: List[Row]) -> Dict[str, int]:
    return {
        "compiled": sum(r["error"] is None for r in rows),
        "failed": sum(r["error"] is not None for r in rows),
        "with_spills": sum(r["error"] is None and (r.get("spill_bytes") or 0) > 0 for r in rows),
    }
