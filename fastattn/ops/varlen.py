"""Variable-length (packed) attention: launchers, torch.library ops and autograd.

The public function :func:`fastattn.varlen_attention` (input checks, backend choice) lives in
:mod:`fastattn.functional`, its plain-PyTorch paths in :mod:`fastattn.torch_paths`, and
``unpad_input`` / ``pad_input`` in :mod:`fastattn.padding`; the three names stay importable from
here.

Ops (``fastattn`` namespace, one node each under ``torch.compile``):

    fastattn::varlen_attention_fwd(q, k, v, cu_q, cu_k, max_q, max_k, causal, scale,
                                   dropout_p, seed?)
        -> (out (total_q, H, D), lse (H, total_q) fp32, natural log)
    fastattn::varlen_attention_bwd(dout, q, k, v, out, lse, cu_q, cu_k, max_q, max_k, causal,
                                   scale, dropout_p, seed?) -> (dq, dk, dv)

dropout_p / seed as in :mod:`fastattn.ops.attention`: sequence b gets the mask that batch row b
of the padded kernels gets for the same seed.

Nothing here reads a device tensor on the host: the launch grids come from the Python ints
max_seqlen_q / max_seqlen_k.  :func:`unpad_input` is the one place that synchronises (it
computes max_seqlen from the mask).  Inputs are validated by :mod:`fastattn.functional`; these
ops assume valid arguments.  Triton is imported only when a kernel is launched.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from fastattn.backends import interpreter_enabled
from fastattn.kernels.attention_configs import block_d_for
from fastattn.kernels.attention_varlen_configs import (
    INTERPRETER_PREPROCESS_BLOCK_M, PREPROCESS_BLOCK_M, pick_varlen_config)
from fastattn.ops.attention import CAUSAL_BOTTOM_RIGHT
from fastattn.ops.launch import (
    _DTYPE_NAMES, _precision, _seed_arg, _smem_limit, cdiv, ensure_tma_allocator,
    last_dim_contiguous, launch_on, tma_compatible, tma_supported)
from fastattn.padding import pad_input, unpad_input  # noqa: F401  (old import path)

LOG2E = 1.4426950408889634


def _config(kernel: str, q: torch.Tensor, max_seqlen: int, dropout: bool):
    return pick_varlen_config(kernel, q.shape[-1], _DTYPE_NAMES[q.dtype], max_seqlen,
                              _smem_limit(q.device), interpreter=interpreter_enabled(),
                              dropout=dropout, device=q.device)


# ------------------------------------------------------------------------------ launchers

def varlen_forward(q, k, v, cu_q, cu_k, max_q: int, max_k: int, causal: int, scale: float,
                   dropout_p: float = 0.0, seed: Optional[torch.Tensor] = None):
    """Launch the forward kernel; returns (out (total_q, H, D), lse (H, total_q) fp32)."""
    from fastattn.kernels.attention_varlen import varlen_attention_fwd_kernel

    q, k, v = (last_dim_contiguous(t) for t in (q, k, v))
    total_q, h, d = q.shape
    batch = cu_q.shape[0] - 1
    # zeros / +inf: rows in no sequence (past cu_q[-1]) or past max_q are never written, and
    # LSE = +inf makes the backward give them no weight (as a sequence without keys)
    out = torch.zeros(total_q, h, d, dtype=q.dtype, device=q.device)
    lse = torch.full((h, total_q), float("inf"), dtype=torch.float32, device=q.device)
    if out.numel() == 0 or batch <= 0 or max_q <= 0:  # nothing to launch: no query rows
        return out.zero_(), lse.fill_(float("inf"))
    if scale < 0:  # the kernel's fused running max needs a scale > 0: S = |scale| q (-k)^T
        k, scale = -k, -scale
    elif scale == 0:  # S = 0 everywhere, as with zero queries and scale 1
        q, scale = torch.zeros_like(q), 1.0
    cfg = _config("fwd", q, max_q, dropout_p > 0)
    block_d = block_d_for(d)
    tma = tma_supported(q.device) and tma_compatible((q, k, v, out), d, block_d)
    if tma:
        ensure_tma_allocator()
    grid = (cdiv(max_q, cfg.block_m) * batch * h,)
    with launch_on(q.device):
        varlen_attention_fwd_kernel[grid](
            q, k, v, out, lse, cu_q, cu_k, _seed_arg(seed, lse, dropout_p),
            *q.stride()[:2], *k.stride()[:2], *v.stride()[:2], *out.stride()[:2],
            h, h // k.shape[1], total_q, max_q, max_k, d, int(causal == CAUSAL_BOTTOM_RIGHT),
            scale * LOG2E, float(dropout_p),
            CAUSAL=bool(causal), EVEN_D=d == block_d, TMA=tma, PRECISION=_precision(q.dtype),
            DROPOUT=dropout_p > 0, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_D=block_d,
            num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    return out, lse


def varlen_backward(dout, q, k, v, out, lse, cu_q, cu_k, max_q: int, max_k: int, causal: int,
                    scale: float, dropout_p: float = 0.0, seed: Optional[torch.Tensor] = None):
    """Launch the delta preprocess, dK/dV and dQ kernels; returns (dq, dk, dv).
    Deterministic: no atomics (with H_kv < H, one dK/dV program sums its kv head's query
    heads in order)."""
    from fastattn.kernels.attention_varlen import (
        attention_bwd_preprocess_kernel, varlen_attention_bwd_dkdv_kernel,
        varlen_attention_bwd_dq_kernel)

    q, k, v, out, dout = (last_dim_contiguous(t) for t in (q, k, v, out, dout))
    total_q, h, d = q.shape
    h_kv = k.shape[1]
    batch = cu_q.shape[0] - 1
    # zeros: rows in no sequence, or past max_q / max_k, are never written
    dq = torch.zeros(q.shape, dtype=q.dtype, device=q.device)
    dk = torch.zeros(k.shape, dtype=k.dtype, device=k.device)
    dv = torch.zeros(v.shape, dtype=v.dtype, device=v.device)
    if q.numel() == 0 or k.numel() == 0 or batch <= 0:
        return dq.zero_(), dk.zero_(), dv.zero_()
    block_d = block_d_for(d)
    delta = torch.empty(h, total_q, dtype=torch.float32, device=q.device)
    tma = tma_supported(q.device) and tma_compatible((q, k, v, dout), d, block_d)
    if tma:
        ensure_tma_allocator()
    common = dict(CAUSAL=bool(causal), EVEN_D=d == block_d, TMA=tma,
                  PRECISION=_precision(q.dtype), DROPOUT=dropout_p > 0, BLOCK_D=block_d)
    bottom_right = int(causal == CAUSAL_BOTTOM_RIGHT)
    seed_t = _seed_arg(seed, lse, dropout_p)
    qk_scale = scale * LOG2E
    if max_k <= 0:
        dk.zero_(), dv.zero_()
    if max_q <= 0:
        dq.zero_()
    with launch_on(q.device):
        # The padded preprocess over all packed tokens as one sequence: (1, H, total_q, D).
        pre_m = INTERPRETER_PREPROCESS_BLOCK_M if interpreter_enabled() else PREPROCESS_BLOCK_M
        attention_bwd_preprocess_kernel[(cdiv(total_q, pre_m) * h,)](
            out, dout, delta, 0, out.stride(1), out.stride(0), 0, dout.stride(1),
            dout.stride(0), h, total_q, d, BLOCK_M=pre_m, BLOCK_D=block_d)
        if max_k > 0:
            cfg = _config("bwd_dkdv", q, max_k, dropout_p > 0)
            varlen_attention_bwd_dkdv_kernel[(cdiv(max_k, cfg.block_n) * batch * h_kv,)](
                q, k, v, dout, lse, delta, dk, dv, cu_q, cu_k, seed_t,
                *q.stride()[:2], *k.stride()[:2], *v.stride()[:2], *dout.stride()[:2],
                *dk.stride()[:2], *dv.stride()[:2],
                h, h // h_kv, total_q, max_q, max_k, d, bottom_right, qk_scale, scale,
                float(dropout_p),
                BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, num_warps=cfg.num_warps,
                num_stages=cfg.num_stages, **common)
        if max_q > 0:
            cfg = _config("bwd_dq", q, max_q, dropout_p > 0)
            varlen_attention_bwd_dq_kernel[(cdiv(max_q, cfg.block_m) * batch * h,)](
                q, k, v, dout, lse, delta, dq, cu_q, cu_k, seed_t,
                *q.stride()[:2], *k.stride()[:2], *v.stride()[:2], *dout.stride()[:2],
                *dq.stride()[:2],
                h, h // h_kv, total_q, max_q, max_k, d, bottom_right, qk_scale, scale,
                float(dropout_p),
                BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, num_warps=cfg.num_warps,
                num_stages=cfg.num_stages, **common)
    return dq, dk, dv


# --------------------------------------------------------------------------- torch.library ops

@torch.library.custom_op("fastattn::varlen_attention_fwd", mutates_args=())
def varlen_attention_fwd_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                            cu_seqlens_q: torch.Tensor, cu_seqlens_k: torch.Tensor,
                            max_seqlen_q: int, max_seqlen_k: int, causal: int,
                            scale: float, dropout_p: float = 0.0,
                            seed: Optional[torch.Tensor] = None
                            ) -> Tuple[torch.Tensor, torch.Tensor]:
    return varlen_forward(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                          causal, scale, dropout_p, seed)


@varlen_attention_fwd_op.register_fake
def _(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal, scale,
      dropout_p=0.0, seed=None):
    total_q, h, _ = q.shape
    return q.new_empty(q.shape), q.new_empty(h, total_q, dtype=torch.float32)


@torch.library.custom_op("fastattn::varlen_attention_bwd", mutates_args=())
def varlen_attention_bwd_op(dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor,
                            v: torch.Tensor, out: torch.Tensor, lse: torch.Tensor,
                            cu_seqlens_q: torch.Tensor, cu_seqlens_k: torch.Tensor,
                            max_seqlen_q: int, max_seqlen_k: int, causal: int,
                            scale: float, dropout_p: float = 0.0,
                            seed: Optional[torch.Tensor] = None
                            ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return varlen_backward(dout, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                           max_seqlen_k, causal, scale, dropout_p, seed)


@varlen_attention_bwd_op.register_fake
def _(dout, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal,
      scale, dropout_p=0.0, seed=None):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _setup_context(ctx, inputs, output):
    q, k, v, cu_q, cu_k, max_q, max_k, causal, scale, dropout_p, seed = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, cu_q, cu_k, seed)
    ctx.max_q, ctx.max_k, ctx.causal, ctx.scale = max_q, max_k, causal, scale
    ctx.dropout_p = dropout_p
    ctx.mark_non_differentiable(lse)


def _backward(ctx, dout, _dlse):
    q, k, v, out, lse, cu_q, cu_k, seed = ctx.saved_tensors
    dq, dk, dv = varlen_attention_bwd_op(dout, q, k, v, out, lse, cu_q, cu_k, ctx.max_q,
                                         ctx.max_k, ctx.causal, ctx.scale, ctx.dropout_p, seed)
    return dq, dk, dv, None, None, None, None, None, None, None, None


varlen_attention_fwd_op.register_autograd(_backward, setup_context=_setup_context)


def __getattr__(name: str):
    """``from fastattn.ops.varlen import varlen_attention`` (the old path) still works; the
    function lives in :mod:`fastattn.functional`, which imports this module."""
    if name == "varlen_attention":
        from fastattn import functional

        return functional.varlen_attention
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
