"""Hopper GEMM with a fused epilogue: TMA tensor descriptors, persistent grid, async wgmma.

Computes the same C = epilogue(A @ B) as ``matmul.py`` (bias, activation with the
pre-activation stored, activation gradient, residual; see there) for fp16 / bf16 operands.

Layouts: every matrix is read through a TMA descriptor built in the kernel
(``tl.make_tensor_descriptor``), which needs its last dimension contiguous, the base and the
other stride 16-byte aligned.  A (M, K) is either row-major (stride ``stride_a`` between rows)
or, with ``A_T``, the transpose of a row-major (K, M) matrix; B (K, N) is row-major or, with
``B_T``, the transpose of a row-major (N, K) matrix (nn.Linear's weight).  C, PRE and RESIDUAL
are row-major (M, N) with row strides ``stride_c``, ``stride_p``, ``stride_r``; BIAS (N,).
The launcher checks all this and uses the pointer kernel otherwise.

Design trade-off: NUM_PROGRAMS persistent programs (one per SM) walk the tiles in groups of
GROUP_M row tiles (neighbours share B in L2).  The K loop holds only TMA loads into a
``num_stages``-deep shared-memory ring and asynchronous wgmma reading both operands from shared
memory (the transposes are shared-memory views, no ldmatrix or register copy), so Triton's
pipeliner overlaps the next stages' loads with the math and keeps one wgmma group in flight.
The epilogue stays outside the K loop: it reads the residual / pre-activation tile and writes
C (and PRE) through TMA.  Large tiles (128 x 128 x 128; 128 x 256 spills once a GELU is fused)
amortise the loop's bookkeeping over BLOCK_M x BLOCK_N x BLOCK_K multiply-adds; ragged edges are handled by TMA (zero fill on
load, clipping on store), so the loop has no bounds arithmetic.  Measured on sm_90a with
triton 3.6 and 3.8 alike: ``tl.range(..., warp_specialize=True)`` leaves the K loop unchanged on
Hopper, and ``flatten=True`` on the tile loop pulls the whole epilogue into the K loop's body
(~2,600 instructions per 8 wgmma), so the loops stay nested and plain.
"""
import triton
import triton.language as tl

from fastattn.kernels.matmul import epilogue_math, tile_coords


@triton.jit
def matmul_tma_kernel(
    A, B, C, BIAS, PRE, RESIDUAL,
    M, N, K,
    stride_a, stride_b, stride_c, stride_p, stride_r,
    NUM_PROGRAMS,
    HAS_BIAS: tl.constexpr, ACTIVATION: tl.constexpr, STORE_PRE: tl.constexpr,
    ACT_GRAD: tl.constexpr, HAS_RESIDUAL: tl.constexpr,
    A_T: tl.constexpr, B_T: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    if A_T:
        a_desc = tl.make_tensor_descriptor(A, shape=[K, M], strides=[stride_a, 1],
                                           block_shape=[BLOCK_K, BLOCK_M])
    else:
        a_desc = tl.make_tensor_descriptor(A, shape=[M, K], strides=[stride_a, 1],
                                           block_shape=[BLOCK_M, BLOCK_K])
    if B_T:
        b_desc = tl.make_tensor_descriptor(B, shape=[N, K], strides=[stride_b, 1],
                                           block_shape=[BLOCK_N, BLOCK_K])
    else:
        b_desc = tl.make_tensor_descriptor(B, shape=[K, N], strides=[stride_b, 1],
                                           block_shape=[BLOCK_K, BLOCK_N])
    c_desc = tl.make_tensor_descriptor(C, shape=[M, N], strides=[stride_c, 1],
                                       block_shape=[BLOCK_M, BLOCK_N])
    if STORE_PRE or ACT_GRAD != 0:
        pre_desc = tl.make_tensor_descriptor(PRE, shape=[M, N], strides=[stride_p, 1],
                                             block_shape=[BLOCK_M, BLOCK_N])
    if HAS_RESIDUAL:
        res_desc = tl.make_tensor_descriptor(RESIDUAL, shape=[M, N], strides=[stride_r, 1],
                                             block_shape=[BLOCK_M, BLOCK_N])

    num_tiles = tl.cdiv(M, BLOCK_M) * tl.cdiv(N, BLOCK_N)
    k_tiles = tl.cdiv(K, BLOCK_K)
    for tile in range(tl.program_id(0), num_tiles, NUM_PROGRAMS):
        pid_m, pid_n = tile_coords(tile, M, N, BLOCK_M, BLOCK_N, GROUP_M)
        off_m = pid_m * BLOCK_M
        off_n = pid_n * BLOCK_N
        acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
        for kt in range(k_tiles):
            off_k = kt * BLOCK_K
            if A_T:
                a = a_desc.load([off_k, off_m]).T
            else:
                a = a_desc.load([off_m, off_k])
            if B_T:
                b = b_desc.load([off_n, off_k]).T
            else:
                b = b_desc.load([off_k, off_n])
            acc = tl.dot(a, b, acc)

        bias = 0.0
        if HAS_BIAS:
            offs_n = off_n + tl.arange(0, BLOCK_N)
            bias = tl.load(BIAS + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)[None, :]
        pre = 0.0
        if ACT_GRAD != 0:
            pre = pre_desc.load([off_m, off_n]).to(tl.float32)
        out, h = epilogue_math(acc, bias, pre, HAS_BIAS, ACTIVATION, ACT_GRAD)
        if STORE_PRE:
            pre_desc.store([off_m, off_n], h.to(PRE.dtype.element_ty))
        if HAS_RESIDUAL:
            out += res_desc.load([off_m, off_n]).to(tl.float32)
        c_desc.store([off_m, off_n], out.to(C.dtype.element_ty))
