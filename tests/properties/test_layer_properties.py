"""Properties of fastattn.layer_norm (with and without the fused residual, affine or not,
strided rows), fastattn.feedforward (every activation, residual or not) and the encoder's
packed path against its padded path, over generated sizes and dtypes: forward and every
gradient within the tolerance table of the float64 reference."""
import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import fastattn
from tests.helpers import DEVICE, assert_close_to_reference
from tests.properties.checks import check_op
from tests.properties.strategies import DTYPES, examples

ACTIVATIONS = {
    "relu": torch.relu,
    "gelu": torch.nn.functional.gelu,
    "gelu_tanh": lambda x: torch.nn.functional.gelu(x, approximate="tanh"),
}


@settings(max_examples=examples(25))
@given(rows=st.integers(1, 70), hidden=st.sampled_from([1, 7, 64, 100, 768, 1030]),
       dtype=st.sampled_from(DTYPES), residual=st.booleans(), affine=st.booleans(),
       strided=st.booleans(), seed=st.integers(0, 2 ** 16))
def test_layer_norm_matches_reference(rows, hidden, dtype, residual, affine, strided, seed):
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=1.0, shift=0.0):
        return (torch.randn(*shape, generator=g) * scale + shift).to(dtype).to(DEVICE)
    x = rand(rows, hidden + 3)[:, 2:2 + hidden] if strided else rand(rows, hidden)
    inputs = dict(x=x)
    if residual:
        inputs["residual"] = rand(rows, hidden)
    if affine:
        inputs.update(weight=rand(hidden, scale=0.2, shift=1.0), bias=rand(hidden, scale=0.2))

    def fn(x, residual=None, weight=None, bias=None):
        return fastattn.layer_norm(x, hidden, weight, bias, residual=residual, backend="triton")

    def ref(x, residual=None, weight=None, bias=None):
        return torch.nn.functional.layer_norm(x if residual is None else x + residual, (hidden,),
                                              weight, bias)
    check_op(fn, ref, inputs, seed=seed)


@settings(max_examples=examples(20))
@given(tokens=st.integers(1, 70), embed=st.sampled_from([8, 24, 40]),
       expansion=st.sampled_from([1, 4]), activation=st.sampled_from(sorted(ACTIVATIONS)),
       residual=st.booleans(), dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2 ** 16))
def test_feedforward_matches_reference(tokens, embed, expansion, activation, residual, dtype,
                                       seed):
    g = torch.Generator().manual_seed(seed)
    hidden = embed * expansion

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(dtype).to(DEVICE)
    inputs = dict(x=rand(tokens, embed), w1=rand(hidden, embed, scale=1 / math.sqrt(embed)),
                  b1=rand(hidden, scale=0.1), w2=rand(embed, hidden, scale=1 / math.sqrt(hidden)),
                  b2=rand(embed, scale=0.1))
    if residual:
        inputs["residual"] = rand(tokens, embed)

    def fn(x, w1, b1, w2, b2, residual=None):
        return fastattn.feedforward(x, w1, b1, w2, b2, activation, residual, backend="triton")

    def ref(x, w1, b1, w2, b2, residual=None):
        y = torch.nn.functional.linear(ACTIVATIONS[activation](
            torch.nn.functional.linear(x, w1, b1)), w2, b2)
        return y if residual is None else y + residual
    check_op(fn, ref, inputs, seed=seed)


@settings(max_examples=examples(6))
@given(lens=st.lists(st.integers(1, 20), min_size=1, max_size=3), seed=st.integers(0, 2 ** 16))
def test_encoder_packed_path_equals_padded_path(lens, seed):
    """Real tokens: the packed path (default for a key-padding mask) and the padded path both
    within the tolerance of the float64 encoder; padded positions of the packed path are 0."""
    import copy
    torch.manual_seed(seed)
    length = max(lens)
    enc = fastattn.BertEncoder(50, 32, 2, 2, 2, 0.0, 32).to(DEVICE)
    tokens = torch.randint(1, 50, (len(lens), length), device=DEVICE)
    keep = torch.arange(length, device=DEVICE)[None, :] < torch.tensor(lens, device=DEVICE)[:, None]
    mask = keep[:, None, None, :]
    real = keep[..., None]
    with fastattn.use_backend("torch"):
        enc64 = copy.deepcopy(enc).double()
        enc64.unpad = False
        hp = enc64(tokens, mask) * real
        enc.unpad = False
        lp = enc(tokens, mask) * real
    with fastattn.use_backend("triton"):
        enc.unpad = True
        packed = enc(tokens, mask)
        enc.unpad = False
        padded = enc(tokens, mask)
    assert torch.all(packed[~keep] == 0)
    assert_close_to_reference(packed * real, hp, lp, name="packed")
    assert_close_to_reference(padded * real, hp, lp, name="padded")
