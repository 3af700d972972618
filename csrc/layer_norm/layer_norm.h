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

// Largest cols the backward supports: its per-block dweight / dbias partials live in shared
// memory (2 * cols fp32).
constexpr int kLayerNormBwdMaxCols = 16384;

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
