"""The attention tile loops, written once for the padded and the variable-length kernels.

Three walks, each a ``@triton.jit`` function over base pointers (or TMA tensor descriptors),
lengths and a mask accessor, so a kernel is a short shell that locates its rows and calls them:

    _fwd_kv_walk    one BLOCK_M query block against keys [0, hi): online softmax, O accumulator
    _dkdv_q_walk    one BLOCK_N key block against query blocks [lo, L_q): dK, dV accumulators
    _dq_kv_walk     one BLOCK_M query block against keys [0, hi): dQ accumulator

Scores are in base-2 units (log2(e) folded into ``qk_scale``).  Rows are addressed as
``base + row * stride + col`` with the last stride 1; ``kv_len`` bounds the key walk (L_k, or a
key-padding length shorter than L_k) while ``L_k`` bounds memory.

Design trade-off: every walk is split into interior tiles and boundary tiles.  An interior tile
needs no bounds test, no causal test and no mask arithmetic: in the forward its scores cost one
FFMA each (scale and running max fused, ``qk * qk_scale - m``), the exponential and the row
sums.  Boundary tiles (the last, partial key tile; the tiles the causal diagonal crosses) add
the bounds / causal selects and a running max that tolerates all -inf rows; a mask, when one
must be read, adds one select (or add) per score on the raw product.  The split costs a second
copy of the loop body in the binary; ``MASKED`` (a mask is read) and ``CAUSAL`` are
compile-time, so each kernel only holds the loops it can run.  The forward's fused max needs
``qk_scale > 0`` (the launchers turn a negative scale into a positive one with negated keys,
and a zero scale into zero queries).

The dropout helpers and the mask helpers used by the walks live here too.
"""
import triton
import triton.language as tl

from fastattn.enums import MaskKind

MASK_NONE, MASK_KEEP, MASK_ADD = int(MaskKind.NONE), int(MaskKind.KEEP), int(MaskKind.ADD)

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


# ------------------------------------------------------------------------------------ dropout

@triton.jit
def _dropout_keep(seed, bh, offs_m, start_n, dropout_p, BLOCK_N: tl.constexpr,
                  KEYS_FIRST: tl.constexpr = False):
    """(BLOCK_M, BLOCK_N) bool: True where dropout keeps element (bh, offs_m, start_n + c);
    (BLOCK_N, BLOCK_M) with KEYS_FIRST (the key-major tiles of the dK/dV walk).

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
    # tl.join stacks along a new minor dim: [i, g, a, b] = k_(a + 2b)[i, g], so that the
    # reshape puts output t at key 4g + t
    keep = tl.join(tl.join(k0, k2), tl.join(k1, k3))
    keep = tl.reshape(keep, (offs_m.shape[0], BLOCK_N))
    if KEYS_FIRST:
        keep = tl.trans(keep)
    return keep != 0


@triton.jit
def _dropout_state(SEED, dropout_p, DROPOUT: tl.constexpr):
    """(Philox key, 1 / (1 - dropout_p)) when DROPOUT, else (0, 1.0); SEED is not read then."""
    seed = 0
    drop_scale = 1.0
    if DROPOUT:
        seed = tl.load(SEED)
        drop_scale = 1.0 / (1.0 - dropout_p)
    return seed, drop_scale


# ------------------------------------------------------------------------------ rows and masks

@triton.jit
def _rows_source(base, L, D, stride, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
                 TMA: tl.constexpr):
    """What :func:`_load_rows` reads the (L, D) matrix at ``base`` through: a TMA tensor
    descriptor with (BLOCK_R, BLOCK_D) boxes when TMA, else the base pointer itself."""
    if TMA:
        return tl.make_tensor_descriptor(base, shape=[L, D], strides=[stride, 1],
                                         block_shape=[BLOCK_R, BLOCK_D])
    else:
        return base


@triton.jit
def _load_rows(desc, base, stride, start, L, D, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
               TMA: tl.constexpr, CHECK_ROWS: tl.constexpr, EVEN_D: tl.constexpr):
    """The (BLOCK_R, BLOCK_D) tile of rows start .. start + BLOCK_R of an (L, D) matrix, zero
    outside it.  TMA: through the tensor descriptor ``desc`` (the copy engine clips the edges);
    otherwise through ``base + row * stride + col``, testing rows only when CHECK_ROWS and
    columns only when D is not BLOCK_D."""
    if TMA:
        return desc.load([start, 0])
    else:
        offs_r = start + tl.arange(0, BLOCK_R)
        offs_d = tl.arange(0, BLOCK_D)
        ptrs = base + offs_r[:, None].to(tl.int64) * stride + offs_d[None, :]
        if CHECK_ROWS:
            if EVEN_D:
                return tl.load(ptrs, mask=offs_r[:, None] < L, other=0.0)
            else:
                return tl.load(ptrs, mask=(offs_r[:, None] < L) & (offs_d[None, :] < D),
                               other=0.0)
        else:
            if EVEN_D:
                return tl.load(ptrs)
            else:
                return tl.load(ptrs, mask=offs_d[None, :] < D, other=0.0)


@triton.jit
def _store_rows(T, base, stride, start, L, D, tile, TMA: tl.constexpr, EVEN_D: tl.constexpr,
                BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    """Store a (BLOCK_R, BLOCK_D) tile at rows start .. of an (L, D) matrix, clipped to it."""
    if TMA:
        desc = tl.make_tensor_descriptor(base, shape=[L, D], strides=[stride, 1],
                                         block_shape=[BLOCK_R, BLOCK_D])
        desc.store([start, 0], tile)
    else:
        offs_r = start + tl.arange(0, BLOCK_R)
        offs_d = tl.arange(0, BLOCK_D)
        ptrs = base + offs_r[:, None].to(tl.int64) * stride + offs_d[None, :]
        if EVEN_D:
            tl.store(ptrs, tile, mask=offs_r[:, None] < L)
        else:
            tl.store(ptrs, tile, mask=(offs_r[:, None] < L) & (offs_d[None, :] < D))


@triton.jit
def _load_mask(mask_base, stride_mm, stride_mn, rows, cols, L_q, L_k, MASK_ROW: tl.constexpr):
    """The mask at query rows ``rows`` and key columns ``cols``: two broadcastable 2-D index
    tensors, (BLOCK_M, 1) and (1, BLOCK_N) for a query-major tile or (1, BLOCK_M) and
    (BLOCK_N, 1) for a key-major one.  A mask that is the same for every query row (key
    padding, stride_mm == 0) is read once per key: a row (or column) that broadcasts."""
    if MASK_ROW:
        return tl.load(mask_base + cols.to(tl.int64) * stride_mn, mask=cols < L_k, other=0)
    else:
        offs = rows.to(tl.int64) * stride_mm + cols.to(tl.int64) * stride_mn
        m = tl.load(mask_base + offs, mask=(rows < L_q) & (cols < L_k), other=0)
        return m.to(tl.float32)


@triton.jit
def _masked_scores(s, mask_base, stride_mm, stride_mn, rows, cols, L_q, L_k, kv_len,
                   causal_off, masked_score, MASKED: tl.constexpr, MASK_KIND: tl.constexpr,
                   MASK_ROW: tl.constexpr, BOUNDS: tl.constexpr, CAUSAL: tl.constexpr):
    """Base-2 scores s with the mask (when MASKED), the key bound ``j < kv_len`` (when BOUNDS)
    and the causal rule ``j <= i + causal_off`` (when CAUSAL) applied; ``rows`` (i) and
    ``cols`` (j) are the broadcastable index tensors of :func:`_load_mask`, so one function
    serves the query-major and the key-major tiles.  Returns the scores and, for MASK_KEEP,
    the keep predicate (scores it replaced have no gradient)."""
    keep = s == s
    if MASKED:
        mask = _load_mask(mask_base, stride_mm, stride_mn, rows, cols, L_q, L_k, MASK_ROW)
        if MASK_KIND == 1:
            keep = (mask != 0) & keep
            s = tl.where(mask != 0, s, masked_score * LOG2E)
        if MASK_KIND == 2:
            s += mask.to(tl.float32) * LOG2E
    if BOUNDS:
        if CAUSAL:
            valid = (cols < kv_len) & (cols <= rows + causal_off)
        else:
            valid = cols < kv_len
        s = tl.where(valid, s, float("-inf"))
    elif CAUSAL:
        s = tl.where(cols <= rows + causal_off, s, float("-inf"))
    return s, keep


@triton.jit
def _probabilities(s, lse2, rows, L_k, causal_off, CAUSAL: tl.constexpr,
                   MASK_KIND: tl.constexpr):
    """P = exp2(S - LSE) for a tile of base-2 scores; ``lse2`` (base 2) and ``rows`` broadcast
    against it as in :func:`_masked_scores`.  Fully masked MASK_KEEP rows (lse below
    FULLY_MASKED_LSE) get 1 / count on every key they can see."""
    p = tl.math.exp2(s - lse2)
    if MASK_KIND == 1:
        fully_masked = lse2 < FULLY_MASKED_LSE * LOG2E
        count = tl.zeros_like(lse2) + L_k
        if CAUSAL:
            count = tl.minimum(count, (rows + causal_off + 1).to(tl.float32))
        p = tl.where(fully_masked & (s > float("-inf")), 1.0 / count, p)
    return p


# ------------------------------------------------------------------------------------ forward

@triton.jit
def _fwd_tiles(acc, l_i, m_i, q, k_desc, v_desc, K, V, stride_kn, stride_vn,
               mask_base, stride_mm, stride_mn, start_m, offs_m, lo, hi, L_q, L_k, kv_len, D,
               causal_off, qk_scale, masked_raw, seed, bh, dropout_p,
               MASKED: tl.constexpr, BOUNDS: tl.constexpr, DIAGONAL: tl.constexpr,
               MASK_KIND: tl.constexpr, MASK_ROW: tl.constexpr,
               DROPOUT: tl.constexpr, PRECISION: tl.constexpr, TMA: tl.constexpr,
               EVEN_D: tl.constexpr,
               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """Key tiles lo, lo + BLOCK_N, .. < hi folded into (acc, l_i, m_i).  Scores become
    probabilities with one FFMA each (``qk * qk_scale - m``) on the raw product Q K^T; a keep
    mask replaces raw products by ``masked_raw``, chosen by the launcher so that
    masked_raw · qk_scale is exact (a power of two times qk_scale), so a row of replaced scores
    gets exp2(0) = 1 everywhere (uniform) despite the FFMA's unrounded product.  An additive
    mask takes the unfused path (scores rounded, then the max subtracted).  Only tiles that
    can hold -inf everywhere in a row (MASKED, BOUNDS: the key bound, DIAGONAL: the causal
    test) guard the running max."""
    for start_n in range(lo, hi, BLOCK_N):
        k = _load_rows(k_desc, K, stride_kn, start_n, L_k, D, BLOCK_N, BLOCK_D, TMA,
                       BOUNDS, EVEN_D)
        qk = tl.dot(q, tl.trans(k), input_precision=PRECISION)
        if MASKED or BOUNDS or DIAGONAL:
            offs_n = start_n + tl.arange(0, BLOCK_N)
            if MASKED:
                mask = _load_mask(mask_base, stride_mm, stride_mn, offs_m[:, None],
                                  offs_n[None, :], L_q, L_k, MASK_ROW)
                if MASK_KIND == 1:
                    qk = tl.where(mask != 0, qk, masked_raw)
                if MASK_KIND == 2:  # base-2 scores, rounded: s - m is exact for equal scores
                    qk = qk * qk_scale + mask.to(tl.float32) * LOG2E
            if BOUNDS:
                if DIAGONAL:
                    valid = ((offs_n[None, :] < kv_len)
                             & (offs_n[None, :] <= offs_m[:, None] + causal_off))
                else:
                    valid = offs_n[None, :] < kv_len
                qk = tl.where(valid, qk, float("-inf"))
            elif DIAGONAL:
                qk = tl.where(offs_n[None, :] <= offs_m[:, None] + causal_off, qk,
                              float("-inf"))
            if MASKED and MASK_KIND == 2:
                m_new = tl.maximum(m_i, tl.max(qk, 1))
                m_use = tl.where(m_new == float("-inf"), 0.0, m_new)  # no finite score yet
                p = tl.math.exp2(qk - m_use[:, None])
            else:
                m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
                m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
                p = tl.math.exp2(qk * qk_scale - m_use[:, None])
        else:
            m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
            m_use = m_new
            p = tl.math.exp2(qk * qk_scale - m_use[:, None])
        alpha = tl.math.exp2(m_i - m_use)
        l_i = l_i * alpha + tl.sum(p, 1)
        if DROPOUT:
            p = tl.where(_dropout_keep(seed, bh, offs_m, start_n, dropout_p, BLOCK_N), p, 0.0)
        v = _load_rows(v_desc, V, stride_vn, start_n, L_k, D, BLOCK_N, BLOCK_D, TMA,
                       BOUNDS, EVEN_D)
        acc = acc * alpha[:, None]
        acc = tl.dot(p.to(v.dtype), v, acc, input_precision=PRECISION)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def _kv_walk_bounds(start_m, kv_len, causal_off, CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr,
                    BLOCK_N: tl.constexpr):
    """(hi, n_int) of a key walk for the query block at start_m: keys [0, hi) are walked, the
    tiles below n_int (every key of the tile <= the block's first row + causal_off) without
    the causal test.  Query i sees key j <= i + causal_off, so the block's last row bounds hi;
    a block that sees no key gets hi <= 0 (no tile)."""
    if CAUSAL:
        hi = tl.minimum(kv_len, start_m + BLOCK_M + causal_off)
        # floor(causal_off / BLOCK_N) + floor((start_m + 1) / BLOCK_N) <= the blocks its first
        # row sees (a lower bound is enough: the tiles past n_int take the causal test)
        off_blocks = tl.where(causal_off >= 0, causal_off // BLOCK_N,
                              -((BLOCK_N - 1 - causal_off) // BLOCK_N))
        n_int = tl.minimum(kv_len // BLOCK_N,
                           tl.maximum((start_m + 1) // BLOCK_N + off_blocks, 0)) * BLOCK_N
    else:
        hi = kv_len
        n_int = (kv_len // BLOCK_N) * BLOCK_N
    return hi, n_int


@triton.jit
def _fwd_kv_walk(q, k_desc, v_desc, K, V, stride_kn, stride_vn,
                 mask_base, stride_mm, stride_mn, start_m, L_q, L_k, kv_len, D,
                 causal_off, qk_scale, masked_raw, seed, bh, dropout_p,
                 MASKED: tl.constexpr, CAUSAL: tl.constexpr, EVEN_N: tl.constexpr,
                 MASK_KIND: tl.constexpr, MASK_ROW: tl.constexpr, DROPOUT: tl.constexpr,
                 PRECISION: tl.constexpr, TMA: tl.constexpr, EVEN_D: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """Online softmax of one query block over keys [0, kv_len) (and j <= i + causal_off when
    CAUSAL: 0 aligns the diagonal top-left, L_k - L_q bottom-right).
    Returns (acc, l_i, m_i): unnormalised output, row sums, row maxima (base 2).  EVEN_N:
    kv_len is a multiple of BLOCK_N, so there is no partial key tile."""
    offs_m = start_m + tl.arange(0, BLOCK_M)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    hi, n_int = _kv_walk_bounds(start_m, kv_len, causal_off, CAUSAL, BLOCK_M, BLOCK_N)
    acc, l_i, m_i = _fwd_tiles(
        acc, l_i, m_i, q, k_desc, v_desc, K, V, stride_kn, stride_vn, mask_base, stride_mm,
        stride_mn, start_m, offs_m, 0, n_int, L_q, L_k, kv_len, D, causal_off, qk_scale,
        masked_raw, seed, bh, dropout_p, MASKED, False, False, MASK_KIND, MASK_ROW, DROPOUT,
        PRECISION, TMA, EVEN_D, BLOCK_M, BLOCK_N, BLOCK_D)
    if CAUSAL or not EVEN_N:
        acc, l_i, m_i = _fwd_tiles(
            acc, l_i, m_i, q, k_desc, v_desc, K, V, stride_kn, stride_vn, mask_base,
            stride_mm, stride_mn, start_m, offs_m, n_int, hi, L_q, L_k, kv_len, D, causal_off,
            qk_scale, masked_raw, seed, bh, dropout_p, MASKED, True, CAUSAL, MASK_KIND,
            MASK_ROW, DROPOUT, PRECISION, TMA, EVEN_D, BLOCK_M, BLOCK_N, BLOCK_D)
    return acc, l_i, m_i


@triton.jit
def _fwd_finish(acc, l_i, m_i, drop_scale, DROPOUT: tl.constexpr):
    """(O tile in fp32, LSE in natural log) from the walk's state; a row without any finite
    score (no keys, or all -inf) gets O = 0 and LSE = +inf."""
    has_any = l_i > 0.0
    l_safe = tl.where(has_any, l_i, 1.0)
    if DROPOUT:
        out = acc * (drop_scale / l_safe)[:, None]
    else:
        out = acc / l_safe[:, None]
    lse = tl.where(has_any, (m_i + tl.math.log2(l_safe)) * LN2, float("inf"))
    return out, lse


# ----------------------------------------------------------------------------------- backward

@triton.jit
def _dkdv_tiles(dk, dv, k, v, q_desc, do_desc, Q, DO, stride_qm, stride_dom, LSE, DELTA,
                mask_base, stride_mm, stride_mn, start_n, offs_n, lo, hi, L_q, L_k, kv_len, D,
                causal_off, qk_scale, masked_score, seed, bh, dropout_p, drop_scale,
                MASKED: tl.constexpr, CHECK_KEYS: tl.constexpr, DIAGONAL: tl.constexpr,
                CAUSAL: tl.constexpr, MASK_KIND: tl.constexpr, MASK_ROW: tl.constexpr,
                DROPOUT: tl.constexpr, PRECISION: tl.constexpr, TMA: tl.constexpr,
                EVEN_D: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """Query tiles lo, lo + BLOCK_M, .. < hi folded into (dk, dv) of one key block.

    The tiles are key-major, S^T = K Q^T (BLOCK_N, BLOCK_M): every product of the loop
    (S^T, dP^T = V dO^T, dV += P^T dO, dK += dS^T Q) then has the key block's BLOCK_N rows as
    its M dimension, so one BLOCK_N >= 64 serves wgmma in all four.  Rows past L_q load
    LSE = +inf, so their probabilities are 0 without a test; keys past L_k only touch dK/dV
    rows that are not stored, so only a key-padding length needs a key test (CHECK_KEYS).
    DIAGONAL: the tiles take the causal test (CAUSAL: the kernel is causal)."""
    offs_m0 = tl.arange(0, BLOCK_M)
    cols = offs_n[:, None]
    for start_m in range(lo, hi, BLOCK_M):
        offs_m = start_m + offs_m0
        q = _load_rows(q_desc, Q, stride_qm, start_m, L_q, D, BLOCK_M, BLOCK_D, TMA, True,
                       EVEN_D)
        do = _load_rows(do_desc, DO, stride_dom, start_m, L_q, D, BLOCK_M, BLOCK_D, TMA, True,
                        EVEN_D)
        lse2 = tl.load(LSE + offs_m, mask=offs_m < L_q, other=float("inf")) * LOG2E
        delta = tl.load(DELTA + offs_m, mask=offs_m < L_q, other=0.0)
        qk_t = tl.dot(k, tl.trans(q), input_precision=PRECISION)
        if MASKED or CHECK_KEYS or DIAGONAL:
            rows = offs_m[None, :]
            s_t, keep = _masked_scores(qk_t * qk_scale, mask_base, stride_mm, stride_mn, rows,
                                       cols, L_q, L_k, kv_len, causal_off, masked_score, MASKED,
                                       MASK_KIND, MASK_ROW, CHECK_KEYS, DIAGONAL)
            if MASKED:
                p_t = _probabilities(s_t, lse2[None, :], rows, L_k, causal_off, CAUSAL,
                                     MASK_KIND)
            else:
                p_t = tl.math.exp2(s_t - lse2[None, :])
        else:
            p_t = tl.math.exp2(qk_t * qk_scale - lse2[None, :])
        dp_t = tl.dot(v, tl.trans(do), input_precision=PRECISION)
        if DROPOUT:  # dV takes the dropped probabilities, dS the undropped ones
            kept = _dropout_keep(seed, bh, offs_m, start_n, dropout_p, BLOCK_N, True)
            dv = tl.dot(tl.where(kept, p_t * drop_scale, 0.0).to(do.dtype), do, dv,
                        input_precision=PRECISION)
            dp_t = tl.where(kept, dp_t * drop_scale, 0.0)
        else:
            dv = tl.dot(p_t.to(do.dtype), do, dv, input_precision=PRECISION)
        ds_t = p_t * (dp_t - delta[None, :])
        if MASKED and MASK_KIND == 1:
            ds_t = tl.where(keep, ds_t, 0.0)  # a replaced score has no gradient
        dk = tl.dot(ds_t.to(q.dtype), q, dk, input_precision=PRECISION)
    return dk, dv


@triton.jit
def _dkdv_q_walk(dk, dv, k, v, q_desc, do_desc, Q, DO, stride_qm, stride_dom, LSE, DELTA,
                 mask_base, stride_mm, stride_mn, start_n, L_q, L_k, kv_len, D,
                 causal_off, qk_scale, masked_score, seed, bh, dropout_p, drop_scale,
                 MASKED: tl.constexpr, CHECK_KEYS: tl.constexpr, CAUSAL: tl.constexpr,
                 MASK_KIND: tl.constexpr, MASK_ROW: tl.constexpr, DROPOUT: tl.constexpr,
                 PRECISION: tl.constexpr, TMA: tl.constexpr, EVEN_D: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """(dk, dv) fp32 of the key block at start_n (k, v resident) plus its gradient from every
    query block that sees it (accumulated in place, so that the query heads of a kv head share
    one pair of accumulators); dk still lacks the softmax scale.  Q and dO are read through
    the descriptors q_desc, do_desc when TMA (else through Q, DO).  CAUSAL: the query tiles the
    diagonal crosses take the causal test, the ones below it do not; query i sees key j when
    j <= i + causal_off, so the first query block is the one holding row start_n - causal_off
    and a key block that no query sees walks no tile."""
    offs_n = start_n + tl.arange(0, BLOCK_N)
    if CAUSAL:
        lo = (tl.maximum(start_n - causal_off, 0) // BLOCK_M) * BLOCK_M
        # first query tile whose first row sees the whole key block:
        # start_m >= start_n + BN - 1 - causal_off
        last = tl.maximum(start_n + BLOCK_N - 1 - causal_off - lo, 0)
        m_int = tl.minimum(lo + tl.cdiv(last, BLOCK_M) * BLOCK_M, L_q)
        m_int = tl.maximum(m_int, lo)
        dk, dv = _dkdv_tiles(
            dk, dv, k, v, q_desc, do_desc, Q, DO, stride_qm, stride_dom, LSE, DELTA, mask_base,
            stride_mm, stride_mn, start_n, offs_n, lo, m_int, L_q, L_k, kv_len, D, causal_off,
            qk_scale, masked_score, seed, bh, dropout_p, drop_scale, MASKED, CHECK_KEYS, True,
            CAUSAL,
            MASK_KIND, MASK_ROW, DROPOUT, PRECISION, TMA, EVEN_D, BLOCK_M, BLOCK_N, BLOCK_D)
    else:
        m_int = 0
    dk, dv = _dkdv_tiles(
        dk, dv, k, v, q_desc, do_desc, Q, DO, stride_qm, stride_dom, LSE, DELTA, mask_base,
        stride_mm, stride_mn, start_n, offs_n, m_int, L_q, L_q, L_k, kv_len, D, causal_off,
        qk_scale, masked_score, seed, bh, dropout_p, drop_scale, MASKED, CHECK_KEYS, False, CAUSAL,
        MASK_KIND, MASK_ROW, DROPOUT, PRECISION, TMA, EVEN_D, BLOCK_M, BLOCK_N, BLOCK_D)
    return dk, dv


@triton.jit
def _dq_tiles(dq, q, do, lse2, delta, k_desc, v_desc, K, V, stride_kn, stride_vn,
              mask_base, stride_mm, stride_mn, dmask_base, offs_m, lo, hi, L_q, L_k, kv_len, D,
              causal_off, qk_scale, masked_score, seed, bh, dropout_p, drop_scale,
              MASKED: tl.constexpr, BOUNDS: tl.constexpr, DIAGONAL: tl.constexpr,
              CAUSAL: tl.constexpr, MASK_KIND: tl.constexpr, MASK_ROW: tl.constexpr,
              MASK_GRAD: tl.constexpr, DROPOUT: tl.constexpr, PRECISION: tl.constexpr,
              TMA: tl.constexpr, EVEN_D: tl.constexpr,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """Key tiles lo, lo + BLOCK_N, .. < hi folded into dq of one query block (BOUNDS, DIAGONAL:
    the tiles take the key bound and causal tests; CAUSAL: the kernel is causal).  The tiles
    are query-major: S = Q K^T (BLOCK_M, BLOCK_N), M = BLOCK_M in every product.
    MASK_GRAD: dS, the gradient of the additive mask before its broadcast is reduced, is
    written to the contiguous (L_q, L_k) fp32 matrix at ``dmask_base``."""
    rows = offs_m[:, None]
    for start_n in range(lo, hi, BLOCK_N):
        k = _load_rows(k_desc, K, stride_kn, start_n, L_k, D, BLOCK_N, BLOCK_D, TMA, BOUNDS,
                       EVEN_D)
        v = _load_rows(v_desc, V, stride_vn, start_n, L_k, D, BLOCK_N, BLOCK_D, TMA, BOUNDS,
                       EVEN_D)
        qk = tl.dot(q, tl.trans(k), input_precision=PRECISION)
        if MASKED or BOUNDS or DIAGONAL:
            cols = (start_n + tl.arange(0, BLOCK_N))[None, :]
            s, keep = _masked_scores(qk * qk_scale, mask_base, stride_mm, stride_mn, rows, cols,
                                     L_q, L_k, kv_len, causal_off, masked_score, MASKED,
                                     MASK_KIND, MASK_ROW, BOUNDS, DIAGONAL)
            if MASKED:
                p = _probabilities(s, lse2[:, None], rows, L_k, causal_off, CAUSAL, MASK_KIND)
            else:
                p = tl.math.exp2(s - lse2[:, None])
        else:
            p = tl.math.exp2(qk * qk_scale - lse2[:, None])
        dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
        if DROPOUT:
            kept = _dropout_keep(seed, bh, offs_m, start_n, dropout_p, BLOCK_N)
            dp = tl.where(kept, dp * drop_scale, 0.0)
        ds = p * (dp - delta[:, None])
        if MASKED and MASK_KIND == 1:
            ds = tl.where(keep, ds, 0.0)
        if MASK_GRAD:
            offs_n = (start_n + tl.arange(0, BLOCK_N))[None, :]
            tl.store(dmask_base + rows.to(tl.int64) * L_k + offs_n, ds,
                     mask=(rows < L_q) & (offs_n < L_k))
        dq = tl.dot(ds.to(k.dtype), k, dq, input_precision=PRECISION)
    return dq


@triton.jit
def _dq_kv_walk(q, do, lse2, delta, k_desc, v_desc, K, V, stride_kn, stride_vn,
                mask_base, stride_mm, stride_mn, dmask_base, start_m, L_q, L_k, kv_len, D,
                causal_off, qk_scale, masked_score, seed, bh, dropout_p, drop_scale,
                MASKED: tl.constexpr, CAUSAL: tl.constexpr, EVEN_N: tl.constexpr,
                MASK_KIND: tl.constexpr, MASK_ROW: tl.constexpr, MASK_GRAD: tl.constexpr,
                DROPOUT: tl.constexpr, PRECISION: tl.constexpr, TMA: tl.constexpr,
                EVEN_D: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """dq fp32 (without the softmax scale) of the query block at start_m over keys
    [0, kv_len): interior key tiles, then the partial / diagonal ones.  K and V are read
    through k_desc, v_desc when TMA; MASK_GRAD: dS goes to ``dmask_base`` (see _dq_tiles)."""
    offs_m = start_m + tl.arange(0, BLOCK_M)
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    hi, n_int = _kv_walk_bounds(start_m, kv_len, causal_off, CAUSAL, BLOCK_M, BLOCK_N)
    dq = _dq_tiles(dq, q, do, lse2, delta, k_desc, v_desc, K, V, stride_kn, stride_vn,
                   mask_base, stride_mm, stride_mn, dmask_base, offs_m, 0, n_int, L_q, L_k,
                   kv_len, D, causal_off, qk_scale, masked_score, seed, bh, dropout_p, drop_scale,
                   MASKED,
                   False, False, CAUSAL, MASK_KIND, MASK_ROW, MASK_GRAD, DROPOUT, PRECISION,
                   TMA, EVEN_D, BLOCK_M, BLOCK_N, BLOCK_D)
    if CAUSAL or not EVEN_N:
        dq = _dq_tiles(dq, q, do, lse2, delta, k_desc, v_desc, K, V, stride_kn, stride_vn,
                       mask_base, stride_mm, stride_mn, dmask_base, offs_m, n_int, hi, L_q,
                       L_k, kv_len, D, causal_off, qk_scale, masked_score, seed, bh, dropout_p,
                       drop_scale,
                       MASKED, True, CAUSAL, CAUSAL, MASK_KIND, MASK_ROW, MASK_GRAD, DROPOUT,
                       PRECISION, TMA, EVEN_D, BLOCK_M, BLOCK_N, BLOCK_D)
    return dq
