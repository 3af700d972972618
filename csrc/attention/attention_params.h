// Arguments of the attention forward kernel and its host entry point.
// Plain C++ (only <cuda_runtime_api.h>): included by the kernels and by the binding layer.
#pragma once
#include <cuda_runtime_api.h>
#include <stdint.h>

#include "common/dtypes.h"
#include "common/enums.h"

namespace fastattn {

// Mask path a forward kernel is compiled for (a template parameter, with the mask dtype):
//   kNone        no mask
//   kKeyPadding  keep mask per (batch, key) read as lengths: key_lengths[b] >= 1 bounds the key
//                walk (no mask read); rows with 0 (fully padded) or -1 (not a prefix) read the
//                (N, L_k) uint8 keep rows through mask_stride_b / mask_stride_n
//   kKeep        keep mask viewed as (N, H, L_q, L_k), mask == 0 -> score -1e10
//   kAdd         additive float mask viewed as (N, H, L_q, L_k)
enum class FwdMask : int { kNone = 0, kKeyPadding = 1, kKeep = 2, kAdd = 3 };

// Strides are in elements.  Tensors:
//   q (N, H, L_q, D)   k, v (N, H, L_k, D)   last stride 1, other strides multiples of 8,
//                                             base pointers 16-byte aligned
//   mask  viewed as (N, H, L_q, L_k) through 4 strides (0 on broadcast dims), dtype mask_dtype
//   out (N, H, L_q, D) through 3 strides (last 1), lse (N, H, L_q) contiguous fp32, natural log
struct AttentionFwdParams {
  const void* q;
  const void* k;
  const void* v;
  const void* mask;         // nullptr when kernel_mask == kNone
  const int* key_lengths;   // (N,) int32 for kKeyPadding: prefix length, or -1; else nullptr
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
  FwdMask kernel_mask;
  MaskDType mask_dtype;  // kUInt8 for kNone and kKeyPadding
  bool causal;
};

// One explicit instantiation per (element type, padded head dim, mask path, mask dtype); the
// .cu file of each (mask path, mask dtype) pair, listed in attention_fwd_variants.h, holds the
// instantiations for every element type and head dim.
template <DType kDType, int kHeadDim, FwdMask kMask, MaskDType kMaskDType>
cudaError_t run_attention_fwd(const AttentionFwdParams& params, cudaStream_t stream);

// Largest head_dim of the compiled kernels (attention_dispatch.cpp instantiates head dims 32,
// 64 and 128; head_dim is rounded up to the next one).
constexpr int kAttentionMaxHeadDim = 128;

// Picks the instantiation for params.head_dim, dtype (fp16 / bf16), kernel_mask and mask_dtype.
cudaError_t attention_fwd(const AttentionFwdParams& params, DType dtype, cudaStream_t stream);

}  // namespace fastattn
