// Integer codes shared with Python: a mirror of fastattn/enums.py, value for value
// (tests/test_enums.py parses this header and checks both agree).  Plain C++: included by the
// kernels (.cu) and the binding layer (.cpp).
#pragma once

namespace fastattn {

// How an attention op reads its mask (the op-level mask_kind argument).
//   kNone     no mask
//   kKeep     keep mask: mask == 0 -> score -1e10
//   kAdd      additive float mask
//   kExclude  torch's bool attn_mask: mask == 0 -> score -inf (served by the Triton kernels)
enum class MaskKind : int { kNone = 0, kKeep = 1, kAdd = 2, kExclude = 3 };

// Feed-forward activation (the GEMM epilogue's ACTIVATION code; bias_act instantiates
// kReLU, kGeluErf and kGeluTanh).
enum class Activation : int { kNone = 0, kReLU = 1, kGeluErf = 2, kGeluTanh = 3 };

}  // namespace fastattn
