// Device helpers shared by the kernels: fp32 <-> fp16/bf16 conversion without the half
// operators (torch builds with __CUDA_NO_HALF_OPERATORS__), 128-bit vectors, reductions.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

namespace fastattn {

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T> __device__ __forceinline__ T from_float(float x);
template <> __device__ __forceinline__ float from_float<float>(float x) { return x; }
template <> __device__ __forceinline__ __half from_float<__half>(float x) {
  return __float2half_rn(x);
}
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

// VEC elements of T moved as one load / store (16 bytes when VEC * sizeof(T) == 16).
template <typename T, int VEC>
struct alignas(sizeof(T) * VEC) Vec {
  T v[VEC];
};

template <typename T, int VEC>
__device__ __forceinline__ void load_float(const T* ptr, float (&out)[VEC]) {
  Vec<T, VEC> x = *reinterpret_cast<const Vec<T, VEC>*>(ptr);
#pragma unroll
  for (int i = 0; i < VEC; ++i) out[i] = to_float(x.v[i]);
}

template <typename T, int VEC>
__device__ __forceinline__ void store_float(T* ptr, const float (&in)[VEC]) {
  Vec<T, VEC> x;
#pragma unroll
  for (int i = 0; i < VEC; ++i) x.v[i] = from_float<T>(in[i]);
  *reinterpret_cast<Vec<T, VEC>*>(ptr) = x;
}

__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) x += __shfl_xor_sync(0xffffffffu, x, off);
  return x;
}

// Sum of (a, b) over the whole block; every thread gets the result.  `scratch` holds 64 floats.
// Fixed reduction order: the result does not depend on timing.
__device__ __forceinline__ void block_sum2(float& a, float& b, float* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int n_warps = (blockDim.x + 31) >> 5;
  a = warp_sum(a);
  b = warp_sum(b);
  __syncthreads();  // scratch may still be read from the previous call
  if (lane == 0) {
    scratch[warp] = a;
    scratch[32 + warp] = b;
  }
  __syncthreads();
  a = lane < n_warps ? scratch[lane] : 0.f;
  b = lane < n_warps ? scratch[32 + lane] : 0.f;
  a = warp_sum(a);
  b = warp_sum(b);
}

__host__ __device__ constexpr inline int cdiv(int a, int b) { return (a + b - 1) / b; }

}  // namespace fastattn
