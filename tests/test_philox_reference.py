"""The numpy Philox-4x32 of tests/philox_reference.py against Random123's known-answer vectors
(tests/kat_vectors of the Random123 distribution, rows "philox4x32 7" and "philox4x32 10"), and
its uniform map against its definition.  Triton's own tl.philox and tl.uint_to_uniform_float
are checked against it in tests/ops/test_attention_dropout.py."""
import numpy as np
import pytest

from tests import philox_reference as ref

# (rounds, counter, key, expected)
KAT = [
    (7, (0, 0, 0, 0), (0, 0), (0x5F6FB709, 0x0D893F64, 0x4F121F81, 0x4F730A48)),
    (7, (0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x5207DDC2, 0x45165E59, 0x4D8EE751, 0x8C52F662)),
    (7, (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0x4DFCCABA, 0x190A87F0, 0xC47362BA, 0xB6B5242A)),
    (10, (0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    (10, (0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    (10, (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


@pytest.mark.parametrize("rounds,counter,key,expected", KAT,
                         ids=[f"r{r}-{i % 3}" for i, (r, *_) in enumerate(KAT)])
def test_known_answer_vectors(rounds, counter, key, expected):
    assert [int(w) for w in ref.philox4x32(counter, key, rounds)] == list(expected)


def test_vectorised_calls_match_scalar_calls():
    counters = np.arange(12).reshape(3, 4) * 0x10001
    batched = ref.philox4x32((counters, 7, counters[::-1], 0), (5, 0xDEADBEEF))
    for idx in np.ndindex(counters.shape):
        scalar = ref.philox4x32((counters[idx], 7, counters[::-1][idx], 0), (5, 0xDEADBEEF))
        assert [int(b[idx]) for b in batched] == [int(s) for s in scalar]


def test_uniform_map():
    words = np.array([0, 1, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 0x40000000], dtype=np.uint32)
    u = ref.uniform(words)
    assert u.dtype == np.float32
    assert u[0] == 0 and u[4] == 0  # 0xFFFFFFFF is int32 -1, flipped to 0
    assert u[2] == u[3] < 1  # 0x80000000 flips to 0x7FFFFFFF, the largest: still below 1
    assert abs(float(u[5]) - 0.5) < 1e-7 and u[1] > 0


def test_seed_key_splits_64_bits():
    assert ref.seed_key(0x299F31D0A4093822) == (0xA4093822, 0x299F31D0)
    assert ref.seed_key(-1) == (0xFFFFFFFF, 0xFFFFFFFF)


def test_keep_mask_layout_follows_the_contract():
    n, h, lq, lk, p = 1, 2, 3, 9, 0.4
    keep = ref.dropout_keep_mask(12345, (n, h, lq, lk), p)
    for bh, i, j in ((0, 0, 0), (1, 2, 8), (1, 1, 5), (0, 2, 3)):
        word = ref.philox4x32((j // 4, i, bh, 0), ref.seed_key(12345))[j % 4]
        assert bool(keep[bh // h, bh % h, i, j]) == bool(ref.uniform(word) >= np.float32(p))
