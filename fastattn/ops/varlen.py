"""Variable-length (packed) attention: launchers, torch.library ops, autograd, pack / unpack.

Public functions:

    varlen_attention(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, *,
                     causal=False, scale=None, dropout_p=0.0, backend=None) -> (total_q, H, D)
    unpad_input(x, key_padding_mask=None, *, lengths=None)
        -> (packed, indices, cu_seqlens, max_seqlen)
    pad_input(packed, indices, batch, seqlen) -> (batch, seqlen, ...)

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
computes max_seqlen from the mask).  Triton is imported only when a kernel is launched.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch

from fastattn.backends import interpreter_enabled, resolve_backend
from fastattn.ops.attention_sdpa import sdpa_varlen
from fastattn.functional import (_check_causal, _check_dropout, _check_heads,
                                 _check_kernel_inputs, _check_scale, _torch_path)
from fastattn.kernels.attention_configs import block_d_for
from fastattn.kernels.attention_varlen_configs import (
    INTERPRETER_PREPROCESS_BLOCK_M, PREPROCESS_BLOCK_M, pick_varlen_config)
from fastattn.ops.attention import (CAUSAL_BOTTOM_RIGHT, _DTYPE_NAMES, _precision, _seed_arg,
                                    _smem_limit, draw_dropout_seed)
from fastattn.ops.launch import (
    cdiv, ensure_tma_allocator, last_dim_contiguous, launch_on, tma_compatible, tma_supported)

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
    out = torch.empty(total_q, h, d, dtype=q.dtype, device=q.device)
    lse = torch.empty(h, total_q, dtype=torch.float32, device=q.device)
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
            h, h // k.shape[1], total_q, max_q, d, int(causal == CAUSAL_BOTTOM_RIGHT),
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
    dq = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    dk = torch.empty(k.shape, dtype=k.dtype, device=k.device)
    dv = torch.empty(v.shape, dtype=v.dtype, device=v.device)
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
                h, h // h_kv, total_q, max_k, d, bottom_right, qk_scale, scale,
                float(dropout_p),
                BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, num_warps=cfg.num_warps,
                num_stages=cfg.num_stages, **common)
        if max_q > 0:
            cfg = _config("bwd_dq", q, max_q, dropout_p > 0)
            varlen_attention_bwd_dq_kernel[(cdiv(max_q, cfg.block_m) * batch * h,)](
                q, k, v, dout, lse, delta, dq, cu_q, cu_k, seed_t,
                *q.stride()[:2], *k.stride()[:2], *v.stride()[:2], *dout.stride()[:2],
                *dq.stride()[:2],
                h, h // h_kv, total_q, max_q, d, bottom_right, qk_scale, scale,
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


# ----------------------------------------------------------------------------- functional

def _check_varlen(q, k, v, cu_q, cu_k, max_q, max_k):
    for name, t in (("q", q), ("k", k), ("v", v), ("cu_seqlens_q", cu_q),
                    ("cu_seqlens_k", cu_k)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != 3:
            raise ValueError(f"{name} must have 3 dims (total, H, D), got shape {tuple(t.shape)}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k, v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not q.dtype.is_floating_point:
        raise TypeError(f"q, k, v must be floating point, got {q.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    if k.shape != v.shape:
        raise ValueError(f"k and v must have one shape (total_k, H, D), got k {tuple(k.shape)}, "
                         f"v {tuple(v.shape)}")
    if k.shape[2] != q.shape[2]:
        raise ValueError(f"q, k, v must share head_dim D; got q {tuple(q.shape)}, "
                         f"k {tuple(k.shape)}")
    _check_heads(q.shape[1], k.shape[1], v.shape[1], True)
    for name, t in (("cu_seqlens_q", cu_q), ("cu_seqlens_k", cu_k)):
        if t.dtype != torch.int32:
            raise TypeError(f"{name} must be int32, got {t.dtype}")
        if t.dim() != 1 or t.shape[0] < 1 or not t.is_contiguous():
            raise ValueError(f"{name} must be a contiguous 1-D int32 tensor of length batch + 1, "
                             f"got shape {tuple(t.shape)} and strides {t.stride()}")
        if t.device != q.device:
            raise ValueError(f"{name} is on {t.device} but q is on {q.device}")
    if cu_q.shape != cu_k.shape:
        raise ValueError(f"cu_seqlens_q and cu_seqlens_k must have one length B + 1, got "
                         f"{cu_q.shape[0]} and {cu_k.shape[0]}")
    for name, m in (("max_seqlen_q", max_q), ("max_seqlen_k", max_k)):
        if isinstance(m, bool) or not isinstance(m, (int, torch.SymInt)):  # SymInt: traced
            raise TypeError(f"{name} must be a Python int, got {type(m).__name__}")
        if m < 0:
            raise ValueError(f"{name} must be >= 0, got {m}")


def _repeat_kv(q, k, v):
    """k, v with each kv head repeated for its query heads (grouped-query attention)."""
    if k.shape[1] == q.shape[1]:
        return k, v
    group = q.shape[1] // k.shape[1]
    return k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)


def _torch_varlen(q, k, v, cu_q, cu_k, causal, scale, dropout_p=0.0):
    """Plain PyTorch (reads cu_seqlens on the host).  Self-attention on CPU without dropout:
    torch's fused SDPA kernel over length buckets (:func:`fastattn.ops.attention_sdpa.
    sdpa_varlen`); otherwise one sequence at a time through the torch attention path."""
    k, v = _repeat_kv(q, k, v)
    if q.device.type == "cpu" and dropout_p == 0 and (cu_q is cu_k or torch.equal(cu_q, cu_k)):
        return sdpa_varlen(q, k, v, cu_q, bool(causal), scale)  # one diagonal: L_q == L_k
    outs = []
    bounds_q, bounds_k = cu_q.tolist(), cu_k.tolist()
    for b in range(len(bounds_q) - 1):
        qb = q[bounds_q[b]:bounds_q[b + 1]]
        kb, vb = k[bounds_k[b]:bounds_k[b + 1]], v[bounds_k[b]:bounds_k[b + 1]]
        if qb.shape[0] == 0:
            continue
        if kb.shape[0] == 0:  # no keys: zeros, as the kernel
            outs.append(qb * 0)
            continue
        ob = _torch_path(*(t.transpose(0, 1)[None] for t in (qb, kb, vb)), None, 0, causal,
                         scale, dropout_p)
        outs.append(ob[0].transpose(0, 1))
    return torch.cat(outs, 0) if outs else q.new_zeros(q.shape)


def _torch_varlen_traced(q, k, v, cu_q, cu_k, max_q: int, max_k: int, causal, scale,
                         dropout_p=0.0):
    """Plain PyTorch without host reads, for torch.compile / torch.export: each sequence is
    gathered into a (B, max_seqlen, H, D) padded batch, attended with a key-padding mask and
    gathered back; rows in no sequence (or past max_seqlen) give 0."""
    batch = cu_q.shape[0] - 1
    k, v = _repeat_kv(q, k, v)

    def to_padded(t, cu, length):
        """(B, H, length, D) of sequence rows (zeros past each end); (B, length) validity."""
        pos = torch.arange(length, device=t.device)
        start, seqlen = cu[:-1, None].long(), (cu[1:] - cu[:-1])[:, None].long()
        valid = pos[None, :] < seqlen
        rows = torch.where(valid, start + pos[None, :], t.shape[0])  # row total: a zero row
        ext = torch.cat([t, t.new_zeros((1, *t.shape[1:]))])
        return ext[rows].transpose(1, 2), valid

    qp, _ = to_padded(q, cu_q, max_q)
    kp, key_valid = to_padded(k, cu_k, max_k)
    vp, _ = to_padded(v, cu_k, max_k)
    # A sequence without keys attends its zero rows (finite, so no NaN gradient), then gives 0.
    has_keys = key_valid.any(1)[:, None, None, None]
    keep = (key_valid | ~key_valid.any(1, keepdim=True))[:, None, None, :]
    if causal == CAUSAL_BOTTOM_RIGHT:  # each sequence's own diagonal: j <= i + L_k - L_q
        offset = ((cu_k[1:] - cu_k[:-1]) - (cu_q[1:] - cu_q[:-1]))[:, None, None, None]
        pos_q = torch.arange(max_q, device=q.device)[:, None]
        keep = keep & (torch.arange(max_k, device=q.device)[None, :] <= pos_q + offset)
        causal = 0
    out = _torch_path(qp, kp, vp, keep, 3, causal, scale, dropout_p)  # 3: True kept, -inf else
    out = torch.where(has_keys, out, 0.0)
    # token i of the packed queries: sequence seq[i], position i - cu_q[seq[i]]
    tokens = torch.arange(q.shape[0], device=q.device, dtype=cu_q.dtype)
    seq = torch.searchsorted(cu_q[1:], tokens, right=True).clamp(max=max(batch - 1, 0))
    pos = (tokens - cu_q[seq]).long()
    flat = out.transpose(1, 2).reshape(batch * max_q, *q.shape[1:])
    ext = torch.cat([flat, flat.new_zeros((1, *q.shape[1:]))])
    inside = (pos < max_q) & (tokens < cu_q[-1])
    rows = torch.where(inside, seq.long() * max_q + pos, batch * max_q)
    return ext[rows]


def varlen_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     cu_seqlens_q: torch.Tensor, cu_seqlens_k: torch.Tensor,
                     max_seqlen_q: int, max_seqlen_k: int, *, causal=False,
                     scale: Optional[float] = None, dropout_p: float = 0.0,
                     backend: Optional[str] = None) -> torch.Tensor:
    """Attention over B sequences packed without padding (like ``flash_attn_varlen_func``).

    Sequence b's queries ``q[cu_seqlens_q[b]:cu_seqlens_q[b+1]]`` attend its keys
    ``k[cu_seqlens_k[b]:cu_seqlens_k[b+1]]`` and nothing else; within a sequence the result is
    :func:`fastattn.attention` without a mask (padding is simply absent, so no mask is needed or
    accepted).  Use :func:`unpad_input` / :func:`pad_input` to move between layouts.

    Args:
        q: (total_q, H, D).  k, v: (total_k, H_kv, D), H a multiple of H_kv (grouped-query
            attention: query head h attends kv head h // (H // H_kv), K / V not expanded).  Any
            token / head strides (views into a packed (total, 3, H, D) projection are read in
            place); the last stride must be 1 or a copy is made.
        cu_seqlens_q, cu_seqlens_k: (B + 1,) int32 on q's device, cumulative lengths starting
            at 0 and ending at total_q / total_k (not checked: that would read the device).
        max_seqlen_q, max_seqlen_k: Python ints >= the longest query / key sequence (a
            smaller value leaves the rows past it uncomputed).  Only the launch grid uses
            them; no device value is read on the host.
        causal: False, True (= "top_left": key j is excluded from query i of the same
            sequence when j > i) or "bottom_right" (when j > i + L_k - L_q, the lengths of
            that sequence: flash-attention's alignment; a query that sees no key gives 0)::

                top_left                   bottom_right
                keys →   0 1 2 3           keys →   0 1 2 3
                query 0  x . . .           query 0  x x x .
                query 1  x x . .           query 1  x x x x

        scale: multiplies Q K^T; default 1/sqrt(D).
        dropout_p: attention dropout in [0, 1), as :func:`fastattn.attention`'s (sequence b
            gets the mask of batch row b there, for the same seed).
        backend: "auto", "triton", "torch" or None (the process default).  "torch" loops over
            the sequences in plain PyTorch and reads cu_seqlens on the host; under
            torch.compile / torch.export it gathers the sequences into a padded
            (B, max_seqlen, H, D) batch instead (no host read; needs max_seqlen >= every
            length, rows past it give 0).
    Returns:
        (total_q, H, D), dtype of q, contiguous.  Differentiable in q, k, v.  A sequence with
        queries but no keys gives zeros (and zero gradients); sequences of length 0 are fine.
    The kernel's LSE (fastattn::varlen_attention_fwd's second output) is (H, total_q) fp32.
    """
    _check_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k)
    causal = _check_causal(causal)
    scale = _check_scale(scale)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    dropout_p = _check_dropout(dropout_p)
    chosen = resolve_backend(backend, q.device)
    if chosen == "torch":
        if torch.compiler.is_compiling():
            return _torch_varlen_traced(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                                        max_seqlen_k, causal, scale, dropout_p)
        return _torch_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, causal, scale, dropout_p)
    if chosen != "triton":
        raise ValueError(f"varlen_attention supports the 'triton' and 'torch' backends, "
                         f"got backend={backend!r}")
    _check_kernel_inputs(q)
    seed = draw_dropout_seed(q.device) if dropout_p > 0 else None
    return varlen_attention_fwd_op(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                                   max_seqlen_k, causal, scale, dropout_p, seed)[0]


# ------------------------------------------------------------------------- pack / unpack

def unpad_input(x: torch.Tensor, key_padding_mask: Optional[torch.Tensor] = None, *,
                lengths: Optional[torch.Tensor] = None
                ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Drop the padding of a batch: (N, L, ...) -> (total, ...).

    Args:
        x: (N, L, ...) padded batch.
        key_padding_mask: (N, L), nonzero / True at real tokens (any positions, kept in order).
        lengths: alternatively (N,) integer lengths: the first lengths[i] tokens are real.
    Returns:
        packed (total, ...), indices (total,) int64 into the flattened (N·L) positions,
        cu_seqlens (N + 1,) int32, max_seqlen (Python int).
    Reading max_seqlen synchronises with the device once: do it once per batch and pass the
    results to every layer.  Under torch.compile / torch.export max_seqlen is L, an upper
    bound read from the shape (the kernels' extra programs exit at once), and ``total`` is a
    data-dependent size (``torch._dynamo.config.capture_dynamic_output_shape_ops = True``
    lets dynamo capture the ``nonzero``).  Differentiable in x.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() < 2:
        raise ValueError(f"x must have at least 2 dims (N, L, ...), got shape {tuple(x.shape)}")
    n, l = x.shape[:2]
    if (key_padding_mask is None) == (lengths is None):
        raise ValueError("pass exactly one of key_padding_mask and lengths")
    if lengths is not None:
        if not isinstance(lengths, torch.Tensor):
            raise TypeError(f"lengths must be a torch.Tensor, got {type(lengths).__name__}")
        if lengths.shape != (n,) or lengths.dtype.is_floating_point or lengths.is_complex():
            raise ValueError(f"lengths must be an integer tensor of shape (N,) = ({n},), got "
                             f"{tuple(lengths.shape)} {lengths.dtype}")
        lengths = lengths.to(x.device)
        key_padding_mask = torch.arange(l, device=x.device)[None, :] < lengths[:, None]
    else:
        if not isinstance(key_padding_mask, torch.Tensor):
            raise TypeError(f"key_padding_mask must be a torch.Tensor, got "
                            f"{type(key_padding_mask).__name__}")
        if key_padding_mask.shape != (n, l):
            raise ValueError(f"key_padding_mask must have shape (N, L) = {(n, l)}, got "
                             f"{tuple(key_padding_mask.shape)}")
        if key_padding_mask.device != x.device:
            raise ValueError(f"key_padding_mask is on {key_padding_mask.device} but x is on "
                             f"{x.device}")
    keep = key_padding_mask != 0
    seqlens = keep.sum(1, dtype=torch.int32)
    indices = torch.nonzero(keep.flatten()).flatten()
    cu_seqlens = torch.nn.functional.pad(torch.cumsum(seqlens, 0, dtype=torch.int32), (1, 0))
    if torch.compiler.is_compiling():
        max_seqlen = l  # an upper bound: reading the longest length would need a host read
    else:
        max_seqlen = int(seqlens.max()) if n > 0 else 0
    packed = x.reshape(n * l, *x.shape[2:]).index_select(0, indices)
    return packed, indices, cu_seqlens, max_seqlen


def pad_input(packed: torch.Tensor, indices: torch.Tensor, batch: int,
              seqlen: int) -> torch.Tensor:
    """Inverse of :func:`unpad_input`: (total, ...) -> (batch, seqlen, ...), zeros at padding.
    Differentiable in ``packed``."""
    if not isinstance(packed, torch.Tensor) or not isinstance(indices, torch.Tensor):
        raise TypeError("packed and indices must be torch.Tensors")
    if indices.dim() != 1 or indices.shape[0] != packed.shape[0]:
        raise ValueError(f"indices must have shape (total,) = ({packed.shape[0]},), got "
                         f"{tuple(indices.shape)}")
    out = packed.new_zeros(batch * seqlen, *packed.shape[1:])
    out = out.index_put((indices,), packed)
    # a fresh tensor, not a view of the flat one (FSDP2 warns on modules returning views)
    return torch.ops.aten._unsafe_view(out, (batch, seqlen, *packed.shape[1:]))
