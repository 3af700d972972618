// Fused scaled-dot-product attention forward, FlashAttention-2 style, on tensor cores.
//
// For every batch b, head h (same semantics as fastattn/kernels/attention.py):
//
//     S = scale * Q K^T                         (L_q, L_k), fp32
//     S[mask == 0] = -1e10                      kKeep / kKeyPadding (the guide's rule)
//     S += mask                                 kAdd   (torch's float attn_mask)
//     S[j > i] = -inf  (causal, top-left),  S[j >= L_k] = -inf  (past-the-end keys)
//     O = softmax(S) V,  LSE = logsumexp(S)     (natural log, fp32; +inf for all -inf rows, O = 0)
//
// Pointers: q (N, H, L_q, D), k / v (N, H, L_k, D), out (N, H, L_q, D) through strides (last 1);
// kKeep / kAdd: mask viewed as (N, H, L_q, L_k) through 4 strides (0 on broadcast dims), of the
// compiled mask dtype; kKeyPadding: key_lengths (N,) int32 and (N, L_k) uint8 keep rows;
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
// smaller multiple of 8 runs in the next size with zero-filled columns.
//
// The mask path and the mask dtype are template parameters too (one instantiation per
// translation unit, listed in attention_fwd_variants.h), so a loop reads its mask with one load
// type and no run-time switch.  The key walk is split into interior blocks (no bounds, causal or
// row test) and at most one boundary block (past-the-end keys, the causal diagonal).  kKeyPadding
// bounds the walk by the sequence's key length: for a prefix mask the padded key blocks are
// neither loaded nor masked and the loop is the no-mask loop; only sequences whose mask is not
// a prefix, or is all zero (whose rows attend uniformly over all L_k keys), read the keep row.
// Dense masks (kKeep / kAdd) are read straight from global memory (typically broadcast, cached
// in L1).
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
__host__ __device__ constexpr int swizzle(int row, int chunk) {
  constexpr int kChunks = D / 8;
  constexpr int kRowsPerLine = kChunks >= 8 ? 1 : 8 / kChunks;
  constexpr int kPattern = kChunks >= 8 ? 8 : kChunks;
  return row * D + ((chunk ^ ((row / kRowsPerLine) % kPattern)) * 8);
}

// Copies rows [row0, row0 + ROWS) of a (L, D) slice into a swizzled tile; rows >= n_rows and
// chunks >= d_chunks are zero-filled.  Each thread owns one 16-byte column chunk and every
// kRowStep-th row, so its source pointer and tile offset advance by constants (no per-chunk
// index math: the swizzle pattern repeats every kRowStep rows).
template <int ROWS, int D, typename T>
__device__ __forceinline__ void load_tile(T* tile, const T* base, int64_t row_stride, int row0,
                                          int n_rows, int d_chunks) {
  constexpr int kChunks = D / 8;
  constexpr int kRowStep = kThreads / kChunks;
  static_assert(kThreads % kChunks == 0 && ROWS % kRowStep == 0, "tile shape");
  static_assert(swizzle<D>(kRowStep, 0) == kRowStep * D, "swizzle must repeat every kRowStep rows");
  const int c = threadIdx.x % kChunks, r = threadIdx.x / kChunks;
  const T* src = base + static_cast<int64_t>(row0 + r) * row_stride + c * 8;
  T* dst = tile + swizzle<D>(r, c);
  const bool chunk_ok = c < d_chunks;
#pragma unroll
  for (int i = 0; i < ROWS / kRowStep; ++i) {
    const bool ok = chunk_ok && row0 + r + i * kRowStep < n_rows;
    cp_async_16(dst + i * kRowStep * D, ok ? src + i * kRowStep * row_stride : base, ok);
  }
}

// The C++ element type of a mask dtype.
template <MaskDType kMaskDType> struct MaskElement;
template <> struct MaskElement<MaskDType::kUInt8> { using type = uint8_t; };
template <> struct MaskElement<MaskDType::kInt8> { using type = int8_t; };
template <> struct MaskElement<MaskDType::kInt16> { using type = int16_t; };
template <> struct MaskElement<MaskDType::kInt32> { using type = int32_t; };
template <> struct MaskElement<MaskDType::kInt64> { using type = int64_t; };
template <> struct MaskElement<MaskDType::kFloat16> { using type = __half; };
template <> struct MaskElement<MaskDType::kBFloat16> { using type = __nv_bfloat16; };
template <> struct MaskElement<MaskDType::kFloat32> { using type = float; };
template <> struct MaskElement<MaskDType::kFloat64> { using type = double; };

template <typename M> __device__ __forceinline__ float mask_to_float(M x) {
  return static_cast<float>(x);
}
template <> __device__ __forceinline__ float mask_to_float<__half>(__half x) {
  return __half2float(x);
}
template <> __device__ __forceinline__ float mask_to_float<__nv_bfloat16>(__nv_bfloat16 x) {
  return __bfloat162float(x);
}

// A warp's (16 x BLOCK_N) score fragment: s[j][i] is row row0 + (i >= 2 ? 8 : 0), column
// col0 + 8 j + (i & 1), with col0 = n0 + 2 (lane % 4).  Scores are in base-2 units.
using ScoreFrag = float[kBlockN / 8][4];

// Mask accessors.  apply<kBoundary>(s, col0, kv_end) masks one key block; in a boundary block
// columns >= kv_end are skipped (they become -inf afterwards and may lie past the mask).
struct NoMask {
  template <bool kBoundary>
  __device__ __forceinline__ void apply(ScoreFrag&, int, int) const {}
};

// A dense (L_q, L_k) slice read through strides; the thread's two rows are clamped to L_q - 1
// once (rows >= L_q are never stored), so no row test runs per element.
template <typename M, bool kKeep>
struct DenseMask {
  const M* rows[2];
  int64_t stride_n;

  template <bool kBoundary>
  __device__ __forceinline__ void apply(ScoreFrag& s, int col0, int kv_end) const {
#pragma unroll
    for (int j = 0; j < kBlockN / 8; ++j) {
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int col = col0 + j * 8 + (i & 1);
        if (!kBoundary || col < kv_end) {
          const float m = mask_to_float(rows[i >> 1][static_cast<int64_t>(col) * stride_n]);
          if (kKeep) {
            if (m == 0.f) s[j][i] = kMaskedScoreLog2;
          } else {
            s[j][i] += m * kLog2e;
          }
        }
      }
    }
  }
};

// One keep row per sequence (uint8, shared by every head and query row).
struct KeyRowMask {
  const uint8_t* row;
  int64_t stride_n;

  template <bool kBoundary>
  __device__ __forceinline__ void apply(ScoreFrag& s, int col0, int kv_end) const {
#pragma unroll
    for (int j = 0; j < kBlockN / 8; ++j) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int col = col0 + j * 8 + e;
        if ((!kBoundary || col < kv_end) && row[static_cast<int64_t>(col) * stride_n] == 0) {
          s[j][e] = kMaskedScoreLog2;
          s[j][2 + e] = kMaskedScoreLog2;
        }
      }
    }
  }
};

__device__ __forceinline__ float quad_max(float x) {
  x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
  return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}
__device__ __forceinline__ float quad_sum(float x) {
  x += __shfl_xor_sync(0xffffffffu, x, 1);
  return x + __shfl_xor_sync(0xffffffffu, x, 2);
}

// What a warp carries through the key walk: its Q fragments, O accumulator and softmax state.
template <int D>
struct FwdState {
  uint32_t q_frag[D / 16][4];  // this warp's 16 query rows, one A-fragment per 16 columns of D
  float acc[D / 8][4];
  float row_max[2];
  float row_sum[2];  // this thread's share; summed over the quad at the end
};

// Where the key walk reads K / V and which rows this thread owns.
template <typename T>
struct KeySource {
  const T* k;
  const T* v;
  int64_t k_stride, v_stride;
  T* s_k;
  T* s_v;
  int d_chunks;
  int m0;    // first query row of the block
  int row0;  // this thread's rows: row0 and row0 + 8
  float scale_log2;
  bool causal;
};

// One key block [n0, n0 + BLOCK_N): V load, S = Q K^T, mask, online softmax, next K load,
// O += P V.  s_k holds this block's K on entry and the next block's K (when has_next) on exit.
// kBoundary: the block holds keys >= kv_end or crosses the causal diagonal.
template <bool kBoundary, typename T, int D, typename Mask>
__device__ __forceinline__ void key_block(FwdState<D>& st, const KeySource<T>& src,
                                          const Mask& mask, int n0, bool has_next, int kv_end) {
  const int lane = threadIdx.x % 32;
  load_tile<kBlockN, D>(src.s_v, src.v, src.v_stride, n0, kv_end, src.d_chunks);
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
      ldmatrix_x4(kf, src.s_k + swizzle<D>(nn * 16 + lane % 8 + (lane / 16) * 8,
                                           kk * 2 + (lane / 8) % 2));
      MmaOp<T>::run(s[2 * nn], st.q_frag[kk], kf[0], kf[1]);
      MmaOp<T>::run(s[2 * nn + 1], st.q_frag[kk], kf[2], kf[3]);
    }
  }

#pragma unroll
  for (int j = 0; j < kBlockN / 8; ++j)
#pragma unroll
    for (int i = 0; i < 4; ++i) s[j][i] *= src.scale_log2;
  const int col0 = n0 + 2 * (lane % 4);
  mask.template apply<kBoundary>(s, col0, kv_end);
  if (kBoundary) {
#pragma unroll
    for (int j = 0; j < kBlockN / 8; ++j)
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int row = src.row0 + (i >= 2 ? 8 : 0), col = col0 + j * 8 + (i & 1);
        if (col >= kv_end || (src.causal && col > row)) s[j][i] = -CUDART_INF_F;
      }
  }

  // Online softmax, base 2.  Rows with no finite score yet keep max -inf and p = 0.
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    float mx = st.row_max[half];
#pragma unroll
    for (int j = 0; j < kBlockN / 8; ++j)
      mx = fmaxf(mx, fmaxf(s[j][2 * half], s[j][2 * half + 1]));
    mx = quad_max(mx);
    const float m_safe = mx == -CUDART_INF_F ? 0.f : mx;
    const float alpha = exp2f(st.row_max[half] - m_safe);
    float sum = 0.f;
#pragma unroll
    for (int j = 0; j < kBlockN / 8; ++j) {
      s[j][2 * half] = exp2f(s[j][2 * half] - m_safe);
      s[j][2 * half + 1] = exp2f(s[j][2 * half + 1] - m_safe);
      sum += s[j][2 * half] + s[j][2 * half + 1];
    }
    st.row_sum[half] = st.row_sum[half] * alpha + sum;
    st.row_max[half] = mx;
#pragma unroll
    for (int j = 0; j < D / 8; ++j) {
      st.acc[j][2 * half] *= alpha;
      st.acc[j][2 * half + 1] *= alpha;
    }
  }

  cp_async_wait_all();  // V of this block has landed
  __syncthreads();      // ... for every thread, and nobody reads s_k any more
  if (has_next) {
    load_tile<kBlockN, D>(src.s_k, src.k, src.k_stride, n0 + kBlockN, kv_end, src.d_chunks);
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
      ldmatrix_x4_trans(vf, src.s_v + swizzle<D>(kk * 16 + lane % 8 + ((lane / 8) % 2) * 8,
                                                 dn * 2 + lane / 16));
      MmaOp<T>::run(st.acc[2 * dn], pf, vf[0], vf[1]);
      MmaOp<T>::run(st.acc[2 * dn + 1], pf, vf[2], vf[3]);
    }
  }
  cp_async_wait_all();  // next K has landed
  __syncthreads();      // ... and nobody reads s_v any more
}

// Walks keys [0, kv_end) (cut at the causal diagonal): interior blocks first, then at most one
// boundary block.  Block 0's K must already sit in s_k (loaded with rows bounded by kv_end).
template <typename T, int D, typename Mask>
__device__ __forceinline__ void walk_keys(FwdState<D>& st, const KeySource<T>& src,
                                          const Mask& mask, int kv_end) {
  const int n_end = src.causal ? min(kv_end, src.m0 + kBlockM) : kv_end;
  const int n_blocks = cdiv(n_end, kBlockN);
  // Interior: every key < kv_end and, under causal, below the block's first query row.
  const int n_interior = min(kv_end / kBlockN, src.causal ? src.m0 / kBlockN : n_blocks);
  for (int nb = 0; nb < n_interior; ++nb)
    key_block<false>(st, src, mask, nb * kBlockN, nb + 1 < n_blocks, kv_end);
  if (n_interior < n_blocks)
    key_block<true>(st, src, mask, n_interior * kBlockN, false, kv_end);
}

template <typename T, int D, FwdMask kMask, MaskDType kMaskDType>
__global__ void __launch_bounds__(kThreads)
    attention_fwd_kernel(const AttentionFwdParams p) {
  static_assert(D % 16 == 0 && D <= 128, "head dim must be 16..128, a multiple of 16");
  using M = typename MaskElement<kMaskDType>::type;
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
  const int row0 = m0 + warp * 16 + lane / 4;  // rows row0 and row0 + 8

  // kKeyPadding: a prefix of length >= 1 ends the walk at the last real key.
  int kv_end = p.len_k;
  int key_length = 0;
  if constexpr (kMask == FwdMask::kKeyPadding) {
    key_length = p.key_lengths[b];
    if (key_length > 0) kv_end = key_length;
  }

  const T* q = static_cast<const T*>(p.q) + b * p.q_stride_b + h * p.q_stride_h;
  const KeySource<T> src{static_cast<const T*>(p.k) + b * p.k_stride_b + h * p.k_stride_h,
                         static_cast<const T*>(p.v) + b * p.v_stride_b + h * p.v_stride_h,
                         p.k_stride_n, p.v_stride_n, s_k, s_v, d_chunks, m0, row0,
                         p.scale_log2, p.causal};

  load_tile<kBlockM, D>(s_q, q, p.q_stride_m, m0, p.len_q, d_chunks);
  load_tile<kBlockN, D>(s_k, src.k, src.k_stride, 0, kv_end, d_chunks);
  cp_async_commit();
  cp_async_wait_all();
  __syncthreads();

  FwdState<D> st;
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk)
    ldmatrix_x4(st.q_frag[kk], s_q + swizzle<D>(warp * 16 + lane % 16, kk * 2 + lane / 16));
#pragma unroll
  for (int j = 0; j < D / 8; ++j)
#pragma unroll
    for (int i = 0; i < 4; ++i) st.acc[j][i] = 0.f;
  st.row_max[0] = st.row_max[1] = -CUDART_INF_F;
  st.row_sum[0] = st.row_sum[1] = 0.f;

  if constexpr (kMask == FwdMask::kNone) {
    walk_keys(st, src, NoMask{}, kv_end);
  } else if constexpr (kMask == FwdMask::kKeyPadding) {
    if (key_length > 0) {
      walk_keys(st, src, NoMask{}, kv_end);
    } else {  // not a prefix (-1), or fully padded (0): every key, reading the keep row
      const KeyRowMask mask{static_cast<const uint8_t*>(p.mask) + b * p.mask_stride_b,
                            p.mask_stride_n};
      walk_keys(st, src, mask, kv_end);
    }
  } else {
    const M* base = static_cast<const M*>(p.mask) + b * p.mask_stride_b + h * p.mask_stride_h;
    const int64_t r0 = min(row0, p.len_q - 1), r1 = min(row0 + 8, p.len_q - 1);
    const DenseMask<M, kMask == FwdMask::kKeep> mask{
        {base + r0 * p.mask_stride_m, base + r1 * p.mask_stride_m}, p.mask_stride_n};
    walk_keys(st, src, mask, kv_end);
  }

  // Normalize, stage O in shared memory (this warp's own rows of s_q), store 16-byte chunks.
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const float l = quad_sum(st.row_sum[half]);
    const bool has_any = l > 0.f;  // false only when every score was -inf
    const float inv = has_any ? 1.f / l : 1.f;
#pragma unroll
    for (int j = 0; j < D / 8; ++j) {
      st.acc[j][2 * half] *= inv;
      st.acc[j][2 * half + 1] *= inv;
    }
    const int row = row0 + half * 8;
    if (lane % 4 == 0 && row < p.len_q)
      p.lse[bh * p.len_q + row] =
          has_any ? (st.row_max[half] + log2f(l)) * kLn2 : CUDART_INF_F;
  }
#pragma unroll
  for (int j = 0; j < D / 8; ++j) {
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int r = warp * 16 + lane / 4 + half * 8;
      T* dst = s_q + swizzle<D>(r, j) + 2 * (lane % 4);
      dst[0] = from_float<T>(st.acc[j][2 * half]);
      dst[1] = from_float<T>(st.acc[j][2 * half + 1]);
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

template <DType kDType, int kHeadDim, FwdMask kMask, MaskDType kMaskDType>
cudaError_t run_attention_fwd(const AttentionFwdParams& params, cudaStream_t stream) {
  using T = typename ElementOf<kDType>::type;
  const int64_t blocks = static_cast<int64_t>(cdiv(params.len_q, attn::kBlockM)) *
                         params.batch * params.heads;
  if (blocks == 0) return cudaSuccess;
  if (blocks > 0x7fffffff) return cudaErrorInvalidConfiguration;
  attn::attention_fwd_kernel<T, kHeadDim, kMask, kMaskDType>
      <<<static_cast<unsigned>(blocks), attn::kThreads, 0, stream>>>(params);
  return cudaGetLastError();
}

}  // namespace fastattn

// Instantiates one (mask path, mask dtype) pair for every element type and head dim; used once
// per .cu file (csrc/attention/fwd/), one file per entry of FASTATTN_ATTENTION_FWD_VARIANTS.
// FASTATTN_FWD_COMPILE_CHECK_ONLY (set by the CI compile check, never by a build that links)
// keeps fp16 / head dim 64 only, so that every mask variant compiles for every arch in CI time.
#define FASTATTN_INSTANTIATE_ATTENTION_FWD_ONE(DTYPE, HEAD_DIM, MASK, MASK_DTYPE)             \
  template cudaError_t fastattn::run_attention_fwd<fastattn::DType::DTYPE, HEAD_DIM,           \
                                                   fastattn::FwdMask::MASK,                    \
                                                   fastattn::MaskDType::MASK_DTYPE>(           \
      const fastattn::AttentionFwdParams&, cudaStream_t);
#ifdef FASTATTN_FWD_COMPILE_CHECK_ONLY
#define FASTATTN_INSTANTIATE_ATTENTION_FWD(MASK, MASK_DTYPE) \
  FASTATTN_INSTANTIATE_ATTENTION_FWD_ONE(kFloat16, 64, MASK, MASK_DTYPE)
#else
#define FASTATTN_INSTANTIATE_ATTENTION_FWD(MASK, MASK_DTYPE)                 \
  FASTATTN_INSTANTIATE_ATTENTION_FWD_ONE(kFloat16, 32, MASK, MASK_DTYPE)     \
  FASTATTN_INSTANTIATE_ATTENTION_FWD_ONE(kFloat16, 64, MASK, MASK_DTYPE)     \
  FASTATTN_INSTANTIATE_ATTENTION_FWD_ONE(kFloat16, 128, MASK, MASK_DTYPE)    \
  FASTATTN_INSTANTIATE_ATTENTION_FWD_ONE(kBFloat16, 32, MASK, MASK_DTYPE)    \
  FASTATTN_INSTANTIATE_ATTENTION_FWD_ONE(kBFloat16, 64, MASK, MASK_DTYPE)    \
  FASTATTN_INSTANTIATE_ATTENTION_FWD_ONE(kBFloat16, 128, MASK, MASK_DTYPE)
#endif
