"""LayerNorm: launchers, torch.library ops and autograd (the public :func:`fastattn.layer_norm`,
its checks and backend choice are in :mod:`fastattn.functional`).

Ops (registered under the ``fastattn`` namespace, so ``torch.compile`` sees each as one node):

    fastattn::layer_norm_fwd(x, residual?, weight?, bias?, eps, store_sum)
        -> (y, mean, rstd, xsum)
    fastattn::layer_norm_bwd(dy, x, weight?, mean, rstd, compute_dw, compute_db)
        -> (dx, dw, db)

x, residual, dy: (M, N) with the last stride 1 (rows may be strided).  weight, bias: (N,)
contiguous.  y, dx: (M, N) contiguous.  mean, rstd: (M,) fp32.  xsum: x + residual (M, N) when
``store_sum`` (kept for backward), else an empty (0,) tensor.  dw, db: (N,), or (0,) when not
asked for.  In the backward op, x is the tensor that was normalized (x + residual).

:func:`fastattn.layer_norm` validates its inputs and reshapes any (..., *normalized_shape) tensor
into rows; the ops assume valid arguments.  Triton is imported only when a kernel is launched.
"""
from __future__ import annotations

import functools
from typing import Optional, Tuple

import torch

from fastattn.backends import KERNEL_DTYPES
from fastattn.ops.launch import cdiv, last_dim_contiguous, launch_on, target_device
from fastattn.kernels.layer_norm_configs import (
    INTERPRETER_SM_COUNT, REDUCE_BLOCK_N, REDUCE_BLOCK_P, REDUCE_NUM_WARPS, backward_grid,
    pick_config)

SUPPORTED_DTYPES = KERNEL_DTYPES


@functools.lru_cache(maxsize=None)
def _device_sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _sm_count(device: torch.device) -> int:
    target = target_device()
    if target is not None:  # compiling for a target (fastattn kernels), see ops/launch.py
        return target.sm_count
    if device.type != "cuda":
        return INTERPRETER_SM_COUNT
    return _device_sm_count(device.index if device.index is not None else
                            torch.cuda.current_device())




def layer_norm_forward(x, residual, weight, bias, eps: float, store_sum: bool):
    """Launch the forward kernel; returns (y, mean, rstd, xsum) as documented above."""
    x = last_dim_contiguous(x)
    m, n = x.shape
    y = x.new_empty((m, n))
    mean = x.new_zeros((m,), dtype=torch.float32)
    rstd = x.new_zeros((m,), dtype=torch.float32)
    xsum = x.new_empty((m, n) if store_sum else (0,))
    if x.numel() == 0:
        return y, mean, rstd, xsum
    from fastattn.kernels.layer_norm import layer_norm_fwd_kernel, layer_norm_fwd_looped_kernel

    res = x if residual is None else last_dim_contiguous(residual)
    s = xsum if store_sum else x
    cfg = pick_config(n, "fwd", str(x.dtype).removeprefix("torch."), x.device)
    args = (x, res, x if weight is None else weight, x if bias is None else bias, y, s, mean, rstd,
            x.stride(0), res.stride(0), y.stride(0), s.stride(0), m, n, float(eps),
            int(residual is not None), int(weight is not None), int(bias is not None),
            int(store_sum))
    with launch_on(x.device):
        if cfg.looped:
            layer_norm_fwd_looped_kernel[(m,)](*args, BLOCK_N=cfg.block_n,
                                               num_warps=cfg.num_warps,
                                               num_stages=cfg.num_stages)
        else:
            layer_norm_fwd_kernel[(cdiv(m, cfg.block_m),)](
                *args, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, num_warps=cfg.num_warps,
                num_stages=cfg.num_stages)
    return y, mean, rstd, xsum


def layer_norm_backward(dy, x, weight, mean, rstd, compute_dw: bool, compute_db: bool):
    """Launch the backward kernel and the dW / dB reduction; returns (dx, dw, db).

    Deterministic: per-program partial sums, then a fixed-order reduction; no atomics.
    """
    dy, x = last_dim_contiguous(dy), last_dim_contiguous(x)
    m, n = x.shape
    dx = x.new_empty((m, n))
    dw = x.new_zeros((n,) if compute_dw else (0,))
    db = x.new_zeros((n,) if compute_db else (0,))
    if x.numel() == 0:
        return dx, dw, db
    from fastattn.kernels.layer_norm import (
        layer_norm_bwd_kernel, layer_norm_bwd_looped_kernel, layer_norm_reduce_kernel)

    cfg = pick_config(n, "bwd", str(x.dtype).removeprefix("torch."), x.device)
    programs, per_program = backward_grid(m, cfg, _sm_count(x.device))
    outs = [t for t, want in ((dw, compute_dw), (db, compute_db)) if want]
    alloc = torch.zeros if cfg.looped else torch.empty  # looped: accumulated in place
    part = alloc((max(len(outs), 1), programs, n), dtype=torch.float32, device=x.device)
    dw_part, db_part = part[0], part[-1]
    args = (dy, x, x if weight is None else weight, mean, rstd, dx, dw_part, db_part,
            dy.stride(0), x.stride(0), dx.stride(0), m, n, per_program,
            int(weight is not None), int(compute_dw), int(compute_db))
    with launch_on(x.device):
        if cfg.looped:
            layer_norm_bwd_looped_kernel[(programs,)](*args, BLOCK_N=cfg.block_n,
                                                      num_warps=cfg.num_warps,
                                                      num_stages=cfg.num_stages)
        else:
            layer_norm_bwd_kernel[(programs,)](*args, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n,
                                               num_warps=cfg.num_warps,
                                               num_stages=cfg.num_stages)
        if outs:
            layer_norm_reduce_kernel[(cdiv(n, REDUCE_BLOCK_N), len(outs))](
                part, outs[0], outs[-1], programs, n,
                BLOCK_P=REDUCE_BLOCK_P, BLOCK_N=REDUCE_BLOCK_N, num_warps=REDUCE_NUM_WARPS,
                num_stages=1)
    return dx, dw, db



# --------------------------------------------------------------------------- torch.library ops

@torch.library.custom_op("fastattn::layer_norm_fwd", mutates_args=())
def layer_norm_fwd_op(x: torch.Tensor, residual: Optional[torch.Tensor],
                      weight: Optional[torch.Tensor], bias: Optional[torch.Tensor], eps: float,
                      store_sum: bool) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                torch.Tensor]:
    return layer_norm_forward(x, residual, weight, bias, eps, store_sum)


@layer_norm_fwd_op.register_fake
def _(x, residual, weight, bias, eps, store_sum):
    m, n = x.shape
    return (x.new_empty((m, n)), x.new_empty((m,), dtype=torch.float32),
            x.new_empty((m,), dtype=torch.float32), x.new_empty((m, n) if store_sum else (0,)))


@torch.library.custom_op("fastattn::layer_norm_bwd", mutates_args=())
def layer_norm_bwd_op(dy: torch.Tensor, x: torch.Tensor, weight: Optional[torch.Tensor],
                      mean: torch.Tensor, rstd: torch.Tensor, compute_dw: bool,
                      compute_db: bool) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return layer_norm_backward(dy, x, weight, mean, rstd, compute_dw, compute_db)


@layer_norm_bwd_op.register_fake
def _(dy, x, weight, mean, rstd, compute_dw, compute_db):
    m, n = x.shape
    return (x.new_empty((m, n)), x.new_empty((n,) if compute_dw else (0,)),
            x.new_empty((n,) if compute_db else (0,)))


def _setup_context(ctx, inputs, output):
    x, residual, weight, bias, eps, store_sum = inputs
    _, mean, rstd, xsum = output
    if residual is not None and store_sum:
        x, residual = xsum, None  # the normalized sum, written by the forward kernel
    # Without a stored sum (store_sum=False while a gradient is needed) backward recomputes it.
    ctx.save_for_backward(x, residual, weight, mean, rstd)
    ctx.has_residual = inputs[1] is not None
    ctx.has_bias = bias is not None
    ctx.mark_non_differentiable(mean, rstd, xsum)


def _backward(ctx, dy, _dmean, _drstd, _dxsum):
    x, residual, weight, mean, rstd = ctx.saved_tensors
    if residual is not None:
        x = x + residual
    need_x, need_res, need_w, need_b = ctx.needs_input_grad[:4]
    dx, dw, db = layer_norm_bwd_op(dy, x, weight, mean, rstd,
                                   weight is not None and need_w, ctx.has_bias and need_b)
    return (dx if need_x else None, dx if ctx.has_residual and need_res else None,
            dw if weight is not None and need_w else None,
            db if ctx.has_bias and need_b else None, None, None)


layer_norm_fwd_op.register_autograd(_backward, setup_context=_setup_context)


def __getattr__(name: str):
    """``from fastattn.ops.layer_norm import layer_norm`` (the old path) still works; the
    function lives in :mod:`fastattn.functional`, which imports this module."""
    if name == "layer_norm":
        from fastattn import functional

        return functional.layer_norm
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
