// LayerNorm forward launcher (fp32 / fp16 / bf16; 128-bit vectors when the row allows).
#include "layer_norm/layer_norm.cuh"

namespace fastattn {
namespace {

template <typename T>
cudaError_t launch_fwd(const LayerNormFwdParams& p, cudaStream_t stream) {
  constexpr int kVec = 16 / sizeof(T);
  const bool vec = p.cols % kVec == 0 && ln::aligned16(p.x) && ln::aligned16(p.residual) &&
                   ln::aligned16(p.weight) && ln::aligned16(p.bias) && ln::aligned16(p.y);
  const int n_vec = vec ? p.cols / kVec : p.cols;
  const int threads = ln::threads_for(n_vec);
  if (vec)
    ln::layer_norm_fwd_kernel<T, kVec><<<static_cast<unsigned>(p.rows), threads, 0, stream>>>(p);
  else
    ln::layer_norm_fwd_kernel<T, 1><<<static_cast<unsigned>(p.rows), threads, 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace

cudaError_t layer_norm_fwd(const LayerNormFwdParams& params, DType dtype, cudaStream_t stream) {
  if (params.rows == 0) return cudaSuccess;
  if (params.rows > 0x7fffffff || params.cols <= 0) return cudaErrorInvalidValue;
  switch (dtype) {
    case DType::kFloat32: return launch_fwd<float>(params, stream);
    case DType::kFloat16: return launch_fwd<__half>(params, stream);
    case DType::kBFloat16: return launch_fwd<__nv_bfloat16>(params, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace fastattn
