"""An independent Philox-4x32 in numpy, and the attention dropout mask the kernels must draw.

Philox-4x32-R (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC 2011; the
Random123 library): a 128-bit counter (c0, c1, c2, c3) and a 64-bit key (k0, k1); each round

    (hi0, lo0) = M0 * c0,  (hi1, lo1) = M1 * c2        (32 x 32 -> 64-bit products)
    c = (hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0)

with M0 = 0xD2511F53, M1 = 0xCD9E8D57, and the key raised by the Weyl constants
W0 = 0x9E3779B9, W1 = 0xBB67AE85 between rounds.  Checked against Random123's known-answer
vectors (tests/test_philox_reference.py); written from the paper, not from the kernels.

Attention dropout (the contract of fastattn/kernels/attention.py): element (b·H + h, i, j) of
the (N·H, L_q, L_k) scores is kept when output j % 4 of Philox-4x32-10 at counter
(j // 4, i, b·H + h, 0) with key (seed mod 2^32, seed >> 32) maps to a uniform >= p.  The map
is Triton's ``tl.uint_to_uniform_float`` for 32-bit inputs: the word read as int32, negative
values bit-flipped (x -> ~x, so 0 <= x < 2^31), then float32(x) * float32(4.6566127342e-10) in
float32 (the largest scale with (2^31 - 1) * scale < 1).
"""
from __future__ import annotations

import numpy as np
import torch

MASK32 = np.uint64(0xFFFFFFFF)
M0, M1 = np.uint64(0xD2511F53), np.uint64(0xCD9E8D57)
W0, W1 = np.uint64(0x9E3779B9), np.uint64(0xBB67AE85)
UNIFORM_SCALE = np.float32(4.6566127342e-10)


def philox4x32(counter, key, rounds: int = 10):
    """Philox-4x32-``rounds`` of ``counter`` (four broadcastable integer arrays, taken mod 2^32)
    under ``key`` (two integers or arrays): the four output words, uint32 arrays."""
    c = [np.asarray(x).astype(np.int64).astype(np.uint64) & MASK32 for x in counter]
    c = list(np.broadcast_arrays(*c))
    k0, k1 = (np.asarray(k).astype(np.int64).astype(np.uint64) & MASK32 for k in key)
    for r in range(rounds):
        if r:
            k0, k1 = (k0 + W0) & MASK32, (k1 + W1) & MASK32
        p0, p1 = M0 * c[0], M1 * c[2]  # < 2^64: no overflow in uint64
        c = [(p1 >> np.uint64(32)) ^ c[1] ^ k0, p1 & MASK32,
             (p0 >> np.uint64(32)) ^ c[3] ^ k1, p0 & MASK32]
    return [x.astype(np.uint32) for x in c]


def uniform(words: np.ndarray) -> np.ndarray:
    """float32 in [0, 1) from uint32 words, as Triton's ``tl.uint_to_uniform_float``."""
    x = np.asarray(words, dtype=np.uint32).view(np.int32)
    x = np.where(x < 0, ~x, x)
    return x.astype(np.float32) * UNIFORM_SCALE


def seed_key(seed: int):
    """The Philox key (low word, high word) of a 64-bit seed (two's complement if negative)."""
    s = int(seed) & 0xFFFFFFFFFFFFFFFF
    return s & 0xFFFFFFFF, s >> 32


def dropout_keep_mask(seed: int, shape, dropout_p: float) -> torch.Tensor:
    """The (N, H, L_q, L_k) bool keep mask of the attention kernels' contract (see above)."""
    n, h, lq, lk = shape
    bh = np.arange(n * h).reshape(-1, 1, 1)
    i = np.arange(lq).reshape(1, -1, 1)
    j = np.arange(lk).reshape(1, 1, -1)
    words = philox4x32((j // 4, i, bh, 0), seed_key(seed))
    chosen = np.choose(np.broadcast_to(j % 4, words[0].shape), words)
    keep = uniform(chosen) >= np.float32(dropout_p)
    return torch.from_numpy(keep.reshape(n, h, lq, lk).copy())
