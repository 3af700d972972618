"""Bias + activation on the CUDA C++ kernel (``backend="cuda"``), after a cuBLAS GEMM.

    fastattn::cuda_bias_act_fwd(x (M, N), bias? (N,), activation) -> act(x + bias)
    fastattn::cuda_bias_act_bwd(dy, x, bias?, activation) -> dy * act'(x + bias)

The feed-forward's first layer under ``backend="cuda"`` is ``F.linear(x, w1)`` (cuBLAS) followed
by this kernel, which reads the GEMM output once and writes the activation: the elementwise
alternative to a cuBLASLt epilogue (``torch._addmm_activation``, which ``backend="auto"`` uses
through ``ops/gemm.py`` when the tuned table or its default picks cuBLAS).  Which is faster is
for ``fastattn bench`` on a GPU to say.
"""
from __future__ import annotations

import torch


def _ops():
    import fastattn._C  # noqa: F401  (registers torch.ops.fastattn.cuda_bias_act_*)

    return torch.ops.fastattn


class CudaBiasAct(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, bias, activation: str):
        ctx.save_for_backward(x, bias)
        ctx.activation = activation
        return _ops().cuda_bias_act_fwd(x, bias, activation)

    @staticmethod
    def backward(ctx, dy):
        x, bias = ctx.saved_tensors
        dx = _ops().cuda_bias_act_bwd(dy.contiguous(), x, bias, ctx.activation)
        dbias = dx.sum(0, dtype=torch.float32).to(bias.dtype) if bias is not None else None
        return dx, dbias, None


def cuda_bias_act(x: torch.Tensor, bias: torch.Tensor, activation: str) -> torch.Tensor:
    """act(x + bias) for x (M, N), bias (N,); activation "relu", "gelu" or "gelu_tanh"."""
    return CudaBiasAct.apply(x, bias, activation)
