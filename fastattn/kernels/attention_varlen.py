"""Triton kernels for variable-length (packed) attention, FlashAttention-2 style.

B sequences of different lengths are packed back to back along one token axis, with no
padding.  Sequence b owns the query rows cu_q[b]:cu_q[b+1] and the key rows cu_k[b]:cu_k[b+1];
for every b and head h (L_q = cu_q[b+1] - cu_q[b], L_k likewise)

    S = scale * Q_b K_b^T                 (L_q, L_k)
    S[j > i] = -inf                       causal != 0 (top-left aligned within the sequence)
    P = softmax(S),   LSE = logsumexp(S)  (natural log, fp32)
    O_b = (P * Z / (1 - p)) V_b          Z: the dropout keep mask when DROPOUT, else 1

Dropout uses the padded kernels' Philox stream with (b·H + h, i, j) counted within the sequence,
so sequence b gets exactly the mask that row b of a padded batch gets for the same seed.

A sequence with L_k == 0 and L_q > 0 gives O = 0 (and LSE = +inf, so its gradients are 0).

Pointers (token and head strides are free; the last dim of q/k/v/o must have stride 1):

    Q, O, dO, dQ  (total_q, H, D)       K, V, dK, dV  (total_k, H, D)
    CU_Q (B + 1,), CU_K (B + 1,)        int32 cumulative sequence lengths, CU[0] == 0
    LSE, DELTA    (H, total_q)          contiguous fp32

Design trade-off: the grid is sized from max_seqlen (a host integer the caller supplies), so
launching never reads cu_seqlens on the host: cdiv(max_seqlen, BLOCK) * B * H programs, and a
program whose tile starts past its own sequence's length returns at once.  A batch of very
uneven lengths therefore launches idle programs (cheap: two loads and a return) in exchange
for no device-to-host synchronisation.  The tile loops, masks and probabilities are those of
the padded kernels (:mod:`fastattn.kernels.attention`); only the addressing differs: each
sequence's rows are a (L, D) block pointer based at its first token.  The backward is the
same deterministic pair (dK/dV over query blocks, dQ over key blocks) with no atomics; the
delta preprocess is the padded one, run over the packed tokens as a single sequence.
"""
import triton
import triton.language as tl

from fastattn.kernels.attention import (  # noqa: F401  (preprocess re-exported for launchers)
    LN2, LOG2E, _apply_masks, _dropout_keep, _dropout_state, _dv_and_dropout,
    _probabilities, _program_tile,
    attention_bwd_preprocess_kernel)


@triton.jit
def _sequence(CU, b):
    """(first token as int64, length) of sequence b."""
    start = tl.load(CU + b)
    end = tl.load(CU + b + 1)
    return start.to(tl.int64), end - start


@triton.jit
def varlen_attention_fwd_kernel(
    Q, K, V, O, LSE, CU_Q, CU_K, SEED,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_ot, stride_oh,
    H, total_q, max_seqlen_q, D, causal,
    qk_scale,  # scale * log2(e)
    dropout_p,
    PRECISION: tl.constexpr, DROPOUT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    start_m, bh = _program_tile(max_seqlen_q, BLOCK_M)
    b = bh // H
    h = bh % H
    q_start, L_q = _sequence(CU_Q, b)
    if start_m >= L_q:
        return
    k_start, L_k = _sequence(CU_K, b)
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)

    q_ptr = tl.make_block_ptr(Q + q_start * stride_qt + h * stride_qh, shape=(L_q, D),
                              strides=(stride_qt, 1), offsets=(start_m, 0),
                              block_shape=(BLOCK_M, BLOCK_D), order=(1, 0))
    kT_ptr = tl.make_block_ptr(K + k_start * stride_kt + h * stride_kh, shape=(D, L_k),
                               strides=(1, stride_kt), offsets=(0, 0),
                               block_shape=(BLOCK_D, BLOCK_N), order=(0, 1))
    v_ptr = tl.make_block_ptr(V + k_start * stride_vt + h * stride_vh, shape=(L_k, D),
                              strides=(stride_vt, 1), offsets=(0, 0),
                              block_shape=(BLOCK_N, BLOCK_D), order=(1, 0))
    q = tl.load(q_ptr, boundary_check=(0, 1), padding_option="zero")

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    seed, drop_scale = _dropout_state(SEED, dropout_p, DROPOUT)

    hi = L_k
    if causal:
        hi = tl.minimum(L_k, start_m + BLOCK_M)
    for start_n in range(0, hi, BLOCK_N):
        kT = tl.load(kT_ptr, boundary_check=(0, 1), padding_option="zero")
        s = tl.dot(q, kT, input_precision=PRECISION) * qk_scale
        s, _ = _apply_masks(s, 0, offs_m, start_n + offs_n, L_k, causal, 0.0, 0)
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.math.exp2(s - m_safe[:, None])
        alpha = tl.math.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        if DROPOUT:
            p = tl.where(_dropout_keep(seed, bh, offs_m, start_n, dropout_p, BLOCK_N), p, 0.0)
        v = tl.load(v_ptr, boundary_check=(0, 1), padding_option="zero")
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m_i = m_new
        kT_ptr = tl.advance(kT_ptr, (0, BLOCK_N))
        v_ptr = tl.advance(v_ptr, (BLOCK_N, 0))

    has_any = l_i > 0.0  # False only for a sequence without keys
    l_safe = tl.where(has_any, l_i, 1.0)
    if DROPOUT:
        out = acc * (drop_scale / l_safe)[:, None]
    else:
        out = acc / l_safe[:, None]
    lse = tl.where(has_any, (m_i + tl.math.log2(l_safe)) * LN2, float("inf"))
    o_ptr = tl.make_block_ptr(O + q_start * stride_ot + h * stride_oh, shape=(L_q, D),
                              strides=(stride_ot, 1), offsets=(start_m, 0),
                              block_shape=(BLOCK_M, BLOCK_D), order=(1, 0))
    tl.store(o_ptr, out.to(O.dtype.element_ty), boundary_check=(0, 1))
    tl.store(LSE + h * total_q + q_start + offs_m, lse, mask=offs_m < L_q)


@triton.jit
def varlen_attention_bwd_dkdv_kernel(
    Q, K, V, DO, LSE, DELTA, DK, DV, CU_Q, CU_K, SEED,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh,
    stride_dot, stride_doh, stride_dkt, stride_dkh, stride_dvt, stride_dvh,
    H, total_q, max_seqlen_k, D, causal,
    qk_scale, sm_scale, dropout_p,
    PRECISION: tl.constexpr, DROPOUT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """One program per (key block, sequence·head): walks the sequence's query blocks."""
    start_n, bh = _program_tile(max_seqlen_k, BLOCK_N)
    b = bh // H
    h = bh % H
    k_start, L_k = _sequence(CU_K, b)
    if start_n >= L_k:
        return
    q_start, L_q = _sequence(CU_Q, b)
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_m0 = tl.arange(0, BLOCK_M)
    k_ptr = tl.make_block_ptr(K + k_start * stride_kt + h * stride_kh, shape=(L_k, D),
                              strides=(stride_kt, 1), offsets=(start_n, 0),
                              block_shape=(BLOCK_N, BLOCK_D), order=(1, 0))
    v_ptr = tl.make_block_ptr(V + k_start * stride_vt + h * stride_vh, shape=(L_k, D),
                              strides=(stride_vt, 1), offsets=(start_n, 0),
                              block_shape=(BLOCK_N, BLOCK_D), order=(1, 0))
    k = tl.load(k_ptr, boundary_check=(0, 1), padding_option="zero")
    v = tl.load(v_ptr, boundary_check=(0, 1), padding_option="zero")
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    seed, drop_scale = _dropout_state(SEED, dropout_p, DROPOUT)

    lo = 0
    if causal:
        lo = (start_n // BLOCK_M) * BLOCK_M
    q_ptr = tl.make_block_ptr(Q + q_start * stride_qt + h * stride_qh, shape=(L_q, D),
                              strides=(stride_qt, 1), offsets=(lo, 0),
                              block_shape=(BLOCK_M, BLOCK_D), order=(1, 0))
    do_ptr = tl.make_block_ptr(DO + q_start * stride_dot + h * stride_doh, shape=(L_q, D),
                               strides=(stride_dot, 1), offsets=(lo, 0),
                               block_shape=(BLOCK_M, BLOCK_D), order=(1, 0))
    stats = h * total_q + q_start
    for start_m in range(lo, L_q, BLOCK_M):
        offs_m = start_m + offs_m0
        q = tl.load(q_ptr, boundary_check=(0, 1), padding_option="zero")
        do = tl.load(do_ptr, boundary_check=(0, 1), padding_option="zero")
        lse2 = tl.load(LSE + stats + offs_m, mask=offs_m < L_q, other=float("inf")) * LOG2E
        delta = tl.load(DELTA + stats + offs_m, mask=offs_m < L_q, other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
        s, _ = _apply_masks(s, 0, offs_m, offs_n, L_k, causal, 0.0, 0)
        p = _probabilities(s, lse2, offs_m, L_k, causal, 0)
        dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
        dv_tile, dp = _dv_and_dropout(p, do, dp, seed, bh, offs_m, start_n, dropout_p,
                                      drop_scale, DROPOUT, BLOCK_N, PRECISION)
        dv += dv_tile
        ds = p * (dp - delta[:, None])
        dk += tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=PRECISION)
        q_ptr = tl.advance(q_ptr, (BLOCK_M, 0))
        do_ptr = tl.advance(do_ptr, (BLOCK_M, 0))

    dk_ptr = tl.make_block_ptr(DK + k_start * stride_dkt + h * stride_dkh, shape=(L_k, D),
                               strides=(stride_dkt, 1), offsets=(start_n, 0),
                               block_shape=(BLOCK_N, BLOCK_D), order=(1, 0))
    dv_ptr = tl.make_block_ptr(DV + k_start * stride_dvt + h * stride_dvh, shape=(L_k, D),
                               strides=(stride_dvt, 1), offsets=(start_n, 0),
                               block_shape=(BLOCK_N, BLOCK_D), order=(1, 0))
    tl.store(dk_ptr, (dk * sm_scale).to(DK.dtype.element_ty), boundary_check=(0, 1))
    tl.store(dv_ptr, dv.to(DV.dtype.element_ty), boundary_check=(0, 1))


@triton.jit
def varlen_attention_bwd_dq_kernel(
    Q, K, V, DO, LSE, DELTA, DQ, CU_Q, CU_K, SEED,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh,
    stride_dot, stride_doh, stride_dqt, stride_dqh,
    H, total_q, max_seqlen_q, D, causal,
    qk_scale, sm_scale, dropout_p,
    PRECISION: tl.constexpr, DROPOUT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """One program per (query block, sequence·head): walks the sequence's key blocks."""
    start_m, bh = _program_tile(max_seqlen_q, BLOCK_M)
    b = bh // H
    h = bh % H
    q_start, L_q = _sequence(CU_Q, b)
    if start_m >= L_q:
        return
    k_start, L_k = _sequence(CU_K, b)
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_n0 = tl.arange(0, BLOCK_N)
    q_ptr = tl.make_block_ptr(Q + q_start * stride_qt + h * stride_qh, shape=(L_q, D),
                              strides=(stride_qt, 1), offsets=(start_m, 0),
                              block_shape=(BLOCK_M, BLOCK_D), order=(1, 0))
    do_ptr = tl.make_block_ptr(DO + q_start * stride_dot + h * stride_doh, shape=(L_q, D),
                               strides=(stride_dot, 1), offsets=(start_m, 0),
                               block_shape=(BLOCK_M, BLOCK_D), order=(1, 0))
    q = tl.load(q_ptr, boundary_check=(0, 1), padding_option="zero")
    do = tl.load(do_ptr, boundary_check=(0, 1), padding_option="zero")
    stats = h * total_q + q_start
    lse2 = tl.load(LSE + stats + offs_m, mask=offs_m < L_q, other=float("inf")) * LOG2E
    delta = tl.load(DELTA + stats + offs_m, mask=offs_m < L_q, other=0.0)
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    seed, drop_scale = _dropout_state(SEED, dropout_p, DROPOUT)

    kT_ptr = tl.make_block_ptr(K + k_start * stride_kt + h * stride_kh, shape=(D, L_k),
                               strides=(1, stride_kt), offsets=(0, 0),
                               block_shape=(BLOCK_D, BLOCK_N), order=(0, 1))
    vT_ptr = tl.make_block_ptr(V + k_start * stride_vt + h * stride_vh, shape=(D, L_k),
                               strides=(1, stride_vt), offsets=(0, 0),
                               block_shape=(BLOCK_D, BLOCK_N), order=(0, 1))
    hi = L_k
    if causal:
        hi = tl.minimum(L_k, start_m + BLOCK_M)
    for start_n in range(0, hi, BLOCK_N):
        offs_n = start_n + offs_n0
        kT = tl.load(kT_ptr, boundary_check=(0, 1), padding_option="zero")
        vT = tl.load(vT_ptr, boundary_check=(0, 1), padding_option="zero")
        s = tl.dot(q, kT, input_precision=PRECISION) * qk_scale
        s, _ = _apply_masks(s, 0, offs_m, offs_n, L_k, causal, 0.0, 0)
        p = _probabilities(s, lse2, offs_m, L_k, causal, 0)
        dp = tl.dot(do, vT, input_precision=PRECISION)
        if DROPOUT:
            kept = _dropout_keep(seed, bh, offs_m, start_n, dropout_p, BLOCK_N)
            dp = tl.where(kept, dp * drop_scale, 0.0)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(kT.dtype), tl.trans(kT), input_precision=PRECISION)
        kT_ptr = tl.advance(kT_ptr, (0, BLOCK_N))
        vT_ptr = tl.advance(vT_ptr, (0, BLOCK_N))

    dq_ptr = tl.make_block_ptr(DQ + q_start * stride_dqt + h * stride_dqh, shape=(L_q, D),
                               strides=(stride_dqt, 1), offsets=(start_m, 0),
                               block_shape=(BLOCK_M, BLOCK_D), order=(1, 0))
    tl.store(dq_ptr, (dq * sm_scale).to(DQ.dtype.element_ty), boundary_check=(0, 1))
