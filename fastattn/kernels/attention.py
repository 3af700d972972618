"""Triton kernels for fused scaled-dot-product attention, FlashAttention-2 style.

Computes, for every batch z and head h,

    S = scale * Q K^T                     (L_q, L_k)
    S[mask == 0] = -1e10                  MASK_KIND == MASK_KEEP   (the guide's rule)
    S += mask                             MASK_KIND == MASK_ADD    (torch's float attn_mask)
    S[j > i] = -inf                       CAUSAL (top-left aligned), and every j >= L_k
    O = softmax(S) V,   LSE = logsumexp(S)  (natural log, fp32)

Pointers (all 4-D tensors are addressed through their strides; the last dim of q/k/v/o must
have stride 1):

    Q   (N, H, L_q, D)      K, V  (N, H, L_k, D)      O, dO, dQ  (N, H, L_q, D)
    dK, dV  (N, H, L_k, D)  LSE, DELTA  (N, H, L_q) contiguous fp32
    MASK  any tensor viewed as (N, H, L_q, L_k) with stride 0 on broadcast dims; never copied.

Design trade-off: the (L_q × L_k) score matrix never reaches memory.  Forward keeps a BLOCK_M
row block of Q, its fp32 accumulator and the running max / sum in registers and streams K/V in
BLOCK_N blocks (online softmax, exp2 with log2(e) folded into the scale).  head_dim is padded to
BLOCK_D = next power of two inside the kernel (loads masked), so 80 and 96 cost as much as 128.
Backward recomputes P from the saved LSE (no O(L²) storage) and runs two kernels instead of one
with atomics: one walks the query blocks for a fixed key block (dK, dV), one walks the key
blocks for a fixed query block (dQ).  That repeats the Q K^T product once more but makes the
backward deterministic, bit for bit, with no atomics and no dQ accumulation buffer.

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
MASKED_SCORE = tl.constexpr(-1.0e10)
FULLY_MASKED_LSE = tl.constexpr(-1.0e9)  # any lse below this marks a fully masked MASK_KEEP row


@triton.jit
def _scores(q, kT, qk_scale, mask_ptrs, offs_m, offs_n, L_q, L_k,
            MASK_KIND: tl.constexpr, CAUSAL: tl.constexpr, PRECISION: tl.constexpr):
    """Scores in base-2 units (scale * log2 e folded in) with every mask applied.

    q: (BLOCK_M, BLOCK_D), kT: (BLOCK_D, BLOCK_N); returns s (BLOCK_M, BLOCK_N) fp32 and, for
    MASK_KEEP, the keep predicate (True elsewhere).
    """
    s = tl.dot(q, kT, input_precision=PRECISION) * qk_scale
    in_range = (offs_m[:, None] < L_q) & (offs_n[None, :] < L_k)
    keep = offs_n[None, :] < L_k
    if MASK_KIND == 1:
        m = tl.load(mask_ptrs, mask=in_range, other=1)
        keep = keep & (m != 0)
        s = tl.where(m != 0, s, MASKED_SCORE * LOG2E)
    if MASK_KIND == 2:
        m = tl.load(mask_ptrs, mask=in_range, other=0.0)
        s += m.to(tl.float32) * LOG2E
    valid = offs_n[None, :] < L_k
    if CAUSAL:
        valid = valid & (offs_n[None, :] <= offs_m[:, None])
    s = tl.where(valid, s, float("-inf"))
    return s, keep


@triton.jit
def attention_fwd_kernel(
    Q, K, V, MASK, O, LSE,
    stride_qz, stride_qh, stride_qm,
    stride_kz, stride_kh, stride_kn,
    stride_vz, stride_vh, stride_vn,
    stride_mz, stride_mh, stride_mm, stride_mn,
    stride_oz, stride_oh, stride_om,
    H, L_q, L_k, D,
    qk_scale,  # scale * log2(e)
    MASK_KIND: tl.constexpr, CAUSAL: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    start_m = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    z = bh // H
    h = bh % H
    offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < D

    q_ptrs = Q + z * stride_qz + h * stride_qh + offs_m[:, None] * stride_qm + offs_d[None, :]
    q = tl.load(q_ptrs, mask=(offs_m[:, None] < L_q) & d_ok[None, :], other=0.0)
    kT_ptrs = K + z * stride_kz + h * stride_kh + offs_n[None, :] * stride_kn + offs_d[:, None]
    v_ptrs = V + z * stride_vz + h * stride_vh + offs_n[:, None] * stride_vn + offs_d[None, :]
    mask_ptrs = (MASK + z * stride_mz + h * stride_mh
                 + offs_m[:, None] * stride_mm + offs_n[None, :] * stride_mn)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)

    hi = L_k
    if CAUSAL:
        hi = tl.minimum(L_k, (start_m + 1) * BLOCK_M)
    for start_n in range(0, hi, BLOCK_N):
        cols = start_n + offs_n
        kT = tl.load(kT_ptrs + start_n * stride_kn, mask=(cols[None, :] < L_k) & d_ok[:, None],
                     other=0.0)
        s, keep = _scores(q, kT, qk_scale, mask_ptrs + start_n * stride_mn, offs_m, cols,
                          L_q, L_k, MASK_KIND, CAUSAL, PRECISION)
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with no finite score yet
        p = tl.math.exp2(s - m_safe[:, None])
        alpha = tl.math.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_ptrs + start_n * stride_vn, mask=(cols[:, None] < L_k) & d_ok[None, :],
                    other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m_i = m_new

    has_any = l_i > 0.0  # False only when every score was -inf (additive -inf masks)
    out = acc / tl.where(has_any, l_i, 1.0)[:, None]
    lse = tl.where(has_any, (m_i + tl.math.log2(tl.where(has_any, l_i, 1.0))) * LN2, float("inf"))
    o_ptrs = O + z * stride_oz + h * stride_oh + offs_m[:, None] * stride_om + offs_d[None, :]
    tl.store(o_ptrs, out.to(O.dtype.element_ty), mask=(offs_m[:, None] < L_q) & d_ok[None, :])
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
    start_m = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    z = bh // H
    h = bh % H
    offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    ok = (offs_m[:, None] < L_q) & (offs_d[None, :] < D)
    o = tl.load(O + z * stride_oz + h * stride_oh + offs_m[:, None] * stride_om + offs_d[None, :],
                mask=ok, other=0.0).to(tl.float32)
    do = tl.load(DO + z * stride_doz + h * stride_doh + offs_m[:, None] * stride_dom
                 + offs_d[None, :], mask=ok, other=0.0).to(tl.float32)
    tl.store(DELTA + bh * L_q + offs_m, tl.sum(o * do, 1), mask=offs_m < L_q)


@triton.jit
def _probabilities(s, lse2, offs_m, offs_n, L_k, MASK_KIND: tl.constexpr, CAUSAL: tl.constexpr):
    """P = exp2(S - LSE) for a (BLOCK_M, BLOCK_N) tile of base-2 scores; fully masked
    MASK_KEEP rows (lse below FULLY_MASKED_LSE) get 1 / count on every key they can see."""
    p = tl.math.exp2(s - lse2[:, None])
    if MASK_KIND == 1:
        fully_masked = lse2 < FULLY_MASKED_LSE * LOG2E
        count = tl.zeros_like(lse2) + L_k
        if CAUSAL:
            count = tl.minimum(count, (offs_m + 1).to(tl.float32))
        p = tl.where(fully_masked[:, None] & (s > float("-inf")), 1.0 / count[:, None], p)
    return p


@triton.jit
def attention_bwd_dkdv_kernel(
    Q, K, V, MASK, DO, LSE, DELTA, DK, DV,
    stride_qz, stride_qh, stride_qm,
    stride_kz, stride_kh, stride_kn,
    stride_vz, stride_vh, stride_vn,
    stride_mz, stride_mh, stride_mm, stride_mn,
    stride_doz, stride_doh, stride_dom,
    stride_dkz, stride_dkh, stride_dkn,
    stride_dvz, stride_dvh, stride_dvn,
    H, L_q, L_k, D,
    qk_scale, sm_scale,
    MASK_KIND: tl.constexpr, CAUSAL: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """One program per (key block, batch·head): walks the query blocks, accumulates dK, dV."""
    start_n = tl.program_id(0) * BLOCK_N
    bh = tl.program_id(1).to(tl.int64)
    z = bh // H
    h = bh % H
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_m0 = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < D
    kv_ok = (offs_n[:, None] < L_k) & d_ok[None, :]
    k = tl.load(K + z * stride_kz + h * stride_kh + offs_n[:, None] * stride_kn + offs_d[None, :],
                mask=kv_ok, other=0.0)
    v = tl.load(V + z * stride_vz + h * stride_vh + offs_n[:, None] * stride_vn + offs_d[None, :],
                mask=kv_ok, other=0.0)
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)

    q_base = Q + z * stride_qz + h * stride_qh + offs_d[None, :]
    do_base = DO + z * stride_doz + h * stride_doh + offs_d[None, :]
    mask_base = MASK + z * stride_mz + h * stride_mh + offs_n[None, :] * stride_mn
    lo = 0
    if CAUSAL:
        lo = (start_n // BLOCK_M) * BLOCK_M
    for start_m in range(lo, L_q, BLOCK_M):
        offs_m = start_m + offs_m0
        row_ok = (offs_m[:, None] < L_q) & d_ok[None, :]
        q = tl.load(q_base + offs_m[:, None] * stride_qm, mask=row_ok, other=0.0)
        do = tl.load(do_base + offs_m[:, None] * stride_dom, mask=row_ok, other=0.0)
        lse2 = tl.load(LSE + bh * L_q + offs_m, mask=offs_m < L_q, other=float("inf")) * LOG2E
        delta = tl.load(DELTA + bh * L_q + offs_m, mask=offs_m < L_q, other=0.0)
        s, keep = _scores(q, tl.trans(k), qk_scale, mask_base + offs_m[:, None] * stride_mm,
                          offs_m, offs_n, L_q, L_k, MASK_KIND, CAUSAL, PRECISION)
        p = _probabilities(s, lse2, offs_m, offs_n, L_k, MASK_KIND, CAUSAL)
        p = tl.where(offs_m[:, None] < L_q, p, 0.0)
        dv += tl.dot(tl.trans(p.to(do.dtype)), do, input_precision=PRECISION)
        dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
        ds = p * (dp - delta[:, None])
        if MASK_KIND == 1:
            ds = tl.where(keep, ds, 0.0)  # a replaced score has no gradient
        dk += tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=PRECISION)

    tl.store(DK + z * stride_dkz + h * stride_dkh + offs_n[:, None] * stride_dkn + offs_d[None, :],
             (dk * sm_scale).to(DK.dtype.element_ty), mask=kv_ok)
    tl.store(DV + z * stride_dvz + h * stride_dvh + offs_n[:, None] * stride_dvn + offs_d[None, :],
             dv.to(DV.dtype.element_ty), mask=kv_ok)


@triton.jit
def attention_bwd_dq_kernel(
    Q, K, V, MASK, DO, LSE, DELTA, DQ,
    stride_qz, stride_qh, stride_qm,
    stride_kz, stride_kh, stride_kn,
    stride_vz, stride_vh, stride_vn,
    stride_mz, stride_mh, stride_mm, stride_mn,
    stride_doz, stride_doh, stride_dom,
    stride_dqz, stride_dqh, stride_dqm,
    H, L_q, L_k, D,
    qk_scale, sm_scale,
    MASK_KIND: tl.constexpr, CAUSAL: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """One program per (query block, batch·head): walks the key blocks, accumulates dQ."""
    start_m = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    z = bh // H
    h = bh % H
    offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n0 = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < D
    row_ok = (offs_m[:, None] < L_q) & d_ok[None, :]
    q = tl.load(Q + z * stride_qz + h * stride_qh + offs_m[:, None] * stride_qm + offs_d[None, :],
                mask=row_ok, other=0.0)
    do = tl.load(DO + z * stride_doz + h * stride_doh + offs_m[:, None] * stride_dom
                 + offs_d[None, :], mask=row_ok, other=0.0)
    lse2 = tl.load(LSE + bh * L_q + offs_m, mask=offs_m < L_q, other=float("inf")) * LOG2E
    delta = tl.load(DELTA + bh * L_q + offs_m, mask=offs_m < L_q, other=0.0)
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)

    kT_base = K + z * stride_kz + h * stride_kh + offs_d[:, None]
    vT_base = V + z * stride_vz + h * stride_vh + offs_d[:, None]
    mask_base = MASK + z * stride_mz + h * stride_mh + offs_m[:, None] * stride_mm
    hi = L_k
    if CAUSAL:
        hi = tl.minimum(L_k, (start_m + 1) * BLOCK_M)
    for start_n in range(0, hi, BLOCK_N):
        offs_n = start_n + offs_n0
        col_ok = (offs_n[None, :] < L_k) & d_ok[:, None]
        kT = tl.load(kT_base + offs_n[None, :] * stride_kn, mask=col_ok, other=0.0)
        vT = tl.load(vT_base + offs_n[None, :] * stride_vn, mask=col_ok, other=0.0)
        s, keep = _scores(q, kT, qk_scale, mask_base + offs_n[None, :] * stride_mn,
                          offs_m, offs_n, L_q, L_k, MASK_KIND, CAUSAL, PRECISION)
        p = _probabilities(s, lse2, offs_m, offs_n, L_k, MASK_KIND, CAUSAL)
        dp = tl.dot(do, vT, input_precision=PRECISION)
        ds = p * (dp - delta[:, None])
        if MASK_KIND == 1:
            ds = tl.where(keep, ds, 0.0)
        dq += tl.dot(ds.to(kT.dtype), tl.trans(kT), input_precision=PRECISION)

    tl.store(DQ + z * stride_dqz + h * stride_dqh + offs_m[:, None] * stride_dqm + offs_d[None, :],
             (dq * sm_scale).to(DQ.dtype.element_ty), mask=row_ok)
