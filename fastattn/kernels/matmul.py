"""Triton GEMM with a fused epilogue: the feed-forward block's matrix products.

Computes C = epilogue(A @ B) for A (M, K) and B (K, N), both addressed through strides (so a
weight W of shape (N, K) is read as B = W^T without a copy), with, in this order:

    + bias[n]                       HAS_BIAS
    PRE[m, n] = acc; acc = act(acc) ACTIVATION != 0 (STORE_PRE writes the pre-activation)
    acc *= act'(PRE[m, n])          ACT_GRAD != 0    (backward: dH = (dY @ W2) * act'(H))
    + RESIDUAL[m, n]                HAS_RESIDUAL
    C[m, n] = acc (in C's dtype; fp32 accumulation)

Activations: 1 relu, 2 gelu (erf, torch's approximate="none"), 3 gelu_tanh.

Pointers: A (M, K), B (K, N), C / PRE / RESIDUAL (M, N), BIAS (N,).

This file holds the pointer kernel (``matmul_epilogue_kernel``: sm_80's mma.sync path, fp32,
and any operand TMA cannot address) and the epilogue math shared with the Hopper kernel in
``matmul_tma.py``.

Design trade-off: one program per (BLOCK_M, BLOCK_N) tile of C with a K loop on tensor cores
(tl.dot; mma.sync on sm_80, wgmma on sm_90a for fp16/bf16), programs ordered in groups of
GROUP_M row tiles so that neighbours share B tiles in L2.  The epilogue runs on the fp32 accumulator while it is still in
registers, so bias, activation, activation gradient and residual cost no extra pass over memory.
No split-K: the feed-forward's K (E or 4E) is small enough that tiles of C give full occupancy
at BERT token counts.
"""
import triton
import triton.language as tl

ACT_NONE = 0
ACT_RELU = 1
ACT_GELU = 2
ACT_GELU_TANH = 3

SQRT1_2 = tl.constexpr(0.7071067811865476)
SQRT_2_OVER_PI = tl.constexpr(0.7978845608028654)
INV_SQRT_2PI = tl.constexpr(0.3989422804014327)
GELU_TANH_C = tl.constexpr(0.044715)


@triton.jit
def _activation(h, ACTIVATION: tl.constexpr):
    if ACTIVATION == 1:
        return tl.maximum(h, 0.0)
    elif ACTIVATION == 2:
        return 0.5 * h * (1.0 + tl.math.erf(h * SQRT1_2))
    elif ACTIVATION == 3:
        u = SQRT_2_OVER_PI * (h + GELU_TANH_C * h * h * h)
        t = 1.0 - 2.0 / (tl.exp(2.0 * u) + 1.0)  # tanh(u), saturating cleanly to +-1
        return 0.5 * h * (1.0 + t)
    else:
        return h


@triton.jit
def _activation_grad(h, ACTIVATION: tl.constexpr):
    """d act(h) / dh."""
    if ACTIVATION == 1:
        return tl.where(h > 0.0, 1.0, 0.0)
    elif ACTIVATION == 2:
        return 0.5 * (1.0 + tl.math.erf(h * SQRT1_2)) + h * INV_SQRT_2PI * tl.exp(-0.5 * h * h)
    elif ACTIVATION == 3:
        u = SQRT_2_OVER_PI * (h + GELU_TANH_C * h * h * h)
        t = 1.0 - 2.0 / (tl.exp(2.0 * u) + 1.0)
        du = SQRT_2_OVER_PI * (1.0 + 3.0 * GELU_TANH_C * h * h)
        return 0.5 * (1.0 + t) + 0.5 * h * (1.0 - t * t) * du
    else:
        return tl.zeros_like(h) + 1.0


@triton.jit
def tile_coords(tile, M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """(row, column) tile index of linear tile number ``tile``, tiles ordered in groups of
    GROUP_M row tiles so that neighbouring programs share B tiles in L2."""
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    group = GROUP_M * num_n
    first_m = (tile // group) * GROUP_M
    group_rows = tl.minimum(num_m - first_m, GROUP_M)
    pid_m = first_m + (tile % group) % group_rows
    pid_n = (tile % group) // group_rows
    return pid_m, pid_n


@triton.jit
def epilogue_math(acc, bias, pre, HAS_BIAS: tl.constexpr, ACTIVATION: tl.constexpr,
                  ACT_GRAD: tl.constexpr):
    """The epilogue on the fp32 accumulator tile up to the residual (which the kernels add
    after loading it, so that its tile is not live through the activation); returns
    (output, pre-activation).  ``bias``: a (1, BLOCK_N) row, ``pre``: the stored
    pre-activation tile (ACT_GRAD), both fp32; an operand whose switch is off is not read."""
    if HAS_BIAS:
        acc = acc + bias
    h = acc
    if ACTIVATION != 0:
        acc = _activation(acc, ACTIVATION)
    if ACT_GRAD != 0:
        acc = acc * _activation_grad(pre, ACT_GRAD)
    return acc, h


@triton.jit
def matmul_epilogue_kernel(
    A, B, C, BIAS, PRE, RESIDUAL,
    M, N, K,
    stride_am, stride_ak,
    stride_bk, stride_bn,
    stride_cm, stride_cn,
    stride_pm, stride_pn,
    stride_rm, stride_rn,
    HAS_BIAS: tl.constexpr, ACTIVATION: tl.constexpr, STORE_PRE: tl.constexpr,
    ACT_GRAD: tl.constexpr, HAS_RESIDUAL: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    pid_m, pid_n = tile_coords(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_M)
    start_m = pid_m * BLOCK_M
    start_n = pid_n * BLOCK_N
    a_ptr = tl.make_block_ptr(A, shape=(M, K), strides=(stride_am, stride_ak),
                              offsets=(start_m, 0), block_shape=(BLOCK_M, BLOCK_K), order=(1, 0))
    b_ptr = tl.make_block_ptr(B, shape=(K, N), strides=(stride_bk, stride_bn),
                              offsets=(0, start_n), block_shape=(BLOCK_K, BLOCK_N), order=(1, 0))
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for _ in range(0, K, BLOCK_K):
        a = tl.load(a_ptr, boundary_check=(0, 1), padding_option="zero")
        b = tl.load(b_ptr, boundary_check=(0, 1), padding_option="zero")
        acc = tl.dot(a, b, acc, input_precision=PRECISION)
        a_ptr = tl.advance(a_ptr, (0, BLOCK_K))
        b_ptr = tl.advance(b_ptr, (BLOCK_K, 0))

    bias = 0.0
    if HAS_BIAS:
        offs_n = start_n + tl.arange(0, BLOCK_N)
        bias = tl.load(BIAS + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)[None, :]
    pre_ptr = tl.make_block_ptr(PRE, shape=(M, N), strides=(stride_pm, stride_pn),
                                offsets=(start_m, start_n), block_shape=(BLOCK_M, BLOCK_N),
                                order=(1, 0))
    pre = 0.0
    if ACT_GRAD != 0:
        pre = tl.load(pre_ptr, boundary_check=(0, 1), padding_option="zero").to(tl.float32)
    out, h = epilogue_math(acc, bias, pre, HAS_BIAS, ACTIVATION, ACT_GRAD)
    if STORE_PRE:
        tl.store(pre_ptr, h.to(PRE.dtype.element_ty), boundary_check=(0, 1))
    if HAS_RESIDUAL:
        res_ptr = tl.make_block_ptr(RESIDUAL, shape=(M, N), strides=(stride_rm, stride_rn),
                                    offsets=(start_m, start_n), block_shape=(BLOCK_M, BLOCK_N),
                                    order=(1, 0))
        out += tl.load(res_ptr, boundary_check=(0, 1), padding_option="zero").to(tl.float32)
    c_ptr = tl.make_block_ptr(C, shape=(M, N), strides=(stride_cm, stride_cn),
                              offsets=(start_m, start_n), block_shape=(BLOCK_M, BLOCK_N),
                              order=(1, 0))
    tl.store(c_ptr, out.to(C.dtype.element_ty), boundary_check=(0, 1))
