"""LayerNorm on the CUDA C++ kernels (``backend="cuda"``): autograd over the extension's ops.

    fastattn::cuda_layer_norm_fwd(x (M, N), residual?, weight?, bias?, eps) -> (y, mean, rstd)
    fastattn::cuda_layer_norm_bwd(dy, x, residual?, weight?, mean, rstd, bias_grad)
        -> (dx, dweight, dbias)        # dx is the gradient of x + residual

Rows of more than ``cuda_limit("layer_norm_bwd_max_cols")`` elements
(:mod:`fastattn.cuda_limits`) run on the Triton kernels instead.  Inputs are validated by
:func:`fastattn.ops.layer_norm.layer_norm`.
"""
from __future__ import annotations

from typing import Optional

import torch


def _ops():
    import fastattn._C  # noqa: F401  (registers torch.ops.fastattn.cuda_layer_norm_*)

    return torch.ops.fastattn


class CudaLayerNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, residual, weight, bias, eps: float):
        y, mean, rstd = _ops().cuda_layer_norm_fwd(x, residual, weight, bias, eps)
        ctx.save_for_backward(x, residual, weight, mean, rstd)
        ctx.has_bias = bias is not None
        return y

    @staticmethod
    def backward(ctx, dy):
        x, residual, weight, mean, rstd = ctx.saved_tensors
        dx, dw, db = _ops().cuda_layer_norm_bwd(dy.contiguous(), x, residual, weight, mean, rstd,
                                                ctx.has_bias)
        return (dx, dx if residual is not None else None, dw if weight is not None else None,
                db if ctx.has_bias else None, None)


def cuda_layer_norm(x: torch.Tensor, residual: Optional[torch.Tensor],
                    weight: Optional[torch.Tensor], bias: Optional[torch.Tensor],
                    eps: float) -> torch.Tensor:
    """LN(x + residual) over the last dim of (M, N) rows; returns (M, N)."""
    return CudaLayerNorm.apply(x, residual, weight, bias, eps)
