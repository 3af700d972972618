// Arguments of the attention forward kernel and its host entry point.
// Plain C++ (only <cuda_runtime_api.h>): included by the kernels and by the binding layer.
#pragma once
#include <cuda_runtime_api.h>
#include <stdint.h>

#include "common/dtypes.h"

namespace fastattn {

enum class MaskKind : int { kNone = 0, kKeep = 1, kAdd = 2 };

// Strides are in elements.  Tensors:
//   q (N, H, L_q, D)   k, v (N, H, L_k, D)   last stride 1, other strides multiples of 8,
//                                             base pointers 16-byte aligned
//   mask  viewed as (N, H, L_q, L_k) through 4 strides (0 on broadcast dims), dtype mask_dtype
//   out (N, H, L_q, D) through 3 strides (last 1), lse (N, H, L_q) contiguous fp32, natural log
struct AttentionFwdParams {
  const void* q;
  const void* k;
  const void* v;
  const void* mask;  // nullptr when mask_kind == kNone
  void* out;
  float* lse;
  int64_t q_stride_b, q_stride_h, q_stride_m;
  int64_t k_stride_b, k_stride_h, k_stride_n;
  int64_t v_stride_b, v_stride_h, v_stride_n;
  int64_t mask_stride_b, mask_stride_h, mask_stride_m, mask_stride_n;
  int64_t out_stride_b, out_stride_h, out_stride_m;
  int batch, heads, len_q, len_k;
  int head_dim;      // multiple of 8, at most the kernel's HEAD_DIM
  float scale_log2;  // softmax scale * log2(e)
  MaskKind mask_kind;
  MaskDType mask_dtype;
  bool causal;
};

// One explicit instantiation per (element type, padded head dim), each in its own .cu file.
template <DType kDType, int kHeadDim>
cudaError_t run_attention_fwd(const AttentionFwdParams& params, cudaStream_t stream);

// Head dims the kernel is compiled for; head_dim is rounded up to the next one.
constexpr int kAttentionHeadDims[] = {32, 64, 128};
constexpr int kAttentionMaxHeadDim = 128;

// Picks the instantiation for params.head_dim and dtype (fp16 / bf16).
cudaError_t attention_fwd(const AttentionFwdParams& params, DType dtype, cudaStream_t stream);

}  // namespace fastattn
