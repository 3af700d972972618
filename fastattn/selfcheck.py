"""``fastattn check``: every kernel family once, forward and backward, against the float64
reference with the tolerance table (:mod:`fastattn.testing`).

A *check* runs one op on one backend and dtype and returns one :class:`~fastattn.testing.Comparison`
per output and per gradient.  Families:

    attention   padded attention: no mask, key padding (prefix, non-prefix and a fully padded
                row in one batch), causal
    dropout     padded attention with dropout 0.25, against the reference given the kernels'
                keep mask (Triton only)
    varlen      packed variable-length attention, sequences of lengths 1, 0, 17, 40
    layer_norm  LayerNorm with the fused residual add
    feedforward the GELU feed-forward block with a residual

Backends: "triton" (CUDA, or the interpreter on CPU when TRITON_INTERPRET=1), "cuda" (the C++
extension, where built), "torch".  Sizes are small (a first-light check, about a second per
family once compiled), odd where it matters (L = 70 on CUDA; 37 with head_dim 32 on CPU, where the interpreter runs).  ``--jobs N`` runs the families in N
processes, so their kernels compile in parallel.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Dict, List, Optional, Sequence

import torch

from fastattn.testing import FWD_FACTOR, GRAD_FACTOR, Comparison, compare

FAMILIES = ("attention", "dropout", "varlen", "layer_norm", "feedforward")
DTYPE_NAMES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclasses.dataclass
class CheckResult:
    family: str
    case: str
    backend: str
    dtype: str
    comparisons: List[Comparison]
    seconds: float
    error: Optional[str] = None  # an exception while running (counts as a failure)

    @property
    def ok(self) -> bool:
        return self.error is None and all(c.ok for c in self.comparisons)

    def worst_ratio(self) -> float:
        """max error / bound over the comparisons (<= 1 passes)."""
        return max((c.error / c.bound for c in self.comparisons), default=0.0)

    def as_dict(self) -> dict:
        return dict(family=self.family, case=self.case, backend=self.backend, dtype=self.dtype,
                    ok=self.ok, seconds=round(self.seconds, 3), error=self.error,
                    worst_ratio=self.worst_ratio(),
                    comparisons=[dict(name=c.name, error=c.error, bound=c.bound, ok=c.ok)
                                 for c in self.comparisons])


def _randn(shape, device, generator, scale=1.0):
    return torch.randn(shape, generator=generator, dtype=torch.float64).mul(scale).to(device)


def _grad_compare(fn: Callable[..., torch.Tensor], ref: Callable[..., torch.Tensor],
                  inputs: Dict[str, torch.Tensor], dtype: torch.dtype,
                  generator: torch.Generator, rows: Optional[torch.Tensor] = None
                  ) -> List[Comparison]:
    """Run ``fn`` on ``inputs`` cast to ``dtype`` and ``ref`` on float64 and on ``dtype``;
    compare the outputs (factor 2) and the gradients of every input (factor 3) under one
    random output gradient.  ``rows``: a boolean selector broadcastable to the output; rows
    outside it get a zero output gradient and are left out of the output comparison."""
    def run(f, cast):
        xs = {k: v.detach().to(cast).requires_grad_(v.is_floating_point())
              for k, v in inputs.items()}
        out = f(**xs)
        return out, xs

    out, xs = run(fn, dtype)
    hp, xs_hp = run(ref, torch.float64)
    lp, xs_lp = run(ref, dtype)
    dout = torch.randn(out.shape, generator=generator, dtype=torch.float64).to(out.device)
    if rows is not None:
        dout = dout * rows
    comparisons = []
    sel = (lambda t: t * rows) if rows is not None else (lambda t: t)
    comparisons.append(compare(sel(out.double()), sel(hp), sel(lp.double()), factor=FWD_FACTOR,
                               atol=_atol(dtype), name="out"))
    grads = [k for k, v in inputs.items() if v.is_floating_point()]
    g = torch.autograd.grad(out, [xs[k] for k in grads], dout.to(out.dtype))
    g_hp = torch.autograd.grad(hp, [xs_hp[k] for k in grads], dout)
    g_lp = torch.autograd.grad(lp, [xs_lp[k] for k in grads], dout.to(lp.dtype))
    for name, a, b, c in zip(grads, g, g_hp, g_lp):
        comparisons.append(compare(a.to(dtype), b, c, factor=GRAD_FACTOR, atol=_atol(dtype),
                                   name=f"d{name}"))
    return comparisons


def _atol(dtype):
    from fastattn.testing import ATOL
    return ATOL[dtype]


# ------------------------------------------------------------------------------ the families

def _attention_size(device) -> tuple:
    """(L, head_dim): BERT's head_dim and an odd length on CUDA; smaller on CPU, where the
    Triton kernels run under the (slow) interpreter."""
    return (70, 64) if device.type == "cuda" else (37, 32)


def _attention_checks(device, dtype, backend, g) -> Dict[str, List[Comparison]]:
    import fastattn
    from fastattn.reference import attention_reference

    n, h, length, d = 3, 2, *_attention_size(device)
    keep = torch.ones(n, length, dtype=torch.bool)
    keep[0, length // 2:] = False                     # a prefix mask
    keep[1, ::3] = False                      # not a prefix
    keep[2, :] = False                        # fully padded: uniform over its keys
    keep = keep.to(device)
    inputs = {name: _randn((n, h, length, d), device, g) for name in ("q", "k", "v")}
    out = {}
    for case, mask, causal in (("none", None, False), ("key_padding", keep, False),
                               ("causal", None, True)):
        def fn(q, k, v, mask=mask, causal=causal):
            return fastattn.attention(q, k, v, mask, causal=causal, backend=backend)

        def ref(q, k, v, mask=mask, causal=causal):
            return attention_reference(q, k, v, mask, causal=causal)
        out[case] = _grad_compare(fn, ref, inputs, dtype, g)
    return out


def _dropout_checks(device, dtype, backend, g) -> Dict[str, List[Comparison]]:
    from fastattn.ops.attention import dropout_keep_mask, draw_dropout_seed, triton_attention
    from fastattn.reference import attention_reference

    if backend != "triton":
        return {}
    (n, h), (length, d), p = (2, 2), _attention_size(device), 0.25
    seed = draw_dropout_seed(device)
    zmask = dropout_keep_mask(seed, (n, h, length, length), p)
    inputs = {name: _randn((n, h, length, d), device, g) for name in ("q", "k", "v")}

    def fn(q, k, v):
        return triton_attention(q, k, v, None, 0, False, None, p, seed)

    def ref(q, k, v):
        return attention_reference(q, k, v, dropout_mask=zmask, dropout_p=p)
    return {"p=0.25": _grad_compare(fn, ref, inputs, dtype, g)}


def _varlen_checks(device, dtype, backend, g) -> Dict[str, List[Comparison]]:
    import fastattn
    from fastattn.reference import attention_reference

    lengths, h, d = [1, 0, 17, _attention_size(device)[0]], 2, _attention_size(device)[1]
    cu = torch.tensor([0, *itertools.accumulate(lengths)], dtype=torch.int32, device=device)
    total = sum(lengths)
    inputs = {name: _randn((total, h, d), device, g) for name in ("q", "k", "v")}
    out = {}
    for causal in (False, True):
        def fn(q, k, v, causal=causal):
            return fastattn.varlen_attention(q, k, v, cu, cu, max(lengths), max(lengths),
                                             causal=causal, backend=backend)

        def ref(q, k, v, causal=causal):
            parts, start = [], 0
            for length in lengths:
                sl = slice(start, start + length)
                parts.append(attention_reference(
                    *(t[sl].transpose(0, 1)[None] for t in (q, k, v)),
                    causal=causal)[0].transpose(0, 1))
                start += length
            return torch.cat(parts)
        out["causal" if causal else "full"] = _grad_compare(fn, ref, inputs, dtype, g)
    return out


def _layer_norm_checks(device, dtype, backend, g) -> Dict[str, List[Comparison]]:
    import fastattn

    rows, hidden = 37, 768 if device.type == "cuda" else 96
    inputs = dict(x=_randn((rows, hidden), device, g), residual=_randn((rows, hidden), device, g),
                  weight=_randn((hidden,), device, g, 0.2).add(1.0),
                  bias=_randn((hidden,), device, g, 0.2))

    def fn(x, residual, weight, bias):
        return fastattn.layer_norm(x, hidden, weight, bias, residual=residual, backend=backend)

    def ref(x, residual, weight, bias):
        return torch.nn.functional.layer_norm(x + residual, (hidden,), weight, bias)
    return {"residual": _grad_compare(fn, ref, inputs, dtype, g)}


def _feedforward_checks(device, dtype, backend, g) -> Dict[str, List[Comparison]]:
    import fastattn

    tokens, embed, hidden = (70, 256, 1024) if device.type == "cuda" else (19, 32, 128)
    inputs = dict(x=_randn((tokens, embed), device, g),
                  w1=_randn((hidden, embed), device, g, 1 / math.sqrt(embed)),
                  b1=_randn((hidden,), device, g, 0.1),
                  w2=_randn((embed, hidden), device, g, 1 / math.sqrt(hidden)),
                  b2=_randn((embed,), device, g, 0.1),
                  residual=_randn((tokens, embed), device, g))

    def fn(x, w1, b1, w2, b2, residual):
        return fastattn.feedforward(x, w1, b1, w2, b2, "gelu", residual, backend=backend)

    def ref(x, w1, b1, w2, b2, residual):
        hid = torch.nn.functional.gelu(torch.nn.functional.linear(x, w1, b1))
        return torch.nn.functional.linear(hid, w2, b2) + residual
    return {"gelu+residual": _grad_compare(fn, ref, inputs, dtype, g)}


_CHECKS = {"attention": _attention_checks, "dropout": _dropout_checks,
           "varlen": _varlen_checks, "layer_norm": _layer_norm_checks,
           "feedforward": _feedforward_checks}


def default_backends(device: torch.device) -> List[str]:
    """The backends that can run on ``device`` here: Triton (CUDA or the interpreter), the
    CUDA C++ extension where built, and torch."""
    from fastattn import backends

    names = []
    if backends.triton_unavailable_reason(device) is None:
        names.append("triton")
    if device.type == "cuda" and backends.cuda_extension_error() is None:
        names.append("cuda")
    names.append("torch")
    return names


def run_checks(device: torch.device, families: Sequence[str] = FAMILIES,
               dtypes: Sequence[str] = ("float32",), backends: Optional[Sequence[str]] = None,
               seed: int = 0) -> List[CheckResult]:
    """Run every (family, backend, dtype) check in this process."""
    unknown = [f for f in families if f not in _CHECKS]
    if unknown:
        raise ValueError(f"families must be among {FAMILIES}, got {unknown}")
    results = []
    for family in families:
        for backend in backends or default_backends(device):
            for dtype_name in dtypes:
                dtype = DTYPE_NAMES[dtype_name]
                g = torch.Generator().manual_seed(seed)
                torch.manual_seed(seed)
                t0 = time.monotonic()
                try:
                    cases = _CHECKS[family](device, dtype, backend, g)
                except Exception as exc:  # a crash is a failed check, reported with its cause
                    results.append(CheckResult(family, "-", backend, dtype_name, [],
                                               time.monotonic() - t0,
                                               f"{type(exc).__name__}: {exc}"[:400]))
                    continue
                dt = (time.monotonic() - t0) / max(1, len(cases))
                for case, comparisons in cases.items():
                    results.append(CheckResult(family, case, backend, dtype_name, comparisons,
                                               dt))
    return results


def run_parallel(device: str, families: Sequence[str], dtypes: Sequence[str],
                 backends: Optional[Sequence[str]], jobs: int) -> List[dict]:
    """One ``fastattn check`` process per family, ``jobs`` at a time; their rows
    (as dicts) in family order.  A process that dies gives an error row for its family."""
    def one(family: str) -> List[dict]:
        cmd = [sys.executable, "-m", "fastattn.cli", "check", "--device", device,
               "--families", family, "--dtypes", *dtypes, "--json", "-", "--quiet"]
        if backends:
            cmd += ["--backends", *backends]
        done = subprocess.run(cmd, capture_output=True, text=True)
        try:
            return json.loads(done.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            return [dict(family=family, case="-", backend="-", dtype="-", ok=False, seconds=0,
                         error=f"process exited {done.returncode}: {done.stderr[-400:]}",
                         worst_ratio=float("inf"), comparisons=[])]
    with ThreadPoolExecutor(max(1, jobs)) as pool:
        return [row for rows in pool.map(one, families) for row in rows]


def format_rows(rows: List[dict]) -> str:
    lines = [f"  {'family':<12} {'case':<14} {'backend':<7} {'dtype':<9} {'worst err/bound':>15}"
             f"  status"]
    for r in rows:
        status = "ok" if r["ok"] else ("ERROR " + r["error"] if r["error"] else "FAILED")
        if not r["ok"] and not r["error"]:
            status += ": " + "; ".join(
                f"{c['name']} {c['error']:.2e} > {c['bound']:.2e}"
                for c in r["comparisons"] if not c["ok"])
        lines.append(f"  {r['family']:<12} {r['case']:<14} {r['backend']:<7} {r['dtype']:<9} "
                     f"{r['worst_ratio']:>15.3f}  {status}")
    return "\n".join(lines)


def interpreter_note() -> Optional[str]:
    """Why bf16 is not checked here, or None."""
    from fastattn import backends
    if backends.interpreter_enabled():
        return "bf16 is not checked under the Triton interpreter (its bf16 tl.dot is wrong)"
    return None


def main_numerics(args) -> int:
    """Run the checks ``args`` selects, print them, write JSON; 1 on any mismatch."""
    device = torch.device(args.device)
    if args.jobs and args.jobs > 1 and len(args.families) > 1:
        rows = run_parallel(args.device, args.families, args.dtypes, args.backends, args.jobs)
    else:
        rows = [r.as_dict() for r in run_checks(device, args.families, args.dtypes,
                                                args.backends)]
    if args.json == "-":
        print(json.dumps(rows))
    elif args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    if not args.quiet:
        print(format_rows(rows))
        failed = sum(not r["ok"] for r in rows)
        print(f"{len(rows) - failed} passed, {failed} failed")
    return 1 if any(not r["ok"] for r in rows) else 0
