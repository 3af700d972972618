// Attention forward, head_dim 64 (and smaller multiples of 8 above the next size down), fp16.
#include "attention/attention_fwd.cuh"

FASTATTN_INSTANTIATE_ATTENTION_FWD(kFloat16, 64)
