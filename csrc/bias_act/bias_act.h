// Host entry points of the fused bias + activation epilogue.  Plain C++.
//
//   forward:   y  = act(x + bias)
//   backward:  dx = dy * act'(x + bias)      (x is the pre-bias input of the forward)
//
// x, y, dy, dx: contiguous (rows, cols); bias: (cols) or nullptr.
#pragma once
#include <cuda_runtime_api.h>
#include <stdint.h>

#include "common/dtypes.h"
#include "common/enums.h"

namespace fastattn {

struct BiasActParams {
  const void* x;     // (rows, cols)
  const void* bias;  // (cols) or nullptr
  const void* dy;    // (rows, cols), backward only
  void* out;         // y (forward) or dx (backward), (rows, cols)
  int64_t numel;     // rows * cols
  int cols;
};

cudaError_t bias_act_fwd(const BiasActParams& params, Activation act, DType dtype,
                         cudaStream_t stream);
cudaError_t bias_act_bwd(const BiasActParams& params, Activation act, DType dtype,
                         cudaStream_t stream);

}  // namespace fastattn
