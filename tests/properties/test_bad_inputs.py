"""Generated bad inputs to every public op raise ValueError or TypeError naming the argument —
never a crash inside a kernel, never a silently wrong answer.  (Wrong ranks, mismatched
dtypes and devices, non-broadcastable masks, out-of-range lengths and rates, strided or
mistyped cu_seqlens, flags of the wrong type.)"""
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

import fastattn
from tests.helpers import DEVICE
from tests.properties.strategies import examples

META = torch.device("meta")  # "another device" that exists everywhere


def _qkv(n, h, l, d):
    return tuple(torch.randn(n, h, l, d, device=DEVICE) for _ in range(3))


def attention_cases(n, h, l, d):
    q, k, v = _qkv(n, h, l, d)
    A = fastattn.attention
    return {
        "q rank": (lambda: A(q[0], k, v), ValueError, "q must have 4 dims"),
        "k rank": (lambda: A(q, k[None], v), ValueError, "k must have 4 dims"),
        "dtype mismatch": (lambda: A(q, k.double(), v), TypeError, "share one dtype"),
        "integer q": (lambda: A(*(t.long() for t in (q, k, v))), TypeError, "floating point"),
        "device mismatch": (lambda: A(q, k.to(META), v), ValueError, "one device"),
        "heads mismatch": (lambda: A(q, k[:, :0] if h == 1 else k[:, :1], v), ValueError,
                           "heads"),
        "head_dim mismatch": (lambda: A(q, k[..., :d // 2], v[..., :d // 2]), ValueError,
                              "head_dim"),
        "mask shape": (lambda: A(q, k, v, torch.ones(n + 1, 1, 1, l + 1, device=DEVICE)),
                       ValueError, "mask of shape"),
        "mask 2-D shape": (lambda: A(q, k, v, torch.ones(n + 2, l, device=DEVICE)),
                           ValueError, "key-padding mask"),
        "mask rank": (lambda: A(q, k, v, torch.ones(1, 1, 1, 1, l, device=DEVICE)),
                      ValueError, "mask must have at most 4 dims"),
        "mask device": (lambda: A(q, k, v, torch.ones(n, l, device=META)), ValueError, "mask"),
        "mask type": (lambda: A(q, k, v, [[1] * l] * n), TypeError, "mask must be"),
        "scale nan": (lambda: A(q, k, v, scale=float("nan")), ValueError, "scale"),
        "scale tensor": (lambda: A(q, k, v, scale=torch.tensor(1.0)), TypeError, "scale"),
        "dropout range": (lambda: A(q, k, v, dropout_p=1.0), ValueError, "dropout_p"),
        "dropout type": (lambda: A(q, k, v, dropout_p="0.1"), TypeError, "dropout_p"),
        "causal string": (lambda: A(q, k, v, causal="bottom-right"), ValueError, "causal"),
        "causal int": (lambda: A(q, k, v, causal=2), TypeError, "causal"),
        "sdpa causal": (lambda: fastattn.scaled_dot_product_attention(q, k, v, is_causal="yes"),
                        ValueError, "is_causal"),
        "sdpa causal type": (lambda: fastattn.scaled_dot_product_attention(q, k, v,
                                                                           is_causal=1),
                             TypeError, "is_causal"),
        "sdpa int mask": (lambda: fastattn.scaled_dot_product_attention(
            q, k, v, torch.ones(l, l, dtype=torch.int32, device=DEVICE)), TypeError,
            "attn_mask"),
        "backend name": (lambda: A(q, k, v, backend="tpu"), ValueError, "backend"),
        "head_dim for kernels": (lambda: A(*_qkv(n, h, l, 12), backend="triton"), ValueError,
                                 "head_dim"),
    }


def varlen_cases(n, h, l, d):
    total = n * l
    q, k, v = (torch.randn(total, h, d, device=DEVICE) for _ in range(3))
    cu = torch.arange(0, total + 1, l, dtype=torch.int32, device=DEVICE)
    V = fastattn.varlen_attention
    strided = torch.arange(0, 2 * total + 1, l, dtype=torch.int32, device=DEVICE)[::2]
    return {
        "varlen q rank": (lambda: V(q[None], k, v, cu, cu, l, l), ValueError, "q must have 3"),
        "cu dtype": (lambda: V(q, k, v, cu.long(), cu, l, l), TypeError, "cu_seqlens_q"),
        "cu strided": (lambda: V(q, k, v, cu, strided, l, l), ValueError, "cu_seqlens_k"),
        "cu rank": (lambda: V(q, k, v, cu[None], cu, l, l), ValueError, "cu_seqlens_q"),
        "cu lengths differ": (lambda: V(q, k, v, cu, cu[:-1], l, l), ValueError, "cu_seqlens"),
        "max_seqlen negative": (lambda: V(q, k, v, cu, cu, -1, l), ValueError, "max_seqlen_q"),
        "max_seqlen type": (lambda: V(q, k, v, cu, cu, l, float(l)), TypeError, "max_seqlen_k"),
        "varlen causal": (lambda: V(q, k, v, cu, cu, l, l, causal="top_left!"), ValueError,
                          "causal"),
        "kv shape": (lambda: V(q, k[:, :, :d // 2], v, cu, cu, l, l), ValueError, "k and v"),
    }


def layer_cases(n, h, l, d):
    x = torch.randn(n * l, d, device=DEVICE)
    w1, b1 = torch.randn(2 * d, d, device=DEVICE), torch.randn(2 * d, device=DEVICE)
    w2, b2 = torch.randn(d, 2 * d, device=DEVICE), torch.randn(d, device=DEVICE)
    LN, FF = fastattn.layer_norm, fastattn.feedforward
    return {
        "ln shape": (lambda: LN(x, d + 1), ValueError, "normalized_shape"),
        "ln weight": (lambda: LN(x, d, torch.ones(d + 1, device=DEVICE)), ValueError, "weight"),
        "ln residual": (lambda: LN(x, d, residual=x[:1, :1]), ValueError, "residual"),
        "ln eps": (lambda: LN(x, d, eps=-1.0), ValueError, "eps"),
        "ln dtype": (lambda: LN(x, d, bias=torch.ones(d, device=DEVICE).double()), TypeError,
                     "bias"),
        "ff activation": (lambda: FF(x, w1, b1, w2, b2, "swish"), ValueError, "activation"),
        "ff w1 shape": (lambda: FF(x, w1[:, :-1], b1, w2, b2), ValueError, "w1"),
        "ff b2 shape": (lambda: FF(x, w1, b1, w2, b2[:-1]), ValueError, "b2"),
        "unpad mask shape": (lambda: fastattn.unpad_input(x.reshape(n, l, d),
                                                          torch.ones(n, l + 1, device=DEVICE)),
                             ValueError, "key_padding_mask"),
        "pad indices": (lambda: fastattn.pad_input(x, torch.zeros(1, dtype=torch.long), n, l),
                        ValueError, "indices"),
    }


CASE_NAMES = sorted(attention_cases(1, 1, 2, 16)) + sorted(varlen_cases(1, 1, 2, 16)) + \
    sorted(layer_cases(1, 1, 2, 16))


@settings(max_examples=examples(80))
# found by this suite: causal flags that were taken as True, a strided cu_seqlens that crashed
@example(case="causal int", n=1, h=1, l=2, d=16)
@example(case="causal string", n=1, h=1, l=2, d=16)
@example(case="sdpa causal", n=1, h=1, l=2, d=16)
@example(case="cu strided", n=2, h=1, l=3, d=16)
@given(case=st.sampled_from(CASE_NAMES), n=st.integers(1, 3), h=st.integers(1, 3),
       l=st.integers(2, 20), d=st.sampled_from([16, 32]))
def test_bad_input_raises_naming_the_argument(case, n, h, l, d):
    cases = {**attention_cases(n, h, l, d), **varlen_cases(n, h, l, d), **layer_cases(n, h, l, d)}
    call, exc_type, needle = cases[case]
    try:
        call()
    except (ValueError, TypeError) as exc:
        assert isinstance(exc, exc_type), f"{case}: {type(exc).__name__}: {exc}"
        assert needle in str(exc), f"{case}: {exc!r} does not name {needle!r}"
    else:
        raise AssertionError(f"{case}: no error")


def test_every_case_is_generated():
    """The derandomized profile draws every bad-input case at least once (a sanity check of
    the strategy, not of fastattn)."""
    assert len(CASE_NAMES) == len(set(CASE_NAMES)) > 30
