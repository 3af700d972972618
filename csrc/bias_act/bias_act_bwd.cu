// Bias + activation backward: dx = dy * act'(x + bias).
#include "bias_act/bias_act.cuh"

namespace fastattn {
cudaError_t bias_act_bwd(const BiasActParams& params, Activation act, DType dtype,
                         cudaStream_t stream) {
  return dispatch_bias_act<true>(params, act, dtype, stream);
}
}  // namespace fastattn
