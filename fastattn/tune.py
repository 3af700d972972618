"""``fastattn tune``: time the candidate launch configurations of the BERT cases on this GPU and
write the tuned table that the launchers read (:mod:`fastattn.tuning`).

Cases (``bert_cases``): the padded attention kernels (forward, dK/dV, dQ) for fp16 and bf16,
head_dim 64 and 128, L = 512 and 128, no mask and a key-padding mask; the variable-length
kernels for the same sizes; LayerNorm forward and backward at hidden 768 and 1024; and the
feed-forward GEMMs of BERT-base (8192 tokens, training and inference), where cuBLAS(Lt) — the
dispatch's choice without a table — is timed against the Triton configs.  Cases whose launch key is the same (L =
128 and 512 share the length bucket) are timed once.  Candidates come from each family's
config module (``tune_candidates``), pruned by the device's shared memory before anything is
compiled; the static table's choice is always one of them.

Two phases, both under ``--budget``:

1. warm: ``--jobs`` processes run every (case, candidate) once, so the kernels compile in
   parallel into Triton's on-disk cache (nothing is timed there);
2. time: this process times each candidate with ``triton.testing.do_bench`` (median), one case
   at a time in priority order, and rewrites ``<out>/<gpu-slug>.json`` after every case, so a
   run stopped by its budget or a timeout keeps every finished case.

A case's tuned config is the fastest candidate, unless it beats the static choice by less than
``MIN_GAIN`` (noise): then the static choice stays.  ``--dry-run`` lists the cases and
candidates for ``--arch`` without a GPU.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import itertools
import json
import math
import os
import subprocess
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence

MIN_GAIN = 0.03
FAMILIES = ("attention", "varlen", "layer_norm", "matmul")
SMEM_BY_ARCH = {"sm_80": 8, "sm_90a": 9}
TOKENS = 16384  # B * L of the timed attention cases (BERT-base training batch)
HIDDEN = 768


@dataclasses.dataclass
class TuneCase:
    family: str
    key: str                      # the launcher's tuned-table key
    label: str                    # for people: sizes and dtype
    candidates: List[dict]        # config dicts, the static choice first
    make: Callable[[], Callable[[], object]] = dataclasses.field(repr=False, default=None)


def _cfg_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


# ------------------------------------------------------------------------------ the cases

def bert_cases(capability_major: int, smem_limit: Optional[int] = None,
               families: Sequence[str] = FAMILIES) -> List[TuneCase]:
    """Every case in priority order (no GPU needed to list them)."""
    from fastattn.kernels import attention_configs as AC

    smem = smem_limit or AC.smem_limit_for(capability_major)
    cases: Dict[str, TuneCase] = {}

    def add(case: TuneCase):
        cases.setdefault(f"{case.family}:{case.key}", case)

    for head_dim in (64, 128):
        for length in (512, 128):
            for dtype in ("float16", "bfloat16"):
                if "attention" in families:
                    for mask in ("key_padding", "none"):
                        for kernel in AC.KERNELS:
                            add(_attention_case(kernel, head_dim, length, dtype, mask, smem))
                if "varlen" in families:
                    for kernel in AC.KERNELS:
                        add(_varlen_case(kernel, head_dim, length, dtype, smem))
        if head_dim == 64 and "layer_norm" in families:
            for hidden in (768, 1024):
                for dtype in ("float16", "bfloat16"):
                    for kernel in ("fwd", "bwd"):
                        add(_layer_norm_case(hidden, kernel, dtype))
    if "matmul" in families:
        for case in _matmul_cases(smem, capability_major):
            add(case)
    return sorted(cases.values(), key=_priority)


_FAMILY_RANK = {"attention": 0, "matmul": 1, "layer_norm": 2, "varlen": 3}


def _priority(case: TuneCase) -> tuple:
    """Timed first: head_dim 64 (BERT-base), fp16, then attention, the GEMMs, LayerNorm,
    varlen; a budget that runs out leaves the rest on the static table (stable order)."""
    return ("|d128|" in case.key, "bfloat16" in case.key, _FAMILY_RANK[case.family])


def _attention_case(kernel, head_dim, length, dtype, mask, smem) -> TuneCase:
    from fastattn.kernels import attention_configs as AC

    mask_kind, layout = (1, "row") if mask == "key_padding" else (0, "none")
    cands = AC.tune_candidates(kernel, head_dim, dtype, mask_kind, length, smem,
                               mask_layout=layout)
    key = AC.tuned_key(kernel, head_dim, dtype, mask_kind, layout, length, False)
    label = f"attention {kernel} {dtype} d={head_dim} L={length} mask={mask}"
    return TuneCase("attention", key, label, [_cfg_dict(c) for c in cands],
                    make=lambda: _attention_runner(kernel, head_dim, length, dtype, mask))


def _varlen_case(kernel, head_dim, length, dtype, smem) -> TuneCase:
    from fastattn.kernels import attention_configs as AC

    cands = AC.tune_candidates(kernel, head_dim, dtype, 0, length, smem, mask_layout="none",
                               family="varlen")
    key = AC.tuned_key(kernel, head_dim, dtype, 0, "none", length, False)
    label = f"varlen {kernel} {dtype} d={head_dim} max_seqlen={length}"
    return TuneCase("varlen", key, label, [_cfg_dict(c) for c in cands],
                    make=lambda: _varlen_runner(kernel, head_dim, length, dtype))


def _layer_norm_case(hidden, kernel, dtype) -> TuneCase:
    from fastattn.kernels import layer_norm_configs as LC

    return TuneCase("layer_norm", LC.tuned_key(hidden, kernel, dtype),
                    f"layer_norm {kernel} {dtype} hidden={hidden} rows={TOKENS}",
                    [_cfg_dict(c) for c in LC.tune_candidates(hidden, kernel)],
                    make=lambda: _layer_norm_runner(hidden, kernel, dtype))


def _matmul_cases(smem: int, capability_major: int) -> List[TuneCase]:
    """The BERT-base feed-forward GEMMs (8192 tokens, 768 -> 3072 -> 768, GELU, residual),
    training and inference, fp16 and bf16: cuBLAS(Lt) (the default without a table) against
    every Triton config that fits."""
    from fastattn.kernels import matmul_configs as MC

    cases = []
    for dtype in ("float16", "bfloat16"):
        for training in (True, False):
            for name, key in MC.feedforward_cases(8192, HIDDEN, 4 * HIDDEN, dtype, "gelu",
                                                  residual=True, training=training).items():
                cands = MC.tune_candidates(key, smem, tma=capability_major >= 9)
                cases.append(TuneCase("matmul", key, f"matmul {name} {key}", cands,
                                      make=lambda key=key: _matmul_runner(key)))
    return cases


# ------------------------------------------------------------------------------ runners

def _dtype(name):
    import torch
    return getattr(torch, name)


def _padded_lengths(batch: int, length: int) -> List[int]:
    from fastattn.benchmark.workloads import padded_lengths
    return padded_lengths(batch, length)


def _attention_runner(kernel, head_dim, length, dtype, mask):
    """A function that runs the launcher whose ``kernel`` this case tunes, on BERT-base
    inputs (B·L = 16k tokens, hidden 768)."""
    import torch

    from fastattn.ops.attention import attention_backward, attention_forward

    heads, batch = HIDDEN // head_dim, max(1, TOKENS // length)
    q, k, v = (torch.randn(batch, heads, length, head_dim, device="cuda", dtype=_dtype(dtype))
               for _ in range(3))
    keep = None
    if mask == "key_padding":
        real = torch.tensor(_padded_lengths(batch, length), device="cuda")
        keep = torch.arange(length, device="cuda")[None, :] < real[:, None]
    kind, scale = (0 if keep is None else 1), 1.0 / math.sqrt(head_dim)
    if kernel == "fwd":
        return lambda: attention_forward(q, k, v, keep, kind, False, scale)
    out, lse = attention_forward(q, k, v, keep, kind, False, scale)
    dout = torch.randn_like(out)
    return lambda: attention_backward(dout, q, k, v, out, lse, keep, kind, False, scale)


def _varlen_runner(kernel, head_dim, length, dtype):
    import torch

    from fastattn.ops.varlen import varlen_backward, varlen_forward

    heads, batch = HIDDEN // head_dim, max(1, TOKENS // length)
    lengths = _padded_lengths(batch, length)
    cu = torch.tensor([0, *itertools.accumulate(lengths)], dtype=torch.int32, device="cuda")
    total = sum(lengths)
    q, k, v = (torch.randn(total, heads, head_dim, device="cuda", dtype=_dtype(dtype))
               for _ in range(3))
    scale = 1.0 / math.sqrt(head_dim)
    if kernel == "fwd":
        return lambda: varlen_forward(q, k, v, cu, cu, length, length, False, scale)
    out, lse = varlen_forward(q, k, v, cu, cu, length, length, False, scale)
    dout = torch.randn_like(out)
    return lambda: varlen_backward(dout, q, k, v, out, lse, cu, cu, length, length, False, scale)


def _layer_norm_runner(hidden, kernel, dtype):
    import torch

    from fastattn.ops.layer_norm import layer_norm_backward, layer_norm_forward

    x = torch.randn(TOKENS, hidden, device="cuda", dtype=_dtype(dtype))
    w, b = torch.ones(hidden, device="cuda", dtype=x.dtype), torch.zeros_like(x[0])
    if kernel == "fwd":
        return lambda: layer_norm_forward(x, None, w, b, 1e-5, False)
    _, mean, rstd, _ = layer_norm_forward(x, None, w, b, 1e-5, False)
    dy = torch.randn_like(x)
    return lambda: layer_norm_backward(dy, x, w, mean, rstd, True, True)


def _matmul_runner(key: str):
    """One GEMM of ``key`` through the feed-forward's dispatch (``ops.gemm.gemm``), so that a
    forced config (cuBLAS or a Triton one) is what runs."""
    import torch

    from fastattn.kernels.matmul_configs import EPILOGUES, LAYOUTS, parse_case_key
    from fastattn.ops.gemm import gemm

    c = parse_case_key(key)
    dt, (m, k, n) = _dtype(c["dtype"]), (c["m"], c["k"], c["n"])
    a_t, b_t = LAYOUTS[c["layout"]]

    def operand(rows, cols, transposed):  # (rows, cols), stored row-major or as a transpose
        t = torch.randn(cols, rows, device="cuda", dtype=dt) if transposed else \
            torch.randn(rows, cols, device="cuda", dtype=dt)
        return (t.t() if transposed else t) / math.sqrt(k)
    a, b = operand(m, k, a_t), operand(k, n, b_t)
    has_bias, act, store_pre, act_grad, has_res = EPILOGUES[c["epilogue"]]
    bias = torch.randn(n, device="cuda", dtype=dt) if has_bias else None
    pre = torch.randn(m, n, device="cuda", dtype=dt) if (store_pre or act_grad) else None
    res = torch.randn(m, n, device="cuda", dtype=dt) if has_res else None
    return lambda: gemm(a, b, c["epilogue"], choose=True, bias=bias, pre=pre, residual=res)


# ------------------------------------------------------------------------------ running

def _run_candidate(case: TuneCase, config: dict, fn: Callable[[], object]) -> None:
    from fastattn import tuning
    with tuning.override(case.family, case.key, config):
        fn()


def _time_candidate(case: TuneCase, config: dict, fn: Callable[[], object]) -> float:
    import triton.testing

    from fastattn import tuning
    with tuning.override(case.family, case.key, config):
        fn()  # compile (or load from the cache the warm phase filled)
        return float(triton.testing.do_bench(fn, warmup=5, rep=25, return_mode="median"))


def warm(cases: List[TuneCase], shard: int, shards: int, deadline: float) -> int:
    """Run this shard's (case, candidate) pairs once each until ``deadline`` (epoch seconds);
    returns how many ran.  Failures are left for the timing phase to report."""
    pairs = [(c, cfg) for c in cases for cfg in c.candidates][shard::shards]
    done, current, fn = 0, None, None
    for case, cfg in pairs:
        if time.time() > deadline:
            break
        try:
            if case is not current:  # one case's inputs alive at a time
                current, fn = case, None
                fn = case.make()
            _run_candidate(case, cfg, fn)
            done += 1
        except Exception:  # noqa: BLE001 - timed (and reported) in phase 2
            pass
    return done


def _entry(case: TuneCase, timings: List[Optional[float]], errors: List[Optional[str]]) -> dict:
    static_ms = timings[0]
    measured = [(ms, i) for i, ms in enumerate(timings) if ms is not None]
    best_ms, best = min(measured) if measured else (None, 0)
    if static_ms is not None and best_ms is not None and best_ms > static_ms * (1 - MIN_GAIN):
        best, best_ms = 0, static_ms
    return dict(label=case.label, config=case.candidates[best], ms=best_ms,
                static_ms=static_ms,
                speedup=(static_ms / best_ms) if static_ms and best_ms else None,
                candidates=[dict(config=c, ms=ms, error=err)
                            for c, ms, err in zip(case.candidates, timings, errors)])


def tune(cases: List[TuneCase], out_path: str, budget_s: float, jobs: int,
         log=print) -> dict:
    """Warm in ``jobs`` processes, then time every case in order within ``budget_s``;
    the table is written to ``out_path`` after every case."""
    import torch

    from fastattn import backends, tuning

    start = time.time()
    name = torch.cuda.get_device_name()
    table = dict(device=name, slug=tuning.device_slug(name), torch=torch.__version__,
                 triton=backends.triton_version(),
                 created=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                 budget_s=budget_s, complete=False, entries={})
    if jobs > 1:
        deadline = start + 0.6 * budget_s
        families = sorted({c.family for c in cases})
        procs = [subprocess.Popen([sys.executable, "-m", "fastattn.tune", "--warm-shard",
                                   f"{i}/{jobs}", "--deadline", str(deadline),
                                   "--families", *families],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                 for i in range(jobs)]
        for p in procs:
            try:
                p.wait(timeout=max(1.0, deadline - time.time() + 30))
            except subprocess.TimeoutExpired:
                p.kill()
        log(f"tune: warmed {sum(len(c.candidates) for c in cases)} candidates in "
            f"{jobs} processes, {time.time() - start:.0f} s")
    timed = 0
    for case in cases:
        if time.time() - start > budget_s:
            log(f"tune: budget {budget_s:g} s spent, {len(cases) - timed} cases left")
            break
        try:
            fn = case.make()
        except Exception as exc:  # noqa: BLE001
            log(f"tune: {case.label}: inputs failed: {exc}")
            continue
        timings, errors = [], []
        for cfg in case.candidates:
            try:
                timings.append(_time_candidate(case, cfg, fn))
                errors.append(None)
            except Exception as exc:  # noqa: BLE001 - a candidate that fails is not chosen
                timings.append(None)
                errors.append(f"{type(exc).__name__}: {str(exc)[:200]}")
        entry = _entry(case, timings, errors)
        table["entries"].setdefault(case.family, {})[case.key] = entry
        timed += 1
        sp = entry["speedup"]
        log(f"tune: {case.label}: static {_ms(entry['static_ms'])}, best {_ms(entry['ms'])}"
            f"{f' (x{sp:.2f})' if sp else ''} {entry['config']}")
        table["complete"] = timed == len(cases)
        table["elapsed_s"] = round(time.time() - start, 1)
        _write(table, out_path)
    _write(table, out_path)
    return table


def _ms(value) -> str:
    return "-" if value is None else f"{value:.4f} ms"


def _write(table: dict, path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(table, f, indent=1)
    os.replace(tmp, path)


def dry_run(cases: List[TuneCase], arch: str, out_path: Optional[str], log=print) -> dict:
    """List what would be timed (no GPU): one line per case, and the same JSON layout with no
    times."""
    table = dict(device=f"dry run ({arch})", slug="dry-run", complete=False, entries={})
    for case in cases:
        log(f"{case.family:<10} {case.key:<44} {len(case.candidates)} candidates  "
            f"({case.label})")
        table["entries"].setdefault(case.family, {})[case.key] = dict(
            label=case.label, config=case.candidates[0], ms=None, static_ms=None,
            candidates=[dict(config=c, ms=None) for c in case.candidates])
    n = sum(len(c.candidates) for c in cases)
    log(f"tune --dry-run: {len(cases)} cases, {n} candidates for {arch} "
        f"(shared memory limit of capability {SMEM_BY_ARCH[arch]}.x)")
    if out_path:
        _write(table, out_path)
    return table


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="fastattn tune", description=__doc__.splitlines()[0])
    p.add_argument("--out", default=None,
                   help="folder for <gpu-slug>.json (default: bench/out/tuned)")
    p.add_argument("--budget", type=float, default=120.0, metavar="SECONDS",
                   help="wall time for warming and timing together (default 120)")
    p.add_argument("--jobs", type=int, default=max(1, min(8, (os.cpu_count() or 2) - 1)),
                   help="processes that compile the candidates before timing")
    p.add_argument("--families", nargs="+", choices=FAMILIES, default=list(FAMILIES))
    p.add_argument("--dry-run", action="store_true",
                   help="list the cases and candidates (no GPU needed)")
    p.add_argument("--arch", choices=sorted(SMEM_BY_ARCH), default="sm_90a",
                   help="--dry-run: the shared-memory limits to prune with")
    p.add_argument("--warm-shard", default=None, help=argparse.SUPPRESS)
    p.add_argument("--deadline", type=float, default=None, help=argparse.SUPPRESS)
    return p.parse_args(list(argv))


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    out_dir = args.out or os.path.join("bench", "out", "tuned")
    if args.dry_run:
        cases = bert_cases(SMEM_BY_ARCH[args.arch], families=args.families)
        dry_run(cases, args.arch, os.path.join(out_dir, "dry-run.json"))
        return 0
    import torch

    if not torch.cuda.is_available():
        print("fastattn tune: no CUDA device (use --dry-run to list the cases)",
              file=sys.stderr)
        return 2
    from fastattn import backends, tuning
    from fastattn.ops.launch import _smem_limit

    reason = backends.triton_unavailable_reason(torch.device("cuda"))
    if reason:
        print(f"fastattn tune: {reason}", file=sys.stderr)
        return 2
    major = torch.cuda.get_device_capability()[0]
    cases = bert_cases(major, _smem_limit(torch.device("cuda")), families=args.families)
    if args.warm_shard:
        shard, shards = (int(x) for x in args.warm_shard.split("/"))
        warm(cases, shard, shards, args.deadline or time.time() + args.budget)
        return 0
    path = os.path.join(out_dir, f"{tuning.device_slug(torch.cuda.get_device_name())}.json")
    table = tune(cases, path, args.budget, args.jobs)
    print(f"fastattn tune: {len(table['entries'])} families, "
          f"{sum(len(v) for v in table['entries'].values())} of {len(cases)} cases timed; "
          f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
