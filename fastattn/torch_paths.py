"""The plain-PyTorch implementations behind ``backend="torch"`` (and ``"auto"`` wherever the
fused kernels cannot serve a call): same results as the kernels, on any device and dtype.

    torch_attention(q, k, v, mask, mask_kind, causal, scale, dropout_p)   (N, H, L_q, D)
    torch_varlen(q, k, v, cu_q, cu_k, max_q, max_k, causal, scale, dropout_p)   (total_q, H, D)
    torch_varlen_traced(...)   the same without host reads (torch.compile / torch.export)
    torch_layer_norm(x, shape, weight, bias, eps, residual)   LN(x + residual)
    torch_feedforward(x, w1, b1, w2, b2, activation, residual)

Packed inputs follow the kernels' rules: query rows past ``max_q`` within a sequence, and tokens
outside ``cu_seqlens`` (total > cu[-1]), give 0 with zero gradients; keys past ``max_k`` within
a sequence are not attended; a sequence with queries and no keys gives 0.  Inputs are validated
by :mod:`fastattn.functional`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from fastattn.ops.attention import CAUSAL_BOTTOM_RIGHT
from fastattn.ops.attention_sdpa import (MASK_ADD, MASK_EXCLUDE, MASK_KEEP, sdpa_attention,
                                         sdpa_varlen)
from fastattn.reference import attention_reference


def _repeat_kv(q, k, v, dim: int):
    """k, v with each kv head repeated for its query heads (grouped-query attention: plain
    torch has no grouped kernel, so the torch paths expand K / V)."""
    if k.shape[dim] == q.shape[dim]:
        return k, v
    group = q.shape[dim] // k.shape[dim]
    return k.repeat_interleave(group, dim=dim), v.repeat_interleave(group, dim=dim)


def torch_attention(q, k, v, mask, mask_kind, causal, scale, dropout_p=0.0):
    """CPU tensors without dropout: torch's fused SDPA kernel with fastattn's mask rules
    (:mod:`fastattn.ops.attention_sdpa`).  Elsewhere (other devices, or dropout, for which torch
    has no fused CPU kernel): plain PyTorch, scores materialized, low-precision inputs computed
    in fp32, the dropout keep mask drawn with ``torch.rand`` (not the kernels' Philox stream)."""
    k, v = _repeat_kv(q, k, v, 1)
    if q.device.type == "cpu" and dropout_p == 0:
        return sdpa_attention(q, k, v, mask, mask_kind, causal, scale)
    low = q.dtype in (torch.float16, torch.bfloat16)
    up = (lambda t: t.float()) if low else (lambda t: t)
    keep = mask if mask_kind == MASK_KEEP else None
    add = None
    if mask_kind == MASK_ADD:
        add = up(mask)
    elif mask_kind == MASK_EXCLUDE:
        add = torch.zeros((), dtype=up(q).dtype, device=q.device).masked_fill(~mask, float("-inf"))
    drop = None
    if dropout_p > 0:
        shape = (q.shape[0], q.shape[1], q.shape[2], k.shape[2])
        drop = torch.rand(shape, device=q.device) >= dropout_p
    out = attention_reference(up(q), up(k), up(v), keep, causal=causal, scale=scale,
                              additive_mask=add, dropout_mask=drop, dropout_p=dropout_p)
    if add is not None:  # rows whose every score is -inf: 0, as torch's SDPA and the kernel
        out = out.nan_to_num(nan=0.0)
    return out.to(q.dtype)


def torch_varlen(q, k, v, cu_q, cu_k, max_q: int, max_k: int, causal, scale, dropout_p=0.0):
    """Reads cu_seqlens on the host.  Self-attention on CPU without dropout whose lengths all
    fit max_seqlen: torch's fused SDPA kernel over length buckets
    (:func:`fastattn.ops.attention_sdpa.sdpa_varlen`); otherwise one sequence at a time
    through :func:`torch_attention`, written into a zero (total_q, H, D) tensor.  A sequence
    longer than max_seqlen is cut there (bottom-right alignment then uses the cut lengths, as
    the kernels)."""
    k, v = _repeat_kv(q, k, v, 1)
    bounds_q, bounds_k = cu_q.tolist(), cu_k.tolist()
    lens_q = [b - a for a, b in zip(bounds_q, bounds_q[1:])]
    lens_k = [b - a for a, b in zip(bounds_k, bounds_k[1:])]
    fits = max(lens_q, default=0) <= max_q and max(lens_k, default=0) <= max_k
    if (q.device.type == "cpu" and dropout_p == 0 and fits and bounds_q == bounds_k
            and q.shape[0] == k.shape[0]):
        return sdpa_varlen(q, k, v, cu_q, bool(causal), scale)  # one diagonal: L_q == L_k
    rows, outs = [], []
    for b in range(len(lens_q)):
        lq, lk = min(lens_q[b], max_q), min(lens_k[b], max_k)
        if lq <= 0 or lk <= 0:  # no queries, or no keys: zeros, as the kernel
            continue
        sq, sk = bounds_q[b], bounds_k[b]
        qb, kb, vb = q[sq:sq + lq], k[sk:sk + lk], v[sk:sk + lk]
        ob = torch_attention(*(t.transpose(0, 1)[None] for t in (qb, kb, vb)), None, 0, causal,
                             scale, dropout_p)
        outs.append(ob[0].transpose(0, 1))
        rows.append(torch.arange(sq, sq + lq, device=q.device))
    out = q.new_zeros(q.shape)
    if not outs:
        return out
    return out.index_copy(0, torch.cat(rows), torch.cat(outs).to(q.dtype))


def torch_varlen_traced(q, k, v, cu_q, cu_k, max_q: int, max_k: int, causal, scale,
                        dropout_p=0.0):
    """Plain PyTorch without host reads, for torch.compile / torch.export: each sequence is
    gathered into a (B, max_seqlen, H, D) padded batch, attended with a key-padding mask and
    gathered back; rows in no sequence (or past max_seqlen) give 0."""
    batch = cu_q.shape[0] - 1
    k, v = _repeat_kv(q, k, v, 1)

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
        len_q = (cu_q[1:] - cu_q[:-1]).clamp(max=max_q)
        len_k = (cu_k[1:] - cu_k[:-1]).clamp(max=max_k)
        offset = (len_k - len_q)[:, None, None, None]
        pos_q = torch.arange(max_q, device=q.device)[:, None]
        keep = keep & (torch.arange(max_k, device=q.device)[None, :] <= pos_q + offset)
        causal = 0
    out = torch_attention(qp, kp, vp, keep, MASK_EXCLUDE, causal, scale, dropout_p)
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


def torch_layer_norm(x, shape, weight, bias, eps, residual):
    """``F.layer_norm(x + residual)`` (torch's kernel; the add is not fused)."""
    return F.layer_norm(x if residual is None else x + residual, shape, weight, bias, eps)


def _torch_activation(h, activation):
    if activation == "relu":
        return F.relu(h)
    return F.gelu(h, approximate="tanh" if activation == "gelu_tanh" else "none")


def torch_feedforward(x, w1, b1, w2, b2, activation, residual):
    """Two ``addmm`` (bias in the GEMM, as nn.Linear on 2-D inputs), the
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
