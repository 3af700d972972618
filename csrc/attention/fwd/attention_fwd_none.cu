// Attention forward with no mask: fp16 / bf16, head dims 32, 64, 128.
#include "attention/attention_fwd.cuh"

FASTATTN_INSTANTIATE_ATTENTION_FWD(kNone, kUInt8)
