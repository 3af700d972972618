// Attention forward with key-padding lengths (non-prefix rows: uint8 keep rows): fp16 / bf16, head dims 32, 64, 128.
#include "attention/attention_fwd.cuh"

FASTATTN_INSTANTIATE_ATTENTION_FWD(kKeyPadding, kUInt8)
