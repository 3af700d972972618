"""Triton kernels for fused scaled-dot-product attention, FlashAttention-2 style.

Computes, for every batch z and head h,

    S = scale * Q K^T                     (L_q, L_k)
    S[mask == 0] = masked_score           MASK_KIND == MASK_KEEP   (-1e10: the guide's rule;
                                                                    -inf: torch's bool mask)
    S += mask                             MASK_KIND == MASK_ADD    (torch's float attn_mask)
    S[j > i + causal_off] = -inf          CAUSAL, and every j >= L_k (causal_off, at run time:
                                          0 top-left aligned, L_k - L_q bottom-right)
    P = softmax(S),     LSE = logsumexp(S)  (natural log, fp32)
    O = (P * Z / (1 - p)) V                Z = 1 everywhere unless DROPOUT (attention dropout)

Pointers (all 4-D tensors are addressed through their strides; the last dim of q/k/v/o must
have stride 1):

    Q   (N, H, L_q, D)      K, V  (N, H_kv, L_k, D)   O, dO, dQ  (N, H, L_q, D)
    dK, dV  (N, H_kv, L_k, D)  LSE, DELTA  (N, H, L_q) contiguous fp32
          H_kv = H / kv_group (grouped-query attention when kv_group > 1): query head h reads
          kv head h // kv_group; K and V are never expanded.
    MASK  any tensor viewed as (N, H, L_q, L_k) with stride 0 on broadcast dims; never copied.
          MASK_ROW: the mask is the same for every query row (stride_mm == 0, key padding), so
          one (BLOCK_N,) row is loaded per key block instead of a (BLOCK_M, BLOCK_N) tile.
    LENS  (N,) int32, KEY_LENGTHS only: per sequence the length of a prefix key-padding mask
          (``fastattn.ops.key_lengths``), or -1 where the mask is not a prefix or is all zero.
          A sequence with a length walks keys [0, length) with no mask at all: padded key
          blocks are neither loaded nor masked (their -1e10 scores would add exp(-1e10 - m) = 0
          exactly), and dK / dV of padded keys are 0 without a walk.  Other sequences read
          the mask (a fully padded one must attend uniformly over all L_k keys).

The tile loops are shared with the variable-length kernels (:mod:`.attention_tiles`): these
kernels are shells that locate one (batch, head) and call them.  On sm_90a the forward reads
Q, K, V and writes O through TMA tensor descriptors (TMA constexpr; the launcher checks the
16-byte alignment TMA needs and falls back to pointer loads).

Design trade-off: the (L_q × L_k) score matrix never reaches memory.  Forward keeps a BLOCK_M
row block of Q, its fp32 accumulator and the running max / sum in registers and streams K/V in
BLOCK_N blocks (online softmax, exp2 with log2(e) folded into the scale).  head_dim is padded to
BLOCK_D = next power of two inside the kernel (loads masked), so 80 and 96 cost as much as 128.
Backward recomputes P from the saved LSE (no O(L²) storage) and runs two kernels instead of one
with atomics: one walks the query blocks for a fixed key block (dK, dV), one walks the key
blocks for a fixed query block (dQ).  That repeats the Q K^T and dO V^T products once more but
makes the backward deterministic, bit for bit, with no atomics and no dQ accumulation buffer.
The dK/dV tiles are key-major (S^T = K Q^T), so the key block is the M dimension of all four of
its products (wgmma on sm_90 with 64-key blocks); both backward kernels read Q, K, V, dO
through TMA descriptors when TMA is on.  MASK_GRAD: the dQ kernel also writes dS, the gradient
of a trainable additive mask.  With grouped K/V heads one dK/dV program owns a (key block, kv
head) and walks the kv_group query heads of its group one after the other (kv_group times the
walk per program, N·H_kv·L_k/BLOCK_N programs), so the sum over the group stays deterministic
too; dropout counters and LSE / DELTA stay those of the query head.
A row that sees no key (bottom-right alignment with L_q > L_k) ends with LSE = +inf: O = 0
and every gradient through it is 0.

Dropout (DROPOUT constexpr, rate ``dropout_p`` at run time): the keep mask Z is never stored.
Element (z·H + h, i, j) keeps its probability when output j % 4 of Philox-4x32-10 at the counter
(j // 4, i, z·H + h, 0) under the key SEED (one int64 read from memory, drawn by the launcher
from torch's generator for every call) maps to a uniform number >= dropout_p.  The backward kernels
regenerate exactly the same Z from the same counters; :func:`attention_dropout_mask_kernel`
writes Z out for tests.  Cost: ten Philox rounds per score element, recomputed in each of the
three kernels (2.5 per element: one call serves four keys); nothing extra in memory.  The row
sum LSE is taken before dropout, as in torch.

Masked scores under MASK_KEEP are the constant -1e10, so a fully masked row attends uniformly
to its keys.  In fp32, lse = -1e10 + log(count) rounds to -1e10 and loses log(count); the
backward kernels therefore recognise such rows (lse < -1e9) and use p = 1 / count directly.
"""
import triton
import triton.language as tl

from fastattn.kernels.attention_tiles import (  # noqa: F401  (re-exported)
    FULLY_MASKED_LSE, LN2, LOG2E, MASK_ADD, MASK_KEEP, MASK_NONE, _dkdv_q_walk, _dq_kv_walk,
    _dropout_keep, _dropout_state, _fwd_finish, _fwd_kv_walk, _load_rows, _program_tile,
    _rows_source, _store_rows)


@triton.jit
def attention_dropout_mask_kernel(SEED, Z, L_q, L_k, dropout_p,
                                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Z (N·H, L_q, L_k) uint8 contiguous: the dropout keep mask the attention kernels use for
    the same SEED and dropout_p (1 = kept).  Grid: cdiv(L_q, BLOCK_M) · N·H programs."""
    start_m, bh = _program_tile(L_q, BLOCK_M)
    seed = tl.load(SEED)
    offs_m = start_m + tl.arange(0, BLOCK_M)
    for start_n in range(0, L_k, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        keep = _dropout_keep(seed, bh, offs_m, start_n, dropout_p, BLOCK_N)
        ok = (offs_m[:, None] < L_q) & (offs_n[None, :] < L_k)
        tl.store(Z + bh * L_q * L_k + offs_m[:, None].to(tl.int64) * L_k + offs_n[None, :],
                 keep.to(tl.uint8), mask=ok)


@triton.jit
def attention_fwd_kernel(
    Q, K, V, MASK, LENS, O, LSE, SEED,
    stride_qz, stride_qh, stride_qm,
    stride_kz, stride_kh, stride_kn,
    stride_vz, stride_vh, stride_vn,
    stride_mz, stride_mh, stride_mm, stride_mn,
    stride_oz, stride_oh, stride_om,
    H, kv_group, L_q, L_k, D,
    causal_off,  # CAUSAL: query i sees key j <= i + causal_off (0 top-left, L_k - L_q
    # bottom-right, flash-attention's alignment)
    qk_scale,  # scale * log2(e), >= 0
    masked_raw,  # what Q K^T becomes where mask == 0: -2^k, 2^k qk_scale >= 1e10 log2(e)
    # (the guide's -1e10 rule) or -inf (torch's bool mask); see ops.attention
    dropout_p,  # probability of zeroing an attention weight (used when DROPOUT)
    MASK_KIND: tl.constexpr, MASK_ROW: tl.constexpr, KEY_LENGTHS: tl.constexpr,
    CAUSAL: tl.constexpr, EVEN_N: tl.constexpr, EVEN_D: tl.constexpr, TMA: tl.constexpr,
    PRECISION: tl.constexpr, DROPOUT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    start_m, bh = _program_tile(L_q, BLOCK_M)
    z = bh // H
    h = bh % H
    q_base = Q + z * stride_qz + h * stride_qh
    k_base = K + z * stride_kz + (h // kv_group) * stride_kh
    v_base = V + z * stride_vz + (h // kv_group) * stride_vh
    o_base = O + z * stride_oz + h * stride_oh
    mask_base = MASK + z * stride_mz + h * stride_mh
    k_desc = _rows_source(k_base, L_k, D, stride_kn, BLOCK_N, BLOCK_D, TMA)
    v_desc = _rows_source(v_base, L_k, D, stride_vn, BLOCK_N, BLOCK_D, TMA)
    q = _load_rows(_rows_source(q_base, L_q, D, stride_qm, BLOCK_M, BLOCK_D, TMA), q_base,
                   stride_qm, start_m, L_q, D, BLOCK_M, BLOCK_D, TMA, True, EVEN_D)
    seed, drop_scale = _dropout_state(SEED, dropout_p, DROPOUT)
    if KEY_LENGTHS:
        length = tl.load(LENS + z)
        if length > 0:  # a prefix mask: walk the real keys, read no mask
            acc, l_i, m_i = _fwd_kv_walk(
                q, k_desc, v_desc, k_base, v_base, stride_kn, stride_vn, mask_base, stride_mm,
                stride_mn, start_m, L_q, L_k, length, D, causal_off, qk_scale, masked_raw, seed, bh,
                dropout_p, False, CAUSAL, False, MASK_KIND, MASK_ROW, DROPOUT, PRECISION, TMA,
                EVEN_D, BLOCK_M, BLOCK_N, BLOCK_D)
        else:
            acc, l_i, m_i = _fwd_kv_walk(
                q, k_desc, v_desc, k_base, v_base, stride_kn, stride_vn, mask_base, stride_mm,
                stride_mn, start_m, L_q, L_k, L_k, D, causal_off, qk_scale, masked_raw, seed, bh,
                dropout_p, True, CAUSAL, EVEN_N, MASK_KIND, MASK_ROW, DROPOUT, PRECISION, TMA,
                EVEN_D, BLOCK_M, BLOCK_N, BLOCK_D)
    else:
        acc, l_i, m_i = _fwd_kv_walk(
            q, k_desc, v_desc, k_base, v_base, stride_kn, stride_vn, mask_base, stride_mm,
            stride_mn, start_m, L_q, L_k, L_k, D, causal_off, qk_scale, masked_raw, seed, bh,
            dropout_p,
            MASK_KIND != 0, CAUSAL, EVEN_N, MASK_KIND, MASK_ROW, DROPOUT, PRECISION, TMA, EVEN_D,
            BLOCK_M, BLOCK_N, BLOCK_D)
    out, lse = _fwd_finish(acc, l_i, m_i, drop_scale, DROPOUT)
    _store_rows(O, o_base, stride_om, start_m, L_q, D, out.to(O.dtype.element_ty),
                TMA, EVEN_D, BLOCK_M, BLOCK_D)
    offs_m = start_m + tl.arange(0, BLOCK_M)
    tl.store(LSE + bh * L_q + offs_m, lse, mask=offs_m < L_q)


@triton.jit
def attention_bwd_preprocess_kernel(
    O, DO, DELTA,
    stride_oz, stride_oh, stride_om,
    stride_doz, stride_doh, stride_dom,
    H, L_q, D,
    BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """DELTA[z, h, i] = sum_d dO[z, h, i, d] * O[z, h, i, d] in fp32."""
    start_m, bh = _program_tile(L_q, BLOCK_M)
    z = bh // H
    h = bh % H
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    ok = (offs_m[:, None] < L_q) & (offs_d[None, :] < D)
    o = tl.load(O + z * stride_oz + h * stride_oh + offs_m[:, None].to(tl.int64) * stride_om
                + offs_d[None, :],
                mask=ok, other=0.0).to(tl.float32)
    do = tl.load(DO + z * stride_doz + h * stride_doh + offs_m[:, None].to(tl.int64) * stride_dom
                 + offs_d[None, :], mask=ok, other=0.0).to(tl.float32)
    tl.store(DELTA + bh * L_q + offs_m, tl.sum(o * do, 1), mask=offs_m < L_q)


@triton.jit
def _dkdv_head(dk, dv, k, v, LSE, DELTA, mask_base, length, q_base, do_base,
               stride_qm, stride_dom, stride_mm, stride_mn, start_n, bh, L_q, L_k, D,
               causal_off, qk_scale, masked_score, seed, dropout_p, drop_scale,
               MASK_KIND: tl.constexpr, MASK_ROW: tl.constexpr, KEY_LENGTHS: tl.constexpr,
               CAUSAL: tl.constexpr, EVEN_D: tl.constexpr, TMA: tl.constexpr,
               PRECISION: tl.constexpr, DROPOUT: tl.constexpr,
               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """(dk, dv) fp32 of one key block (k, v resident) plus the gradient from the queries of
    the head bh."""
    q_desc = _rows_source(q_base, L_q, D, stride_qm, BLOCK_M, BLOCK_D, TMA)
    do_desc = _rows_source(do_base, L_q, D, stride_dom, BLOCK_M, BLOCK_D, TMA)
    lse = LSE + bh * L_q
    delta = DELTA + bh * L_q
    if KEY_LENGTHS:
        if length > 0:
            # Key blocks of real keys only: no test; the block the length cuts: the key test;
            # blocks of padded keys only: nothing to add, no walk.
            if start_n + BLOCK_N <= length:
                dk, dv = _dkdv_q_walk(
                    dk, dv, k, v, q_desc, do_desc, q_base, do_base, stride_qm, stride_dom, lse,
                    delta, mask_base, stride_mm, stride_mn, start_n, L_q, L_k, length, D,
                    causal_off, qk_scale, masked_score, seed, bh, dropout_p, drop_scale, False,
                    False, CAUSAL, MASK_KIND, MASK_ROW, DROPOUT, PRECISION, TMA, EVEN_D, BLOCK_M,
                    BLOCK_N, BLOCK_D)
            elif start_n < length:
                dk, dv = _dkdv_q_walk(
                    dk, dv, k, v, q_desc, do_desc, q_base, do_base, stride_qm, stride_dom, lse,
                    delta, mask_base, stride_mm, stride_mn, start_n, L_q, L_k, length, D,
                    causal_off, qk_scale, masked_score, seed, bh, dropout_p, drop_scale, False,
                    True, CAUSAL, MASK_KIND, MASK_ROW, DROPOUT, PRECISION, TMA, EVEN_D, BLOCK_M,
                    BLOCK_N, BLOCK_D)
        else:
            dk, dv = _dkdv_q_walk(
                dk, dv, k, v, q_desc, do_desc, q_base, do_base, stride_qm, stride_dom, lse, delta,
                mask_base, stride_mm, stride_mn, start_n, L_q, L_k, L_k, D, causal_off,
                qk_scale, masked_score, seed, bh, dropout_p, drop_scale, True, False, CAUSAL,
                MASK_KIND, MASK_ROW, DROPOUT, PRECISION, TMA, EVEN_D, BLOCK_M, BLOCK_N,
                BLOCK_D)
    else:
        dk, dv = _dkdv_q_walk(
            dk, dv, k, v, q_desc, do_desc, q_base, do_base, stride_qm, stride_dom, lse, delta,
            mask_base, stride_mm, stride_mn, start_n, L_q, L_k, L_k, D, causal_off, qk_scale,
            masked_score, seed, bh, dropout_p, drop_scale, MASK_KIND != 0, False, CAUSAL,
            MASK_KIND, MASK_ROW, DROPOUT, PRECISION, TMA, EVEN_D, BLOCK_M, BLOCK_N, BLOCK_D)
    return dk, dv


@triton.jit
def attention_bwd_dkdv_kernel(
    Q, K, V, MASK, LENS, DO, LSE, DELTA, DK, DV, SEED,
    stride_qz, stride_qh, stride_qm,
    stride_kz, stride_kh, stride_kn,
    stride_vz, stride_vh, stride_vn,
    stride_mz, stride_mh, stride_mm, stride_mn,
    stride_doz, stride_doh, stride_dom,
    stride_dkz, stride_dkh, stride_dkn,
    stride_dvz, stride_dvh, stride_dvn,
    H, kv_group, L_q, L_k, D, causal_off,
    qk_scale, sm_scale, masked_score, dropout_p,
    MASK_KIND: tl.constexpr, MASK_ROW: tl.constexpr, KEY_LENGTHS: tl.constexpr,
    CAUSAL: tl.constexpr, EVEN_D: tl.constexpr, TMA: tl.constexpr, PRECISION: tl.constexpr,
    DROPOUT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """One program per (key block, batch·kv head): walks the query blocks of each of the
    kv_group query heads that share the kv head, in order, and accumulates dK, dV."""
    start_n, bhk = _program_tile(L_k, BLOCK_N)
    H_kv = H // kv_group
    z = bhk // H_kv
    hk = bhk % H_kv
    k_base = K + z * stride_kz + hk * stride_kh
    v_base = V + z * stride_vz + hk * stride_vh
    k = _load_rows(_rows_source(k_base, L_k, D, stride_kn, BLOCK_N, BLOCK_D, TMA), k_base,
                   stride_kn, start_n, L_k, D, BLOCK_N, BLOCK_D, TMA, True, EVEN_D)
    v = _load_rows(_rows_source(v_base, L_k, D, stride_vn, BLOCK_N, BLOCK_D, TMA), v_base,
                   stride_vn, start_n, L_k, D, BLOCK_N, BLOCK_D, TMA, True, EVEN_D)
    seed, drop_scale = _dropout_state(SEED, dropout_p, DROPOUT)
    length = 0
    if KEY_LENGTHS:
        length = tl.load(LENS + z)
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    for g in range(0, kv_group):  # the group's query heads in order: deterministic
        h = hk * kv_group + g
        dk, dv = _dkdv_head(
            dk, dv, k, v, LSE, DELTA, MASK + z * stride_mz + h * stride_mh, length,
            Q + z * stride_qz + h * stride_qh, DO + z * stride_doz + h * stride_doh,
            stride_qm, stride_dom, stride_mm, stride_mn, start_n, z * H + h, L_q, L_k, D,
            causal_off, qk_scale, masked_score, seed, dropout_p, drop_scale, MASK_KIND,
            MASK_ROW, KEY_LENGTHS, CAUSAL, EVEN_D, TMA, PRECISION, DROPOUT, BLOCK_M, BLOCK_N,
            BLOCK_D)
    _store_rows(DK, DK + z * stride_dkz + hk * stride_dkh, stride_dkn, start_n, L_k, D,
                (dk * sm_scale).to(DK.dtype.element_ty), False, EVEN_D, BLOCK_N, BLOCK_D)
    _store_rows(DV, DV + z * stride_dvz + hk * stride_dvh, stride_dvn, start_n, L_k, D,
                dv.to(DV.dtype.element_ty), False, EVEN_D, BLOCK_N, BLOCK_D)


@triton.jit
def attention_bwd_dq_kernel(
    Q, K, V, MASK, LENS, DO, LSE, DELTA, DQ, DMASK, SEED,
    stride_qz, stride_qh, stride_qm,
    stride_kz, stride_kh, stride_kn,
    stride_vz, stride_vh, stride_vn,
    stride_mz, stride_mh, stride_mm, stride_mn,
    stride_doz, stride_doh, stride_dom,
    stride_dqz, stride_dqh, stride_dqm,
    H, kv_group, L_q, L_k, D, causal_off,
    qk_scale, sm_scale, masked_score, dropout_p,
    MASK_KIND: tl.constexpr, MASK_ROW: tl.constexpr, KEY_LENGTHS: tl.constexpr,
    CAUSAL: tl.constexpr, EVEN_N: tl.constexpr, EVEN_D: tl.constexpr, TMA: tl.constexpr,
    PRECISION: tl.constexpr, DROPOUT: tl.constexpr, MASK_GRAD: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """One program per (query block, batch·head): walks the key blocks, accumulates dQ.
    MASK_GRAD (an additive mask that needs a gradient): also writes dS to DMASK
    (N·H, L_q, L_k) fp32, which the launcher reduces over the mask's broadcast dims."""
    start_m, bh = _program_tile(L_q, BLOCK_M)
    z = bh // H
    h = bh % H
    offs_m = start_m + tl.arange(0, BLOCK_M)
    q_base = Q + z * stride_qz + h * stride_qh
    do_base = DO + z * stride_doz + h * stride_doh
    q = _load_rows(_rows_source(q_base, L_q, D, stride_qm, BLOCK_M, BLOCK_D, TMA), q_base,
                   stride_qm, start_m, L_q, D, BLOCK_M, BLOCK_D, TMA, True, EVEN_D)
    do = _load_rows(_rows_source(do_base, L_q, D, stride_dom, BLOCK_M, BLOCK_D, TMA), do_base,
                    stride_dom, start_m, L_q, D, BLOCK_M, BLOCK_D, TMA, True, EVEN_D)
    lse2 = tl.load(LSE + bh * L_q + offs_m, mask=offs_m < L_q, other=float("inf")) * LOG2E
    delta = tl.load(DELTA + bh * L_q + offs_m, mask=offs_m < L_q, other=0.0)
    k_base = K + z * stride_kz + (h // kv_group) * stride_kh
    v_base = V + z * stride_vz + (h // kv_group) * stride_vh
    k_desc = _rows_source(k_base, L_k, D, stride_kn, BLOCK_N, BLOCK_D, TMA)
    v_desc = _rows_source(v_base, L_k, D, stride_vn, BLOCK_N, BLOCK_D, TMA)
    mask_base = MASK + z * stride_mz + h * stride_mh
    dmask_base = DMASK + bh * L_q * L_k
    seed, drop_scale = _dropout_state(SEED, dropout_p, DROPOUT)
    if KEY_LENGTHS:
        length = tl.load(LENS + z)
        if length > 0:
            dq = _dq_kv_walk(
                q, do, lse2, delta, k_desc, v_desc, k_base, v_base, stride_kn, stride_vn,
                mask_base, stride_mm, stride_mn, dmask_base, start_m, L_q, L_k, length, D,
                causal_off, qk_scale, masked_score, seed, bh, dropout_p, drop_scale, False, CAUSAL,
                False, MASK_KIND, MASK_ROW, MASK_GRAD, DROPOUT, PRECISION, TMA, EVEN_D, BLOCK_M,
                BLOCK_N, BLOCK_D)
        else:
            dq = _dq_kv_walk(
                q, do, lse2, delta, k_desc, v_desc, k_base, v_base, stride_kn, stride_vn,
                mask_base, stride_mm, stride_mn, dmask_base, start_m, L_q, L_k, L_k, D,
                causal_off, qk_scale, masked_score, seed, bh, dropout_p, drop_scale, True, CAUSAL,
                EVEN_N, MASK_KIND, MASK_ROW, MASK_GRAD, DROPOUT, PRECISION, TMA, EVEN_D, BLOCK_M,
                BLOCK_N, BLOCK_D)
    else:
        dq = _dq_kv_walk(
            q, do, lse2, delta, k_desc, v_desc, k_base, v_base, stride_kn, stride_vn,
            mask_base, stride_mm, stride_mn, dmask_base, start_m, L_q, L_k, L_k, D, causal_off,
            qk_scale, masked_score, seed, bh, dropout_p, drop_scale, MASK_KIND != 0, CAUSAL,
            EVEN_N, MASK_KIND, MASK_ROW, MASK_GRAD, DROPOUT, PRECISION, TMA, EVEN_D, BLOCK_M,
            BLOCK_N, BLOCK_D)
    _store_rows(DQ, DQ + z * stride_dqz + h * stride_dqh, stride_dqm, start_m, L_q, D,
                (dq * sm_scale).to(DQ.dtype.element_ty), False, EVEN_D, BLOCK_M, BLOCK_D)
