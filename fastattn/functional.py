"""Public attention functions: input checks, mask rules and backend dispatch.

Two mask conventions, one kernel:

* :func:`attention` follows the guide's rule: where ``mask == 0`` the scaled score is replaced
  by -1e10 (for any mask dtype: bool, integer 0/1, float).  A fully masked row averages V.
* :func:`scaled_dot_product_attention` follows ``torch.nn.functional.scaled_dot_product_attention``:
  a bool mask keeps the positions where it is True, a float mask is added to the scores.

Both take ``dropout_p``, attention dropout inside the fused kernels (see
:mod:`fastattn.kernels.attention`): a fresh Philox seed is drawn from torch's generator on every
call, so ``torch.manual_seed`` makes a run repeatable; the backward regenerates the same mask.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from fastattn.backends import resolve_backend
from fastattn.ops.attention import (CAUSAL_BOTTOM_RIGHT, CAUSAL_NONE, CAUSAL_TOP_LEFT,
                                    draw_dropout_seed, triton_attention)
from fastattn.ops.attention_sdpa import sdpa_attention
from fastattn.reference import attention_reference

MASK_NONE, MASK_KEEP, MASK_ADD, MASK_EXCLUDE = 0, 1, 2, 3  # see fastattn.ops.attention
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MIN_HEAD_DIM, MAX_HEAD_DIM = 16, 256


def _check_qkv(q, k, v, *, gqa: bool = True):
    """gqa: k and v may have fewer heads than q (H_q a multiple of H_kv)."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{name} must have 4 dims (N, H, L, D), got shape {tuple(t.shape)}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k, v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not q.dtype.is_floating_point:
        raise TypeError(f"q, k, v must be floating point, got {q.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    n, h, _, d = q.shape
    if k.shape[0] != n or v.shape[0] != n:
        raise ValueError(f"q, k, v must share the batch size N; got q {tuple(q.shape)}, "
                         f"k {tuple(k.shape)}, v {tuple(v.shape)}")
    _check_heads(h, k.shape[1], v.shape[1], gqa)
    if k.shape[2] != v.shape[2]:
        raise ValueError(f"k and v must have the same length L_k, got k {tuple(k.shape)}, "
                         f"v {tuple(v.shape)}")
    if k.shape[3] != d or v.shape[3] != d:
        raise ValueError(f"q, k, v must share head_dim D, got {d}, {k.shape[3]}, {v.shape[3]}")
    if k.shape[2] == 0 and q.shape[2] > 0:
        raise ValueError("k and v must have at least one key (L_k >= 1)")


def _check_heads(h_q: int, h_k: int, h_v: int, gqa: bool):
    if h_k != h_v:
        raise ValueError(f"k and v must have the same number of heads, got {h_k} and {h_v}")
    if h_k == h_q:
        return
    if not gqa:
        raise ValueError(f"q has {h_q} heads, k and v have {h_k}: pass enable_gqa=True for "
                         f"grouped-query attention")
    if h_k == 0 or h_q % h_k != 0:
        raise ValueError(f"q has {h_q} heads, k has {h_k}: H_q must be a multiple of H_kv")


def _check_mask(mask, q, k, *, key_padding_2d: bool):
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"mask must be a torch.Tensor or None, got {type(mask).__name__}")
    if mask.device != q.device:
        raise ValueError(f"mask is on {mask.device} but q is on {q.device}")
    if mask.is_complex():
        raise TypeError(f"mask dtype {mask.dtype} is not supported")
    n, h, lq, _ = q.shape
    lk = k.shape[2]
    target = (n, h, lq, lk)
    shape = tuple(mask.shape)
    if key_padding_2d and mask.dim() == 2:
        if shape != (n, lk) and shape not in ((1, lk), (n, 1), (1, 1)):
            raise ValueError(f"a 2-D mask is a key-padding mask of shape (N, L_k) = {(n, lk)}, "
                             f"got {shape}")
        return mask
    if mask.dim() > 4:
        raise ValueError(f"mask must have at most 4 dims, got shape {shape}")
    padded = (1,) * (4 - len(shape)) + shape
    if any(m not in (1, t) for m, t in zip(padded, target)):
        raise ValueError(f"mask of shape {shape} is not broadcastable to (N, H, L_q, L_k) = "
                         f"{target}")
    return mask


def _check_scale(scale):
    if scale is None:
        return None
    if isinstance(scale, torch.Tensor) or not isinstance(scale, (int, float)):
        raise TypeError(f"scale must be a Python float or None, got {type(scale).__name__}")
    if not math.isfinite(scale):
        raise ValueError(f"scale must be finite, got {scale}")
    return float(scale)


CAUSAL_ALIGNMENTS = {False: CAUSAL_NONE, True: CAUSAL_TOP_LEFT, "top_left": CAUSAL_TOP_LEFT,
                     "bottom_right": CAUSAL_BOTTOM_RIGHT}


def _check_causal(causal, name: str = "causal") -> int:
    """The op code (CAUSAL_NONE, CAUSAL_TOP_LEFT or CAUSAL_BOTTOM_RIGHT) of a causal argument:
    False, True (= "top_left"), "top_left" or "bottom_right".  Anything else raises, so that
    an unknown value is never taken as a truthy flag."""
    if isinstance(causal, str):
        if causal not in CAUSAL_ALIGNMENTS:
            raise ValueError(f'{name} must be False, True, "top_left" or "bottom_right", got '
                             f"{causal!r}")
    elif not isinstance(causal, bool):
        raise TypeError(f'{name} must be False, True, "top_left" or "bottom_right", got '
                        f"{causal!r}")
    return CAUSAL_ALIGNMENTS[causal]


def _check_dropout(dropout_p):
    if isinstance(dropout_p, torch.Tensor) or not isinstance(dropout_p, (int, float)):
        raise TypeError(f"dropout_p must be a Python float, got {type(dropout_p).__name__}")
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p must be in [0, 1), got {dropout_p}")
    return float(dropout_p)


def _check_kernel_inputs(q):
    if q.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"the fused kernels take float16, bfloat16 or float32, got {q.dtype}")
    d = q.shape[-1]
    if d % 8 != 0 or not MIN_HEAD_DIM <= d <= MAX_HEAD_DIM:
        raise ValueError(f"head_dim must be a multiple of 8 between {MIN_HEAD_DIM} and "
                         f"{MAX_HEAD_DIM}, got {d}")


def _torch_path(q, k, v, mask, mask_kind, causal, scale, dropout_p=0.0):
    """The "torch" backend.  CPU tensors without dropout: torch's fused SDPA kernel with
    fastattn's mask rules (:mod:`fastattn.ops.attention_sdpa`).  Elsewhere (other devices, or
    dropout, for which torch has no fused CPU kernel): plain PyTorch, scores materialized,
    low-precision inputs computed in fp32, the dropout keep mask drawn with ``torch.rand``
    (not the kernels' Philox stream)."""
    if k.shape[1] != q.shape[1]:  # grouped-query attention: plain torch repeats K / V
        group = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
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


def _dispatch(q, k, v, mask, mask_kind, causal, scale, backend, dropout_p=0.0):
    if causal == CAUSAL_BOTTOM_RIGHT and q.shape[2] == k.shape[2]:
        causal = CAUSAL_TOP_LEFT  # one diagonal when L_q == L_k
    chosen = resolve_backend(backend, q.device)
    if chosen == "torch":
        return _torch_path(q, k, v, mask, mask_kind, causal, scale, dropout_p)
    _check_kernel_inputs(q)
    # the CUDA C++ forward has neither grouped K / V heads nor bottom-right alignment
    cuda_ok = k.shape[1] == q.shape[1] and causal != CAUSAL_BOTTOM_RIGHT
    if chosen == "cuda" and dropout_p == 0 and cuda_ok:
        from fastattn.ops.attention_cuda import cuda_attention
        return cuda_attention(q, k, v, mask, mask_kind, causal, scale)
    # the CUDA C++ forward has no dropout: with dropout_p > 0 the Triton kernels run
    return triton_attention(q, k, v, mask, mask_kind, causal, scale, dropout_p,
                            draw_dropout_seed(q.device) if dropout_p > 0 else None)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
              mask: Optional[torch.Tensor] = None, *, causal=False,
              scale: Optional[float] = None, dropout_p: float = 0.0,
              backend: Optional[str] = None) -> torch.Tensor:
    """Fused multi-head attention with the guide's mask rule.

    Args:
        q: (N, H, L_q, D) queries.  Any strides (a copy is made only if the last is not 1).
        k: (N, H_kv, L_k, D) keys.  v: (N, H_kv, L_k, D) values.  L_q may differ from L_k.
            H_kv < H is grouped-query attention (H a multiple of H_kv; H_kv = 1 is multi-query):
            query head h attends kv head h // (H // H_kv); K / V are not expanded in memory.
        mask: optional; where ``mask == 0`` the scaled score is replaced by -1e10.  Shapes:
            (N, L_k) key padding, (N, 1, 1, L_k), or anything broadcastable to
            (N, H, L_q, L_k).  bool, integer or float.  A fully masked row gives mean(V).
        causal: False, True (= "top_left") or "bottom_right".  "top_left" excludes key j
            from query i when j > i (torch's ``is_causal``); "bottom_right" when
            j > i + L_k - L_q (flash-attention's alignment: the last query sees every key).
            They differ only when L_q != L_k; a query that sees no key (bottom-right with
            L_q > L_k) gives 0 and zero gradients::

                top_left, L_q 3, L_k 4     bottom_right, L_q 3, L_k 4
                keys →   0 1 2 3           keys →   0 1 2 3
                query 0  x . . .           query 0  x x . .
                query 1  x x . .           query 1  x x x .
                query 2  x x x .           query 2  x x x x

        scale: multiplies Q K^T; default 1/sqrt(D).
        dropout_p: attention dropout in [0, 1): each softmax weight is zeroed with this
            probability and the kept ones scaled by 1 / (1 - dropout_p).  Applied whenever
            > 0 (pass 0.0 in evaluation, as with torch's function).
        backend: "auto", "triton", "torch", "cuda" or None (the process default).
            backend="cuda" runs the Triton kernels when dropout_p > 0, with grouped K / V
            heads or with bottom-right alignment.
    Returns:
        (N, H, L_q, D), dtype of q.  Differentiable in q, k, v (not in mask).
    """
    _check_qkv(q, k, v)
    mask = _check_mask(mask, q, k, key_padding_2d=True)
    scale = _check_scale(scale)
    dropout_p = _check_dropout(dropout_p)
    causal = _check_causal(causal)
    kind = MASK_NONE if mask is None else MASK_KEEP
    return _dispatch(q, k, v, mask, kind, causal, scale, backend, dropout_p)


def scaled_dot_product_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                                 attn_mask: Optional[torch.Tensor] = None,
                                 dropout_p: float = 0.0, is_causal: bool = False,
                                 scale: Optional[float] = None, enable_gqa: bool = False, *,
                                 backend: Optional[str] = None) -> torch.Tensor:
    """Drop-in for ``torch.nn.functional.scaled_dot_product_attention``.

    Args:
        query: (N, H, L, E) or (N, L, E).  key: (N, H, S, E) or (N, S, E).  value: like key.
        attn_mask: broadcastable to (N, H, L, S) — a 2-D mask is (L, S) as in torch.
            bool: True takes part in attention.  float: added to the scaled scores.
        dropout_p: attention dropout in [0, 1), fused into the kernels (as torch's, applied
            whenever > 0: pass 0.0 in evaluation).
        is_causal: top-left aligned causal mask, as torch's (``"bottom_right"`` and
            ``"top_left"`` are accepted too, as in :func:`attention`).
        scale: default 1/sqrt(E).
        enable_gqa: as torch's: key / value may have H_kv heads, H a multiple of H_kv
            (grouped-query attention, K / V never expanded); without it the head counts must
            match.
    Returns:
        (N, H, L, E) (or (N, L, E) for 3-D inputs).  Equal to torch's result wherever torch's is
        finite (rows whose every score is -inf give NaN in torch and 0 here).
    """
    dropout_p = _check_dropout(dropout_p)
    squeeze = isinstance(query, torch.Tensor) and query.dim() == 3
    if squeeze:
        query, key, value = (t.unsqueeze(1) if isinstance(t, torch.Tensor) else t
                             for t in (query, key, value))
        if isinstance(attn_mask, torch.Tensor) and attn_mask.dim() == 3:
            attn_mask = attn_mask.unsqueeze(1)
    if not isinstance(enable_gqa, bool):
        raise TypeError(f"enable_gqa must be True or False, got {enable_gqa!r}")
    _check_qkv(query, key, value, gqa=enable_gqa)
    attn_mask = _check_mask(attn_mask, query, key, key_padding_2d=False)
    scale = _check_scale(scale)
    is_causal = _check_causal(is_causal, "is_causal")
    if attn_mask is None:
        kind = MASK_NONE
    elif attn_mask.dtype == torch.bool:
        kind = MASK_EXCLUDE
    elif attn_mask.dtype.is_floating_point:
        kind = MASK_ADD
    else:
        raise TypeError(f"attn_mask must be bool or floating point, got {attn_mask.dtype}")
    if attn_mask is not None and attn_mask.dim() < 4:
        attn_mask = attn_mask.reshape((1,) * (4 - attn_mask.dim()) + tuple(attn_mask.shape))
    out = _dispatch(query, key, value, attn_mask, kind, is_causal, scale, backend, dropout_p)
    return out.squeeze(1) if squeeze else out
