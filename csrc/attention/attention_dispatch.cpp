// Picks the attention forward instantiation for a head dim and element type.
#include "attention/attention_params.h"

namespace fastattn {

cudaError_t attention_fwd(const AttentionFwdParams& params, DType dtype, cudaStream_t stream) {
  const int d = params.head_dim;
  if (dtype == DType::kFloat16) {
    if (d <= 32) return run_attention_fwd<DType::kFloat16, 32>(params, stream);
    if (d <= 64) return run_attention_fwd<DType::kFloat16, 64>(params, stream);
    if (d <= 128) return run_attention_fwd<DType::kFloat16, 128>(params, stream);
  } else if (dtype == DType::kBFloat16) {
    if (d <= 32) return run_attention_fwd<DType::kBFloat16, 32>(params, stream);
    if (d <= 64) return run_attention_fwd<DType::kBFloat16, 64>(params, stream);
    if (d <= 128) return run_attention_fwd<DType::kBFloat16, 128>(params, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace fastattn
