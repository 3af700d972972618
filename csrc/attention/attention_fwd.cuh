// Fused scaled-dot-product attention forward, FlashAttention-2 style, on tensor cores.
//
// For every batch b, head h (same semantics as fastattn/kernels/attention.py):
//
//     S = scale * Q K^T                         (L_q, L_k), fp32
//     S[mask == 0] = -1e10                      mask_kind == kKeep  (the guide's rule)
//     S += mask                                 mask_kind == kAdd   (torch's float attn_mask)
//     S[j > i] = -inf  (causal, top-left),  S[j >= L_k] = -inf  (past-the-end keys)
//     O = softmax(S) V,  LSE = logsumexp(S)     (natural log, fp32; +inf for all -inf rows, O = 0)
//
// Pointers: q (N, H, L_q, D), k / v (N, H, L_k, D), out (N, H, L_q, D) through strides (last 1);
// mask viewed as (N, H, L_q, L_k) through 4 strides (0 on broadcast dims), any of MaskDType;
// lse (N, H, L_q) contiguous fp32.  See attention_params.h.
//
// Design: one block of 4 warps owns BLOCK_M = 64 query rows (16 per warp) and streams K / V in
// BLOCK_N = 64 key blocks.  Q stays in registers as mma A-fragments; S = Q K^T and O += P V run
// on mma.sync m16n8k16 with fp32 accumulators; the online softmax (running max / sum in base 2,
// scale * log2 e folded in) lives in registers, so the score matrix never reaches memory.
// Tiles sit in shared memory with an XOR swizzle of 16-byte chunks (bank-conflict-free ldmatrix,
// no padding, so 3 tiles of 64 x 128 fit the 48 KiB static limit).  The V load of a block
// overlaps Q K^T and the next K load overlaps P V (cp.async); deeper pipelining would need
// dynamic shared memory above 48 KiB.  head_dim is a template parameter (32 / 64 / 128); a
// smaller multiple of 8 runs in the next size with zero-filled columns.  Mask elements are read
// straight from global memory (typically a broadcast key-padding row, cached in L1).
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <math_constants.h>
#include <stdint.h>

#include "attention/attention_params.h"
#include "common/device_utils.cuh"
#include "common/mma.cuh"

namespace fastattn {
namespace attn {

constexpr int kBlockM = 64;
constexpr int kBlockN = 64;
constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;
constexpr float kMaskedScoreLog2 = -1.0e10f * 1.4426950408889634f;  // -1e10 in base-2 units

// Element offset of 16-byte chunk `chunk` of row `row` in a swizzled tile with D columns.
// Eight consecutive rows at one logical chunk land in eight distinct bank groups.
template <int D>
__device__ __forceinline__ int swizzle(int row, int chunk) {
  constexpr int kChunks = D / 8;
  constexpr int kRowsPerLine = kChunks >= 8 ? 1 : 8 / kChunks;
  constexpr int kPattern = kChunks >= 8 ? 8 : kChunks;
  return row * D + ((chunk ^ ((row / kRowsPerLine) % kPattern)) * 8);
}

// Copies rows [row0, row0 + ROWS) of a (L, D) slice into a swizzled tile; rows >= n_rows and
// chunks >= d_chunks are zero-filled.
template <int ROWS, int D, typename T>
__device__ __forceinline__ void load_tile(T* tile, const T* base, int64_t row_stride, int row0,
                                          int n_rows, int d_chunks) {
  constexpr int kChunks = D / 8;
#pragma unroll
  for (int idx = threadIdx.x; idx < ROWS * kChunks; idx += kThreads) {
    const int r = idx / kChunks, c = idx % kChunks;
    const bool ok = row0 + r < n_rows && c < d_chunks;
    const T* src = ok ? base + (row0 + r) * row_stride + c * 8 : base;
    cp_async_16(tile + swizzle<D>(r, c), src, ok);
  }
}

template <typename M> __device__ __forceinline__ float mask_to_float(M x) {
  return static_cast<float>(x);
}
template <> __device__ __forceinline__ float mask_to_float<__half>(__half x) {
  return __half2float(x);
}
template <> __device__ __forceinline__ float mask_to_float<__nv_bfloat16>(__nv_bfloat16 x) {
  return __bfloat162float(x);
}
template <> __device__ __forceinline__ float mask_to_float<double>(double x) {
  return static_cast<float>(x);
}

// Applies the keep / additive mask to a warp's (16 x BLOCK_N) score fragment (base-2 units).
// Elements with row >= L_q or col >= L_k are left alone (they are not stored / are -inf).
template <typename M, bool kKeepMask>
__device__ __forceinline__ void apply_mask(float (&s)[kBlockN / 8][4], const void* mask_base,
                                           const AttentionFwdParams& p, int row0, int col0) {
  const M* mask = static_cast<const M*>(mask_base);
#pragma unroll
  for (int j = 0; j < kBlockN / 8; ++j) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int row = row0 + (i >= 2 ? 8 : 0);
      const int col = col0 + j * 8 + (i & 1);
      if (row < p.len_q && col < p.len_k) {
        const float m = mask_to_float(
            mask[static_cast<int64_t>(row) * p.mask_stride_m +
                 static_cast<int64_t>(col) * p.mask_stride_n]);
        if (kKeepMask) {
          if (m == 0.f) s[j][i] = kMaskedScoreLog2;
        } else {
          s[j][i] += m * kLog2e;
        }
      }
    }
  }
}

template <bool kKeepMask>
__device__ __forceinline__ void apply_mask_any(float (&s)[kBlockN / 8][4], const void* mask_base,
                                               const AttentionFwdParams& p, int row0, int col0) {
  switch (p.mask_dtype) {
    case MaskDType::kUInt8: apply_mask<uint8_t, kKeepMask>(s, mask_base, p, row0, col0); break;
    case MaskDType::kInt8: apply_mask<int8_t, kKeepMask>(s, mask_base, p, row0, col0); break;
    case MaskDType::kInt16: apply_mask<int16_t, kKeepMask>(s, mask_base, p, row0, col0); break;
    case MaskDType::kInt32: apply_mask<int32_t, kKeepMask>(s, mask_base, p, row0, col0); break;
    case MaskDType::kInt64: apply_mask<int64_t, kKeepMask>(s, mask_base, p, row0, col0); break;
    case MaskDType::kFloat16: apply_mask<__half, kKeepMask>(s, mask_base, p, row0, col0); break;
    case MaskDType::kBFloat16:
      apply_mask<__nv_bfloat16, kKeepMask>(s, mask_base, p, row0, col0);
      break;
    case MaskDType::kFloat32: apply_mask<float, kKeepMask>(s, mask_base, p, row0, col0); break;
    case MaskDType::kFloat64: apply_mask<double, kKeepMask>(s, mask_base, p, row0, col0); break;
  }
}

__device__ __forceinline__ float quad_max(float x) {
  x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
  return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}
__device__ __forceinline__ float quad_sum(float x) {
  x += __shfl_xor_sync(0xffffffffu, x, 1);
  return x + __shfl_xor_sync(0xffffffffu, x, 2);
}

template <typename T, int D>
__global__ void __launch_bounds__(kThreads)
    attention_fwd_kernel(const AttentionFwdParams p) {
  static_assert(D % 16 == 0 && D <= 128, "head dim must be 16..128, a multiple of 16");
  __shared__ __align__(128) T s_q[kBlockM * D];  // Q tile, reused to stage O for the store
  __shared__ __align__(128) T s_k[kBlockN * D];
  __shared__ __align__(128) T s_v[kBlockN * D];

  const int n_m_blocks = cdiv(p.len_q, kBlockM);
  const int m_block = blockIdx.x % n_m_blocks;
  const int64_t bh = blockIdx.x / n_m_blocks;
  const int64_t b = bh / p.heads, h = bh % p.heads;
  const int m0 = m_block * kBlockM;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int d_chunks = p.head_dim / 8;

  const T* q = static_cast<const T*>(p.q) + b * p.q_stride_b + h * p.q_stride_h;
  const T* k = static_cast<const T*>(p.k) + b * p.k_stride_b + h * p.k_stride_h;
  const T* v = static_cast<const T*>(p.v) + b * p.v_stride_b + h * p.v_stride_h;
  const void* mask_base = nullptr;
  if (p.mask_kind != MaskKind::kNone) {
    const int64_t elem = p.mask_dtype == MaskDType::kFloat64 || p.mask_dtype == MaskDType::kInt64
                             ? 8
                             : p.mask_dtype == MaskDType::kFloat32 ||
                                       p.mask_dtype == MaskDType::kInt32
                                   ? 4
                                   : p.mask_dtype == MaskDType::kUInt8 ||
                                             p.mask_dtype == MaskDType::kInt8
                                         ? 1
                                         : 2;
    mask_base = static_cast<const char*>(p.mask) +
                (b * p.mask_stride_b + h * p.mask_stride_h) * elem;
  }

  load_tile<kBlockM, D>(s_q, q, p.q_stride_m, m0, p.len_q, d_chunks);
  load_tile<kBlockN, D>(s_k, k, p.k_stride_n, 0, p.len_k, d_chunks);
  cp_async_commit();
  cp_async_wait_all();
  __syncthreads();

  // This warp's 16 query rows as A-fragments, one per 16-wide slice of the head dim.
  uint32_t q_frag[D / 16][4];
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk)
    ldmatrix_x4(q_frag[kk], s_q + swizzle<D>(warp * 16 + lane % 16, kk * 2 + lane / 16));

  float acc[D / 8][4];
#pragma unroll
  for (int j = 0; j < D / 8; ++j)
#pragma unroll
    for (int i = 0; i < 4; ++i) acc[j][i] = 0.f;
  float row_max[2] = {-CUDART_INF_F, -CUDART_INF_F};
  float row_sum[2] = {0.f, 0.f};  // this thread's share; summed over the quad at the end

  const int row0 = m0 + warp * 16 + lane / 4;  // rows row0 and row0 + 8
  const int n_end = p.causal ? min(p.len_k, m0 + kBlockM) : p.len_k;
  const int n_blocks = cdiv(n_end, kBlockN);

  for (int nb = 0; nb < n_blocks; ++nb) {
    const int n0 = nb * kBlockN;
    load_tile<kBlockN, D>(s_v, v, p.v_stride_n, n0, p.len_k, d_chunks);
    cp_async_commit();

    float s[kBlockN / 8][4];
#pragma unroll
    for (int j = 0; j < kBlockN / 8; ++j)
#pragma unroll
      for (int i = 0; i < 4; ++i) s[j][i] = 0.f;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
#pragma unroll
      for (int nn = 0; nn < kBlockN / 16; ++nn) {
        uint32_t kf[4];
        ldmatrix_x4(kf, s_k + swizzle<D>(nn * 16 + lane % 8 + (lane / 16) * 8,
                                         kk * 2 + (lane / 8) % 2));
        MmaOp<T>::run(s[2 * nn], q_frag[kk], kf[0], kf[1]);
        MmaOp<T>::run(s[2 * nn + 1], q_frag[kk], kf[2], kf[3]);
      }
    }

#pragma unroll
    for (int j = 0; j < kBlockN / 8; ++j)
#pragma unroll
      for (int i = 0; i < 4; ++i) s[j][i] *= p.scale_log2;
    const int col0 = n0 + 2 * (lane % 4);
    if (p.mask_kind == MaskKind::kKeep) apply_mask_any<true>(s, mask_base, p, row0, col0);
    if (p.mask_kind == MaskKind::kAdd) apply_mask_any<false>(s, mask_base, p, row0, col0);
    if (n0 + kBlockN > p.len_k || (p.causal && n0 + kBlockN - 1 > m0)) {
#pragma unroll
      for (int j = 0; j < kBlockN / 8; ++j)
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const int row = row0 + (i >= 2 ? 8 : 0), col = col0 + j * 8 + (i & 1);
          if (col >= p.len_k || (p.causal && col > row)) s[j][i] = -CUDART_INF_F;
        }
    }

    // Online softmax, base 2.  Rows with no finite score yet keep max -inf and p = 0.
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      float mx = row_max[half];
#pragma unroll
      for (int j = 0; j < kBlockN / 8; ++j)
        mx = fmaxf(mx, fmaxf(s[j][2 * half], s[j][2 * half + 1]));
      mx = quad_max(mx);
      const float m_safe = mx == -CUDART_INF_F ? 0.f : mx;
      const float alpha = exp2f(row_max[half] - m_safe);
      float sum = 0.f;
#pragma unroll
      for (int j = 0; j < kBlockN / 8; ++j) {
        s[j][2 * half] = exp2f(s[j][2 * half] - m_safe);
        s[j][2 * half + 1] = exp2f(s[j][2 * half + 1] - m_safe);
        sum += s[j][2 * half] + s[j][2 * half + 1];
      }
      row_sum[half] = row_sum[half] * alpha + sum;
      row_max[half] = mx;
#pragma unroll
      for (int j = 0; j < D / 8; ++j) {
        acc[j][2 * half] *= alpha;
        acc[j][2 * half + 1] *= alpha;
      }
    }

    cp_async_wait_all();  // V of this block has landed
    __syncthreads();      // ... for every thread, and nobody reads s_k any more
    if (nb + 1 < n_blocks) {
      load_tile<kBlockN, D>(s_k, k, p.k_stride_n, n0 + kBlockN, p.len_k, d_chunks);
      cp_async_commit();
    }

#pragma unroll
    for (int kk = 0; kk < kBlockN / 16; ++kk) {
      uint32_t pf[4];
      pf[0] = MmaOp<T>::pack(s[2 * kk][0], s[2 * kk][1]);
      pf[1] = MmaOp<T>::pack(s[2 * kk][2], s[2 * kk][3]);
      pf[2] = MmaOp<T>::pack(s[2 * kk + 1][0], s[2 * kk + 1][1]);
      pf[3] = MmaOp<T>::pack(s[2 * kk + 1][2], s[2 * kk + 1][3]);
#pragma unroll
      for (int dn = 0; dn < D / 16; ++dn) {
        uint32_t vf[4];
        ldmatrix_x4_trans(vf, s_v + swizzle<D>(kk * 16 + lane % 8 + ((lane / 8) % 2) * 8,
                                               dn * 2 + lane / 16));
        MmaOp<T>::run(acc[2 * dn], pf, vf[0], vf[1]);
        MmaOp<T>::run(acc[2 * dn + 1], pf, vf[2], vf[3]);
      }
    }
    cp_async_wait_all();  // next K has landed
    __syncthreads();      // ... and nobody reads s_v any more
  }

  // Normalize, stage O in shared memory (this warp's own rows of s_q), store 16-byte chunks.
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const float l = quad_sum(row_sum[half]);
    const bool has_any = l > 0.f;  // false only when every score was -inf
    const float inv = has_any ? 1.f / l : 1.f;
#pragma unroll
    for (int j = 0; j < D / 8; ++j) {
      acc[j][2 * half] *= inv;
      acc[j][2 * half + 1] *= inv;
    }
    const int row = row0 + half * 8;
    if (lane % 4 == 0 && row < p.len_q)
      p.lse[bh * p.len_q + row] =
          has_any ? (row_max[half] + log2f(l)) * kLn2 : CUDART_INF_F;
  }
#pragma unroll
  for (int j = 0; j < D / 8; ++j) {
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int r = warp * 16 + lane / 4 + half * 8;
      T* dst = s_q + swizzle<D>(r, j) + 2 * (lane % 4);
      dst[0] = from_float<T>(acc[j][2 * half]);
      dst[1] = from_float<T>(acc[j][2 * half + 1]);
    }
  }
  __syncthreads();
  T* out = static_cast<T*>(p.out) + b * p.out_stride_b + h * p.out_stride_h;
  constexpr int kChunks = D / 8;
#pragma unroll
  for (int idx = threadIdx.x; idx < kBlockM * kChunks; idx += kThreads) {
    const int r = idx / kChunks, c = idx % kChunks;
    if (m0 + r < p.len_q && c < d_chunks)
      *reinterpret_cast<uint4*>(out + (m0 + r) * p.out_stride_m + c * 8) =
          *reinterpret_cast<const uint4*>(s_q + swizzle<D>(r, c));
  }
}

}  // namespace attn

template <typename T> struct DTypeOf;
template <> struct DTypeOf<__half> { static constexpr DType value = DType::kFloat16; };
template <> struct DTypeOf<__nv_bfloat16> { static constexpr DType value = DType::kBFloat16; };

template <DType kDType> struct ElementOf;
template <> struct ElementOf<DType::kFloat16> { using type = __half; };
template <> struct ElementOf<DType::kBFloat16> { using type = __nv_bfloat16; };

template <DType kDType, int kHeadDim>
cudaError_t run_attention_fwd(const AttentionFwdParams& params, cudaStream_t stream) {
  using T = typename ElementOf<kDType>::type;
  const int64_t blocks = static_cast<int64_t>(cdiv(params.len_q, attn::kBlockM)) *
                         params.batch * params.heads;
  if (blocks == 0) return cudaSuccess;
  if (blocks > 0x7fffffff) return cudaErrorInvalidConfiguration;
  attn::attention_fwd_kernel<T, kHeadDim>
      <<<static_cast<unsigned>(blocks), attn::kThreads, 0, stream>>>(params);
  return cudaGetLastError();
}

}  // namespace fastattn

// Defines one explicit instantiation; used once per .cu file.
#define FASTATTN_INSTANTIATE_ATTENTION_FWD(DTYPE, HEAD_DIM)                                   \
  template cudaError_t fastattn::run_attention_fwd<fastattn::DType::DTYPE, HEAD_DIM>(         \
      const fastattn::AttentionFwdParams&, cudaStream_t);
