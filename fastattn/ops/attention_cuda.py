"""Attention forward in CUDA C++ (``backend="cuda"``), with the Triton backward.

Op (registered under the ``fastattn`` namespace, so ``torch.compile`` sees it as one node):

    fastattn::cuda_attention_fwd(q, k, v, mask?, mask_kind, causal, scale) -> (out, lse)

Same contract as ``fastattn::attention_fwd`` (see :mod:`fastattn.ops.attention`):
q: (N, H, L_q, D), k / v: (N, H, L_k, D); mask broadcastable to (N, H, L_q, L_k) (a 2-D mask is a
key-padding mask (N, L_k)), read through stride-0 views, never expanded; out: (N, H, L_q, D) laid
out as (N, L_q, H, D); lse: (N, H, L_q) fp32, natural log.  Because the lse layout is the Triton
one, the backward is the Triton backward (``fastattn::attention_bwd``).

What runs where (:func:`cuda_attention`):

* float16 / bfloat16 with head_dim a multiple of 8 up to 128: the CUDA kernel (``fastattn._C``,
  compiled for head_dim 32, 64 and 128; other sizes run in the next one with zero padding).
* float32 inputs, or head_dim above 128: routed to the Triton kernels (the CUDA kernel is
  fp16 / bf16 tensor-core code only).

Mask dtypes read directly by the kernel: bool, uint8, int8, int16, int32, int64, float16,
bfloat16, float32, float64.  The extension is imported only when the op runs.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch

from fastattn.ops.attention import _backward, _setup_context, triton_attention

CUDA_DTYPES = (torch.float16, torch.bfloat16)
CUDA_MAX_HEAD_DIM = 128


def _extension():
    from fastattn import _C

    return _C


@torch.library.custom_op("fastattn::cuda_attention_fwd", mutates_args=())
def cuda_attention_fwd_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                          mask: Optional[torch.Tensor], mask_kind: int, causal: bool,
                          scale: float) -> Tuple[torch.Tensor, torch.Tensor]:
    return _extension().attention_fwd(q, k, v, mask, mask_kind, causal, scale)


@cuda_attention_fwd_op.register_fake
def _(q, k, v, mask, mask_kind, causal, scale):
    n, h, lq, d = q.shape
    out = q.new_empty(n, lq, h, d).transpose(1, 2)
    return out, q.new_empty(n, h, lq, dtype=torch.float32)


# Same inputs and saved tensors as the Triton forward op: its autograd (the Triton backward)
# serves this op unchanged.
cuda_attention_fwd_op.register_autograd(_backward, setup_context=_setup_context)


MASK_EXCLUDE = 3  # torch's bool attn_mask (mask == 0 -> -inf): the Triton kernels serve it


def runs_cuda_kernel(q: torch.Tensor, mask_kind: int = 0) -> bool:
    """True when :func:`cuda_attention` runs the CUDA kernel for ``q`` (else Triton)."""
    return (q.dtype in CUDA_DTYPES and q.shape[-1] <= CUDA_MAX_HEAD_DIM
            and mask_kind != MASK_EXCLUDE)


def cuda_attention(q, k, v, mask, mask_kind: int, causal: bool,
                   scale: Optional[float]) -> torch.Tensor:
    """Differentiable fused attention for ``backend="cuda"``; returns (N, H, L_q, D).

    float16 / bfloat16 with head_dim <= 128 run the CUDA C++ forward; float32 inputs,
    head_dim > 128 and torch-style bool masks (``scaled_dot_product_attention``, whose masked
    scores are -inf rather than -1e10) are routed to the Triton kernels.  The backward is
    Triton's in every case.
    Inputs are validated by :mod:`fastattn.functional`.
    """
    if not runs_cuda_kernel(q, mask_kind):
        return triton_attention(q, k, v, mask, mask_kind, causal, scale)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    return cuda_attention_fwd_op(q, k, v, mask, mask_kind, causal, scale)[0]
