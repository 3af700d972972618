// Host entry points of the LayerNorm kernels.  Plain C++ (only <cuda_runtime_api.h>).
//
//   forward:   h = x + residual (residual optional), y = (h - mean) * rstd * weight + bias
//   backward:  dh (the gradient of both x and residual), dweight, dbias
//
// Tensors are contiguous, viewed as (rows, cols); weight / bias (cols); mean / rstd (rows) fp32.
#pragma once
#include <cuda_runtime_api.h>
#include <stdint.h>

#include "common/dtypes.h"

namespace fastattn {

// Largest cols the backward supports (its dweight / dbias partials scratch holds
// 2 * layer_norm_bwd_parts(rows) * cols fp32).
constexpr int kLayerNormBwdMaxCols = 16384;

// Static shared memory of the backward kernel: the block reduction's 64 fp32 slots.
constexpr int kLayerNormBwdStaticSmem = 64 * 4;

// Where a backward block accumulates its dweight / dbias partials (2 * cols fp32):
//   in dynamic shared memory when that fits the device's per-block opt-in limit (all cols on
//   sm_80 / sm_90, up to about 12,600 on sm_86 / 89 / 120 whose limit is 99 KiB), else directly
//   in the block's own rows of the global `partials` scratch (L1 / L2 traffic, no size limit).
// Both accumulate every column in the same row order, so the results are bitwise equal.
struct LayerNormBwdLaunch {
  bool smem_partials;
  int dynamic_smem;  // bytes: 2 * cols * 4 with smem_partials, else 0
};

// The launch configuration for `cols` on a device whose opt-in shared memory per block
// (cudaDevAttrMaxSharedMemoryPerBlockOptin) is `max_smem_optin` bytes.
inline LayerNormBwdLaunch layer_norm_bwd_launch(int cols, int max_smem_optin) {
  const long long partials = 2LL * cols * 4;
  if (partials + kLayerNormBwdStaticSmem <= max_smem_optin)
    return {true, static_cast<int>(partials)};
  return {false, 0};
}

struct LayerNormFwdParams {
  const void* x;         // (rows, cols)
  const void* residual;  // (rows, cols) or nullptr
  const void* weight;    // (cols) or nullptr (= 1)
  const void* bias;      // (cols) or nullptr (= 0)
  void* y;               // (rows, cols)
  float* mean;           // (rows)
  float* rstd;           // (rows)
  int64_t rows;
  int cols;
  float eps;
};

struct LayerNormBwdParams {
  const void* dy;        // (rows, cols)
  const void* x;         // (rows, cols)
  const void* residual;  // (rows, cols) or nullptr
  const void* weight;    // (cols) or nullptr (= 1)
  const float* mean;     // (rows)
  const float* rstd;     // (rows)
  void* dx;              // (rows, cols): gradient of h = x + residual
  void* dweight;         // (cols) or nullptr (not computed)
  void* dbias;           // (cols) or nullptr (not computed)
  float* partials;       // (2, layer_norm_bwd_parts(rows), cols) fp32 scratch
  int64_t rows;
  int cols;
};

// Number of row blocks (and dweight / dbias partial rows) the backward uses for `rows`.
int layer_norm_bwd_parts(int64_t rows);

cudaError_t layer_norm_fwd(const LayerNormFwdParams& params, DType dtype, cudaStream_t stream);
cudaError_t layer_norm_bwd(const LayerNormBwdParams& params, DType dtype, cudaStream_t stream);

}  // namespace fastattn
