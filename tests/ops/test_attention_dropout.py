"""Attention dropout in the Triton kernels.

Exactness: the keep mask of a seed is drawn independently of the kernels, by the numpy
Philox-4x32-10 of tests/philox_reference.py (checked against Random123's known answers) under
the kernels' documented counter layout; the float64 reference given that mask must match the
kernel's output and gradients within the tolerance table (so the forward and the backward
draw exactly that mask), and the mask the kernels write out (``dropout_keep_mask``) must equal
it bit for bit.  Triton's own tl.philox and tl.uint_to_uniform_float are checked against the
known answers and the reference map.  Statistics: the keep rate is 1 - p, masks are independent
across batch, heads and rows, and the expected output is the output without dropout.
"""
import math

import numpy as np
import pytest
import torch

import fastattn
from fastattn.ops.attention import draw_dropout_seed, dropout_keep_mask, triton_attention
from fastattn.reference import attention_reference
from tests import philox_reference
from tests.helpers import DEVICE, DTYPES, GRAD_FACTOR, assert_close_to_reference

NONE, KEEP, ADD, EXCLUDE = 0, 1, 2, 3  # op-level mask kinds (fastattn.functional)


def _seed(value):
    return torch.tensor([value], dtype=torch.int64, device=DEVICE)


def _mask(kind, n, h, lq, lk):
    g = torch.Generator().manual_seed(3)
    if kind == "none" or kind == "causal":
        return None, NONE
    if kind == "key_padding":  # (N, L_k) bool under the guide's rule; batch 0 fully padded
        m = torch.rand(n, lk, generator=g) > 0.3
        m[0] = False
        return m.to(DEVICE), KEEP
    if kind == "additive":  # (N, 1, L_q, L_k) float added to the scores
        return (torch.randn(n, 1, lq, lk, generator=g) * 2).to(DEVICE), ADD
    if kind == "torch_bool":  # (1, H, L_q, L_k) bool, True takes part; one row fully excluded
        m = torch.rand(1, h, lq, lk, generator=g) > 0.4
        m[:, :, 0] = False
        return m.to(DEVICE), EXCLUDE
    raise ValueError(kind)


def _reference(q, k, v, mask, kind, causal, keep, p, dtype):
    ts = [t.detach().to(dtype).requires_grad_() for t in (q, k, v)]
    keep_rule = mask if kind == KEEP else None
    add = None
    if kind == ADD:
        add = mask.to(dtype)
    elif kind == EXCLUDE:
        add = torch.zeros((), dtype=dtype, device=q.device).masked_fill(~mask, float("-inf"))
    out = attention_reference(*ts, keep_rule, causal=causal, additive_mask=add,
                              dropout_mask=keep, dropout_p=p)
    return out, ts


CASES = [  # (N, H, L_q, L_k, D, mask kind, p)
    (2, 2, 17, 17, 32, "none", 0.3),
    (1, 2, 70, 129, 16, "key_padding", 0.5),
    (2, 1, 33, 20, 64, "additive", 0.1),
    (1, 3, 17, 23, 32, "torch_bool", 0.3),
    (1, 1, 40, 40, 16, "causal", 0.2),
    (1, 1, 1, 1, 16, "none", 0.6),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "N{}H{}Lq{}Lk{}D{}-{}-p{}".format(*c))
@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_reference_given_the_same_mask(case, dtype):
    n, h, lq, lk, d, mask_kind, p = case
    q, k, v = (torch.randn(n, h, length, d, device=DEVICE, dtype=dtype)
               for length in (lq, lk, lk))
    mask, kind = _mask(mask_kind, n, h, lq, lk)
    causal = mask_kind == "causal"
    seed = _seed(20261129 + lq)
    qkv = [t.clone().requires_grad_() for t in (q, k, v)]
    out = triton_attention(*qkv, mask, kind, causal, None, p, seed)
    dout = torch.randn_like(out)
    grads = torch.autograd.grad(out, qkv, dout)

    keep = philox_reference.dropout_keep_mask(int(seed), (n, h, lq, lk), p).to(DEVICE)
    assert 0 < keep.sum() < keep.numel() or keep.numel() == 1
    results = {}
    for ref_dtype in (torch.float64, dtype):
        ref, ts = _reference(q, k, v, mask, kind, causal, keep, p, ref_dtype)
        finite = torch.isfinite(ref)  # rows torch excludes entirely: NaN in the reference
        ref_grads = torch.autograd.grad(ref, ts, torch.where(finite, dout.to(ref_dtype), 0))
        results[ref_dtype] = ref, ref_grads
    (hp, hp_grads), (lp, lp_grads) = results[torch.float64], results[dtype]
    assert_close_to_reference(out, hp, lp, name="out")
    for name, g, ghp, glp in zip("qkv", grads, hp_grads, lp_grads):
        assert_close_to_reference(g, ghp, glp, factor=GRAD_FACTOR, name=f"d{name}")
    # and the mask matters: without dropout the output is far from this one
    plain = triton_attention(q, k, v, mask, kind, causal, None)
    assert (plain - out).abs().max() > 0.05


@pytest.mark.parametrize("seed,shape,p", [
    (20261129, (2, 3, 17, 33), 0.3),
    (2 ** 40 + 1, (1, 2, 70, 13), 0.5),  # both key words non-zero
    (-7, (1, 1, 5, 129), 0.1),  # a negative int64 seed: its two's complement bits are the key
    (3, (3, 1, 1, 1), 0.9),
], ids=["N2H3Lq17Lk33", "seed2^40+1", "negative-seed", "single-element"])
def test_kernel_mask_matches_an_independent_philox(seed, shape, p):
    got = dropout_keep_mask(_seed(seed), shape, p).cpu()
    want = philox_reference.dropout_keep_mask(seed, shape, p)
    bad = (got != want).nonzero()
    assert bad.numel() == 0, (f"{len(bad)} of {got.numel()} elements differ, first at "
                              f"{bad[:5].tolist()}")


def test_triton_philox_and_uniform_map_match_the_reference():
    """tl.philox (seed -> key (low word, high word)) against Random123's known answers, and
    tl.uint_to_uniform_float against the reference map, in a small kernel."""
    triton = pytest.importorskip("triton")
    import triton.language as tl

    @triton.jit
    def philox_words(SEED, C, OUT, N: tl.constexpr):
        offs = tl.arange(0, N)
        seed = tl.load(SEED)
        r0, r1, r2, r3 = tl.philox(seed, tl.load(C + 4 * offs), tl.load(C + 4 * offs + 1),
                                   tl.load(C + 4 * offs + 2), tl.load(C + 4 * offs + 3))
        for t, r in enumerate((r0, r1, r2, r3)):
            tl.store(OUT + 4 * offs + t, r.to(tl.int32, bitcast=True))

    @triton.jit
    def uniforms(X, OUT, N: tl.constexpr):
        offs = tl.arange(0, N)
        tl.store(OUT + offs, tl.uint_to_uniform_float(tl.load(X + offs).to(tl.uint32,
                                                                            bitcast=True)))

    def as_i32(words):
        return torch.tensor(np.asarray(words, dtype=np.uint32).view(np.int32).astype(np.int64),
                            dtype=torch.int32, device=DEVICE)

    for counter, key, expected in (
            ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
            ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6,
                                                    0x6D5451FD)),
            ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
             (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1))):
        seed = np.array([key[0] | key[1] << 32], dtype=np.uint64).view(np.int64)[0]
        out = torch.empty(4, dtype=torch.int32, device=DEVICE)
        philox_words[(1,)](_seed(int(seed)), as_i32(counter), out, N=1)
        got = out.cpu().numpy().view(np.uint32).tolist()
        assert got == list(expected), [hex(w) for w in got]
        assert got == [int(w) for w in philox_reference.philox4x32(counter, key)]

    words = np.array([0, 1, 2, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 0x12345678, 0xDEADBEEF],
                     dtype=np.uint32)
    out = torch.empty(len(words), dtype=torch.float32, device=DEVICE)
    uniforms[(1,)](as_i32(words), out, N=len(words))
    assert out.cpu().numpy().tolist() == philox_reference.uniform(words).tolist()


def test_keep_rate_and_independence():
    p, shape = 0.3, (2, 3, 129, 129)
    keep = dropout_keep_mask(_seed(7), shape, p).double()
    count = keep.numel()
    rate = keep.mean().item()
    sigma = math.sqrt(p * (1 - p) / count)
    assert abs(rate - (1 - p)) < 5 * sigma, (rate, sigma)
    # no repeated stream across batch, heads, rows or columns: agreement rate of independent
    # masks is p^2 + (1-p)^2
    agree = p * p + (1 - p) ** 2
    for a, b in ((keep[0], keep[1]), (keep[:, 0], keep[:, 1]), (keep[..., :-1, :], keep[..., 1:, :]),
                 (keep[..., :-1], keep[..., 1:])):
        frac = (a == b).double().mean().item()
        assert abs(frac - agree) < 5 * math.sqrt(agree * (1 - agree) / a.numel()), frac


def test_seeds_give_different_masks_and_repeat_exactly():
    a = dropout_keep_mask(_seed(1), (1, 2, 17, 33), 0.5)
    b = dropout_keep_mask(_seed(2), (1, 2, 17, 33), 0.5)
    assert not torch.equal(a, b)
    assert torch.equal(a, dropout_keep_mask(_seed(1), (1, 2, 17, 33), 0.5))
    big = dropout_keep_mask(_seed(2 ** 40 + 1), (1, 1, 8, 8), 0.5)  # all 64 seed bits are used
    assert not torch.equal(big, dropout_keep_mask(_seed(1), (1, 1, 8, 8), 0.5))


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_mean_is_preserved(backend):
    """Uniform attention (q = 0) over V = 1: a row's output is kept / (L_k (1 - p)), whose mean
    over many rows is 1 — the expected output equals the output without dropout."""
    n, h, lq, lk, d, p = 2, 2, 64, 96, 16, 0.4
    q = torch.zeros(n, h, lq, d, device=DEVICE)
    k = torch.randn(n, h, lk, d, device=DEVICE)
    v = torch.ones(n, h, lk, d, device=DEVICE)
    out = fastattn.scaled_dot_product_attention(q, k, v, dropout_p=p, backend=backend)
    rows = out[..., 0].double()
    assert torch.allclose(out, out[..., :1].expand_as(out))  # one factor per row
    sigma = math.sqrt(p / ((1 - p) * lk)) / math.sqrt(rows.numel())
    assert abs(rows.mean().item() - 1.0) < 5 * sigma, (rows.mean().item(), sigma)
    assert rows.std().item() > 0.5 * math.sqrt(p / ((1 - p) * lk))  # really random per row


def test_public_functions_draw_the_seed_from_torch_generator():
    q, k, v = (torch.randn(1, 2, 17, 16, device=DEVICE) for _ in range(3))
    torch.manual_seed(5)
    a = fastattn.attention(q, k, v, dropout_p=0.25, backend="triton")
    torch.manual_seed(5)
    b = fastattn.attention(q, k, v, dropout_p=0.25, backend="triton")
    torch.manual_seed(5)
    seed = draw_dropout_seed(q.device)
    c = triton_attention(q, k, v, None, NONE, False, None, 0.25, seed)
    assert torch.equal(a, b) and torch.equal(a, c)
    d = fastattn.attention(q, k, v, dropout_p=0.25, backend="triton")  # next call, new seed
    assert not torch.equal(a, d)
    plain = fastattn.attention(q, k, v, backend="triton")
    assert torch.equal(fastattn.attention(q, k, v, dropout_p=0.0, backend="triton"), plain)


@pytest.mark.parametrize("bad,exc", [(-0.1, ValueError), (1.0, ValueError),
                                     (torch.tensor(0.1), TypeError), ("0.1", TypeError)])
def test_bad_dropout_p(bad, exc):
    q = torch.randn(1, 1, 4, 16, device=DEVICE)
    with pytest.raises(exc, match="dropout_p"):
        fastattn.scaled_dot_product_attention(q, q, q, dropout_p=bad)
    with pytest.raises(exc, match="dropout_p"):
        fastattn.attention(q, q, q, dropout_p=bad)


def test_compiles_without_graph_break():
    q, k, v = (torch.randn(1, 2, 17, 16, device=DEVICE, requires_grad=True) for _ in range(3))

    def f(q, k, v):
        return fastattn.scaled_dot_product_attention(q, k, v, dropout_p=0.2, backend="triton")

    explanation = torch._dynamo.explain(f)(q, k, v)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    torch.manual_seed(11)
    out = compiled(q, k, v)
    out.sum().backward()
    torch.manual_seed(11)
    eager = f(q, k, v)
    torch.testing.assert_close(out, eager, rtol=0, atol=0)
