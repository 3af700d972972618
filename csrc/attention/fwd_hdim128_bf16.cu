// Attention forward, head_dim 128 (and smaller multiples of 8 above the next size down), bf16.
#include "attention/attention_fwd.cuh"

FASTATTN_INSTANTIATE_ATTENTION_FWD(kBFloat16, 128)
