// Attention forward with additive mask of dtype float16: fp16 / bf16, head dims 32, 64, 128.
#include "attention/attention_fwd.cuh"

FASTATTN_INSTANTIATE_ATTENTION_FWD(kAdd, kFloat16)
