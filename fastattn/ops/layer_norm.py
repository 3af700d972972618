"""LayerNorm: launchers, torch.library ops, autograd, and the functional entry point.

Ops (registered under the ``fastattn`` namespace, so ``torch.compile`` sees each as one node):

    fastattn::layer_norm_fwd(x, residual?, weight?, bias?, eps, store_sum)
        -> (y, mean, rstd, xsum)
    fastattn::layer_norm_bwd(dy, x, weight?, mean, rstd, compute_dw, compute_db)
        -> (dx, dw, db)

x, residual, dy: (M, N) with the last stride 1 (rows may be strided).  weight, bias: (N,)
contiguous.  y, dx: (M, N) contiguous.  mean, rstd: (M,) fp32.  xsum: x + residual (M, N) when
``store_sum`` (kept for backward), else an empty (0,) tensor.  dw, db: (N,), or (0,) when not
asked for.  In the backward op, x is the tensor that was normalized (x + residual).

:func:`layer_norm` validates its inputs and reshapes any (..., *normalized_shape) tensor into
rows; the ops assume valid arguments.  Triton is imported only when a kernel is launched.
"""
from __future__ import annotations

import functools
import math
import numbers
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

from fastattn.backends import get_default_backend, resolve_backend
from fastattn.ops.launch import cdiv, last_dim_contiguous, launch_on, target_device
from fastattn.cuda_limits import cuda_limit
from fastattn.ops.layer_norm_cuda import cuda_layer_norm
from fastattn.kernels.layer_norm_configs import (
    INTERPRETER_SM_COUNT, REDUCE_BLOCK_N, REDUCE_BLOCK_P, REDUCE_NUM_WARPS, backward_grid,
    pick_config)

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


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


# --------------------------------------------------------------------------- functional API

def _check_normalized_shape(normalized_shape) -> Tuple[int, ...]:
    if isinstance(normalized_shape, numbers.Integral) and not isinstance(normalized_shape, bool):
        shape = (int(normalized_shape),)
    elif isinstance(normalized_shape, (tuple, list, torch.Size)) and all(
            isinstance(d, numbers.Integral) and not isinstance(d, bool) for d in normalized_shape):
        shape = tuple(int(d) for d in normalized_shape)
    else:
        raise TypeError(f"normalized_shape must be an int or a sequence of ints, got "
                        f"{normalized_shape!r}")
    if len(shape) == 0 or any(d < 0 for d in shape):
        raise ValueError(f"normalized_shape must be non-empty with non-negative sizes, got {shape}")
    return shape


def _check_inputs(x, shape, weight, bias, eps, residual):
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if not x.dtype.is_floating_point:
        raise TypeError(f"x must be a floating-point tensor, got {x.dtype}")
    if x.dim() < len(shape) or tuple(x.shape[x.dim() - len(shape):]) != shape:
        raise ValueError(f"x of shape {tuple(x.shape)} does not end with normalized_shape "
                         f"{shape}")
    for name, t in (("weight", weight), ("bias", bias), ("residual", residual)):
        if t is None:
            continue
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor or None, got {type(t).__name__}")
        want = tuple(x.shape) if name == "residual" else shape
        if tuple(t.shape) != want:
            what = "x's shape" if name == "residual" else "normalized_shape"
            raise ValueError(f"{name} must have {what} {want}, got {tuple(t.shape)}")
        if t.device != x.device:
            raise ValueError(f"{name} is on {t.device} but x is on {x.device}")
        if t.dtype != x.dtype:
            raise TypeError(f"{name} must have x's dtype {x.dtype}, got {t.dtype}")
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real):
        raise TypeError(f"eps must be a float, got {type(eps).__name__}")
    if not math.isfinite(eps) or eps < 0:
        raise ValueError(f"eps must be finite and >= 0, got {eps}")


def _choose_backend(backend: Optional[str], x: torch.Tensor) -> str:
    chosen = resolve_backend(backend, x.device)
    requested = get_default_backend() if backend is None else backend
    if chosen == "triton" and x.dtype not in SUPPORTED_DTYPES:
        if requested == "auto":
            return "torch"  # e.g. float64 on CUDA: the kernels do not take it
        raise TypeError(f"the fused LayerNorm kernels take float16, bfloat16 or float32 x, "
                        f"got {x.dtype}")
    if chosen == "cuda" and x.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"the CUDA LayerNorm kernels take float16, bfloat16 or float32 x, "
                        f"got {x.dtype}")
    return chosen


def layer_norm(x: torch.Tensor, normalized_shape: Union[int, Sequence[int]],
               weight: Optional[torch.Tensor] = None, bias: Optional[torch.Tensor] = None,
               eps: float = 1e-5, *, residual: Optional[torch.Tensor] = None,
               backend: Optional[str] = None) -> torch.Tensor:
    """LayerNorm over the trailing ``normalized_shape`` dims of ``x + residual`` (fused add).

    Args:
        x: (..., *normalized_shape).  Rows may be strided; the last dim needs stride 1 or x
            is copied.  float16, bfloat16 or float32 for the Triton kernels.
        normalized_shape: int or tuple; its product is the hidden size N (1 to 65536 and more:
            rows above 8192 elements use the looped kernels).
        weight, bias: optional, shape normalized_shape, x's dtype and device.
        eps: added to the variance.
        residual: optional, x's shape, dtype and device; the result is LN(x + residual) and
            both receive the same gradient (the post-LN encoder's norm(sublayer(x) + x)).
        backend: "auto", "triton", "torch", "cuda" or None (the process default).  "auto"
            falls back to torch for dtypes the kernels do not take (float64).  "cuda" runs the
            CUDA C++ kernels for hidden sizes up to 16384, the Triton ones above.
    Returns:
        x's shape and dtype, contiguous.  Statistics are fp32.  Under CUDA autocast, the inputs
        are computed in float32 and the result is float32, as torch.nn.functional.layer_norm.
    """
    shape = _check_normalized_shape(normalized_shape)
    cuda_autocast = isinstance(x, torch.Tensor) and x.device.type == "cuda" and (
        torch.is_autocast_enabled("cuda"))
    if cuda_autocast:  # torch's CUDA autocast runs layer_norm in float32; CPU's leaves it alone
        up = lambda t: t if t is None or not isinstance(t, torch.Tensor) else t.float()
        x, residual, weight, bias = up(x), up(residual), up(weight), up(bias)
    _check_inputs(x, shape, weight, bias, eps, residual)
    chosen = _choose_backend(backend, x)
    if chosen == "torch":
        return F.layer_norm(x if residual is None else x + residual, shape, weight, bias, eps)
    n = math.prod(shape)
    m = math.prod(x.shape[:x.dim() - len(shape)])
    rows = lambda t: last_dim_contiguous(t.reshape(m, n))
    x2 = rows(x)
    r2 = None if residual is None else rows(residual)
    w = None if weight is None else weight.reshape(n).contiguous()
    b = None if bias is None else bias.reshape(n).contiguous()
    if chosen == "cuda" and n <= cuda_limit("layer_norm_bwd_max_cols"):
        return cuda_layer_norm(x2, r2, w, b, float(eps)).view(x.shape)
    store_sum = residual is not None and torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, residual, weight, bias))
    y = layer_norm_fwd_op(x2, r2, w, b, float(eps), store_sum)[0]
    # Not a view of y (as torch.matmul reshapes its GEMM output): y is fresh and nothing else
    # holds or saves it, and FSDP2 warns about modules that return views.
    return torch.ops.aten._unsafe_view(y, x.shape)
