"""Properties of fastattn.attention and fastattn.scaled_dot_product_attention over generated
shapes, layouts, masks, dtypes and causal flags: forward and every gradient within the
tolerance table of the float64 reference (torch's own SDPA for the drop-in), and bit-identical
results for the same seed.  Runs the Triton kernels (the interpreter on CPU)."""
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import fastattn
from fastattn.reference import attention_reference
from tests.properties.checks import check_op
from tests.properties.strategies import (DTYPES, LAYOUTS, attention_shapes, examples,
                                         keep_masks, make_qkv, sdpa_masks)

BACKEND = "triton"


@settings(max_examples=examples(20))
@given(shape=attention_shapes(), dtype=st.sampled_from(DTYPES), layout=st.sampled_from(LAYOUTS),
       causal=st.booleans(), seed=st.integers(0, 2 ** 16), data=st.data())
def test_attention_matches_reference(shape, dtype, layout, causal, seed, data):
    n, h, lq, lk, d = shape
    mask, _ = data.draw(keep_masks(n, h, lq, lk), label="mask")
    q, k, v = make_qkv(shape, dtype, layout, seed)

    def fn(q, k, v):
        return fastattn.attention(q, k, v, mask, causal=causal, backend=BACKEND)

    def ref(q, k, v):
        return attention_reference(q, k, v, mask, causal=causal)
    out, _ = check_op(fn, ref, dict(q=q, k=k, v=v), seed=seed)
    assert out.shape == (n, h, lq, d) and out.dtype == dtype


@settings(max_examples=examples(15))
@given(shape=attention_shapes(), dtype=st.sampled_from(DTYPES), causal=st.booleans(),
       scale=st.one_of(st.none(), st.floats(0.05, 2.0)), seed=st.integers(0, 2 ** 16),
       data=st.data())
def test_sdpa_matches_torch(shape, dtype, causal, scale, seed, data):
    n, h, lq, lk, d = shape
    mask = data.draw(sdpa_masks(n, h, lq, lk), label="attn_mask")
    q, k, v = make_qkv(shape, dtype, "contiguous", seed)
    if mask is not None and mask.is_floating_point():
        mask = mask.to(dtype)

    def fn(q, k, v):
        return fastattn.scaled_dot_product_attention(q, k, v, mask, is_causal=causal,
                                                     scale=scale, backend=BACKEND)

    def ref(q, k, v):  # torch's own function is the specification of the drop-in
        m = mask if mask is None or mask.dtype == torch.bool else mask.to(q.dtype)
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, m, is_causal=causal,
                                                                scale=scale)
    check_op(fn, ref, dict(q=q, k=k, v=v), seed=seed)


@settings(max_examples=examples(6))
@given(shape=attention_shapes(max_bh=2), dtype=st.sampled_from(DTYPES),
       dropout=st.sampled_from([0.0, 0.3]), seed=st.integers(0, 2 ** 16), data=st.data())
def test_same_seed_gives_bit_identical_results(shape, dtype, dropout, seed, data):
    n, h, lq, lk, d = shape
    mask, _ = data.draw(keep_masks(n, h, lq, lk), label="mask")
    q, k, v = make_qkv(shape, dtype, "contiguous", seed)
    dout = torch.randn(n, h, lq, d, generator=torch.Generator().manual_seed(seed)).to(dtype)

    def run():
        torch.manual_seed(seed)
        xs = [t.detach().requires_grad_() for t in (q, k, v)]
        out = fastattn.attention(*xs, mask, dropout_p=dropout, backend=BACKEND)
        return (out, *torch.autograd.grad(out, xs, dout.to(out.device)))
    first, second = run(), run()
    for a, b in zip(first, second):
        assert torch.equal(a, b)
