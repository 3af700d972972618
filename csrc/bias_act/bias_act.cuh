// Fused bias + activation, the epilogue of a GEMM: y = act(x + bias), and its backward
// dx = dy * act'(x + bias).  ReLU, GELU (erf, exact) and GELU (tanh approximation), all in fp32.
//
// Pointers: x, y, dy, dx (rows, cols) contiguous; bias (cols) or null.
//
// Design: a grid-stride loop over 128-bit vectors (8 fp16 / bf16 or 4 fp32 elements) when cols
// and the pointers allow it, one element per step otherwise; the activation is a template
// parameter so the inner loop has no branch.  The pre-activation is recomputed in the backward
// instead of stored (one read of x and bias instead of a read of a saved tensor of the same size).
#pragma once
#include <cuda_runtime.h>
#include <stdint.h>

#include "bias_act/bias_act.h"
#include "common/device_utils.cuh"

namespace fastattn {
namespace act {

constexpr float kSqrt1_2 = 0.70710678118654752f;        // 1 / sqrt(2)
constexpr float kInvSqrt2Pi = 0.39894228040143268f;     // 1 / sqrt(2 pi)
constexpr float kSqrt2OverPi = 0.79788456080286536f;    // sqrt(2 / pi)
constexpr float kGeluTanhCoef = 0.044715f;

template <Activation A> __device__ __forceinline__ float forward(float z);
template <Activation A> __device__ __forceinline__ float derivative(float z);

template <> __device__ __forceinline__ float forward<Activation::kReLU>(float z) {
  return z > 0.f ? z : 0.f;
}
template <> __device__ __forceinline__ float derivative<Activation::kReLU>(float z) {
  return z > 0.f ? 1.f : 0.f;
}
template <> __device__ __forceinline__ float forward<Activation::kGeluErf>(float z) {
  return 0.5f * z * (1.f + erff(z * kSqrt1_2));
}
template <> __device__ __forceinline__ float derivative<Activation::kGeluErf>(float z) {
  return 0.5f * (1.f + erff(z * kSqrt1_2)) + z * kInvSqrt2Pi * __expf(-0.5f * z * z);
}
template <> __device__ __forceinline__ float forward<Activation::kGeluTanh>(float z) {
  const float t = tanhf(kSqrt2OverPi * (z + kGeluTanhCoef * z * z * z));
  return 0.5f * z * (1.f + t);
}
template <> __device__ __forceinline__ float derivative<Activation::kGeluTanh>(float z) {
  const float t = tanhf(kSqrt2OverPi * (z + kGeluTanhCoef * z * z * z));
  return 0.5f * (1.f + t) +
         0.5f * z * (1.f - t * t) * kSqrt2OverPi * (1.f + 3.f * kGeluTanhCoef * z * z);
}

// BACKWARD = false: out = act(x + bias).  BACKWARD = true: out = dy * act'(x + bias).
template <typename T, int VEC, Activation A, bool BACKWARD>
__global__ void bias_act_kernel(const BiasActParams p) {
  const T* x = static_cast<const T*>(p.x);
  const T* bias = static_cast<const T*>(p.bias);
  const T* dy = static_cast<const T*>(p.dy);
  T* out = static_cast<T*>(p.out);
  const int64_t n_vec = p.numel / VEC;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n_vec;
       i += stride) {
    const int64_t off = i * VEC;
    float z[VEC];
    load_float<T, VEC>(x + off, z);
    if (bias != nullptr) {
      float b[VEC];
      load_float<T, VEC>(bias + off % p.cols, b);  // VEC divides cols: one row segment
#pragma unroll
      for (int e = 0; e < VEC; ++e) z[e] += b[e];
    }
    if (BACKWARD) {
      float g[VEC];
      load_float<T, VEC>(dy + off, g);
#pragma unroll
      for (int e = 0; e < VEC; ++e) z[e] = g[e] * derivative<A>(z[e]);
    } else {
#pragma unroll
      for (int e = 0; e < VEC; ++e) z[e] = forward<A>(z[e]);
    }
    store_float<T, VEC>(out + off, z);
  }
}

}  // namespace act

template <typename T, Activation A, bool BACKWARD>
cudaError_t launch_bias_act(const BiasActParams& p, cudaStream_t stream) {
  constexpr int kVec = 16 / sizeof(T);
  auto aligned = [](const void* ptr) {
    return ptr == nullptr || reinterpret_cast<uintptr_t>(ptr) % 16 == 0;
  };
  const bool vec = p.cols % kVec == 0 && aligned(p.x) && aligned(p.bias) && aligned(p.dy) &&
                   aligned(p.out);
  const int threads = 256;
  const int64_t n_vec = vec ? p.numel / kVec : p.numel;
  const int64_t want = (n_vec + threads - 1) / threads;
  const unsigned blocks = static_cast<unsigned>(want < 65536 ? want : 65536);
  if (vec)
    act::bias_act_kernel<T, kVec, A, BACKWARD><<<blocks, threads, 0, stream>>>(p);
  else
    act::bias_act_kernel<T, 1, A, BACKWARD><<<blocks, threads, 0, stream>>>(p);
  return cudaGetLastError();
}

template <bool BACKWARD>
cudaError_t dispatch_bias_act(const BiasActParams& p, Activation a, DType dtype,
                              cudaStream_t stream) {
  if (p.numel == 0) return cudaSuccess;
  if (p.cols <= 0) return cudaErrorInvalidValue;
#define FASTATTN_BIAS_ACT_CASE(T)                                                               \
  switch (a) {                                                                                  \
    case Activation::kReLU: return launch_bias_act<T, Activation::kReLU, BACKWARD>(p, stream);  \
    case Activation::kGeluErf:                                                                  \
      return launch_bias_act<T, Activation::kGeluErf, BACKWARD>(p, stream);                     \
    case Activation::kGeluTanh:                                                                 \
      return launch_bias_act<T, Activation::kGeluTanh, BACKWARD>(p, stream);                    \
    case Activation::kNone: break; /* the binding never passes it */                            \
  }                                                                                             \
  break;
  switch (dtype) {
    case DType::kFloat32: FASTATTN_BIAS_ACT_CASE(float)
    case DType::kFloat16: FASTATTN_BIAS_ACT_CASE(__half)
    case DType::kBFloat16: FASTATTN_BIAS_ACT_CASE(__nv_bfloat16)
  }
#undef FASTATTN_BIAS_ACT_CASE
  return cudaErrorInvalidValue;
}

}  // namespace fastattn
