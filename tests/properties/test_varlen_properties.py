"""Properties of fastattn.varlen_attention and unpad_input / pad_input over generated packed
batches (empty and full sequences, cross lengths, causal, strided views): forward and every
gradient within the tolerance table of a per-sequence float64 reference; pad(unpad(x)) = x on
real tokens and 0 elsewhere."""
import itertools

import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

import fastattn
from fastattn.reference import attention_reference
from tests.helpers import DEVICE
from tests.properties.checks import check_op
from tests.properties.strategies import DTYPES, HEAD_DIMS, examples, packed_lengths


def _cu(lengths):
    return torch.tensor([0, *itertools.accumulate(lengths)], dtype=torch.int32, device=DEVICE)


def _per_sequence(q, k, v, lens_q, lens_k, causal):
    outs, sq, sk = [], 0, 0
    for lq, lk in zip(lens_q, lens_k):
        if lk == 0:
            outs.append(q[sq:sq + lq] * 0)
        else:
            outs.append(attention_reference(
                *(t.transpose(0, 1)[None] for t in (q[sq:sq + lq], k[sk:sk + lk],
                                                    v[sk:sk + lk])),
                causal=causal)[0].transpose(0, 1))
        sq, sk = sq + lq, sk + lk
    return torch.cat(outs, 0)


@settings(max_examples=examples(20))
@example(lens_q=[0], cross=False, heads=1, d=16, dtype=torch.float32, causal=False,
         packed_view=False, seed=0, data=None)  # an empty batch: zero gradients
@given(lens_q=packed_lengths(), cross=st.booleans(), heads=st.integers(1, 2),
       d=st.sampled_from(HEAD_DIMS), dtype=st.sampled_from(DTYPES), causal=st.booleans(),
       packed_view=st.booleans(), seed=st.integers(0, 2 ** 16), data=st.data())
def test_varlen_matches_per_sequence_reference(lens_q, cross, heads, d, dtype, causal,
                                                packed_view, seed, data):
    lens_k = list(lens_q)
    if cross:
        lens_k = data.draw(st.lists(st.integers(0, 48), min_size=len(lens_q),
                                    max_size=len(lens_q)), label="lens_k")
    g = torch.Generator().manual_seed(seed)
    tq, tk = sum(lens_q), sum(lens_k)
    if packed_view and not cross:  # views into one packed (total, 3, H, D) projection
        qkv = torch.randn(tq, 3, heads, d, generator=g).to(dtype).to(DEVICE)
        q, k, v = qkv[:, 0], qkv[:, 1], qkv[:, 2]
    else:
        q = torch.randn(tq, heads, d, generator=g).to(dtype).to(DEVICE)
        k, v = (torch.randn(tk, heads, d, generator=g).to(dtype).to(DEVICE) for _ in range(2))
    cu_q, cu_k = _cu(lens_q), _cu(lens_k)

    def fn(q, k, v):
        return fastattn.varlen_attention(q, k, v, cu_q, cu_k, max(lens_q), max(lens_k),
                                         causal=causal, backend="triton")

    def ref(q, k, v):
        return _per_sequence(q, k, v, lens_q, lens_k, causal)
    out, _ = check_op(fn, ref, dict(q=q, k=k, v=v), seed=seed)
    assert out.shape == (tq, heads, d)


@settings(max_examples=examples(40))
@given(lens=packed_lengths(), hidden=st.integers(1, 9), holes=st.booleans(),
       seed=st.integers(0, 2 ** 16))
def test_unpad_pad_round_trip(lens, hidden, holes, seed):
    n, length = len(lens), max(max(lens), 1)
    g = torch.Generator().manual_seed(seed)
    keep = torch.arange(length)[None, :] < torch.tensor(lens)[:, None]
    if holes:
        keep = keep ^ (torch.rand(n, length, generator=g) < 0.3)
    keep = keep.to(DEVICE)
    x = torch.randn(n, length, hidden, generator=g).to(DEVICE).requires_grad_()
    packed, indices, cu, max_len = fastattn.unpad_input(x, keep)
    counts = keep.sum(1)
    assert packed.shape == (int(counts.sum()), hidden)
    assert cu.tolist() == [0, *itertools.accumulate(counts.tolist())]
    assert max_len == int(counts.max())
    back = fastattn.pad_input(packed, indices, n, length)
    assert torch.equal(back, torch.where(keep[..., None], x, torch.zeros_like(x)))
    (grad,) = torch.autograd.grad(back.sum(), x)
    assert torch.equal(grad, keep[..., None].to(grad.dtype).expand_as(grad))
