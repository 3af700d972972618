"""Launchers, torch.library ops and autograd for the Triton attention kernels.

Ops (registered under the ``fastattn`` namespace, so ``torch.compile`` sees each as one node):

    fastattn::attention_fwd(q, k, v, mask?, mask_kind, causal, scale, dropout_p, seed?)
        -> (out, lse)
    fastattn::attention_bwd(dout, q, k, v, out, lse, mask?, mask_kind, causal, scale,
                            dropout_p, seed?) -> (dq, dk, dv)

q: (N, H, L_q, D), k / v: (N, H_kv, L_k, D) with H a multiple of H_kv (grouped-query attention:
query head h reads kv head h // (H // H_kv), K / V are never expanded), any strides with the
last one 1 (others are copied).
causal: CAUSAL_NONE (0), CAUSAL_TOP_LEFT (1: query i sees key j <= i; True is 1) or
CAUSAL_BOTTOM_RIGHT (2: j <= i + L_k - L_q, flash-attention's alignment; a row that sees no key
gives 0 and zero gradients).
mask: a tensor broadcastable to (N, H, L_q, L_k); a 2-D mask is a key-padding mask (N, L_k).
It is passed through as given and addressed through stride-0 views inside the launcher, never
expanded into memory.  out: (N, H, L_q, D) laid out in memory as (N, L_q, H, D), so that merging
the heads back into (N, L_q, H·D) is a free view.  lse: (N, H, L_q) fp32, natural log.
dropout_p: attention dropout rate in [0, 1); seed: (1,) int64 on q's device, the Philox key of
the dropout mask (required when dropout_p > 0).  :func:`triton_attention` draws a fresh seed
from torch's generator for every call, so ``torch.manual_seed`` makes runs repeatable, and the
backward regenerates the forward's mask from the saved seed.  :func:`dropout_keep_mask` writes
the mask of a seed out (for tests and debugging).

Inputs are validated by :mod:`fastattn.functional`; these ops assume valid arguments.
Triton is imported only when a kernel is launched.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch

from fastattn.backends import interpreter_enabled
from fastattn.enums import MaskKind
from fastattn.ops.key_lengths import key_padding_lengths
from fastattn.ops.launch import (  # noqa: F401  (_DTYPE_NAMES, _smem_limit: old import path)
    _DTYPE_NAMES, _device_smem_limit, _precision, _seed_arg, _smem_limit, cdiv,
    draw_dropout_seed, ensure_tma_allocator, last_dim_contiguous, launch_on, tma_compatible,
    tma_supported)
from fastattn.kernels.attention_configs import DROPOUT_MASK_BLOCK, block_d_for, pick_config

CAUSAL_NONE, CAUSAL_TOP_LEFT, CAUSAL_BOTTOM_RIGHT = 0, 1, 2

def _mask_view(mask: Optional[torch.Tensor], ref: torch.Tensor, shape) -> Tuple[torch.Tensor, tuple]:
    """(tensor to point at, its 4 strides) for a mask viewed as ``shape`` = (N, H, L_q, L_k).

    Broadcast and size-1 dims get stride 0; bool masks are reinterpreted as uint8 (same bytes).
    Nothing is copied.
    """
    if mask is None:
        return ref, (0, 0, 0, 0)
    if mask.dim() == 2:  # key padding (N, L_k)
        mask = mask[:, None, None, :]
    if mask.dtype == torch.bool:
        mask = mask.view(torch.uint8)
    view = mask.expand(*shape)
    strides = tuple(0 if size == 1 else st for size, st in zip(view.shape, view.stride()))
    return view, strides


def _kernel_mask(mask_kind: int) -> Tuple[int, float]:
    """Op-level mask kind -> (kernel MASK_KIND, masked_score).

    0 none; 1 keep, mask == 0 scores -1e10 (the guide's rule); 2 additive;
    3 keep, mask == 0 scores -inf (torch's bool attn_mask: a fully masked row gives 0).
    """
    if mask_kind == MaskKind.EXCLUDE:
        return int(MaskKind.KEEP), float("-inf")
    return mask_kind, -1.0e10


def _masked_raw(masked_score: float, qk_scale: float) -> float:
    """What the forward kernel puts in place of Q K^T where the keep mask is 0: -inf stays
    -inf; -1e10 becomes -2^k with 2^k · qk_scale >= 1e10 · log2(e), so the base-2 score
    -2^k · qk_scale is exact in fp32 (a power-of-two multiple), whatever the FFMA rounds.  The
    score is then between -1e10 and -2e10 (natural log): exp of it relative to any real score
    is exactly 0, and a fully masked row is uniform, as under -1e10 itself."""
    if masked_score == float("-inf"):
        return masked_score
    k = math.ceil(math.log2(-masked_score * 1.4426950408889634 / qk_scale))
    return -(2.0 ** min(k, 127))


def _mask_layout(mask, mask_t: torch.Tensor, strides) -> str:
    """How the kernels read the mask (see ``pick_config``): none, row, full or narrow."""
    if mask is None:
        return "none"
    if strides[2] == 0:
        return "row"
    return "narrow" if mask_t.element_size() < 4 else "full"


def dropout_keep_mask(seed: torch.Tensor, shape, dropout_p: float) -> torch.Tensor:
    """The keep mask (N, H, L_q, L_k) bool that the kernels apply for ``seed`` and
    ``dropout_p`` (True = kept, scaled by 1 / (1 - dropout_p)); ``seed`` as in the ops."""
    from fastattn.kernels.attention import attention_dropout_mask_kernel

    n, h, lq, lk = shape
    z = torch.empty(n, h, lq, lk, dtype=torch.uint8, device=seed.device)
    if z.numel():
        block = 16 if interpreter_enabled() else DROPOUT_MASK_BLOCK
        with launch_on(seed.device):
            attention_dropout_mask_kernel[(cdiv(lq, block) * n * h,)](
                seed, z, lq, lk, float(dropout_p), BLOCK_M=block, BLOCK_N=block)
    return z.bool()


def causal_offset(causal: int, lq: int, lk: int) -> int:
    """The kernels' causal_off: query i sees key j when j <= i + causal_off."""
    return lk - lq if causal == CAUSAL_BOTTOM_RIGHT else 0


def _config(kernel, q, mask_kind, length, layout, dropout):
    return pick_config(kernel, q.shape[-1], _DTYPE_NAMES[q.dtype], mask_kind, length,
                       _smem_limit(q.device), interpreter=interpreter_enabled(),
                       mask_layout=layout, dropout=dropout, device=q.device)


def _key_lengths(mask_t, strides, mask_kind: int, layout: str, ref: torch.Tensor):
    """(LENS argument, KEY_LENGTHS) for the kernels: per-sequence prefix lengths of a
    key-padding keep mask that is the same for every head (computed on the device, no host
    sync); a dummy pointer and False for every other mask."""
    if mask_kind == MaskKind.KEEP and layout == "row" and strides[1] == 0:
        return key_padding_lengths(mask_t[:, 0, 0, :]), True
    return ref, False


def attention_forward(q, k, v, mask, mask_kind: int, causal: int, scale: float,
                      dropout_p: float = 0.0, seed: Optional[torch.Tensor] = None):
    """Launch the forward kernel; returns (out, lse)."""
    from fastattn.kernels.attention import attention_fwd_kernel

    q, k, v = (last_dim_contiguous(t) for t in (q, k, v))
    n, h, lq, d = q.shape
    lk = k.shape[2]
    out = torch.empty(n, lq, h, d, dtype=q.dtype, device=q.device).transpose(1, 2)
    lse = torch.empty(n, h, lq, dtype=torch.float32, device=q.device)
    if out.numel() == 0:
        return out, lse
    if scale < 0:  # the kernel's fused running max needs a scale > 0: S = |scale| q (-k)^T
        k, scale = -k, -scale
    elif scale == 0:  # S = 0 everywhere, as with zero queries and scale 1
        q, scale = torch.zeros_like(q), 1.0
    mask_t, ms = _mask_view(mask, q, (n, h, lq, lk))
    layout = _mask_layout(mask, mask_t, ms)
    mask_kind, masked_score = _kernel_mask(mask_kind)
    lens, key_lengths = _key_lengths(mask_t, ms, mask_kind, layout, lse)
    cfg = _config("fwd", q, mask_kind, lq, layout, dropout_p > 0)
    block_d = block_d_for(d)
    tma = tma_supported(q.device) and tma_compatible((q, k, v, out), d, block_d)
    if tma:
        ensure_tma_allocator()
    grid = (cdiv(lq, cfg.block_m) * n * h,)
    qk_scale = scale * 1.4426950408889634
    with launch_on(q.device):
        attention_fwd_kernel[grid](
            q, k, v, mask_t, lens, out, lse, _seed_arg(seed, lse, dropout_p),
            *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *ms, *out.stride()[:3],
            h, h // k.shape[1], lq, lk, d, causal_offset(causal, lq, lk), qk_scale,
            _masked_raw(masked_score, qk_scale), float(dropout_p),
            MASK_KIND=mask_kind, MASK_ROW=layout == "row", KEY_LENGTHS=key_lengths,
            CAUSAL=bool(causal), EVEN_N=lk % cfg.block_n == 0, EVEN_D=d == block_d, TMA=tma,
            PRECISION=_precision(q.dtype), DROPOUT=dropout_p > 0,
            BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_D=block_d,
            num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        )
    return out, lse


def _reduce_to_mask(dmask: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The (N, H, L_q, L_k) gradient of the broadcast additive mask summed back to ``mask``'s
    own shape (a (1, 1, L_q, L_k) bias collects every batch row and head) and dtype."""
    shape = (1,) * (4 - mask.dim()) + tuple(mask.shape)
    dims = [i for i, size in enumerate(shape) if size == 1 and dmask.shape[i] != 1]
    if dims:
        dmask = dmask.sum(dim=dims, keepdim=True)
    return dmask.reshape(mask.shape).to(mask.dtype)


def attention_backward(dout, q, k, v, out, lse, mask, mask_kind: int, causal: int,
                       scale: float, dropout_p: float = 0.0,
                       seed: Optional[torch.Tensor] = None, mask_grad: bool = False):
    """Launch the three backward kernels; returns (dq, dk, dv, dmask).  Deterministic: no
    atomics (with H_kv < H, one dK/dV program sums its kv head's query heads in order).
    ``mask_grad`` (additive masks only): dmask is the gradient of ``mask``, in its
    shape and dtype (dS written by the dQ kernel, then summed over the broadcast dims); else
    dmask is an empty tensor."""
    from fastattn.kernels.attention import (
        attention_bwd_dkdv_kernel, attention_bwd_dq_kernel, attention_bwd_preprocess_kernel)

    q, k, v, out, dout = (last_dim_contiguous(t) for t in (q, k, v, out, dout))
    n, h, lq, d = q.shape
    h_kv, lk = k.shape[1], k.shape[2]
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    mask_grad = bool(mask_grad) and mask is not None and mask_kind == MaskKind.ADD
    dmask = lse.new_zeros((n, h, lq, lk) if mask_grad else (0,))
    if q.numel() == 0 or k.numel() == 0:
        return (dq.zero_(), dk.zero_(), dv.zero_(),
                _reduce_to_mask(dmask, mask) if mask_grad else dmask)
    block_d = block_d_for(d)
    delta = torch.empty(n, h, lq, dtype=torch.float32, device=q.device)
    mask_t, ms = _mask_view(mask, q, (n, h, lq, lk))
    layout = _mask_layout(mask, mask_t, ms)
    mask_kind, masked_score = _kernel_mask(mask_kind)
    lens, key_lengths = _key_lengths(mask_t, ms, mask_kind, layout, lse)
    tma = tma_supported(q.device) and tma_compatible((q, k, v, dout), d, block_d)
    if tma:
        ensure_tma_allocator()
    common = dict(MASK_KIND=mask_kind, MASK_ROW=layout == "row", KEY_LENGTHS=key_lengths,
                  CAUSAL=bool(causal), EVEN_D=d == block_d, TMA=tma,
                  PRECISION=_precision(q.dtype), DROPOUT=dropout_p > 0, BLOCK_D=block_d)
    seed_t = _seed_arg(seed, lse, dropout_p)
    qk_scale = scale * 1.4426950408889634
    with launch_on(q.device):
        pre_m = 64 if not interpreter_enabled() else 16
        attention_bwd_preprocess_kernel[(cdiv(lq, pre_m) * n * h,)](
            out, dout, delta, *out.stride()[:3], *dout.stride()[:3], h, lq, d,
            BLOCK_M=pre_m, BLOCK_D=block_d)
        cfg = _config("bwd_dkdv", q, mask_kind, lk, layout, dropout_p > 0)
        attention_bwd_dkdv_kernel[(cdiv(lk, cfg.block_n) * n * h_kv,)](
            q, k, v, mask_t, lens, dout, lse, delta, dk, dv, seed_t,
            *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *ms, *dout.stride()[:3],
            *dk.stride()[:3], *dv.stride()[:3],
            h, h // h_kv, lq, lk, d, causal_offset(causal, lq, lk), qk_scale, scale,
            masked_score, float(dropout_p),
            BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, num_warps=cfg.num_warps,
            num_stages=cfg.num_stages, **common)
        cfg = _config("bwd_dq", q, mask_kind, lq, layout, dropout_p > 0)
        attention_bwd_dq_kernel[(cdiv(lq, cfg.block_m) * n * h,)](
            q, k, v, mask_t, lens, dout, lse, delta, dq, dmask if mask_grad else lse, seed_t,
            *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *ms, *dout.stride()[:3],
            *dq.stride()[:3],
            h, h // h_kv, lq, lk, d, causal_offset(causal, lq, lk), qk_scale, scale,
            masked_score, float(dropout_p),
            EVEN_N=lk % cfg.block_n == 0, MASK_GRAD=mask_grad, BLOCK_M=cfg.block_m,
            BLOCK_N=cfg.block_n, num_warps=cfg.num_warps, num_stages=cfg.num_stages, **common)
    return dq, dk, dv, _reduce_to_mask(dmask, mask) if mask_grad else dmask



# --------------------------------------------------------------------------- torch.library ops

@torch.library.custom_op("fastattn::attention_fwd", mutates_args=())
def attention_fwd_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     mask: Optional[torch.Tensor], mask_kind: int, causal: int,
                     scale: float, dropout_p: float = 0.0,
                     seed: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    return attention_forward(q, k, v, mask, mask_kind, causal, scale, dropout_p, seed)


@attention_fwd_op.register_fake
def _(q, k, v, mask, mask_kind, causal, scale, dropout_p=0.0, seed=None):
    n, h, lq, d = q.shape
    out = q.new_empty(n, lq, h, d).transpose(1, 2)
    return out, q.new_empty(n, h, lq, dtype=torch.float32)


@torch.library.custom_op("fastattn::attention_bwd", mutates_args=())
def attention_bwd_op(dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     out: torch.Tensor, lse: torch.Tensor, mask: Optional[torch.Tensor],
                     mask_kind: int, causal: int, scale: float, dropout_p: float = 0.0,
                     seed: Optional[torch.Tensor] = None, mask_grad: bool = False,
                     ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return attention_backward(dout, q, k, v, out, lse, mask, mask_kind, causal, scale,
                              dropout_p, seed, mask_grad)


@attention_bwd_op.register_fake
def _(dout, q, k, v, out, lse, mask, mask_kind, causal, scale, dropout_p=0.0, seed=None,
      mask_grad=False):
    mask_grad = mask_grad and mask is not None and mask_kind == MaskKind.ADD
    return (torch.empty_like(last_dim_contiguous(q)), torch.empty_like(last_dim_contiguous(k)),
            torch.empty_like(last_dim_contiguous(v)),
            torch.empty_like(mask) if mask_grad else lse.new_empty(0))


def _setup_context(ctx, inputs, output):
    """Shared with the CUDA C++ forward op, whose inputs stop after ``scale`` (no dropout)."""
    q, k, v, mask, mask_kind, causal, scale, *rest = inputs
    dropout_p, seed = rest if rest else (0.0, None)
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, mask, seed)
    ctx.mask_kind, ctx.causal, ctx.scale, ctx.dropout_p = mask_kind, causal, scale, dropout_p
    ctx.n_inputs = len(inputs)
    ctx.mark_non_differentiable(lse)


def _backward(ctx, dout, _dlse):
    """dq, dk, dv, and for an additive mask that requires grad (a learned bias) its gradient;
    None for the other inputs."""
    q, k, v, out, lse, mask, seed = ctx.saved_tensors
    mask_grad = ctx.mask_kind == MaskKind.ADD and ctx.needs_input_grad[3]
    dq, dk, dv, dmask = attention_bwd_op(dout, q, k, v, out, lse, mask, ctx.mask_kind,
                                         ctx.causal, ctx.scale, ctx.dropout_p, seed, mask_grad)
    return (dq, dk, dv, dmask if mask_grad else None) + (None,) * (ctx.n_inputs - 4)


attention_fwd_op.register_autograd(_backward, setup_context=_setup_context)


def triton_attention(q, k, v, mask, mask_kind: int, causal: int, scale: Optional[float],
                     dropout_p: float = 0.0, seed: Optional[torch.Tensor] = None
                     ) -> torch.Tensor:
    """Differentiable fused attention through the registered op; returns (N, H, L_q, D).

    With dropout_p > 0 and no ``seed``, a fresh seed is drawn from torch's generator."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    dropout_p = float(dropout_p)
    if dropout_p > 0 and seed is None:
        seed = draw_dropout_seed(q.device)
    if dropout_p == 0:
        seed = None
    return attention_fwd_op(q, k, v, mask, mask_kind, int(causal), scale, dropout_p, seed)[0]
