"""The "torch" backend on CPU tensors (torch's fused SDPA kernel with fastattn's mask rules)
against the float64 reference: every mask kind of the guide's rule, causal, fully masked rows
(mean of the visible V rows, no gradient to q and k), and torch's bool / float rule (0 where a
row keeps no key, NaN-free gradients)."""
import pytest
import torch

import fastattn
from fastattn.reference import attention_reference
from tests.helpers import GRAD_FACTOR, assert_close_to_reference
from tests.ops.test_attention import MASK_KINDS, _mask

CPU = torch.device("cpu")
SHAPES = [(2, 2, 17, 17, 32), (1, 2, 9, 21, 16), (2, 1, 21, 9, 64)]


def _grads(fn, ts, dout):
    ts = [t.detach().clone().requires_grad_() for t in ts]
    out = fn(*ts)
    return out, torch.autograd.grad(out, ts, torch.where(torch.isfinite(out), dout, 0))


def _check_guide(q, k, v, mask, causal):
    dout = torch.randn_like(q)
    out, grads = _grads(lambda *t: fastattn.attention(*t, mask, causal=causal, backend="torch"),
                        (q, k, v), dout)
    hp, hp_grads = _grads(lambda *t: attention_reference(*t, mask, causal=causal),
                          [t.double() for t in (q, k, v)], dout.double())
    lp, lp_grads = _grads(lambda *t: attention_reference(*t, mask, causal=causal), (q, k, v),
                          dout)
    assert_close_to_reference(out, hp, lp, name="out")
    for name, g, ghp, glp in zip("qkv", grads, hp_grads, lp_grads):
        assert_close_to_reference(g, ghp, glp, factor=GRAD_FACTOR, name=f"d{name}")
    return out, grads


@pytest.mark.parametrize("mask_kind", MASK_KINDS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "N{}H{}Lq{}Lk{}D{}".format(*s))
def test_guide_rule_forward_backward(shape, mask_kind):
    n, h, lq, lk, d = shape
    q, k, v = (torch.randn(n, h, l, d) for l in (lq, lk, lk))
    mask = _mask(mask_kind, n, h, lq, lk)
    mask = None if mask is None else mask.cpu()
    _check_guide(q, k, v, mask, mask_kind.startswith("causal"))


def test_fully_masked_rows_average_v_and_give_q_k_no_gradient():
    q, k, v = (torch.randn(2, 2, 5, 16) for _ in range(3))
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[1] = False
    out, (dq, dk, dv) = _check_guide(q, k, v, mask, False)
    torch.testing.assert_close(out[1], v[1].mean(1, keepdim=True).expand(2, 5, 16))
    assert torch.count_nonzero(dq[1]) == 0 and torch.count_nonzero(dk[1]) == 0
    assert torch.count_nonzero(dv[1]) > 0


def test_fully_masked_rows_under_causal_average_visible_keys():
    q, k, v = (torch.randn(1, 1, 12, 16) for _ in range(3))
    mask = torch.zeros(1, 1, 12, 12, dtype=torch.bool)
    mask[..., :6, :] = True  # rows 6.. keep no key
    out, _ = _check_guide(q, k, v, mask, True)
    expected = torch.stack([v[0, 0, :i + 1].mean(0) for i in range(6, 12)])
    torch.testing.assert_close(out[0, 0, 6:], expected)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("kind", ["bool", "float"])
def test_torch_rule_zero_rows_and_finite_gradients(kind, causal):
    q, k, v = (torch.randn(2, 2, 7, 16) for _ in range(3))
    keep = torch.rand(2, 1, 7, 7) > 0.4
    keep[0, :, 2] = False  # a row without keys
    mask = keep if kind == "bool" else torch.where(keep, torch.randn(2, 1, 7, 7), float("-inf"))
    dout = torch.randn_like(q)
    out, grads = _grads(lambda *t: fastattn.scaled_dot_product_attention(
        *t, mask, is_causal=causal, backend="torch"), (q, k, v), dout)
    assert torch.equal(out[0, :, 2], torch.zeros_like(out[0, :, 2]))
    assert all(torch.isfinite(g).all() for g in grads)
    ref_mask = _with_causal(mask) if causal else mask
    ref_mask = ref_mask if ref_mask.dtype == torch.bool else ref_mask.double()
    ref, ref_grads = _grads(lambda *t: torch.nn.functional.scaled_dot_product_attention(
        *t, ref_mask), [t.double() for t in (q, k, v)], dout.double())
    finite = torch.isfinite(ref)
    torch.testing.assert_close(out.double()[finite], ref[finite], atol=1e-5, rtol=1e-5)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g.double(), r.nan_to_num(0.0), atol=1e-5, rtol=1e-5)


def _with_causal(mask):
    tril = torch.ones(mask.shape[-2], mask.shape[-1], dtype=torch.bool).tril()
    if mask.dtype == torch.bool:
        return mask & tril
    return mask.masked_fill(~tril, float("-inf"))


def test_half_precision_within_tolerance():
    q, k, v = (torch.randn(2, 2, 17, 32, dtype=torch.float16) for _ in range(3))
    mask = torch.rand(2, 17) > 0.3
    _check_guide(q, k, v, mask, False)
