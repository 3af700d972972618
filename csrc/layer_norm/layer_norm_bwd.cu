// LayerNorm backward launchers: dh per row, then the fixed-order dweight / dbias reduction.
#include "layer_norm/layer_norm.cuh"

namespace fastattn {
namespace {

constexpr int kMaxParts = 512;

int64_t rows_per_part(int64_t rows) {
  const int64_t parts = rows < kMaxParts ? rows : kMaxParts;
  return (rows + parts - 1) / parts;
}

// The current device's opt-in shared memory per block (bytes).
cudaError_t max_smem_optin(int* bytes) {
  int device = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err != cudaSuccess) return err;
  return cudaDeviceGetAttribute(bytes, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
}

template <typename T, int VEC>
cudaError_t launch_bwd_vec(const LayerNormBwdParams& p, cudaStream_t stream) {
  const int parts = layer_norm_bwd_parts(p.rows);
  const int threads = ln::threads_for(p.cols / VEC);
  const int per_part = static_cast<int>(rows_per_part(p.rows));
  int optin = 0;
  cudaError_t err = max_smem_optin(&optin);
  if (err != cudaSuccess) return err;
  const LayerNormBwdLaunch cfg = layer_norm_bwd_launch(p.cols, optin);
  if (!cfg.smem_partials) {
    ln::layer_norm_bwd_kernel<T, VEC, false><<<parts, threads, 0, stream>>>(p, per_part);
    return cudaGetLastError();
  }
  if (cfg.dynamic_smem + kLayerNormBwdStaticSmem > 48 * 1024) {
    err = cudaFuncSetAttribute(ln::layer_norm_bwd_kernel<T, VEC, true>,
                               cudaFuncAttributeMaxDynamicSharedMemorySize, cfg.dynamic_smem);
    if (err != cudaSuccess) return err;
  }
  ln::layer_norm_bwd_kernel<T, VEC, true><<<parts, threads, cfg.dynamic_smem, stream>>>(
      p, per_part);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_bwd(const LayerNormBwdParams& p, cudaStream_t stream) {
  constexpr int kVec = 16 / sizeof(T);
  const bool vec = p.cols % kVec == 0 && ln::aligned16(p.dy) && ln::aligned16(p.x) &&
                   ln::aligned16(p.residual) && ln::aligned16(p.weight) && ln::aligned16(p.dx);
  cudaError_t err = vec ? launch_bwd_vec<T, kVec>(p, stream) : launch_bwd_vec<T, 1>(p, stream);
  if (err != cudaSuccess || (p.dweight == nullptr && p.dbias == nullptr)) return err;
  const dim3 grid(cdiv(p.cols, 256), 2);
  ln::layer_norm_bwd_reduce_kernel<T><<<grid, 256, 0, stream>>>(
      p.partials, layer_norm_bwd_parts(p.rows), p.cols, static_cast<T*>(p.dweight),
      static_cast<T*>(p.dbias));
  return cudaGetLastError();
}

}  // namespace

int layer_norm_bwd_parts(int64_t rows) {
  if (rows <= 0) return 0;
  const int64_t per = rows_per_part(rows);
  return static_cast<int>((rows + per - 1) / per);
}

cudaError_t layer_norm_bwd(const LayerNormBwdParams& params, DType dtype, cudaStream_t stream) {
  if (params.cols <= 0 || params.cols > kLayerNormBwdMaxCols) return cudaErrorInvalidValue;
  if (params.rows == 0) return cudaSuccess;
  switch (dtype) {
    case DType::kFloat32: return launch_bwd<float>(params, stream);
    case DType::kFloat16: return launch_bwd<__half>(params, stream);
    case DType::kBFloat16: return launch_bwd<__nv_bfloat16>(params, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace fastattn
