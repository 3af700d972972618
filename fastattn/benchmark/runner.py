"""``fastattn bench``: run the cases, writing the reports as each case finishes.

Each case builds its inputs once; the eager reference runs first and every other provider's
output is compared with it (relative max error, real tokens only) before it is timed.
A provider that cannot run a case gives an "n/a" row with the reason; one that fails gives an
"error" row; neither stops the run.

Incremental: after every case its rows are appended to results.jsonl and report.md /
results.json are rewritten, so a run killed at any point keeps every finished row.  SIGTERM (what
``timeout`` sends) ends the run after the current provider: the remaining cases become n/a rows
and the reports are written once more.  Plots are drawn at the end (``--no-plots`` skips them).
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import os
import re
import signal
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence

import torch

from fastattn.benchmark import providers as P
from fastattn.benchmark import report, timing, workloads


def relative_error(out: torch.Tensor, ref: torch.Tensor,
                   rows: Optional[torch.Tensor] = None) -> float:
    """max |out - ref| / max |ref| over the positions ``rows`` (broadcastable bool) selects."""
    if out.shape != ref.shape:
        raise ValueError(f"output shape {tuple(out.shape)} != reference {tuple(ref.shape)}")
    diff, scale = (out.float() - ref.float()).abs(), ref.float().abs()
    if rows is not None:
        diff, scale = diff * rows, scale * rows
    return float(diff.max() / scale.max().clamp_min(1e-30)) if diff.numel() else 0.0


def _row(case: workloads.Case, provider: str, device: torch.device, **fields) -> Dict:
    row = dict(family=case.family, workload=case.workload, mode=case.mode, case=case.label,
               provider=provider, backend=None, status="ok", reason=None, median_ms=None,
               p20_ms=None, p80_ms=None, reps=None, work=case.work, unit=case.unit,
               throughput=None, throughput_unit="TFLOP/s" if case.unit == "flop" else "GB/s",
               fraction_of_ceiling=None, peak_mem_mib=None, rel_err_vs_eager=None,
               speedup_vs_eager=None, speedup_vs_torch=None, torch_peer=case.torch_peer,
               params=case.params, sweep=case.sweep, panel=case.panel, device=device.type)
    row.update(fields)
    return row


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200] if text else ''}"


def run_case(case: workloads.Case, device: torch.device, settings: timing.Settings,
             ceilings: timing.Ceilings) -> List[Dict]:
    """All provider rows of one case, in the case's provider order."""
    try:
        state = case.build()
    except Exception as exc:
        return [_row(case, p, device, status="error", reason=f"inputs: {_short(exc)}")
                for p in case.providers]
    rows_sel = case.valid_rows(state) if case.valid_rows else None
    order = [case.eager] + [p for p in case.providers if p != case.eager]
    rows, reference_out = {}, None
    for name in order:
        rows[name] = _run_provider(case, name, state, device, settings, ceilings)
        out = rows[name].pop("_output", None)
        if name == case.eager:
            reference_out = out
        elif not case.compare:
            rows[name]["reason"] = rows[name]["reason"] or "random output (dropout): not compared"
        elif out is not None and reference_out is not None:
            try:
                rows[name]["rel_err_vs_eager"] = relative_error(out, reference_out, rows_sel)
            except ValueError as exc:
                rows[name]["reason"] = f"not compared: {exc}"
    del state, reference_out
    _free(device)
    return [rows[p] for p in case.providers]


def _run_provider(case, name, state, device, settings, ceilings) -> Dict:
    try:
        run = case.provider_fn(name, state)
        result, peak, first_ms = timing.first_call(run.fn, device)
        out = run.output(result).detach() if run.output is not None else None
        del result
        t = timing.measure(run.fn, device, settings, estimate_ms=first_ms)
    except P.NotApplicable as exc:
        return _row(case, name, device, status="n/a", reason=str(exc))
    except torch.cuda.OutOfMemoryError:
        _free(device)
        return _row(case, name, device, status="n/a", reason="out of memory at this size")
    except Exception as exc:  # reported in the row; the run goes on
        return _row(case, name, device, status="error", reason=_short(exc))
    per_s = case.work / (t.median_ms * 1e-3)
    ceiling = ceilings.matmul_tflops * 1e12 if case.unit == "flop" else ceilings.copy_gbps * 1e9
    return _row(case, name, device, backend=run.backend, median_ms=t.median_ms,
                p20_ms=t.p20_ms, p80_ms=t.p80_ms, reps=t.reps,
                throughput=per_s / (1e12 if case.unit == "flop" else 1e9),
                fraction_of_ceiling=per_s / ceiling,
                peak_mem_mib=None if peak is None else peak / 2 ** 20, _output=out)


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def add_speedups(rows: List[Dict]) -> None:
    """speedup_vs_eager / speedup_vs_torch = the peer's median / this row's median."""
    by_case = {}
    for r in rows:
        by_case.setdefault((r["workload"], r["case"]), {})[r["provider"]] = r
    for r in rows:
        if r["median_ms"] is None:
            continue
        peers = by_case[(r["workload"], r["case"])]
        for key, peer in (("speedup_vs_eager", "eager"), ("speedup_vs_torch", r["torch_peer"])):
            p = peers.get(peer)
            if p is not None and p["median_ms"] is not None:
                r[key] = p["median_ms"] / r["median_ms"]


class Interrupted(BaseException):
    """Raised inside the run by SIGTERM (see :func:`terminate_raises`); a BaseException, like
    KeyboardInterrupt, so that no provider's error handling takes it for a failed row."""


@contextlib.contextmanager
def terminate_raises():
    """Turn SIGTERM into :class:`Interrupted` inside the block (main thread only)."""
    def handler(signum, frame):
        raise Interrupted(f"signal {signum}")
    try:
        old = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


class BudgetClock:
    """Decides whether a case may start within ``budget_s``: a case starts only when the time
    spent plus a margin (the longest case of its family so far, else the longest of any
    family, x ``safety``) stays inside the budget, so the last case ends within it.  The first
    case always runs."""

    def __init__(self, budget_s: Optional[float], safety: float = 1.25):
        self.budget_s, self.safety = budget_s, safety
        self.start = time.monotonic()
        self.longest: Dict[str, float] = {}

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def margin(self, family: str) -> float:
        if family in self.longest:
            return self.safety * self.longest[family]
        return self.safety * max(self.longest.values(), default=0.0)

    def allows(self, family: str) -> bool:
        if self.budget_s is None or not self.longest:
            return True
        return self.elapsed() + self.margin(family) <= self.budget_s

    def record(self, family: str, seconds: float) -> None:
        self.longest[family] = max(self.longest.get(family, 0.0), seconds)


def run(cases: Sequence[workloads.Case], device: torch.device, *, quick: bool = False,
        budget_s: Optional[float] = None, progress: bool = True,
        on_case: Optional[Callable[[Dict, List[Dict]], None]] = None) -> Dict:
    """Measure the ceilings, then every case, most important first; returns {"ceilings",
    "rows"} with the rows in report order.  ``on_case(results_so_far, new_rows)`` is called
    after each case (the incremental writer).  SIGTERM inside :func:`terminate_raises`, or
    :class:`Interrupted` / KeyboardInterrupt from a case, stops the run: the remaining cases
    become n/a rows."""
    settings = timing.Settings.quick() if quick else timing.Settings()
    ceilings = timing.measure_ceilings(device, quick=quick)
    clock = BudgetClock(budget_s)
    bar = _progress(sum(len(c.providers) for c in cases), progress)
    results: Dict[int, List[Dict]] = {}
    stopped = None
    for index in sorted(range(len(cases)), key=lambda i: (cases[i].priority, i)):
        case = cases[index]
        if stopped is not None:
            results[index] = _skipped(case, device, stopped)
        elif not clock.allows(case.family):
            results[index] = _skipped(
                case, device, f"skipped: --budget {budget_s:g} s would be exceeded "
                              f"({clock.elapsed():.0f} s spent)")
        else:
            bar.set_postfix_str(f"{case.workload} {case.label}"[:60], refresh=False)
            t0 = time.monotonic()
            try:
                results[index] = run_case(case, device, settings, ceilings)
            except (Interrupted, KeyboardInterrupt) as exc:
                stopped = f"not run: interrupted ({exc or 'KeyboardInterrupt'})"
                results[index] = _skipped(case, device, stopped)
            else:
                clock.record(case.family, time.monotonic() - t0)
                add_speedups(results[index])
        bar.update(len(case.providers))
        if on_case is not None:
            on_case(_assemble(cases, results, ceilings), results[index])
    bar.close()
    out = _assemble(cases, results, ceilings)
    out["interrupted"] = stopped is not None
    return out


def _skipped(case, device, reason: str) -> List[Dict]:
    return [_row(case, p, device, status="n/a", reason=reason) for p in case.providers]


def _assemble(cases, results: Dict[int, List[Dict]], ceilings) -> Dict:
    """Rows of the cases run so far, in report order."""
    rows = [r for i in range(len(cases)) if i in results for r in results[i]]
    return {"ceilings": ceilings.__dict__, "rows": rows}


class _NoBar:
    def set_postfix_str(self, *a, **k):
        pass

    def update(self, n):
        pass

    def close(self):
        pass


def _progress(total: int, enabled: bool):
    if not enabled:
        return _NoBar()
    try:
        from tqdm import tqdm
    except ImportError:
        return _NoBar()
    return tqdm(total=total, unit="run", desc="fastattn bench", file=sys.stderr,
                dynamic_ncols=True)


def default_out_dir(device: torch.device) -> str:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return os.path.join("bench", "out", f"{slug}-{datetime.datetime.now():%Y%m%d-%H%M%S}")


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="fastattn bench",
        description="Benchmark fastattn against eager PyTorch, SDPA and installed libraries; "
                    "writes report.md, results.json and PNG plots.")
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None,
                        help="default: cuda when available, else cpu (smaller sizes)")
    parser.add_argument("--only", nargs="+", action="extend", choices=workloads.FAMILIES,
                        default=None,
                        help="families to run (default: all)")
    parser.add_argument("--quick", action="store_true",
                        help="fewer sizes and repetitions (under a minute on CPU)")
    parser.add_argument("--out", default=None, help="output folder "
                        "(default: bench/out/<device>-<date>)")
    parser.add_argument("--budget", type=float, default=None, metavar="SECONDS",
                        help="time budget: a case starts only if, with a margin (the longest "
                             "case of its family so far), it ends within the budget; the first "
                             "always runs; the rest become n/a rows")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for torch (default: torch's; 1 for --quick on CPU, "
                             "which keeps a quick run short on a busy machine)")
    parser.add_argument("--max-priority", type=int, default=None, metavar="P",
                        help="only cases of priority <= P (0: the BERT priority cases)")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser.parse_args(list(argv))


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``fastattn bench``; returns the exit status."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.budget is not None and args.budget <= 0:
        print("fastattn bench: --budget must be positive", file=sys.stderr)
        return 2
    cuda = torch.cuda.is_available()
    device = torch.device(args.device or ("cuda" if cuda else "cpu"))
    if device.type == "cuda" and not cuda:
        print("fastattn bench: --device cuda asked for, but torch sees no CUDA device",
              file=sys.stderr)
        return 2
    if args.threads is not None and args.threads < 1:
        print("fastattn bench: --threads must be at least 1", file=sys.stderr)
        return 2
    threads = args.threads or (1 if args.quick and device.type == "cpu" else None)
    if threads:
        torch.set_num_threads(threads)
    out_dir = args.out or default_out_dir(device)
    os.makedirs(out_dir, exist_ok=True)
    cases = workloads.build_cases(device, quick=args.quick, only=args.only,
                                  max_priority=args.max_priority)
    started = time.monotonic()
    env = report.environment(device, quick=args.quick, only=args.only)
    writer = report.IncrementalWriter(out_dir, env)
    with terminate_raises():
        try:
            results = run(cases, device, quick=args.quick, budget_s=args.budget,
                          progress=not args.no_progress,
                          on_case=lambda res, new: writer.case_done(
                              res, new, time.monotonic() - started))
        except (Interrupted, KeyboardInterrupt):  # before the first case (ceilings)
            print("fastattn bench: interrupted before the first case", file=sys.stderr)
            return 1
    paths = writer.finish(results, time.monotonic() - started, plots=not args.no_plots)
    counts = report.status_counts(results["rows"])
    print(f"fastattn bench: {len(results['rows'])} rows ({counts}) in "
          f"{time.monotonic() - started:.1f} s"
          + (" (interrupted)" if results.get("interrupted") else ""))
    for path in paths:
        print(f"  wrote {path}")
    return 1 if results.get("interrupted") else 0
