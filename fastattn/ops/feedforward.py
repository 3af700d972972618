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
import torch.nn.functional as F

from fastattn.backends import (KERNEL_DTYPES, choose_backend, get_default_backend,
                               kernel_refusal, resolve_backend)
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


def _check(x, w1, b1, w2, b2, activation, residual):
    for name, t in (("x", x), ("w1", w1), ("b1", b1), ("w2", w2), ("b2", b2)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {tuple(ACTIVATIONS)}, got {activation!r}")
    if w1.dim() != 2 or w2.dim() != 2 or b1.dim() != 1 or b2.dim() != 1:
        raise ValueError("w1 and w2 must be 2-D (out_features, in_features); b1, b2 1-D")
    e = x.shape[-1] if x.dim() else None
    hidden = w1.shape[0]
    if w1.shape[1] != e:
        raise ValueError(f"x's last dim ({e}) must equal w1's in_features ({w1.shape[1]})")
    if w2.shape != (e, hidden) or b1.shape != (hidden,) or b2.shape != (e,):
        raise ValueError(f"w2 must be ({e}, {hidden}), b1 ({hidden},), b2 ({e},); got "
                         f"{tuple(w2.shape)}, {tuple(b1.shape)}, {tuple(b2.shape)}")
    if residual is not None:
        if not isinstance(residual, torch.Tensor):
            raise TypeError(f"residual must be a torch.Tensor, got {type(residual).__name__}")
        if residual.shape != x.shape:
            raise ValueError(f"residual must have x's shape {tuple(x.shape)}, got "
                             f"{tuple(residual.shape)}")
    tensors = [x, w1, b1, w2, b2] + ([residual] if residual is not None else [])
    if len({t.device for t in tensors}) != 1:
        raise ValueError(f"x, weights, biases and residual must be on one device, got "
                         f"{[str(t.device) for t in tensors]}")
    if len({t.dtype for t in tensors}) != 1:
        raise TypeError(f"x, weights, biases and residual must share one dtype, got "
                        f"{[str(t.dtype) for t in tensors]}")


def _torch_activation(h, activation):
    if activation == "relu":
        return F.relu(h)
    return F.gelu(h, approximate="tanh" if activation == "gelu_tanh" else "none")


def _torch_feedforward(x, w1, b1, w2, b2, activation, residual):
    """The "torch" backend: two ``addmm`` (bias in the GEMM, as nn.Linear on 2-D inputs), the
    ReLU fused into the first where no gradient is needed (``_addmm_activation``, which has no
    autograd formula; its GELU is not exactly torch's tanh GELU, so GELUs stay separate), the
    residual added in place into the second GEMM's fresh output.  No other copy is made."""
    shape = x.shape
    x2 = x.reshape(-1, shape[-1])
    grad = torch.is_grad_enabled() and any(
        t.requires_grad for t in (x, w1, b1, w2, b2, residual) if t is not None)
    if activation == "relu" and not grad:
        a = torch._addmm_activation(b1, x2, w1.t())
    else:
        a = _torch_activation(torch.addmm(b1, x2, w1.t()), activation)
    y = torch.addmm(b2, a, w2.t())
    if residual is not None:
        y = y.add_(residual.reshape(y.shape))
    return y.view(*shape[:-1], y.shape[-1])


def feedforward(x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor,
                b2: torch.Tensor, activation: str = "relu",
                residual: Optional[torch.Tensor] = None, *,
                backend: Optional[str] = None) -> torch.Tensor:
    """``linear(act(linear(x, w1, b1)), w2, b2) + residual``.

    Args:
        x: (..., E).  w1: (H, E), b1: (H,), w2: (E, H), b2: (E,) — nn.Linear's layout.
        activation: "relu", "gelu" (erf) or "gelu_tanh".
        residual: optional (..., E), added in the second GEMM's epilogue.
        backend: "auto", "triton", "torch", "cuda" or None (the process default), chosen by
            :func:`fastattn.backends.choose_backend` ("auto" runs torch where the kernels
            cannot: CPU, float64).  "auto" on CUDA: per GEMM the faster of the Triton kernel and cuBLAS(Lt) with its fused
            epilogue, from the device's tuned table, cuBLAS(Lt) without one (see
            :func:`feedforward_dispatch_reason`).  "triton": always the Triton kernels.
            "cuda": cuBLAS GEMMs with the bias + activation in the CUDA C++ elementwise kernel.
    Returns:
        (..., E) in x's dtype.
    """
    _check(x, w1, b1, w2, b2, activation, residual)
    chosen = choose_backend("feedforward", backend, x.device,
                            refusal=kernel_refusal(x, "x", what="fused GEMMs"))
    if chosen == "torch":
        return _torch_feedforward(x, w1, b1, w2, b2, activation, residual)
    if chosen == "cuda":  # cuBLAS GEMMs, the bias + activation in the CUDA C++ kernel
        from fastattn.ops.bias_act_cuda import cuda_bias_act

        h = F.linear(x.reshape(-1, x.shape[-1]), w1)
        y = F.linear(cuda_bias_act(h, b1, activation), w2, b2).view(x.shape)
        return y if residual is None else y + residual
    shape = x.shape
    x2 = x.reshape(-1, shape[-1])
    r2 = None if residual is None else residual.reshape(-1, shape[-1])
    choose = (backend or get_default_backend()) == "auto"
    keep_pre = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, w1, b1, w2, b2, residual))
    y = feedforward_fwd_op(x2, w1, b1, w2, b2, r2, ACTIVATIONS[activation], keep_pre,
                           choose)[0]
    # Not a view of y (as torch.matmul reshapes its GEMM output): y is fresh and not saved for
    # backward (h and a are), and FSDP2 warns about modules that return views.
    return torch.ops.aten._unsafe_view(y, shape)


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
