"""Every public function: input checks, mask rules and backend dispatch.

Two mask conventions, one kernel:

* :func:`attention` follows the guide's rule: where ``mask == 0`` the scaled score is replaced
  by -1e10 (for any mask dtype: bool, integer 0/1, float).  A fully masked row averages V.
* :func:`scaled_dot_product_attention` follows ``torch.nn.functional.scaled_dot_product_attention``:
  a bool mask keeps the positions where it is True, a float mask is added to the scores.

Both take ``dropout_p``, attention dropout inside the fused kernels (see
:mod:`fastattn.kernels.attention`): a fresh Philox seed is drawn from torch's generator on every
call, so ``torch.manual_seed`` makes a run repeatable; the backward regenerates the same mask.

:func:`layer_norm` (with a fused residual add) and :func:`feedforward` (two GEMMs with fused
epilogues) complete the encoder's ops.  :func:`varlen_attention` takes sequences packed without
padding (``unpad_input`` /
``pad_input`` in :mod:`fastattn.padding` move between the layouts).  Every function here picks
its implementation with the one backend policy of :func:`fastattn.backends.choose_backend`;
the plain-PyTorch paths are in :mod:`fastattn.torch_paths`, the kernels' launchers and custom
ops in :mod:`fastattn.ops`.
"""
from __future__ import annotations

import math
import numbers
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

from fastattn.backends import (KERNEL_DTYPES, MAX_HEAD_DIM, MIN_HEAD_DIM,  # noqa: F401
                               choose_backend, get_default_backend, kernel_refusal)
from fastattn.kernels.matmul_configs import ACTIVATIONS
from fastattn.ops.attention import (CAUSAL_BOTTOM_RIGHT, CAUSAL_NONE, CAUSAL_TOP_LEFT,
                                    draw_dropout_seed, triton_attention)
from fastattn.ops.feedforward import feedforward_fwd_op
from fastattn.ops.launch import last_dim_contiguous
from fastattn.ops.layer_norm import layer_norm_fwd_op
from fastattn.cuda_limits import cuda_limit
from fastattn.enums import MaskKind
from fastattn.ops.layer_norm_cuda import cuda_layer_norm
from fastattn.ops.varlen import varlen_attention_fwd_op
from fastattn.padding import pad_input, unpad_input  # noqa: F401  (public through here too)
from fastattn.torch_paths import (torch_attention, torch_feedforward, torch_layer_norm,
                                  torch_varlen, torch_varlen_traced)

MASK_NONE, MASK_KEEP, MASK_ADD, MASK_EXCLUDE = map(int, MaskKind)  # op-level (fastattn.enums)
SUPPORTED_DTYPES = KERNEL_DTYPES


def _check_qkv_tensors(q, k, v, layout: str):
    """q, k, v: tensors of ``layout``'s rank (e.g. "(N, H, L, D)"), one floating dtype, one
    device."""
    dims = layout.count(",") + 1
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != dims:
            raise ValueError(f"{name} must have {dims} dims {layout}, got shape {tuple(t.shape)}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k, v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not q.dtype.is_floating_point:
        raise TypeError(f"q, k, v must be floating point, got {q.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")


def _check_qkv(q, k, v, *, gqa: bool = True):
    """gqa: k and v may have fewer heads than q (H_q a multiple of H_kv)."""
    _check_qkv_tensors(q, k, v, "(N, H, L, D)")
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


def _dispatch(op, q, k, v, mask, mask_kind, causal, scale, backend, dropout_p=0.0):
    if causal == CAUSAL_BOTTOM_RIGHT and q.shape[2] == k.shape[2]:
        causal = CAUSAL_TOP_LEFT  # one diagonal when L_q == L_k
    # the CUDA C++ forward has neither dropout, grouped K / V heads nor bottom-right
    # alignment: "cuda" runs the Triton kernels for those
    cuda_kernel = dropout_p == 0 and k.shape[1] == q.shape[1] and causal != CAUSAL_BOTTOM_RIGHT
    chosen = choose_backend(op, backend, q.device, cuda_kernel=cuda_kernel,
                            refusal=kernel_refusal(q, head_dim=q.shape[-1]))
    if chosen == "torch":
        return torch_attention(q, k, v, mask, mask_kind, causal, scale, dropout_p)
    if chosen == "cuda":
        from fastattn.ops.attention_cuda import cuda_attention
        return cuda_attention(q, k, v, mask, mask_kind, causal, scale)
    return triton_attention(q, k, v, mask, mask_kind, causal, scale, dropout_p,
                            draw_dropout_seed(q.device) if dropout_p > 0 else None)


def attention_backend(backend: Optional[str], x: torch.Tensor, head_dim: int,
                      dropout_p: float = 0.0) -> str:
    """The backend :func:`attention` and :func:`varlen_attention` run for inputs of ``x``'s
    device and dtype with ``head_dim`` (raises as they would): the modules read it to decide
    whether to fuse their Q/K/V projections, so that they hold no backend rule of their own."""
    return choose_backend("attention", backend, x.device, cuda_kernel=dropout_p == 0,
                          refusal=kernel_refusal(x, head_dim=head_dim))


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
        backend: "auto", "triton", "torch", "cuda" or None (the process default), chosen by
            :func:`fastattn.backends.choose_backend`: "auto" runs the torch path wherever the
            kernels cannot (CPU, float64, head_dim outside 16..256 or not a multiple of 8);
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
    return _dispatch("attention", q, k, v, mask, kind, causal, scale, backend, dropout_p)


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
        backend: as :func:`attention`'s; under "auto" it never raises where torch's own
            function works (float64, any head_dim, CPU: the torch path).
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
    out = _dispatch("scaled_dot_product_attention", query, key, value, attn_mask, kind,
                    is_causal, scale, backend, dropout_p)
    return out.squeeze(1) if squeeze else out


def _check_varlen(q, k, v, cu_q, cu_k, max_q, max_k):
    for name, t in (("cu_seqlens_q", cu_q), ("cu_seqlens_k", cu_k)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    _check_qkv_tensors(q, k, v, "(total, H, D)")
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


def varlen_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     cu_seqlens_q: torch.Tensor, cu_seqlens_k: torch.Tensor,
                     max_seqlen_q: int, max_seqlen_k: int, *, causal=False,
                     scale: Optional[float] = None, dropout_p: float = 0.0,
                     backend: Optional[str] = None) -> torch.Tensor:
    """Attention over B sequences packed without padding (like ``flash_attn_varlen_func``).

    Sequence b's queries ``q[cu_seqlens_q[b]:cu_seqlens_q[b+1]]`` attend its keys
    ``k[cu_seqlens_k[b]:cu_seqlens_k[b+1]]`` and nothing else; within a sequence the result is
    :func:`fastattn.attention` without a mask (padding is simply absent, so no mask is needed or
    accepted).  Use :func:`fastattn.unpad_input` / :func:`fastattn.pad_input` to move between
    layouts.

    Args:
        q: (total_q, H, D).  k, v: (total_k, H_kv, D), H a multiple of H_kv (grouped-query
            attention: query head h attends kv head h // (H // H_kv), K / V not expanded).  Any
            token / head strides (views into a packed (total, 3, H, D) projection are read in
            place); the last stride must be 1 or a copy is made.
        cu_seqlens_q, cu_seqlens_k: (B + 1,) int32 on q's device, cumulative lengths starting
            at 0 and ending at most at total_q / total_k (not checked: that would read the
            device).  Tokens past cu_seqlens[-1] belong to no sequence: their output and
            gradients are 0.
        max_seqlen_q, max_seqlen_k: Python ints, normally >= the longest query / key
            sequence.  Query rows past max_seqlen_q within a sequence are not computed: their
            output and gradients are 0 on every backend.  Only the launch grid uses them; no
            device value is read on the host.
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
        backend: "auto", "triton", "torch", "cuda" or None (the process default), chosen by
            :func:`fastattn.backends.choose_backend`; "cuda" runs the Triton kernels (the CUDA
            extension has no variable-length kernel).  "torch" loops over the sequences in
            plain PyTorch and reads cu_seqlens on the host; under torch.compile /
            torch.export it gathers the sequences into a padded (B, max_seqlen, H, D) batch
            instead (no host read).
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
    chosen = choose_backend("varlen_attention", backend, q.device, cuda_kernel=False,
                            refusal=kernel_refusal(q, head_dim=q.shape[-1]))
    if chosen == "torch":
        path = torch_varlen_traced if torch.compiler.is_compiling() else torch_varlen
        return path(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                    causal, scale, dropout_p)
    seed = draw_dropout_seed(q.device) if dropout_p > 0 else None
    return varlen_attention_fwd_op(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                                   max_seqlen_k, causal, scale, dropout_p, seed)[0]


# ---------------------------------------------------------------------------- LayerNorm

def _check_normalized_shape(normalized_shape) -> Tuple[int, ...]:
    if isinstance(normalized_shape, numbers.Integral) and not isinstance(normalized_shape, bool):
        shape = (int(normalized_shape),)
    elif isinstance(normalized_shape, (tuple, list, torch.Size)) and all(
            isinstance(d, numbers.Integral) and not isinstance(d, bool) for d in normalized_shape):
        shape = tuple(int(d) for d in normalized_shape)
    else:
        raise TypeError(f"normalized_shape must be an int or a sequence of ints, got "
                        f"{normalized_shape!r}")
    if len(shape) == 0 or any(d < 0 for d in shape):
        raise ValueError(f"normalized_shape must be non-empty with non-negative sizes, got {shape}")
    return shape


def _check_layer_norm(x, shape, weight, bias, eps, residual):
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if not x.dtype.is_floating_point:
        raise TypeError(f"x must be a floating-point tensor, got {x.dtype}")
    if x.dim() < len(shape) or tuple(x.shape[x.dim() - len(shape):]) != shape:
        raise ValueError(f"x of shape {tuple(x.shape)} does not end with normalized_shape "
                         f"{shape}")
    for name, t in (("weight", weight), ("bias", bias), ("residual", residual)):
        if t is None:
            continue
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor or None, got {type(t).__name__}")
        want = tuple(x.shape) if name == "residual" else shape
        if tuple(t.shape) != want:
            what = "x's shape" if name == "residual" else "normalized_shape"
            raise ValueError(f"{name} must have {what} {want}, got {tuple(t.shape)}")
        if t.device != x.device:
            raise ValueError(f"{name} is on {t.device} but x is on {x.device}")
        if t.dtype != x.dtype:
            raise TypeError(f"{name} must have x's dtype {x.dtype}, got {t.dtype}")
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real):
        raise TypeError(f"eps must be a float, got {type(eps).__name__}")
    if not math.isfinite(eps) or eps < 0:
        raise ValueError(f"eps must be finite and >= 0, got {eps}")


def layer_norm(x: torch.Tensor, normalized_shape: Union[int, Sequence[int]],
               weight: Optional[torch.Tensor] = None, bias: Optional[torch.Tensor] = None,
               eps: float = 1e-5, *, residual: Optional[torch.Tensor] = None,
               backend: Optional[str] = None) -> torch.Tensor:
    """LayerNorm over the trailing ``normalized_shape`` dims of ``x + residual`` (fused add).

    Args:
        x: (..., *normalized_shape).  Rows may be strided; the last dim needs stride 1 or x
            is copied.  float16, bfloat16 or float32 for the Triton kernels.
        normalized_shape: int or tuple; its product is the hidden size N (1 to 65536 and more:
            rows above 8192 elements use the looped kernels).
        weight, bias: optional, shape normalized_shape, x's dtype and device.
        eps: added to the variance.
        residual: optional, x's shape, dtype and device; the result is LN(x + residual) and
            both receive the same gradient (the post-LN encoder's norm(sublayer(x) + x)).
        backend: "auto", "triton", "torch", "cuda" or None (the process default), chosen by
            :func:`fastattn.backends.choose_backend`: "auto" runs torch where the kernels
            cannot (CPU, float64).  "cuda" runs the CUDA C++ kernels for hidden sizes up to
            16384, the Triton ones above.
    Returns:
        x's shape and dtype, contiguous.  Statistics are fp32.  Under CUDA autocast, the inputs
        are computed in float32 and the result is float32, as torch.nn.functional.layer_norm.
    """
    shape = _check_normalized_shape(normalized_shape)
    cuda_autocast = isinstance(x, torch.Tensor) and x.device.type == "cuda" and (
        torch.is_autocast_enabled("cuda"))
    if cuda_autocast:  # torch's CUDA autocast runs layer_norm in float32; CPU's leaves it alone
        up = lambda t: t if t is None or not isinstance(t, torch.Tensor) else t.float()
        x, residual, weight, bias = up(x), up(residual), up(weight), up(bias)
    _check_layer_norm(x, shape, weight, bias, eps, residual)
    n = math.prod(shape)
    # the CUDA extension has kernels for rows of up to its layer_norm_bwd_max_cols elements
    cuda_kernel = x.device.type != "cuda" or n <= cuda_limit("layer_norm_bwd_max_cols")
    chosen = choose_backend("layer_norm", backend, x.device, cuda_kernel=cuda_kernel,
                            refusal=kernel_refusal(x, "x", what="fused LayerNorm kernels"))
    if chosen == "torch":
        return torch_layer_norm(x, shape, weight, bias, eps, residual)
    m = math.prod(x.shape[:x.dim() - len(shape)])
    rows = lambda t: last_dim_contiguous(t.reshape(m, n))
    x2 = rows(x)
    r2 = None if residual is None else rows(residual)
    w = None if weight is None else weight.reshape(n).contiguous()
    b = None if bias is None else bias.reshape(n).contiguous()
    if chosen == "cuda":
        return cuda_layer_norm(x2, r2, w, b, float(eps)).view(x.shape)
    store_sum = residual is not None and torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, residual, weight, bias))
    y = layer_norm_fwd_op(x2, r2, w, b, float(eps), store_sum)[0]
    # Not a view of y (as torch.matmul reshapes its GEMM output): y is fresh and nothing else
    # holds or saves it, and FSDP2 warns about modules that return views.
    return torch.ops.aten._unsafe_view(y, x.shape)


# ------------------------------------------------------------------------- feed-forward

def _check_feedforward(x, w1, b1, w2, b2, activation, residual):
    for name, t in (("x", x), ("w1", w1), ("b1", b1), ("w2", w2), ("b2", b2)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {tuple(ACTIVATIONS)}, got {activation!r}")
    if w1.dim() != 2 or w2.dim() != 2 or b1.dim() != 1 or b2.dim() != 1:
        raise ValueError("w1 and w2 must be 2-D (out_features, in_features); b1, b2 1-D")
    e = x.shape[-1] if x.dim() else None
    hidden = w1.shape[0]
    if w1.shape[1] != e:
        raise ValueError(f"x's last dim ({e}) must equal w1's in_features ({w1.shape[1]})")
    if w2.shape != (e, hidden) or b1.shape != (hidden,) or b2.shape != (e,):
        raise ValueError(f"w2 must be ({e}, {hidden}), b1 ({hidden},), b2 ({e},); got "
                         f"{tuple(w2.shape)}, {tuple(b1.shape)}, {tuple(b2.shape)}")
    if residual is not None:
        if not isinstance(residual, torch.Tensor):
            raise TypeError(f"residual must be a torch.Tensor, got {type(residual).__name__}")
        if residual.shape != x.shape:
            raise ValueError(f"residual must have x's shape {tuple(x.shape)}, got "
                             f"{tuple(residual.shape)}")
    tensors = [x, w1, b1, w2, b2] + ([residual] if residual is not None else [])
    if len({t.device for t in tensors}) != 1:
        raise ValueError(f"x, weights, biases and residual must be on one device, got "
                         f"{[str(t.device) for t in tensors]}")
    if len({t.dtype for t in tensors}) != 1:
        raise TypeError(f"x, weights, biases and residual must share one dtype, got "
                        f"{[str(t.dtype) for t in tensors]}")


def feedforward(x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor,
                b2: torch.Tensor, activation: str = "relu",
                residual: Optional[torch.Tensor] = None, *,
                backend: Optional[str] = None) -> torch.Tensor:
    """``linear(act(linear(x, w1, b1)), w2, b2) + residual``.

    Args:
        x: (..., E).  w1: (H, E), b1: (H,), w2: (E, H), b2: (E,) — nn.Linear's layout.
        activation: "relu", "gelu" (erf) or "gelu_tanh".
        residual: optional (..., E), added in the second GEMM's epilogue.
        backend: "auto", "triton", "torch", "cuda" or None (the process default), chosen by
            :func:`fastattn.backends.choose_backend` ("auto" runs torch where the kernels
            cannot: CPU, float64).  "auto" on CUDA: per GEMM the faster of the Triton kernel
            and cuBLAS(Lt) with its fused epilogue, from the device's tuned table, cuBLAS(Lt)
            without one (see :func:`fastattn.ops.feedforward.feedforward_dispatch_reason`).
            "triton": always the Triton kernels.  "cuda": cuBLAS GEMMs with the bias +
            activation in the CUDA C++ elementwise kernel.
    Returns:
        (..., E) in x's dtype.
    """
    _check_feedforward(x, w1, b1, w2, b2, activation, residual)
    chosen = choose_backend("feedforward", backend, x.device,
                            refusal=kernel_refusal(x, "x", what="fused GEMMs"))
    if chosen == "torch":
        return torch_feedforward(x, w1, b1, w2, b2, activation, residual)
    if chosen == "cuda":  # cuBLAS GEMMs, the bias + activation in the CUDA C++ kernel
        from fastattn.ops.bias_act_cuda import cuda_bias_act

        h = F.linear(x.reshape(-1, x.shape[-1]), w1)
        y = F.linear(cuda_bias_act(h, b1, activation), w2, b2).view(x.shape)
        return y if residual is None else y + residual
    shape = x.shape
    x2 = x.reshape(-1, shape[-1])
    r2 = None if residual is None else residual.reshape(-1, shape[-1])
    choose = (backend or get_default_backend()) == "auto"
    keep_pre = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, w1, b1, w2, b2, residual))
    y = feedforward_fwd_op(x2, w1, b1, w2, b2, r2, ACTIVATIONS[activation], keep_pre,
                           choose)[0]
    # Not a view of y (as torch.matmul reshapes its GEMM output): y is fresh and not saved for
    # backward (h and a are), and FSDP2 warns about modules that return views.
    return torch.ops.aten._unsafe_view(y, shape)
