// Bias + activation forward: y = act(x + bias).
#include "bias_act/bias_act.cuh"

namespace fastattn {
cudaError_t bias_act_fwd(const BiasActParams& params, Activation act, DType dtype,
                         cudaStream_t stream) {
  return dispatch_bias_act<false>(params, act, dtype, stream);
}
}  // namespace fastattn
