// Picks the attention forward instantiation for an element type, head dim and mask path.
#include "attention/attention_fwd_variants.h"
#include "attention/attention_params.h"

namespace fastattn {
namespace {

static_assert(kAttentionMaxHeadDim == 128, "run_for_head_dim's largest head dim is the limit");

template <DType kDType, FwdMask kMask, MaskDType kMaskDType>
cudaError_t run_for_head_dim(const AttentionFwdParams& params, cudaStream_t stream) {
  const int d = params.head_dim;
  if (d <= 32) return run_attention_fwd<kDType, 32, kMask, kMaskDType>(params, stream);
  if (d <= 64) return run_attention_fwd<kDType, 64, kMask, kMaskDType>(params, stream);
  if (d <= 128) return run_attention_fwd<kDType, 128, kMask, kMaskDType>(params, stream);
  return cudaErrorInvalidValue;
}

template <FwdMask kMask, MaskDType kMaskDType>
cudaError_t run_for_dtype(const AttentionFwdParams& params, DType dtype, cudaStream_t stream) {
  if (dtype == DType::kFloat16)
    return run_for_head_dim<DType::kFloat16, kMask, kMaskDType>(params, stream);
  if (dtype == DType::kBFloat16)
    return run_for_head_dim<DType::kBFloat16, kMask, kMaskDType>(params, stream);
  return cudaErrorInvalidValue;
}

}  // namespace

cudaError_t attention_fwd(const AttentionFwdParams& params, DType dtype, cudaStream_t stream) {
#define FASTATTN_ATTENTION_FWD_CASE(MASK, MASK_DTYPE)                                  \
  if (params.kernel_mask == FwdMask::MASK && params.mask_dtype == MaskDType::MASK_DTYPE) \
    return run_for_dtype<FwdMask::MASK, MaskDType::MASK_DTYPE>(params, dtype, stream);
  FASTATTN_ATTENTION_FWD_VARIANTS(FASTATTN_ATTENTION_FWD_CASE)
#undef FASTATTN_ATTENTION_FWD_CASE
  return cudaErrorInvalidValue;  // a (mask, mask dtype) pair with no compiled kernel
}

}  // namespace fastattn
