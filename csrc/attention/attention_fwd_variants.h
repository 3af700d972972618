// The (mask path, mask dtype) pairs the attention forward is compiled for.  Each pair has one
// translation unit, csrc/attention/fwd/attention_fwd_<mask>[_<dtype>].cu, that instantiates the
// kernel for every element type (fp16, bf16) and head dim (32, 64, 128); the dispatcher
// (attention_dispatch.cpp) picks among exactly these.  fastattn/csrc_build.py mirrors the list
// (ATTENTION_FWD_VARIANTS) and a test checks that the two and the file names agree.
//
//   kNone:       no mask (mask dtype unused, kUInt8)
//   kKeyPadding: per-sequence key lengths, non-prefix rows from (N, L_k) uint8 keep rows
//   kKeep:       keep mask of any dtype (bool reads as uint8)
//   kAdd:        additive mask of a floating dtype
#pragma once

#define FASTATTN_ATTENTION_FWD_VARIANTS(X) \
  X(kNone, kUInt8)                         \
  X(kKeyPadding, kUInt8)                   \
  X(kKeep, kUInt8)                         \
  X(kKeep, kInt8)                          \
  X(kKeep, kInt16)                         \
  X(kKeep, kInt32)                         \
  X(kKeep, kInt64)                         \
  X(kKeep, kFloat16)                       \
  X(kKeep, kBFloat16)                      \
  X(kKeep, kFloat32)                       \
  X(kKeep, kFloat64)                       \
  X(kAdd, kFloat16)                        \
  X(kAdd, kBFloat16)                       \
  X(kAdd, kFloat32)                        \
  X(kAdd, kFloat64)
