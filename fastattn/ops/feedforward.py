"""The feed-forward block ``linear2(act(linear1(x))) (+ residual)`` on fused GEMMs.

Ops (``fastattn`` namespace; one node each under ``torch.compile``):

    fastattn::feedforward_fwd(x, w1, b1, w2, b2, residual?, activation) -> (y, h, a)
        h = x @ w1^T + b1 (pre-activation, kept for backward); a = act(h) — one GEMM whose
        epilogue adds the bias, writes h and applies the activation; y = a @ w2^T + b2
        (+ residual) — one GEMM whose epilogue adds the bias and the residual.
    fastattn::feedforward_bwd(dy, x, w1, w2, h, a, activation) -> (dx, dw1, db1, dw2, db2)
        dh = (dy @ w2) * act'(h) — the activation gradient fused into that GEMM's epilogue;
        dx = dh @ w1; dw1 = dh^T x; dw2 = dy^T a (Triton GEMMs, read through strides, no
        transposed copies); db1, db2 = column sums (torch, fp32 accumulation).

Shapes: x (M, E) (leading dims flattened by the caller), w1 (H, E), b1 (H,), w2 (E, H), b2 (E,),
residual (M, E); h and a (M, H).  Activations: "relu", "gelu" (erf), "gelu_tanh".
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from fastattn.backends import KERNEL_DTYPES, resolve_backend
from fastattn.kernels.matmul_configs import ACTIVATIONS
from fastattn.ops.gemm import gemm, matmul  # noqa: F401  (matmul: the Triton GEMM)

_ACT_NAMES = {v: k for k, v in ACTIVATIONS.items()}
SUPPORTED_DTYPES = KERNEL_DTYPES


@torch.library.custom_op("fastattn::feedforward_fwd", mutates_args=())
def feedforward_fwd_op(x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor,
                       b2: torch.Tensor, residual: Optional[torch.Tensor],
                       activation: int, keep_pre: bool = True, choose: bool = False
                       ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    act = _ACT_NAMES[activation]
    h = x.new_empty(x.shape[0] if keep_pre else 0, w1.shape[0])
    a = gemm(x, w1.t(), f"bias_{act}" if keep_pre else f"bias_{act}_nopre", bias=b1,
             pre=h if keep_pre else None, choose=choose)
    y = gemm(a, w2.t(), "bias" if residual is None else "bias_residual", bias=b2,
             residual=residual, choose=choose)
    return y, h, a


@feedforward_fwd_op.register_fake
def _(x, w1, b1, w2, b2, residual, activation, keep_pre=True, choose=False):
    hidden = x.new_empty(x.shape[0], w1.shape[0])
    pre = hidden if keep_pre else x.new_empty(0, w1.shape[0])
    return x.new_empty(x.shape[0], w2.shape[0]), torch.empty_like(pre), torch.empty_like(hidden)


@torch.library.custom_op("fastattn::feedforward_bwd", mutates_args=())
def feedforward_bwd_op(dy: torch.Tensor, x: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor,
                       h: torch.Tensor, a: torch.Tensor, activation: int, choose: bool = False
                       ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                  torch.Tensor]:
    dh = gemm(dy, w2, f"{_ACT_NAMES[activation]}_grad", pre=h, choose=choose)
    dx = gemm(dh, w1, choose=choose)
    dw1 = gemm(dh.t(), x, choose=choose)
    dw2 = gemm(dy.t(), a, choose=choose)
    db1 = dh.sum(0, dtype=torch.float32).to(dh.dtype)
    db2 = dy.sum(0, dtype=torch.float32).to(dy.dtype)
    return dx, dw1, db1, dw2, db2


@feedforward_bwd_op.register_fake
def _(dy, x, w1, w2, h, a, activation, choose=False):
    # the GEMMs write fresh contiguous tensors whatever the inputs' strides
    return (x.new_empty(x.shape), w1.new_empty(w1.shape), w1.new_empty(w1.shape[0]),
            w2.new_empty(w2.shape), w2.new_empty(w2.shape[0]))


def _setup_context(ctx, inputs, output):
    x, w1, b1, w2, b2, residual, activation, keep_pre, choose = inputs
    _, h, a = output
    ctx.save_for_backward(x, w1, w2, h, a)
    ctx.activation = activation
    ctx.keep_pre = keep_pre
    ctx.choose = choose
    ctx.has_residual = residual is not None
    ctx.mark_non_differentiable(h, a)


def _backward(ctx, dy, _dh, _da):
    if not ctx.keep_pre:
        raise RuntimeError("feedforward_fwd ran with keep_pre=False (no pre-activation kept): "
                           "it cannot be differentiated")
    x, w1, w2, h, a = ctx.saved_tensors
    dx, dw1, db1, dw2, db2 = feedforward_bwd_op(dy.contiguous(), x, w1, w2, h, a,
                                                ctx.activation, ctx.choose)
    return dx, dw1, db1, dw2, db2, (dy if ctx.has_residual else None), None, None, None


feedforward_fwd_op.register_autograd(_backward, setup_context=_setup_context)


def feedforward_dispatch_reason(device, dtype: torch.dtype, m: int, k: int, n: int,
                                activation: str = "gelu", residual: bool = True,
                                training: bool = False) -> str:
    """Which implementation ``feedforward(backend="auto")`` runs for each of its GEMMs with
    ``m`` tokens, embedding ``k`` and hidden size ``n`` on ``device``, and why (one line per
    GEMM; ``training`` adds the backward's)."""
    from fastattn.kernels.matmul_configs import feedforward_cases
    from fastattn.ops.launch import _DTYPE_NAMES
    from fastattn.ops.gemm import choose_backend

    device = torch.device(device)
    chosen = resolve_backend("auto", device)
    if chosen != "triton":
        return f"feedforward on {device}: the PyTorch path (backend 'auto' -> {chosen!r})"
    lines = []
    for name, case in feedforward_cases(m, k, n, _DTYPE_NAMES[dtype], activation, residual,
                                        training).items():
        backend, cfg, why = choose_backend(device, case)
        what = "cuBLAS(Lt)" if backend == "cublas" else (
            f"Triton {cfg.kernel} {cfg.block_m}x{cfg.block_n}x{cfg.block_k} w{cfg.num_warps} "
            f"s{cfg.num_stages}" if cfg else "Triton (static table)")
        lines.append(f"{name} [{case}]: {what} — {why}")
    return "\n".join(lines)


def __getattr__(name: str):
    """``from fastattn.ops.feedforward import feedforward`` (the old path) still works; the
    function lives in :mod:`fastattn.functional`, which imports this module."""
    if name == "feedforward":
        from fastattn import functional

        return functional.feedforward
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
