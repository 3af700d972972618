"""Triton kernels for LayerNorm over the last dim, with an optional fused residual add.

For every row i of an (M, N) problem (N = hidden size):

    s      = x[i] + residual[i]        (rounded to the input dtype, as torch's x + residual)
    mean   = sum(s) / N,   rstd = 1 / sqrt(sum((s - mean)^2) / N + eps)       (fp32)
    y[i]   = (s - mean) * rstd * w + b

Backward, with xhat = (s - mean) * rstd and g = w * dy:

    ds = rstd * (g - mean(g * xhat) * xhat - mean(g))   (dx and d residual are both ds)
    dw = sum_i dy * xhat,   db = sum_i dy

Pointers (rows addressed through their stride; the last dim must have stride 1):

    X, RES, XSUM, DY, DX, Y  (M, N) input dtype      W, B  (N,) input dtype
    MEAN, RSTD  (M,) fp32 contiguous                 DW_PART, DB_PART  (P, N) fp32 contiguous
    PART (K, P, N) fp32 contiguous -> OUT0, OUT1 (N,) input dtype

Design trade-off: a row of up to 8192 elements is held in registers (one read of x, one write
of y: the bandwidth minimum), several short rows per program.  Longer rows use the looped
kernels: statistics in one streaming pass (per-chunk mean / M2 merged with Chan's formula, as
stable as the two-pass formula) and a second pass that normalizes, so the forward reads x
twice.  dW / dB are reduced deterministically in two stages with no atomics: each backward
program sums its own group of rows into one row of a (P, N) fp32 buffer, then
``layer_norm_reduce_kernel`` sums the P rows in a fixed order.  Presence of residual, weight
and bias are runtime flags (uniform branches), which keeps one compiled variant per dtype and
block size.
"""
import triton
import triton.language as tl

_FLAGS = ["has_residual", "has_weight", "has_bias", "store_sum", "compute_dw", "compute_db"]


@triton.jit
def _load_sum(X, RES, x_offs, r_offs, mask, has_residual):
    """x (+ residual), rounded to the input dtype, returned as fp32 (0 where masked)."""
    x = tl.load(X + x_offs, mask=mask, other=0.0)
    if has_residual != 0:
        r = tl.load(RES + r_offs, mask=mask, other=0.0)
        x = (x.to(tl.float32) + r.to(tl.float32)).to(X.dtype.element_ty)
    return x.to(tl.float32)


@triton.jit(do_not_specialize=_FLAGS)
def layer_norm_fwd_kernel(
    X, RES, W, B, Y, XSUM, MEAN, RSTD,
    stride_x, stride_r, stride_y, stride_s,
    M, N, eps,
    has_residual, has_weight, has_bias, store_sum,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """One program per BLOCK_M rows; each row fits in one BLOCK_N >= N tile."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_N)
    row_ok = rows < M
    col_ok = cols < N
    ok = row_ok[:, None] & col_ok[None, :]
    s = _load_sum(X, RES, rows[:, None] * stride_x + cols[None, :],
                  rows[:, None] * stride_r + cols[None, :], ok, has_residual)
    if store_sum != 0:
        tl.store(XSUM + rows[:, None] * stride_s + cols[None, :],
                 s.to(XSUM.dtype.element_ty), mask=ok)
    mean = tl.sum(s, 1) / N
    centered = tl.where(ok, s - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(centered * centered, 1) / N + eps)
    y = centered * rstd[:, None]
    if has_weight != 0:
        y = y * tl.load(W + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    if has_bias != 0:
        y = y + tl.load(B + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    tl.store(Y + rows[:, None] * stride_y + cols[None, :], y.to(Y.dtype.element_ty), mask=ok)
    tl.store(MEAN + rows, mean, mask=row_ok)
    tl.store(RSTD + rows, rstd, mask=row_ok)


@triton.jit(do_not_specialize=_FLAGS)
def layer_norm_fwd_looped_kernel(
    X, RES, W, B, Y, XSUM, MEAN, RSTD,
    stride_x, stride_r, stride_y, stride_s,
    M, N, eps,
    has_residual, has_weight, has_bias, store_sum,
    BLOCK_N: tl.constexpr,
):
    """One program per row, streamed in BLOCK_N chunks: statistics pass, then normalize pass."""
    row = tl.program_id(0).to(tl.int64)
    x_row = row * stride_x
    r_row = row * stride_r
    offs = tl.arange(0, BLOCK_N)
    count = 0.0
    mean = 0.0
    m2 = 0.0
    for start in range(0, N, BLOCK_N):
        cols = start + offs
        ok = cols < N
        s = _load_sum(X, RES, x_row + cols, r_row + cols, ok, has_residual)
        if store_sum != 0:
            tl.store(XSUM + row * stride_s + cols, s.to(XSUM.dtype.element_ty), mask=ok)
        n_b = tl.minimum(N - start, BLOCK_N).to(tl.float32)
        mean_b = tl.sum(s, 0) / n_b
        d = tl.where(ok, s - mean_b, 0.0)
        m2_b = tl.sum(d * d, 0)
        total = count + n_b
        delta = mean_b - mean
        mean = mean + delta * (n_b / total)
        m2 = m2 + m2_b + delta * delta * (count * n_b / total)
        count = total
    rstd = 1.0 / tl.sqrt(m2 / N + eps)
    for start in range(0, N, BLOCK_N):
        cols = start + offs
        ok = cols < N
        s = _load_sum(X, RES, x_row + cols, r_row + cols, ok, has_residual)
        y = (s - mean) * rstd
        if has_weight != 0:
            y = y * tl.load(W + cols, mask=ok, other=0.0).to(tl.float32)
        if has_bias != 0:
            y = y + tl.load(B + cols, mask=ok, other=0.0).to(tl.float32)
        tl.store(Y + row * stride_y + cols, y.to(Y.dtype.element_ty), mask=ok)
    tl.store(MEAN + row, mean)
    tl.store(RSTD + row, rstd)


@triton.jit(do_not_specialize=_FLAGS)
def layer_norm_bwd_kernel(
    DY, X, W, MEAN, RSTD, DX, DW_PART, DB_PART,
    stride_dy, stride_x, stride_dx,
    M, N, rows_per_program,
    has_weight, compute_dw, compute_db,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """One program per group of ``rows_per_program`` rows (a multiple of BLOCK_M): writes dX for
    them and one row of dW / dB partial sums.  X is the normalized input (x + residual)."""
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_N)
    col_ok = cols < N
    w = tl.full([BLOCK_N], 1.0, tl.float32)
    if has_weight != 0:
        w = tl.load(W + cols, mask=col_ok, other=0.0).to(tl.float32)
    dw_acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    db_acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    row_start = pid.to(tl.int64) * rows_per_program
    row_end = tl.minimum(row_start + rows_per_program, M)
    for start in range(row_start, row_end, BLOCK_M):
        rows = start + tl.arange(0, BLOCK_M)
        row_ok = rows < row_end
        ok = row_ok[:, None] & col_ok[None, :]
        x = tl.load(X + rows[:, None] * stride_x + cols[None, :], mask=ok, other=0.0)
        dy = tl.load(DY + rows[:, None] * stride_dy + cols[None, :], mask=ok, other=0.0)
        x = x.to(tl.float32)
        dy = dy.to(tl.float32)
        mean = tl.load(MEAN + rows, mask=row_ok, other=0.0)
        rstd = tl.load(RSTD + rows, mask=row_ok, other=0.0)
        xhat = tl.where(ok, (x - mean[:, None]) * rstd[:, None], 0.0)
        g = dy * w[None, :]
        c1 = tl.sum(xhat * g, 1) / N
        c2 = tl.sum(g, 1) / N
        dx = (g - (xhat * c1[:, None] + c2[:, None])) * rstd[:, None]
        tl.store(DX + rows[:, None] * stride_dx + cols[None, :], dx.to(DX.dtype.element_ty),
                 mask=ok)
        dw_acc += dy * xhat
        db_acc += dy
    part = pid.to(tl.int64) * N + cols
    if compute_dw != 0:
        tl.store(DW_PART + part, tl.sum(dw_acc, 0), mask=col_ok)
    if compute_db != 0:
        tl.store(DB_PART + part, tl.sum(db_acc, 0), mask=col_ok)


@triton.jit(do_not_specialize=_FLAGS)
def layer_norm_bwd_looped_kernel(
    DY, X, W, MEAN, RSTD, DX, DW_PART, DB_PART,
    stride_dy, stride_x, stride_dx,
    M, N, rows_per_program,
    has_weight, compute_dw, compute_db,
    BLOCK_N: tl.constexpr,
):
    """Looped variant for long rows: per row, one pass for the two row sums, one for dX.
    Partial dW / dB rows are accumulated in place (each program owns its row of the buffer,
    which the launcher zero-fills), chunk by chunk."""
    pid = tl.program_id(0)
    offs = tl.arange(0, BLOCK_N)
    part_row = pid.to(tl.int64) * N
    first_row = pid.to(tl.int64) * rows_per_program
    n_rows = tl.minimum(rows_per_program, M - pid * rows_per_program)
    for r in range(0, n_rows):
        row = first_row + r
        mean = tl.load(MEAN + row)
        rstd = tl.load(RSTD + row)
        c1_acc = tl.zeros([BLOCK_N], tl.float32)
        c2_acc = tl.zeros([BLOCK_N], tl.float32)
        for start in range(0, N, BLOCK_N):
            cols = start + offs
            ok = cols < N
            x = tl.load(X + row * stride_x + cols, mask=ok, other=0.0).to(tl.float32)
            g = tl.load(DY + row * stride_dy + cols, mask=ok, other=0.0).to(tl.float32)
            if has_weight != 0:
                g = g * tl.load(W + cols, mask=ok, other=0.0).to(tl.float32)
            xhat = tl.where(ok, (x - mean) * rstd, 0.0)
            c1_acc += xhat * g
            c2_acc += g
        c1 = tl.sum(c1_acc, 0) / N
        c2 = tl.sum(c2_acc, 0) / N
        for start in range(0, N, BLOCK_N):
            cols = start + offs
            ok = cols < N
            x = tl.load(X + row * stride_x + cols, mask=ok, other=0.0).to(tl.float32)
            dy = tl.load(DY + row * stride_dy + cols, mask=ok, other=0.0).to(tl.float32)
            g = dy
            if has_weight != 0:
                g = g * tl.load(W + cols, mask=ok, other=0.0).to(tl.float32)
            xhat = tl.where(ok, (x - mean) * rstd, 0.0)
            dx = (g - (xhat * c1 + c2)) * rstd
            tl.store(DX + row * stride_dx + cols, dx.to(DX.dtype.element_ty), mask=ok)
            if compute_dw != 0:
                acc = tl.load(DW_PART + part_row + cols, mask=ok, other=0.0)
                tl.store(DW_PART + part_row + cols, acc + dy * xhat, mask=ok)
            if compute_db != 0:
                acc = tl.load(DB_PART + part_row + cols, mask=ok, other=0.0)
                tl.store(DB_PART + part_row + cols, acc + dy, mask=ok)


@triton.jit
def layer_norm_reduce_kernel(
    PART, OUT0, OUT1, P, N,
    BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """OUT_k[n] = sum_p PART[k, p, n] in a fixed order; grid (cdiv(N, BLOCK_N), K <= 2)."""
    cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    k = tl.program_id(1)
    col_ok = cols < N
    base = PART + k.to(tl.int64) * P * N
    acc = tl.zeros([BLOCK_P, BLOCK_N], tl.float32)
    for start in range(0, P, BLOCK_P):
        rows = (start + tl.arange(0, BLOCK_P)).to(tl.int64)
        acc += tl.load(base + rows[:, None] * N + cols[None, :],
                       mask=(rows[:, None] < P) & col_ok[None, :], other=0.0)
    total = tl.sum(acc, 0)
    if k == 0:
        tl.store(OUT0 + cols, total.to(OUT0.dtype.element_ty), mask=col_ok)
    else:
        tl.store(OUT1 + cols, total.to(OUT1.dtype.element_ty), mask=col_ok)
