// LayerNorm kernels (forward, backward, deterministic dweight / dbias reduction).
//
//   h = x + residual            (the fused residual variant; residual may be absent)
//   y = (h - mean) * rstd * weight + bias,  mean / rstd over the last dim, fp32
//
// Pointers: x, residual, y, dy, dx (rows, cols) contiguous; weight, bias, dweight, dbias (cols);
// mean, rstd (rows) fp32; partials (2, parts, cols) fp32.
//
// Design: one block per row in the forward; each thread walks 128-bit vectors (VEC elements)
// of the row, keeps fp32 Welford statistics, the block merges them (Chan's formula, fixed
// order), and a second pass over the row (an L1 / L2 hit) writes y.  No row-length limit and no
// cancellation from sum / sum-of-squares.  The backward gives each block a fixed range of rows:
// per row it reduces sum(g) and sum(g * xhat) (g = dy * weight) over the block, writes dh, and
// adds dy * xhat and dy into per-block dweight / dbias partials kept in shared memory (each
// column owned by one thread, so no atomics); a second kernel sums the partials over blocks in
// a fixed order.  The result is bitwise reproducible.  The partials take 2 * cols * 4 bytes of
// shared memory per block; where that exceeds the device's limit (sm_86 / 89 / 120 allow
// 99 KiB, i.e. about 12,600 columns) the block accumulates in its own rows of the global
// partials scratch instead (layer_norm_bwd_launch), with the same order and the same result.
#pragma once
#include <cuda_runtime.h>
#include <stdint.h>

#include "common/device_utils.cuh"
#include "layer_norm/layer_norm.h"

namespace fastattn {
namespace ln {

constexpr int kMaxThreads = 512;

// Threads per row block: about 4 vectors per thread, a multiple of 32 between 32 and 512.
inline int threads_for(int n_vec) {
  int t = ((cdiv(n_vec, 4) + 31) / 32) * 32;
  return t < 32 ? 32 : (t > kMaxThreads ? kMaxThreads : t);
}

inline bool aligned16(const void* p) { return p == nullptr || (reinterpret_cast<uintptr_t>(p) % 16) == 0; }

struct Welford {
  float n, mean, m2;
};

__device__ __forceinline__ Welford welford_merge(Welford a, Welford b) {
  const float n = a.n + b.n;
  if (b.n == 0.f) return a;
  if (a.n == 0.f) return b;
  const float delta = b.mean - a.mean;
  const float w = b.n / n;
  return {n, a.mean + delta * w, a.m2 + b.m2 + delta * delta * a.n * w};
}

__device__ __forceinline__ Welford warp_welford(Welford w) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    Welford o{__shfl_xor_sync(0xffffffffu, w.n, off), __shfl_xor_sync(0xffffffffu, w.mean, off),
              __shfl_xor_sync(0xffffffffu, w.m2, off)};
    w = welford_merge(w, o);
  }
  return w;
}

// Loads VEC elements of h = x (+ residual) at element offset `off`, in fp32.
template <typename T, int VEC>
__device__ __forceinline__ void load_h(const T* x, const T* residual, int64_t off,
                                       float (&h)[VEC]) {
  load_float<T, VEC>(x + off, h);
  if (residual != nullptr) {
    float r[VEC];
    load_float<T, VEC>(residual + off, r);
#pragma unroll
    for (int i = 0; i < VEC; ++i) h[i] += r[i];
  }
}

template <typename T, int VEC>
__global__ void layer_norm_fwd_kernel(const LayerNormFwdParams p) {
  __shared__ float s_stats[3 * 32];
  const T* x = static_cast<const T*>(p.x);
  const T* residual = static_cast<const T*>(p.residual);
  const T* weight = static_cast<const T*>(p.weight);
  const T* bias = static_cast<const T*>(p.bias);
  const int64_t base = static_cast<int64_t>(blockIdx.x) * p.cols;
  const int n_vec = p.cols / VEC;

  Welford w{0.f, 0.f, 0.f};
  for (int i = threadIdx.x; i < n_vec; i += blockDim.x) {
    float h[VEC];
    load_h<T, VEC>(x, residual, base + i * VEC, h);
#pragma unroll
    for (int e = 0; e < VEC; ++e) {
      w.n += 1.f;
      const float delta = h[e] - w.mean;
      w.mean += delta / w.n;
      w.m2 += delta * (h[e] - w.mean);
    }
  }
  w = warp_welford(w);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) {
    s_stats[warp] = w.n;
    s_stats[32 + warp] = w.mean;
    s_stats[64 + warp] = w.m2;
  }
  __syncthreads();
  if (warp == 0) {
    const int n_warps = blockDim.x >> 5;
    Welford t{0.f, 0.f, 0.f};
    if (lane < n_warps) t = {s_stats[lane], s_stats[32 + lane], s_stats[64 + lane]};
    t = warp_welford(t);
    if (lane == 0) {
      s_stats[0] = t.mean;
      s_stats[1] = rsqrtf(fmaxf(t.m2 / t.n, 0.f) + p.eps);
    }
  }
  __syncthreads();
  const float mean = s_stats[0], rstd = s_stats[1];
  if (threadIdx.x == 0) {
    p.mean[blockIdx.x] = mean;
    p.rstd[blockIdx.x] = rstd;
  }
  T* y = static_cast<T*>(p.y);
  for (int i = threadIdx.x; i < n_vec; i += blockDim.x) {
    float h[VEC], wv[VEC], bv[VEC];
    load_h<T, VEC>(x, residual, base + i * VEC, h);
    if (weight != nullptr) load_float<T, VEC>(weight + i * VEC, wv);
    if (bias != nullptr) load_float<T, VEC>(bias + i * VEC, bv);
#pragma unroll
    for (int e = 0; e < VEC; ++e) {
      const float xhat = (h[e] - mean) * rstd;
      h[e] = xhat * (weight != nullptr ? wv[e] : 1.f) + (bias != nullptr ? bv[e] : 0.f);
    }
    store_float<T, VEC>(y + base + i * VEC, h);
  }
}

// Block `blockIdx.x` handles rows [blockIdx.x * rows_per_part, ...) and writes its dweight /
// dbias partial sums to partials[0 or 1][blockIdx.x][:].  SMEM_PARTIALS: accumulate them in
// dynamic shared memory (2 * cols fp32, laid out [VEC][n_vec] so that a warp's accesses hit
// distinct banks) and copy them out at the end; otherwise accumulate in place in `partials`
// (natural column order; each column is read and written by its owning thread only).
template <typename T, int VEC, bool SMEM_PARTIALS>
__global__ void layer_norm_bwd_kernel(const LayerNormBwdParams p, int rows_per_part) {
  extern __shared__ float s_acc[];  // SMEM_PARTIALS: dweight then dbias partials [2][VEC][n_vec]
  __shared__ float s_red[kLayerNormBwdStaticSmem / sizeof(float)];
  const T* dy = static_cast<const T*>(p.dy);
  const T* x = static_cast<const T*>(p.x);
  const T* residual = static_cast<const T*>(p.residual);
  const T* weight = static_cast<const T*>(p.weight);
  T* dx = static_cast<T*>(p.dx);
  const int n_vec = p.cols / VEC;
  const int64_t parts = gridDim.x;
  float* s_dw = SMEM_PARTIALS ? s_acc : p.partials + blockIdx.x * static_cast<int64_t>(p.cols);
  float* s_db = SMEM_PARTIALS ? s_acc + p.cols
                              : p.partials + (parts + blockIdx.x) * static_cast<int64_t>(p.cols);
  // Accumulator slot of column i * VEC + e (vector i, element e).
  auto slot = [n_vec](int i, int e) { return SMEM_PARTIALS ? e * n_vec + i : i * VEC + e; };
  for (int c = threadIdx.x; c < p.cols; c += blockDim.x) {
    s_dw[c] = 0.f;
    s_db[c] = 0.f;
  }
  __syncthreads();

  const int64_t row_begin = static_cast<int64_t>(blockIdx.x) * rows_per_part;
  const int64_t row_end = min(row_begin + rows_per_part, p.rows);
  const float inv_cols = 1.f / static_cast<float>(p.cols);
  for (int64_t row = row_begin; row < row_end; ++row) {
    const int64_t base = row * p.cols;
    const float mean = p.mean[row], rstd = p.rstd[row];
    float sum_g = 0.f, sum_gx = 0.f;
    for (int i = threadIdx.x; i < n_vec; i += blockDim.x) {
      float h[VEC], g[VEC], wv[VEC];
      load_h<T, VEC>(x, residual, base + i * VEC, h);
      load_float<T, VEC>(dy + base + i * VEC, g);
      if (weight != nullptr) load_float<T, VEC>(weight + i * VEC, wv);
#pragma unroll
      for (int e = 0; e < VEC; ++e) {
        const float xhat = (h[e] - mean) * rstd;
        s_dw[slot(i, e)] += g[e] * xhat;  // column i * VEC + e, owned by this thread
        s_db[slot(i, e)] += g[e];
        const float ge = g[e] * (weight != nullptr ? wv[e] : 1.f);
        sum_g += ge;
        sum_gx += ge * xhat;
      }
    }
    block_sum2(sum_g, sum_gx, s_red);
    const float mean_g = sum_g * inv_cols, mean_gx = sum_gx * inv_cols;
    for (int i = threadIdx.x; i < n_vec; i += blockDim.x) {
      float h[VEC], g[VEC], wv[VEC];
      load_h<T, VEC>(x, residual, base + i * VEC, h);
      load_float<T, VEC>(dy + base + i * VEC, g);
      if (weight != nullptr) load_float<T, VEC>(weight + i * VEC, wv);
#pragma unroll
      for (int e = 0; e < VEC; ++e) {
        const float xhat = (h[e] - mean) * rstd;
        const float ge = g[e] * (weight != nullptr ? wv[e] : 1.f);
        h[e] = rstd * (ge - mean_g - xhat * mean_gx);
      }
      store_float<T, VEC>(dx + base + i * VEC, h);
    }
  }
  if (!SMEM_PARTIALS) return;  // already in place
  __syncthreads();
  for (int c = threadIdx.x; c < p.cols; c += blockDim.x) {
    // shared layout [VEC][n_vec] -> column (c % n_vec) * VEC + c / n_vec
    const int col = (c % n_vec) * VEC + c / n_vec;
    p.partials[blockIdx.x * static_cast<int64_t>(p.cols) + col] = s_dw[c];
    p.partials[(parts + blockIdx.x) * static_cast<int64_t>(p.cols) + col] = s_db[c];
  }
}

// dweight[c] = sum over parts of partials[0][part][c] (in part order); dbias likewise.
template <typename T>
__global__ void layer_norm_bwd_reduce_kernel(const float* partials, int parts, int cols,
                                             T* dweight, T* dbias) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  const int which = blockIdx.y;  // 0: dweight, 1: dbias
  T* out = which == 0 ? dweight : dbias;
  if (c >= cols || out == nullptr) return;
  const float* src = partials + static_cast<int64_t>(which) * parts * cols + c;
  float sum = 0.f;
  for (int part = 0; part < parts; ++part) sum += src[static_cast<int64_t>(part) * cols];
  out[c] = from_float<T>(sum);
}

}  // namespace ln
}  // namespace fastattn
