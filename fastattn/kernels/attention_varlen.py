"""Triton kernels for variable-length (packed) attention, FlashAttention-2 style.

B sequences of different lengths are packed back to back along one token axis, with no
padding.  Sequence b owns the query rows cu_q[b]:cu_q[b+1] and the key rows cu_k[b]:cu_k[b+1];
for every b and head h (L_q = cu_q[b+1] - cu_q[b], L_k likewise)

    S = scale * Q_b K_b^T                 (L_q, L_k)
    S[j > i + off] = -inf                 CAUSAL: off = 0 (top-left aligned within the
                                          sequence) or L_k - L_q (bottom_right = 1)
    P = softmax(S),   LSE = logsumexp(S)  (natural log, fp32)
    O_b = (P * Z / (1 - p)) V_b          Z: the dropout keep mask when DROPOUT, else 1

Dropout uses the padded kernels' Philox stream with (b·H + h, i, j) counted within the sequence,
so sequence b gets exactly the mask that row b of a padded batch gets for the same seed.

A sequence with L_k == 0 and L_q > 0 gives O = 0 (and LSE = +inf, so its gradients are 0).

Pointers (token and head strides are free; the last dim of q/k/v/o must have stride 1):

    Q, O, dO, dQ  (total_q, H, D)       K, V, dK, dV  (total_k, H_kv, D), H_kv = H / kv_group
                                        (query head h reads kv head h // kv_group, as padded)
    CU_Q (B + 1,), CU_K (B + 1,)        int32 cumulative sequence lengths, CU[0] == 0
    LSE, DELTA    (H, total_q)          contiguous fp32

Design trade-off: the grid is sized from max_seqlen (a host integer the caller supplies), so
launching never reads cu_seqlens on the host: cdiv(max_seqlen, BLOCK) * B * H programs, and a
program whose tile starts past its own sequence's length returns at once.  A batch of very
uneven lengths therefore launches idle programs (cheap: two loads and a return) in exchange
for no device-to-host synchronisation.  The tile loops are the padded kernels' own
(:mod:`fastattn.kernels.attention_tiles`), run without a mask; only the addressing differs:
each sequence's rows are an (L, D) matrix based at its first token (a TMA descriptor of that
shape in the forward when TMA is on).  The backward is the
same deterministic pair (dK/dV over query blocks, dQ over key blocks) with no atomics; the
delta preprocess is the padded one, run over the packed tokens as a single sequence.
"""
import triton
import triton.language as tl

from fastattn.kernels.attention import attention_bwd_preprocess_kernel  # noqa: F401
from fastattn.kernels.attention_tiles import (
    LOG2E, _dkdv_q_walk, _dq_kv_walk, _dropout_state, _fwd_finish, _fwd_kv_walk, _load_rows,
    _program_tile, _rows_source, _store_rows)


@triton.jit
def _sequence(CU, b, max_seqlen):
    """(first token as int64, length) of sequence b, the length cut at max_seqlen: rows past
    max_seqlen take no part (their outputs and gradients stay 0), on every backend alike."""
    start = tl.load(CU + b)
    end = tl.load(CU + b + 1)
    return start.to(tl.int64), tl.minimum(end - start, max_seqlen)



@triton.jit
def varlen_attention_fwd_kernel(
    Q, K, V, O, LSE, CU_Q, CU_K, SEED,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_ot, stride_oh,
    H, kv_group, total_q, max_seqlen_q, max_seqlen_k, D,
    bottom_right,  # CAUSAL: 1 aligns each sequence's diagonal bottom-right, 0 top-left
    qk_scale,  # scale * log2(e), >= 0
    dropout_p,
    CAUSAL: tl.constexpr, EVEN_D: tl.constexpr, TMA: tl.constexpr,
    PRECISION: tl.constexpr, DROPOUT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    start_m, bh = _program_tile(max_seqlen_q, BLOCK_M)
    b = bh // H
    h = bh % H
    q_start, L_q = _sequence(CU_Q, b, max_seqlen_q)
    if start_m >= L_q:
        return
    k_start, L_k = _sequence(CU_K, b, max_seqlen_k)
    q_base = Q + q_start * stride_qt + h * stride_qh
    k_base = K + k_start * stride_kt + (h // kv_group) * stride_kh
    v_base = V + k_start * stride_vt + (h // kv_group) * stride_vh
    o_base = O + q_start * stride_ot + h * stride_oh
    k_desc = _rows_source(k_base, L_k, D, stride_kt, BLOCK_N, BLOCK_D, TMA)
    v_desc = _rows_source(v_base, L_k, D, stride_vt, BLOCK_N, BLOCK_D, TMA)
    q = _load_rows(_rows_source(q_base, L_q, D, stride_qt, BLOCK_M, BLOCK_D, TMA), q_base,
                   stride_qt, start_m, L_q, D, BLOCK_M, BLOCK_D, TMA, True, EVEN_D)
    seed, drop_scale = _dropout_state(SEED, dropout_p, DROPOUT)
    causal_off = tl.where(bottom_right != 0, L_k - L_q, 0)  # of the lengths cut at max_seqlen
    acc, l_i, m_i = _fwd_kv_walk(
        q, k_desc, v_desc, k_base, v_base, stride_kt, stride_vt, Q, 0, 0, start_m, L_q, L_k,
        L_k, D, causal_off, qk_scale, 0.0, seed, bh, dropout_p, False, CAUSAL, False, 0, False,
        DROPOUT, PRECISION, TMA, EVEN_D, BLOCK_M, BLOCK_N, BLOCK_D)
    out, lse = _fwd_finish(acc, l_i, m_i, drop_scale, DROPOUT)  # no keys: O = 0, LSE = +inf
    _store_rows(O, o_base, stride_ot, start_m, L_q, D, out.to(O.dtype.element_ty), TMA, EVEN_D,
                BLOCK_M, BLOCK_D)
    offs_m = start_m + tl.arange(0, BLOCK_M)
    tl.store(LSE + h * total_q + q_start + offs_m, lse, mask=offs_m < L_q)


@triton.jit
def varlen_attention_bwd_dkdv_kernel(
    Q, K, V, DO, LSE, DELTA, DK, DV, CU_Q, CU_K, SEED,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh,
    stride_dot, stride_doh, stride_dkt, stride_dkh, stride_dvt, stride_dvh,
    H, kv_group, total_q, max_seqlen_q, max_seqlen_k, D, bottom_right,
    qk_scale, sm_scale, dropout_p,
    CAUSAL: tl.constexpr, EVEN_D: tl.constexpr, TMA: tl.constexpr, PRECISION: tl.constexpr,
    DROPOUT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """One program per (key block, sequence·kv head): walks the sequence's query blocks of
    each of the kv_group query heads that share the kv head, in order."""
    start_n, bhk = _program_tile(max_seqlen_k, BLOCK_N)
    H_kv = H // kv_group
    b = bhk // H_kv
    hk = bhk % H_kv
    k_start, L_k = _sequence(CU_K, b, max_seqlen_k)
    if start_n >= L_k:
        return
    q_start, L_q = _sequence(CU_Q, b, max_seqlen_q)
    k_base = K + k_start * stride_kt + hk * stride_kh
    v_base = V + k_start * stride_vt + hk * stride_vh
    k = _load_rows(_rows_source(k_base, L_k, D, stride_kt, BLOCK_N, BLOCK_D, TMA), k_base,
                   stride_kt, start_n, L_k, D, BLOCK_N, BLOCK_D, TMA, True, EVEN_D)
    v = _load_rows(_rows_source(v_base, L_k, D, stride_vt, BLOCK_N, BLOCK_D, TMA), v_base,
                   stride_vt, start_n, L_k, D, BLOCK_N, BLOCK_D, TMA, True, EVEN_D)
    seed, drop_scale = _dropout_state(SEED, dropout_p, DROPOUT)
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    causal_off = tl.where(bottom_right != 0, L_k - L_q, 0)  # of the lengths cut at max_seqlen
    for g in range(0, kv_group):  # the group's query heads in order: deterministic
        h = hk * kv_group + g
        q_base = Q + q_start * stride_qt + h * stride_qh
        do_base = DO + q_start * stride_dot + h * stride_doh
        stats = h * total_q + q_start
        dk, dv = _dkdv_q_walk(
            dk, dv, k, v, _rows_source(q_base, L_q, D, stride_qt, BLOCK_M, BLOCK_D, TMA),
            _rows_source(do_base, L_q, D, stride_dot, BLOCK_M, BLOCK_D, TMA), q_base, do_base,
            stride_qt, stride_dot, LSE + stats, DELTA + stats, Q, 0, 0, start_n, L_q, L_k, L_k,
            D, causal_off, qk_scale, 0.0, seed, b * H + h, dropout_p, drop_scale, False, False,
            CAUSAL, 0, False, DROPOUT, PRECISION, TMA, EVEN_D, BLOCK_M, BLOCK_N, BLOCK_D)
    _store_rows(DK, DK + k_start * stride_dkt + hk * stride_dkh, stride_dkt, start_n, L_k, D,
                (dk * sm_scale).to(DK.dtype.element_ty), False, EVEN_D, BLOCK_N, BLOCK_D)
    _store_rows(DV, DV + k_start * stride_dvt + hk * stride_dvh, stride_dvt, start_n, L_k, D,
                dv.to(DV.dtype.element_ty), False, EVEN_D, BLOCK_N, BLOCK_D)


@triton.jit
def varlen_attention_bwd_dq_kernel(
    Q, K, V, DO, LSE, DELTA, DQ, CU_Q, CU_K, SEED,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh,
    stride_dot, stride_doh, stride_dqt, stride_dqh,
    H, kv_group, total_q, max_seqlen_q, max_seqlen_k, D, bottom_right,
    qk_scale, sm_scale, dropout_p,
    CAUSAL: tl.constexpr, EVEN_D: tl.constexpr, TMA: tl.constexpr, PRECISION: tl.constexpr,
    DROPOUT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """One program per (query block, sequence·head): walks the sequence's key blocks."""
    start_m, bh = _program_tile(max_seqlen_q, BLOCK_M)
    b = bh // H
    h = bh % H
    q_start, L_q = _sequence(CU_Q, b, max_seqlen_q)
    if start_m >= L_q:
        return
    k_start, L_k = _sequence(CU_K, b, max_seqlen_k)
    offs_m = start_m + tl.arange(0, BLOCK_M)
    q_base = Q + q_start * stride_qt + h * stride_qh
    do_base = DO + q_start * stride_dot + h * stride_doh
    q = _load_rows(_rows_source(q_base, L_q, D, stride_qt, BLOCK_M, BLOCK_D, TMA), q_base,
                   stride_qt, start_m, L_q, D, BLOCK_M, BLOCK_D, TMA, True, EVEN_D)
    do = _load_rows(_rows_source(do_base, L_q, D, stride_dot, BLOCK_M, BLOCK_D, TMA), do_base,
                    stride_dot, start_m, L_q, D, BLOCK_M, BLOCK_D, TMA, True, EVEN_D)
    stats = h * total_q + q_start
    lse2 = tl.load(LSE + stats + offs_m, mask=offs_m < L_q, other=float("inf")) * LOG2E
    delta = tl.load(DELTA + stats + offs_m, mask=offs_m < L_q, other=0.0)
    seed, drop_scale = _dropout_state(SEED, dropout_p, DROPOUT)
    k_base = K + k_start * stride_kt + (h // kv_group) * stride_kh
    v_base = V + k_start * stride_vt + (h // kv_group) * stride_vh
    dq = _dq_kv_walk(
        q, do, lse2, delta, _rows_source(k_base, L_k, D, stride_kt, BLOCK_N, BLOCK_D, TMA),
        _rows_source(v_base, L_k, D, stride_vt, BLOCK_N, BLOCK_D, TMA), k_base, v_base,
        stride_kt, stride_vt, Q, 0, 0, Q, start_m, L_q, L_k, L_k, D,
        tl.where(bottom_right != 0, L_k - L_q, 0), qk_scale, 0.0, seed, bh, dropout_p,
        drop_scale, False, CAUSAL, False, 0, False, False, DROPOUT, PRECISION, TMA,
        EVEN_D, BLOCK_M, BLOCK_N, BLOCK_D)
    _store_rows(DQ, DQ + q_start * stride_dqt + h * stride_dqh, stride_dqt, start_m, L_q, D,
                (dq * sm_scale).to(DQ.dtype.element_ty), False, EVEN_D, BLOCK_M, BLOCK_D)
