"""Every configuration the launchers can pick, reached through the launchers themselves.

``fastattn kernels`` (without ``--cases``) compiles this sweep: for each kernel family, the
launcher is called on small CPU tensors once per input class its configuration table tells
apart (attention: head_dim bucket x dtype x mask kind and layout x length bucket x dropout;
varlen: head_dim x dtype x length bucket x dropout; LayerNorm: hidden-size bucket x dtype;
GEMM: epilogue x dtype x M bucket), so each captured launch is compiled with the
specialization the JIT gives such inputs (see :mod:`fastattn.launch_capture`).

:func:`table_configs` lists what the configuration tables say the launchers can pick (their
``aot_specs``); :func:`missing_configs` checks that the sweep's launches cover all of it.
"""
from __future__ import annotations

import importlib
import itertools
from typing import Dict, List, Sequence, Tuple

from fastattn.kernel_cases import Case, torch_dtype

DTYPES = ("fp32", "fp16", "bf16")
HEAD_DIMS = (16, 32, 64, 128, 256)
SHORT, LONG = 47, 129  # one odd length per bucket of the tables (<= 64, longer): EVEN_N off
# (op-level mask kind, layout) -> mask tensor maker; the layouts the attention launcher tells
# apart: none, row (key padding), full (4- or 8-byte tile), narrow (1- or 2-byte tile).
MASKS = ("none", "keep-row", "keep-full", "keep-narrow", "add-row", "add-full", "add-narrow")
LAYER_NORM_HIDDEN = (64, 256, 512, 768, 2048, 4096, 8192, 12288)  # one per bucket, + looped
GEMM_M = (256, 4096)  # small and large M buckets

SPEC_PROVIDERS = [
    "fastattn.kernels.attention_configs",
    "fastattn.kernels.attention_varlen_configs",
    "fastattn.kernels.layer_norm_configs",
    "fastattn.kernels.matmul_configs",
]


def _mask(kind: str, n: int, lq: int, lk: int, dtype):
    import torch

    if kind == "none":
        return None, 0
    op_kind = 1 if kind.startswith("keep") else 2
    layout = kind.split("-")[1]
    if layout == "row":
        return (torch.ones(n, lk, dtype=torch.bool) if op_kind == 1 else
                torch.zeros(n, 1, 1, lk, dtype=torch.float32)), op_kind
    if layout == "full":
        mask_dtype = torch.int32 if op_kind == 1 else torch.float32
    else:  # narrow
        mask_dtype = torch.bool if op_kind == 1 else (
            dtype if dtype != torch.float32 else torch.float16)
    return torch.zeros(n, 1, lq, lk, dtype=mask_dtype), op_kind


def attention_sweep() -> List[Case]:
    import torch

    from fastattn.ops import attention as ops

    cases = []
    for d, dtype, mask, length, dropout, causal in itertools.product(
            HEAD_DIMS, DTYPES, MASKS, (SHORT, LONG), (False, True), (False, True)):
        if causal and (mask != "none" or dropout):  # causal variants: unmasked, no dropout
            continue

        def run(d=d, dtype=dtype, mask=mask, length=length, dropout=dropout, causal=causal):
            n, h, dt = 2, 3, torch_dtype(dtype)
            proj = torch.empty(n, length, 3 * h * d, dtype=dt)
            q, k, v = (t.unflatten(-1, (h, d)).transpose(1, 2) for t in proj.chunk(3, -1))
            m, kind = _mask(mask, n, length, length, dt)
            p = 0.1 if dropout else 0.0
            seed = torch.zeros(1, dtype=torch.int64) if dropout else None
            out, lse = ops.attention_forward(q, k, v, m, kind, causal, d ** -0.5, p, seed)
            dout = torch.empty(n, length, h, d, dtype=dt).transpose(1, 2)
            ops.attention_backward(dout, q, k, v, out, lse, m, kind, causal, d ** -0.5, p,
                                   seed)

        tag = (f"d{d}-{dtype}-{mask}-L{length}{'-dropout' if dropout else ''}"
               f"{'-causal' if causal else ''}")
        labels = dict(name=tag, family="attention", dtype=dtype, head_dim=d, seqlen=length,
                      mask="causal" if causal else mask, dropout=dropout)
        cases.append(Case(labels, run, auxiliary=True))

    def dropout_mask():
        ops.dropout_keep_mask(torch.zeros(1, dtype=torch.int64), (2, 3, LONG, LONG), 0.1)

    cases.append(Case(dict(name="dropout-mask", family="attention", dtype=None), dropout_mask,
                      auxiliary=True))
    return cases


def varlen_sweep() -> List[Case]:
    import torch

    from fastattn.ops import varlen as ops

    cases = []
    for d, dtype, length, dropout, causal in itertools.product(
            HEAD_DIMS, DTYPES, (SHORT, LONG), (False, True), (False, True)):
        if causal and dropout:  # causal variants: no dropout
            continue

        def run(d=d, dtype=dtype, length=length, dropout=dropout, causal=causal):
            h, dt, lengths = 3, torch_dtype(dtype), [length, length - 5]
            total = sum(lengths)
            proj = torch.empty(total, 3 * h * d, dtype=dt)
            q, k, v = (t.unflatten(-1, (h, d)) for t in proj.chunk(3, -1))
            cu = torch.tensor([0, lengths[0], total], dtype=torch.int32)
            p = 0.1 if dropout else 0.0
            seed = torch.zeros(1, dtype=torch.int64) if dropout else None
            out, lse = ops.varlen_forward(q, k, v, cu, cu, length, length, causal, d ** -0.5,
                                          p, seed)
            ops.varlen_backward(torch.empty(total, h, d, dtype=dt), q, k, v, out, lse, cu, cu,
                                length, length, causal, d ** -0.5, p, seed)

        tag = (f"d{d}-{dtype}-L{length}{'-dropout' if dropout else ''}"
               f"{'-causal' if causal else ''}")
        labels = dict(name=tag, family="varlen", dtype=dtype, head_dim=d, seqlen=length,
                      mask="causal" if causal else "none", dropout=dropout)
        cases.append(Case(labels, run, auxiliary=True))
    return cases


def layer_norm_sweep() -> List[Case]:
    import torch

    from fastattn.ops import layer_norm as ops

    cases = []
    for hidden, dtype in itertools.product(LAYER_NORM_HIDDEN, DTYPES):
        def run(hidden=hidden, dtype=dtype):
            dt, rows = torch_dtype(dtype), 64
            x, res, dy = (torch.empty(rows, hidden, dtype=dt) for _ in range(3))
            w, b = torch.empty(hidden, dtype=dt), torch.empty(hidden, dtype=dt)
            y, mean, rstd, xsum = ops.layer_norm_forward(x, res, w, b, 1e-5, True)
            ops.layer_norm_backward(dy, xsum, w, mean, rstd, True, True)

        cases.append(Case(dict(name=f"N{hidden}-{dtype}", family="layer_norm", dtype=dtype,
                               hidden=hidden), run,
                          auxiliary=True))
    return cases


def matmul_sweep() -> List[Case]:
    import torch

    from fastattn.kernels.matmul_configs import EPILOGUES
    from fastattn.ops.feedforward import matmul

    cases = []
    for epilogue, dtype, m, kernel in itertools.product(EPILOGUES, DTYPES, GEMM_M,
                                                        (None, "pointer")):
        if kernel == "pointer" and dtype == "fp32":  # fp32 always takes the pointer kernel
            continue

        def run(epilogue=epilogue, dtype=dtype, m=m, kernel=kernel):
            dt, k, n = torch_dtype(dtype), 768, 3072
            t = lambda *shape: torch.empty(*shape, dtype=dt)  # noqa: E731
            has_bias, _, store_pre, act_grad, has_res = EPILOGUES[epilogue]
            b = t(n, k).t() if has_bias else t(k, n)  # forward: a weight's transpose
            matmul(t(m, k), b, epilogue, bias=t(n) if has_bias else None,
                   pre=t(m, n) if store_pre or act_grad else None,
                   residual=t(m, n) if has_res else None, kernel=kernel)
            if epilogue == "plain":  # the weight gradients read dH^T / dY^T: A transposed
                matmul(t(k, m).t(), t(k, n), epilogue, kernel=kernel)

        # kernel="pointer": what sm_90 runs for operands TMA cannot read
        labels = dict(name=f"{epilogue}-{dtype}-M{m}{'-pointer' if kernel else ''}",
                      family="matmul", dtype=dtype, epilogue=epilogue, m=m)
        cases.append(Case(labels, run))
    return cases


FAMILIES = {"attention": attention_sweep, "varlen": varlen_sweep,
            "layer_norm": layer_norm_sweep, "matmul": matmul_sweep}


def sweep_cases(families: Sequence[str] = tuple(FAMILIES)) -> List[Case]:
    return [case for family in families for case in FAMILIES[family]()]


def table_configs(capability_major: int) -> List[Tuple[str, tuple]]:
    """What the configuration tables say the launchers can pick: (fn, config key) pairs, the
    key being the constexprs and the warps / stages (as :func:`config_key`)."""
    out = []
    for module in SPEC_PROVIDERS:
        for spec in importlib.import_module(module).aot_specs(capability_major):
            out.append((spec["fn"], _key(spec["constexprs"], spec["num_warps"],
                                         spec["num_stages"])))
    return out


def _key(constexprs: Dict[str, object], num_warps: int, num_stages: int) -> tuple:
    return tuple(sorted((k, str(v)) for k, v in constexprs.items())) + (
        ("num_warps", str(num_warps)), ("num_stages", str(num_stages)))


def config_key(source) -> Tuple[str, tuple]:
    """(fn, config key) of a :class:`fastattn.launch_capture.KernelSource`."""
    from fastattn.launch_capture import jit_function

    params = jit_function(source).params  # declared tl.constexpr parameters only
    constexprs = {params[path[0]].name: value for path, value in source.constexprs.items()
                  if params[path[0]].is_constexpr}
    return source.fn, _key(constexprs, source.options["num_warps"], source.options["num_stages"])


# Launched without num_stages (Triton's default applies), though their aot_specs say 1.
DEFAULT_STAGES = ("fastattn.kernels.attention:attention_dropout_mask_kernel",)


def _without_stages(key: Tuple[str, tuple]) -> Tuple[str, tuple]:
    return key[0], tuple(kv for kv in key[1] if kv[0] != "num_stages")


def missing_configs(sources, capability_major: int) -> List[Tuple[str, tuple]]:
    """Table configurations that no captured source compiles (should be empty)."""
    reached = {config_key(s) for s in sources}
    reached |= {_without_stages(k) for k in reached if k[0] in DEFAULT_STAGES}
    return [c for c in table_configs(capability_major)
            if c not in reached and not (c[0] in DEFAULT_STAGES and _without_stages(c) in reached)]
