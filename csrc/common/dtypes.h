// Element-type tags shared by the kernels (.cu) and the binding layer (.cpp).
// Plain C++: no CUDA or torch types, so both sides can include it.
#pragma once

namespace fastattn {

// Element types of q/k/v, activations and LayerNorm tensors.
enum class DType : int { kFloat16 = 0, kBFloat16 = 1, kFloat32 = 2 };

// Element types a mask may have; the kernels read masks in their own dtype (never copied).
enum class MaskDType : int {
  kUInt8 = 0,  // also torch.bool (one byte, 0 or 1)
  kInt8 = 1,
  kInt16 = 2,
  kInt32 = 3,
  kInt64 = 4,
  kFloat16 = 5,
  kBFloat16 = 6,
  kFloat32 = 7,
  kFloat64 = 8,
};

}  // namespace fastattn
