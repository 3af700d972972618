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
bfloat16, float32, float64 (one compiled kernel per mask kind and dtype).  A keep mask that varies
only along batch and key (a key-padding mask, (N, L_k) or (N, 1, 1, L_k)) is passed to the kernel
as per-sequence lengths (:func:`fastattn.ops.key_lengths.key_padding_lengths`, on the device, no
host sync) with its (N, L_k) bool keep rows: the kernel ends each prefix sequence's key walk at its
last real key and reads the keep row only for sequences whose mask is not a prefix or is all zero.
The extension is imported only when the op runs.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch

from fastattn.cuda_limits import cuda_limit
from fastattn.enums import MaskKind
from fastattn.ops.attention import _backward, _setup_context, triton_attention
from fastattn.ops.key_lengths import key_padding_lengths

CUDA_DTYPES = (torch.float16, torch.bfloat16)


KEEP = int(MaskKind.KEEP)  # op-level mask_kind of a keep mask (mask == 0 -> -1e10)


def _extension():
    import fastattn._C  # noqa: F401  (registers torch.ops.fastattn.cuda_attention_fwd_kernel)

    return torch.ops.fastattn


def key_padding_rows(mask: Optional[torch.Tensor], mask_kind: int, batch: int,
                     len_k: int) -> Optional[torch.Tensor]:
    """The (N, L_k) rows of a keep mask that varies only along batch and key, else None.

    ``mask`` is broadcastable to (N, H, L_q, L_k), a 2-D mask being (N, L_k); size-1 or stride-0
    head and query dims make it a key-padding mask.  Returns a view (nothing is copied)."""
    if mask is None or mask_kind != KEEP or mask.dim() > 4:
        return None
    view = mask[:, None, None, :] if mask.dim() == 2 else mask[(None,) * (4 - mask.dim())]
    if any(view.shape[i] != 1 and view.stride(i) != 0 for i in (1, 2)):
        return None
    return view[:, 0, 0, :].expand(batch, len_k)


def kernel_mask_args(mask: Optional[torch.Tensor], mask_kind: int, batch: int, len_k: int):
    """(mask, key_lengths) for the extension: a key-padding mask becomes its (N, L_k) bool keep
    rows and their prefix lengths (-1 for a row that is not a prefix), computed on the mask's
    device without a host sync; any other mask passes through with key_lengths None."""
    rows = key_padding_rows(mask, mask_kind, batch, len_k)
    if rows is None:
        return mask, None
    keep = (rows != 0).contiguous()
    return keep, key_padding_lengths(keep)


@torch.library.custom_op("fastattn::cuda_attention_fwd", mutates_args=())
def cuda_attention_fwd_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                          mask: Optional[torch.Tensor], mask_kind: int, causal: bool,
                          scale: float) -> Tuple[torch.Tensor, torch.Tensor]:
    kernel_mask, key_lengths = kernel_mask_args(mask, mask_kind, q.shape[0], k.shape[2])
    return _extension().cuda_attention_fwd_kernel(q, k, v, kernel_mask, mask_kind, causal,
                                                  scale, key_lengths)


@cuda_attention_fwd_op.register_fake
def _(q, k, v, mask, mask_kind, causal, scale):
    n, h, lq, d = q.shape
    out = q.new_empty(n, lq, h, d).transpose(1, 2)
    return out, q.new_empty(n, h, lq, dtype=torch.float32)


# Same inputs and saved tensors as the Triton forward op: its autograd (the Triton backward)
# serves this op unchanged.
cuda_attention_fwd_op.register_autograd(_backward, setup_context=_setup_context)


MASK_EXCLUDE = int(MaskKind.EXCLUDE)  # torch's bool attn_mask (mask == 0 -> -inf): on Triton


def runs_cuda_kernel(q: torch.Tensor, mask_kind: int = 0) -> bool:
    """True when :func:`cuda_attention` runs the CUDA kernel for ``q`` (else Triton)."""
    return (q.dtype in CUDA_DTYPES and q.shape[-1] <= cuda_limit("attention_max_head_dim")
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
