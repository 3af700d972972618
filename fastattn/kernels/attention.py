"""Triton kernels for fused scaled-dot-product attention, FlashAttention-2 style.

Computes, for every batch z and head h,

    S = scale * Q K^T                     (L_q, L_k)
    S[mask == 0] = masked_score           MASK_KIND == MASK_KEEP   (-1e10: the guide's rule;
                                                                    -inf: torch's bool mask)
    S += mask                             MASK_KIND == MASK_ADD    (torch's float attn_mask)
    S[j > i] = -inf                       causal != 0 (top-left aligned), and every j >= L_k
    P = softmax(S),     LSE = logsumexp(S)  (natural log, fp32)
    O = (P * Z / (1 - p)) V                Z = 1 everywhere unless DROPOUT (attention dropout)

Pointers (all 4-D tensors are addressed through their strides; the last dim of q/k/v/o must
have stride 1):

    Q   (N, H, L_q, D)      K, V  (N, H, L_k, D)      O, dO, dQ  (N, H, L_q, D)
    dK, dV  (N, H, L_k, D)  LSE, DELTA  (N, H, L_q) contiguous fp32
    MASK  any tensor viewed as (N, H, L_q, L_k) with stride 0 on broadcast dims; never copied.
          MASK_ROW: the mask is the same for every query row (stride_mm == 0, key padding), so
          one (BLOCK_N,) row is loaded per key block instead of a (BLOCK_M, BLOCK_N) tile.

Design trade-off: the (L_q × L_k) score matrix never reaches memory.  Forward keeps a BLOCK_M
row block of Q, its fp32 accumulator and the running max / sum in registers and streams K/V in
BLOCK_N blocks (online softmax, exp2 with log2(e) folded into the scale).  head_dim is padded to
BLOCK_D = next power of two inside the kernel (loads masked), so 80 and 96 cost as much as 128.
Backward recomputes P from the saved LSE (no O(L²) storage) and runs two kernels instead of one
with atomics: one walks the query blocks for a fixed key block (dK, dV), one walks the key
blocks for a fixed query block (dQ).  That repeats the Q K^T product once more but makes the
backward deterministic, bit for bit, with no atomics and no dQ accumulation buffer.

Dropout (DROPOUT constexpr, rate ``dropout_p`` at run time): the keep mask Z is never stored.
Element (z·H + h, i, j) keeps its probability when output j % 4 of Philox-4x32-10 at the counter
(j // 4, i, z·H + h, 0) under the key SEED (one int64 read from memory, drawn by the launcher
from torch's generator for every call) maps to a uniform number >= dropout_p.  The backward kernels
regenerate exactly the same Z from the same counters; :func:`attention_dropout_mask_kernel`
writes Z out for tests.  Cost: ten Philox rounds per score element, recomputed in each of the
three kernels (2.5 per element: one call serves four keys); nothing extra in memory.  The row sum LSE is taken before dropout, as in torch.

Masked scores under MASK_KEEP are the constant -1e10, so a fully masked row attends uniformly
to its keys.  In fp32, lse = -1e10 + log(count) rounds to -1e10 and loses log(count); the
backward kernels therefore recognise such rows (lse < -1e9) and use p = 1 / count directly.
"""
import triton
import triton.language as tl

MASK_NONE = 0
MASK_KEEP = 1
MASK_ADD = 2

LOG2E = tl.constexpr(1.4426950408889634)
LN2 = tl.constexpr(0.6931471805599453)
FULLY_MASKED_LSE = tl.constexpr(-1.0e9)  # any lse below this marks a fully masked MASK_KEEP row


@triton.jit
def _program_tile(L, BLOCK: tl.constexpr):
    """(tile start along L, batch·head index) of this program in a 1-D grid of
    cdiv(L, BLOCK) * N * H programs: the tiles of one head are neighbours (L2 reuse of its K/V),
    and no grid dimension limit (65535 on y) caps N * H."""
    pid = tl.program_id(0).to(tl.int64)
    n_tiles = tl.cdiv(L, BLOCK)
    return (pid % n_tiles).to(tl.int32) * BLOCK, pid // n_tiles


@triton.jit
def _dropout_keep(seed, bh, offs_m, start_n, dropout_p, BLOCK_N: tl.constexpr):
    """(BLOCK_M, BLOCK_N) bool: True where dropout keeps element (bh, offs_m, start_n + c).

    One Philox call gives four 32-bit numbers, used for four neighbouring keys: the counter
    of keys 4g .. 4g+3 of row i is (g, i, bh, 0) and output t belongs to key 4g + t."""
    QUARTER: tl.constexpr = BLOCK_N // 4
    groups = start_n // 4 + tl.arange(0, QUARTER)
    cols = groups[None, :] + tl.zeros_like(offs_m)[:, None]
    rows = offs_m[:, None] + tl.zeros_like(groups)[None, :]
    zero = tl.zeros_like(cols)
    r0, r1, r2, r3 = tl.philox(seed, cols, rows, zero + bh.to(tl.int32), zero)
    k0 = (tl.uint_to_uniform_float(r0) >= dropout_p).to(tl.int8)
    k1 = (tl.uint_to_uniform_float(r1) >= dropout_p).to(tl.int8)
    k2 = (tl.uint_to_uniform_float(r2) >= dropout_p).to(tl.int8)
    k3 = (tl.uint_to_uniform_float(r3) >= dropout_p).to(tl.int8)
    keep = tl.join(tl.join(k0, k1), tl.join(k2, k3))  # [i, g, a, b] = k_(2a + b)[i, g]
    return tl.reshape(keep, (offs_m.shape[0], BLOCK_N)) != 0


@triton.jit
def _dropout_state(SEED, dropout_p, DROPOUT: tl.constexpr):
    """(Philox key, 1 / (1 - dropout_p)) when DROPOUT, else (0, 1.0); SEED is not read then."""
    seed = 0
    drop_scale = 1.0
    if DROPOUT:
        seed = tl.load(SEED)
        drop_scale = 1.0 / (1.0 - dropout_p)
    return seed, drop_scale


@triton.jit
def _dv_and_dropout(p, do, dp, seed, bh, offs_m, start_n, dropout_p, drop_scale,
                    DROPOUT: tl.constexpr, BLOCK_N: tl.constexpr, PRECISION: tl.constexpr):
    """Backward through dropout for one (BLOCK_M, BLOCK_N) tile: returns this tile's dV term
    (P Z / (1 - p))^T dO and dP = (dO V^T) Z / (1 - p) (plain P^T dO and dO V^T without it)."""
    if DROPOUT:
        kept = _dropout_keep(seed, bh, offs_m, start_n, dropout_p, BLOCK_N)
        p = tl.where(kept, p * drop_scale, 0.0)
        dp = tl.where(kept, dp * drop_scale, 0.0)
    return tl.dot(tl.trans(p.to(do.dtype)), do, input_precision=PRECISION), dp


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
        tl.store(Z + bh * L_q * L_k + offs_m[:, None] * L_k + offs_n[None, :],
                 keep.to(tl.uint8), mask=ok)


@triton.jit
def _load_mask(mask_base, stride_mm, stride_mn, start_m, start_n, L_q, L_k,
               MASK_KIND: tl.constexpr, MASK_ROW: tl.constexpr,
               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """The (BLOCK_M, BLOCK_N) mask tile at (start_m, start_n); for a mask that is the same for
    every query row (key padding, stride_mm == 0) a (1, BLOCK_N) row that broadcasts."""
    offs_n = start_n + tl.arange(0, BLOCK_N)
    if MASK_ROW:
        m = tl.load(mask_base + offs_n * stride_mn, mask=offs_n < L_k, other=0)
        return m[None, :]
    else:
        offs_m = start_m + tl.arange(0, BLOCK_M)
        offs = offs_m[:, None] * stride_mm + offs_n[None, :] * stride_mn
        m = tl.load(mask_base + offs, mask=(offs_m[:, None] < L_q) & (offs_n[None, :] < L_k),
                    other=0)
        return m.to(tl.float32)


@triton.jit
def _apply_masks(s, mask, offs_m, offs_n, L_k, causal, masked_score, MASK_KIND: tl.constexpr):
    """Scores s (BLOCK_M, BLOCK_N) in base-2 units with every mask applied.  Returns the
    scores and, for MASK_KEEP, the keep predicate (True elsewhere)."""
    keep = offs_n[None, :] < L_k
    if MASK_KIND == 1:
        keep = keep & (mask != 0)
        s = tl.where(mask != 0, s, masked_score * LOG2E)
    if MASK_KIND == 2:
        s += mask.to(tl.float32) * LOG2E
    valid = (offs_n[None, :] < L_k) & ((offs_n[None, :] <= offs_m[:, None]) | (causal == 0))
    s = tl.where(valid, s, float("-inf"))
    return s, keep


@triton.jit
def attention_fwd_kernel(
    Q, K, V, MASK, O, LSE, SEED,
    stride_qz, stride_qh, stride_qm,
    stride_kz, stride_kh, stride_kn,
    stride_vz, stride_vh, stride_vn,
    stride_mz, stride_mh, stride_mm, stride_mn,
    stride_oz, stride_oh, stride_om,
    H, L_q, L_k, D, causal,
    qk_scale,  # scale * log2(e)
    masked_score,  # what a score with mask == 0 becomes: -1e10 (guide) or -inf (torch bool)
    dropout_p,  # probability of zeroing an attention weight (used when DROPOUT)
    MASK_KIND: tl.constexpr, MASK_ROW: tl.constexpr, PRECISION: tl.constexpr,
    DROPOUT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    start_m, bh = _program_tile(L_q, BLOCK_M)
    z = bh // H
    h = bh % H
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)

    q_ptr = tl.make_block_ptr(Q + z * stride_qz + h * stride_qh, shape=(L_q, D),
                              strides=(stride_qm, 1), offsets=(start_m, 0),
                              block_shape=(BLOCK_M, BLOCK_D), order=(1, 0))
    kT_ptr = tl.make_block_ptr(K + z * stride_kz + h * stride_kh, shape=(D, L_k),
                               strides=(1, stride_kn), offsets=(0, 0),
                               block_shape=(BLOCK_D, BLOCK_N), order=(0, 1))
    v_ptr = tl.make_block_ptr(V + z * stride_vz + h * stride_vh, shape=(L_k, D),
                              strides=(stride_vn, 1), offsets=(0, 0),
                              block_shape=(BLOCK_N, BLOCK_D), order=(1, 0))
    mask_base = MASK + z * stride_mz + h * stride_mh
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
        mask = 0
        if MASK_KIND != 0:
            mask = _load_mask(mask_base, stride_mm, stride_mn, start_m, start_n, L_q, L_k,
                              MASK_KIND, MASK_ROW, BLOCK_M, BLOCK_N)
        s, _ = _apply_masks(s, mask, offs_m, start_n + offs_n, L_k, causal, masked_score,
                            MASK_KIND)
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with no finite score yet
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

    has_any = l_i > 0.0  # False only when every score was -inf (additive -inf masks)
    l_safe = tl.where(has_any, l_i, 1.0)
    if DROPOUT:
        out = acc * (drop_scale / l_safe)[:, None]
    else:
        out = acc / l_safe[:, None]
    lse = tl.where(has_any, (m_i + tl.math.log2(l_safe)) * LN2, float("inf"))
    o_ptr = tl.make_block_ptr(O + z * stride_oz + h * stride_oh, shape=(L_q, D),
                              strides=(stride_om, 1), offsets=(start_m, 0),
                              block_shape=(BLOCK_M, BLOCK_D), order=(1, 0))
    tl.store(o_ptr, out.to(O.dtype.element_ty), boundary_check=(0, 1))
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
    o = tl.load(O + z * stride_oz + h * stride_oh + offs_m[:, None] * stride_om + offs_d[None, :],
                mask=ok, other=0.0).to(tl.float32)
    do = tl.load(DO + z * stride_doz + h * stride_doh + offs_m[:, None] * stride_dom
                 + offs_d[None, :], mask=ok, other=0.0).to(tl.float32)
    tl.store(DELTA + bh * L_q + offs_m, tl.sum(o * do, 1), mask=offs_m < L_q)


@triton.jit
def _probabilities(s, lse2, offs_m, L_k, causal, MASK_KIND: tl.constexpr):
    """P = exp2(S - LSE) for a (BLOCK_M, BLOCK_N) tile of base-2 scores; fully masked
    MASK_KEEP rows (lse below FULLY_MASKED_LSE) get 1 / count on every key they can see."""
    p = tl.math.exp2(s - lse2[:, None])
    if MASK_KIND == 1:
        fully_masked = lse2 < FULLY_MASKED_LSE * LOG2E
        count = tl.zeros_like(lse2) + L_k
        count = tl.where(causal != 0, tl.minimum(count, (offs_m + 1).to(tl.float32)), count)
        p = tl.where(fully_masked[:, None] & (s > float("-inf")), 1.0 / count[:, None], p)
    return p


@triton.jit
def attention_bwd_dkdv_kernel(
    Q, K, V, MASK, DO, LSE, DELTA, DK, DV, SEED,
    stride_qz, stride_qh, stride_qm,
    stride_kz, stride_kh, stride_kn,
    stride_vz, stride_vh, stride_vn,
    stride_mz, stride_mh, stride_mm, stride_mn,
    stride_doz, stride_doh, stride_dom,
    stride_dkz, stride_dkh, stride_dkn,
    stride_dvz, stride_dvh, stride_dvn,
    H, L_q, L_k, D, causal,
    qk_scale, sm_scale, masked_score, dropout_p,
    MASK_KIND: tl.constexpr, MASK_ROW: tl.constexpr, PRECISION: tl.constexpr,
    DROPOUT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """One program per (key block, batch·head): walks the query blocks, accumulates dK, dV."""
    start_n, bh = _program_tile(L_k, BLOCK_N)
    z = bh // H
    h = bh % H
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_m0 = tl.arange(0, BLOCK_M)
    k_ptr = tl.make_block_ptr(K + z * stride_kz + h * stride_kh, shape=(L_k, D),
                              strides=(stride_kn, 1), offsets=(start_n, 0),
                              block_shape=(BLOCK_N, BLOCK_D), order=(1, 0))
    v_ptr = tl.make_block_ptr(V + z * stride_vz + h * stride_vh, shape=(L_k, D),
                              strides=(stride_vn, 1), offsets=(start_n, 0),
                              block_shape=(BLOCK_N, BLOCK_D), order=(1, 0))
    k = tl.load(k_ptr, boundary_check=(0, 1), padding_option="zero")
    v = tl.load(v_ptr, boundary_check=(0, 1), padding_option="zero")
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    seed, drop_scale = _dropout_state(SEED, dropout_p, DROPOUT)

    lo = 0
    if causal:
        lo = (start_n // BLOCK_M) * BLOCK_M
    q_ptr = tl.make_block_ptr(Q + z * stride_qz + h * stride_qh, shape=(L_q, D),
                              strides=(stride_qm, 1), offsets=(lo, 0),
                              block_shape=(BLOCK_M, BLOCK_D), order=(1, 0))
    do_ptr = tl.make_block_ptr(DO + z * stride_doz + h * stride_doh, shape=(L_q, D),
                               strides=(stride_dom, 1), offsets=(lo, 0),
                               block_shape=(BLOCK_M, BLOCK_D), order=(1, 0))
    mask_base = MASK + z * stride_mz + h * stride_mh
    for start_m in range(lo, L_q, BLOCK_M):
        offs_m = start_m + offs_m0
        q = tl.load(q_ptr, boundary_check=(0, 1), padding_option="zero")
        do = tl.load(do_ptr, boundary_check=(0, 1), padding_option="zero")
        lse2 = tl.load(LSE + bh * L_q + offs_m, mask=offs_m < L_q, other=float("inf")) * LOG2E
        delta = tl.load(DELTA + bh * L_q + offs_m, mask=offs_m < L_q, other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
        mask = 0
        if MASK_KIND != 0:
            mask = _load_mask(mask_base, stride_mm, stride_mn, start_m, start_n, L_q, L_k,
                              MASK_KIND, MASK_ROW, BLOCK_M, BLOCK_N)
        s, keep = _apply_masks(s, mask, offs_m, offs_n, L_k, causal, masked_score, MASK_KIND)
        p = _probabilities(s, lse2, offs_m, L_k, causal, MASK_KIND)
        dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
        dv_tile, dp = _dv_and_dropout(p, do, dp, seed, bh, offs_m, start_n, dropout_p,
                                      drop_scale, DROPOUT, BLOCK_N, PRECISION)
        dv += dv_tile
        ds = p * (dp - delta[:, None])
        if MASK_KIND == 1:
            ds = tl.where(keep, ds, 0.0)  # a replaced score has no gradient
        dk += tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=PRECISION)
        q_ptr = tl.advance(q_ptr, (BLOCK_M, 0))
        do_ptr = tl.advance(do_ptr, (BLOCK_M, 0))

    dk_ptr = tl.make_block_ptr(DK + z * stride_dkz + h * stride_dkh, shape=(L_k, D),
                               strides=(stride_dkn, 1), offsets=(start_n, 0),
                               block_shape=(BLOCK_N, BLOCK_D), order=(1, 0))
    dv_ptr = tl.make_block_ptr(DV + z * stride_dvz + h * stride_dvh, shape=(L_k, D),
                               strides=(stride_dvn, 1), offsets=(start_n, 0),
                               block_shape=(BLOCK_N, BLOCK_D), order=(1, 0))
    tl.store(dk_ptr, (dk * sm_scale).to(DK.dtype.element_ty), boundary_check=(0, 1))
    tl.store(dv_ptr, dv.to(DV.dtype.element_ty), boundary_check=(0, 1))


@triton.jit
def attention_bwd_dq_kernel(
    Q, K, V, MASK, DO, LSE, DELTA, DQ, SEED,
    stride_qz, stride_qh, stride_qm,
    stride_kz, stride_kh, stride_kn,
    stride_vz, stride_vh, stride_vn,
    stride_mz, stride_mh, stride_mm, stride_mn,
    stride_doz, stride_doh, stride_dom,
    stride_dqz, stride_dqh, stride_dqm,
    H, L_q, L_k, D, causal,
    qk_scale, sm_scale, masked_score, dropout_p,
    MASK_KIND: tl.constexpr, MASK_ROW: tl.constexpr, PRECISION: tl.constexpr,
    DROPOUT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """One program per (query block, batch·head): walks the key blocks, accumulates dQ."""
    start_m, bh = _program_tile(L_q, BLOCK_M)
    z = bh // H
    h = bh % H
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_n0 = tl.arange(0, BLOCK_N)
    q_ptr = tl.make_block_ptr(Q + z * stride_qz + h * stride_qh, shape=(L_q, D),
                              strides=(stride_qm, 1), offsets=(start_m, 0),
                              block_shape=(BLOCK_M, BLOCK_D), order=(1, 0))
    do_ptr = tl.make_block_ptr(DO + z * stride_doz + h * stride_doh, shape=(L_q, D),
                               strides=(stride_dom, 1), offsets=(start_m, 0),
                               block_shape=(BLOCK_M, BLOCK_D), order=(1, 0))
    q = tl.load(q_ptr, boundary_check=(0, 1), padding_option="zero")
    do = tl.load(do_ptr, boundary_check=(0, 1), padding_option="zero")
    lse2 = tl.load(LSE + bh * L_q + offs_m, mask=offs_m < L_q, other=float("inf")) * LOG2E
    delta = tl.load(DELTA + bh * L_q + offs_m, mask=offs_m < L_q, other=0.0)
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    seed, drop_scale = _dropout_state(SEED, dropout_p, DROPOUT)

    kT_ptr = tl.make_block_ptr(K + z * stride_kz + h * stride_kh, shape=(D, L_k),
                               strides=(1, stride_kn), offsets=(0, 0),
                               block_shape=(BLOCK_D, BLOCK_N), order=(0, 1))
    vT_ptr = tl.make_block_ptr(V + z * stride_vz + h * stride_vh, shape=(D, L_k),
                               strides=(1, stride_vn), offsets=(0, 0),
                               block_shape=(BLOCK_D, BLOCK_N), order=(0, 1))
    mask_base = MASK + z * stride_mz + h * stride_mh
    hi = L_k
    if causal:
        hi = tl.minimum(L_k, start_m + BLOCK_M)
    for start_n in range(0, hi, BLOCK_N):
        offs_n = start_n + offs_n0
        kT = tl.load(kT_ptr, boundary_check=(0, 1), padding_option="zero")
        vT = tl.load(vT_ptr, boundary_check=(0, 1), padding_option="zero")
        s = tl.dot(q, kT, input_precision=PRECISION) * qk_scale
        mask = 0
        if MASK_KIND != 0:
            mask = _load_mask(mask_base, stride_mm, stride_mn, start_m, start_n, L_q, L_k,
                              MASK_KIND, MASK_ROW, BLOCK_M, BLOCK_N)
        s, keep = _apply_masks(s, mask, offs_m, offs_n, L_k, causal, masked_score, MASK_KIND)
        p = _probabilities(s, lse2, offs_m, L_k, causal, MASK_KIND)
        dp = tl.dot(do, vT, input_precision=PRECISION)
        if DROPOUT:
            kept = _dropout_keep(seed, bh, offs_m, start_n, dropout_p, BLOCK_N)
            dp = tl.where(kept, dp * drop_scale, 0.0)
        ds = p * (dp - delta[:, None])
        if MASK_KIND == 1:
            ds = tl.where(keep, ds, 0.0)
        dq += tl.dot(ds.to(kT.dtype), tl.trans(kT), input_precision=PRECISION)
        kT_ptr = tl.advance(kT_ptr, (0, BLOCK_N))
        vT_ptr = tl.advance(vT_ptr, (0, BLOCK_N))

    dq_ptr = tl.make_block_ptr(DQ + z * stride_dqz + h * stride_dqh, shape=(L_q, D),
                               strides=(stride_dqm, 1), offsets=(start_m, 0),
                               block_shape=(BLOCK_M, BLOCK_D), order=(1, 0))
    tl.store(dq_ptr, (dq * sm_scale).to(DQ.dtype.element_ty), boundary_check=(0, 1))
