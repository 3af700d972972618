"""Attention through torch's fused kernel (``torch.nn.functional.scaled_dot_product_attention``),
with fastattn's mask rules reproduced exactly: the ``"torch"`` backend's path on CPU tensors.

Computes, for q (N, H, L_q, D), k and v (N, H, L_k, D), the same result as
:func:`fastattn.reference.attention_reference` (guide's rule) or torch's own SDPA rule, without
materializing the (L_q, L_k) scores in Python: on CPU, torch picks its flash kernel (blocked,
online softmax, fp32 accumulation) for fp32 / bf16 / fp16 inputs, with or without a mask.

Where the rules differ from SDPA's, only in rows that keep no key:

* guide's rule (``mask == 0`` replaces the score by -1e10): a row whose every key is masked
  attends uniformly to the keys causality allows, i.e. its output is the mean of those V rows.
  SDPA would give 0 (its CPU flash kernel) or NaN (its math kernel) there.
* torch's bool / float rule: fastattn gives 0 (and zero gradients) where every score is -inf.

Those rows are found from the mask alone (an (N, H, L_q) bool reduction, no scores), given a
mask that keeps every key (so SDPA stays finite and its backward NaN-free) and then replaced by
their exact value with ``torch.where`` (zero gradient through SDPA's rows there).  Batches
without such rows — every key-padding batch with a real token per sequence — pay nothing.

Trade-off: a (…, L_q, L_k) bool mask is built when causal and a mask meet (SDPA takes one or
the other); attention dropout (no fused CPU kernel in torch) stays on the materialized path of
:mod:`fastattn.functional`.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from fastattn.enums import MaskKind

MASK_NONE, MASK_KEEP, MASK_ADD, MASK_EXCLUDE = map(int, MaskKind)  # op-level mask kinds
CAUSAL_BOTTOM_RIGHT = 2  # fastattn.ops.attention's causal code


def _as_4d(mask: torch.Tensor, key_padding_2d: bool) -> torch.Tensor:
    if key_padding_2d and mask.dim() == 2:
        return mask[:, None, None, :]
    return mask.reshape((1,) * (4 - mask.dim()) + tuple(mask.shape))


def _causal(lq: int, lk: int, device, offset: int = 0) -> torch.Tensor:
    """(L_q, L_k) bool, True where key j may be seen by query i (j <= i + offset: 0 top-left
    aligned, L_k - L_q bottom-right)."""
    return torch.ones(lq, lk, dtype=torch.bool, device=device).tril(offset)


def _causal_mean(v: torch.Tensor, lq: int, offset: int = 0) -> torch.Tensor:
    """(N, H, L_q, D): row i is the mean of v[..., :i + offset + 1, :] (all of v past its
    end, 0 for a row that sees no key)."""
    lk = v.shape[-2]
    seen = torch.arange(lq, device=v.device) + offset + 1
    last = (seen - 1).clamp(min=0, max=lk - 1)
    sums = v.float().cumsum(-2).index_select(-2, last)
    mean = sums / seen.clamp(min=1, max=lk).to(sums.dtype)[:, None]
    return torch.where((seen > 0)[:, None], mean, 0.0).to(v.dtype)


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                   mask: Optional[torch.Tensor], mask_kind: int, causal: int,
                   scale: Optional[float]) -> torch.Tensor:
    """Attention with fastattn's semantics on torch's SDPA.

    mask_kind: MASK_NONE; MASK_KEEP (guide's rule, ``mask == 0`` masked, any dtype, a 2-D mask
    is (N, L_k) key padding); MASK_EXCLUDE (bool, True attends); MASK_ADD (float, added).
    causal: 0 none, 1 top-left, 2 bottom-right (query i sees key j <= i + L_k - L_q; a row
    that sees no key gives 0).
    Returns (N, H, L_q, D) in q's dtype; differentiable in q, k, v.
    """
    lq, lk = q.shape[-2], k.shape[-2]
    offset = lk - lq if causal == CAUSAL_BOTTOM_RIGHT else 0
    if mask is None and (offset == 0 or not causal):
        return F.scaled_dot_product_attention(q, k, v, is_causal=bool(causal) and lq > 0,
                                              scale=scale)
    if mask is None:  # bottom-right: the diagonal as a mask
        mask, mask_kind = _causal(lq, lk, q.device, offset)[None, None], MASK_EXCLUDE
    mask = _as_4d(mask, key_padding_2d=mask_kind == MASK_KEEP)
    if mask_kind == MASK_ADD:
        add = mask.to(q.dtype)
        allowed = add > float("-inf")
    else:
        allowed = mask if mask.dtype == torch.bool else mask != 0
        add = None
    if causal:
        allowed = allowed & _causal(lq, lk, q.device, offset)
    empty = ~allowed.any(-1, keepdim=True)  # (…, L_q or 1, 1): rows that keep no key
    if not torch.compiler.is_compiling() and not bool(empty.any()):  # traced: no host read
        return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed if add is None else (
            add if not causal else add.masked_fill(~allowed, float("-inf"))), scale=scale)
    if add is None:
        attn_mask = allowed | empty
    else:
        attn_mask = add.masked_fill(~allowed, float("-inf")).masked_fill(empty, 0.0)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=scale)
    if mask_kind == MASK_KEEP:  # the guide's rule: every allowed score is -1e10, uniform weights
        fill = (_causal_mean(v, lq, offset) if causal
                else v.float().mean(-2, keepdim=True).to(v.dtype))
    else:
        fill = torch.zeros((), dtype=out.dtype, device=out.device)
    return torch.where(empty, fill, out)


VARLEN_BUCKETS = 1


def sdpa_varlen(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor,
                causal: bool, scale: Optional[float],
                buckets: int = VARLEN_BUCKETS) -> torch.Tensor:
    """Packed self-attention (q, k, v (T, H, D), the sequences of ``cu_seqlens`` (B + 1,),
    the same for queries and keys) on ``buckets`` SDPA calls: the sequences (sorted by length
    when buckets > 1) are cut into groups; each group is gathered into a (g, longest, H, D)
    batch (``index_select``; padded slots read row 0 and are masked as keys), attended with
    a key-padding mask, and its real rows are selected back.

    Trade-off: one SDPA call per sequence would compute no padded score, but each call is a
    parallel region (slow on a busy CPU) and strided per-sequence views are slow in torch's
    CPU kernel; one call for the whole batch (the default) computes the padded scores of the
    longest sequence but moves each of q, k, v and the output once, and its real rows come
    out in packed order.  More buckets trade calls and a final permutation for less padding.
    Reads cu_seqlens on the host.  Returns (T, H, D); rows in no sequence are 0.
    """
    total = q.shape[0]
    lengths, starts = (cu_seqlens[1:] - cu_seqlens[:-1]).tolist(), cu_seqlens[:-1].tolist()
    order = [b for b in range(len(lengths)) if lengths[b] > 0]
    if not order:
        return q.new_zeros(q.shape)
    if buckets > 1:
        order.sort(key=lengths.__getitem__)
    size = -(-len(order) // max(1, buckets))
    outs, rows_out = [], []
    for first in range(0, len(order), size):
        group = order[first:first + size]
        longest = max(lengths[b] for b in group)
        start = torch.tensor([starts[b] for b in group], device=q.device)
        length = torch.tensor([lengths[b] for b in group], device=q.device)
        pos = torch.arange(longest, device=q.device)
        valid = pos[None, :] < length[:, None]  # (g, longest)
        rows = torch.where(valid, start[:, None] + pos[None, :], 0).flatten()
        qg, kg, vg = (t.index_select(0, rows).unflatten(0, valid.shape).transpose(1, 2)
                      for t in (q, k, v))  # (g, H, longest, D)
        mask = None if min(lengths[b] for b in group) == longest else valid[:, None, None, :]
        if causal and mask is not None:
            mask = mask & _causal(longest, longest, q.device)
        out = F.scaled_dot_product_attention(qg, kg, vg, attn_mask=mask,
                                             is_causal=causal and mask is None, scale=scale)
        keep = valid.flatten().nonzero().flatten()
        outs.append(out.transpose(1, 2).reshape(-1, *q.shape[1:]).index_select(0, keep))
        rows_out.append(rows.index_select(0, keep))
    if len(outs) == 1 and outs[0].shape[0] == total:  # one group in packed order
        return outs[0]
    return q.new_zeros(q.shape).index_copy(0, torch.cat(rows_out), torch.cat(outs))
