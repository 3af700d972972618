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

from fastattn.backends import interpreter_enabled, resolve_backend
from fastattn.kernels.matmul_configs import EPILOGUES, pick_config
from fastattn.ops.attention import _DTYPE_NAMES, _precision, _smem_limit
from fastattn.ops.launch import cdiv, launch_on

ACTIVATIONS = {"relu": 1, "gelu": 2, "gelu_tanh": 3}
_ACT_NAMES = {v: k for k, v in ACTIVATIONS.items()}
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def matmul(a: torch.Tensor, b: torch.Tensor, epilogue: str = "plain", *,
           bias: Optional[torch.Tensor] = None, pre: Optional[torch.Tensor] = None,
           residual: Optional[torch.Tensor] = None,
           out_dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """C = epilogue(a @ b) for a (M, K), b (K, N) of any strides; see kernels/matmul.py."""
    from fastattn.kernels.matmul import matmul_epilogue_kernel

    m, k = a.shape
    n = b.shape[1]
    c = torch.empty(m, n, dtype=out_dtype or a.dtype, device=a.device)
    if c.numel() == 0:
        return c
    has_bias, act, store_pre, act_grad, has_res = EPILOGUES[epilogue]
    cfg = pick_config(m, _DTYPE_NAMES[a.dtype], _smem_limit(a.device),
                      interpreter=interpreter_enabled())
    dummy = c
    pre_t = pre if pre is not None else dummy
    res_t = residual if residual is not None else dummy
    grid = (cdiv(m, cfg.block_m) * cdiv(n, cfg.block_n),)
    with launch_on(a.device):
        matmul_epilogue_kernel[grid](
            a, b, c, bias if bias is not None else dummy, pre_t, res_t,
            m, n, k, *a.stride(), *b.stride(), *c.stride(), *pre_t.stride(), *res_t.stride(),
            HAS_BIAS=has_bias, ACTIVATION=act, STORE_PRE=store_pre, ACT_GRAD=act_grad,
            HAS_RESIDUAL=has_res, PRECISION=_precision(a.dtype),
            BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, GROUP_M=cfg.group_m,
            num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    return c


@torch.library.custom_op("fastattn::feedforward_fwd", mutates_args=())
def feedforward_fwd_op(x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor,
                       b2: torch.Tensor, residual: Optional[torch.Tensor],
                       activation: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    h = torch.empty(x.shape[0], w1.shape[0], dtype=x.dtype, device=x.device)
    a = matmul(x, w1.t(), f"bias_{_ACT_NAMES[activation]}", bias=b1, pre=h)
    y = matmul(a, w2.t(), "bias" if residual is None else "bias_residual", bias=b2,
               residual=residual)
    return y, h, a


@feedforward_fwd_op.register_fake
def _(x, w1, b1, w2, b2, residual, activation):
    hidden = x.new_empty(x.shape[0], w1.shape[0])
    return x.new_empty(x.shape[0], w2.shape[0]), hidden, torch.empty_like(hidden)


@torch.library.custom_op("fastattn::feedforward_bwd", mutates_args=())
def feedforward_bwd_op(dy: torch.Tensor, x: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor,
                       h: torch.Tensor, a: torch.Tensor, activation: int
                       ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                  torch.Tensor]:
    dh = matmul(dy, w2, f"{_ACT_NAMES[activation]}_grad", pre=h)
    dx = matmul(dh, w1)
    dw1 = matmul(dh.t(), x)
    dw2 = matmul(dy.t(), a)
    db1 = dh.sum(0, dtype=torch.float32).to(dh.dtype)
    db2 = dy.sum(0, dtype=torch.float32).to(dy.dtype)
    return dx, dw1, db1, dw2, db2


@feedforward_bwd_op.register_fake
def _(dy, x, w1, w2, h, a, activation):
    # the GEMMs write fresh contiguous tensors whatever the inputs' strides
    return (x.new_empty(x.shape), w1.new_empty(w1.shape), w1.new_empty(w1.shape[0]),
            w2.new_empty(w2.shape), w2.new_empty(w2.shape[0]))


def _setup_context(ctx, inputs, output):
    x, w1, b1, w2, b2, residual, activation = inputs
    _, h, a = output
    ctx.save_for_backward(x, w1, w2, h, a)
    ctx.activation = activation
    ctx.has_residual = residual is not None
    ctx.mark_non_differentiable(h, a)


def _backward(ctx, dy, _dh, _da):
    x, w1, w2, h, a = ctx.saved_tensors
    dx, dw1, db1, dw2, db2 = feedforward_bwd_op(dy.contiguous(), x, w1, w2, h, a,
                                                ctx.activation)
    return dx, dw1, db1, dw2, db2, (dy if ctx.has_residual else None), None


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
        backend: "auto", "triton", "torch", "cuda" or None (the process default).  "cuda":
            cuBLAS GEMMs with the bias + activation in the CUDA C++ elementwise kernel.
    Returns:
        (..., E) in x's dtype.
    """
    _check(x, w1, b1, w2, b2, activation, residual)
    chosen = resolve_backend(backend, x.device)
    if chosen == "torch":
        return _torch_feedforward(x, w1, b1, w2, b2, activation, residual)
    if chosen == "cuda":  # cuBLAS GEMMs, the bias + activation in the CUDA C++ kernel
        from fastattn.ops.bias_act_cuda import cuda_bias_act

        h = F.linear(x.reshape(-1, x.shape[-1]), w1)
        y = F.linear(cuda_bias_act(h, b1, activation), w2, b2).view(x.shape)
        return y if residual is None else y + residual
    if x.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"the fused GEMMs take float16, bfloat16 or float32, got {x.dtype}")
    shape = x.shape
    x2 = x.reshape(-1, shape[-1])
    r2 = None if residual is None else residual.reshape(-1, shape[-1])
    y = feedforward_fwd_op(x2, w1, b1, w2, b2, r2, ACTIVATIONS[activation])[0]
    # Not a view of y (as torch.matmul reshapes its GEMM output): y is fresh and not saved for
    # backward (h and a are), and FSDP2 warns about modules that return views.
    return torch.ops.aten._unsafe_view(y, shape)
