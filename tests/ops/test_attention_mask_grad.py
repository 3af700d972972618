"""Trainable additive masks: ``scaled_dot_product_attention`` with a float ``attn_mask`` that
requires grad (a learned position bias) gets its gradient from the fused backward, reduced
over the mask's broadcast dimensions, against the float64 reference."""
import pytest
import torch
import torch.nn.functional as F

import fastattn
from tests.helpers import DEVICE, DTYPES, GRAD_FACTOR, assert_close_to_reference

# (N, H, L_q, L_k, D) and the mask's shape: a shared bias, a per-head one, a full one, a row.
CASES = [
    ((2, 2, 17, 17, 32), (1, 1, 17, 17)),
    ((1, 3, 20, 33, 16), (3, 20, 33)),
    ((2, 1, 33, 17, 64), (2, 1, 33, 17)),
    ((2, 2, 17, 70, 16), (2, 1, 1, 70)),
]


def _inputs(shape, mask_shape, dtype, causal=False):
    g = torch.Generator().manual_seed(3)
    n, h, lq, lk, d = shape
    q, k, v = (torch.randn(n, h, length, d, generator=g)
               for length in (lq, lk, lk))
    bias = torch.randn(mask_shape, generator=g)
    bias[..., 0] = float("-inf") if len(mask_shape) == 4 and not causal else bias[..., 0]
    dout = torch.randn(n, h, lq, d, generator=g)
    return [t.to(DEVICE) for t in (q, k, v, bias, dout)]


def _grads(fn, q, k, v, bias, dout, dtype):
    leaves = [t.to(dtype).detach().requires_grad_() for t in (q, k, v, bias)]
    out = fn(*leaves)
    out.backward(dout.to(dtype))
    return [t.grad for t in leaves]


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c[1])))
@pytest.mark.parametrize("dtype", DTYPES)
def test_additive_mask_gradient(case, dtype, causal):
    shape, mask_shape = case
    q, k, v, bias, dout = _inputs(shape, mask_shape, dtype, causal)

    def ours(q, k, v, m):
        return fastattn.scaled_dot_product_attention(q, k, v, attn_mask=m, is_causal=causal,
                                                     backend="triton")

    def torch_ref(q, k, v, m):  # torch takes no mask with is_causal: add the causal -inf
        if causal:
            lq, lk = q.shape[-2], k.shape[-2]
            above = torch.ones(lq, lk, dtype=torch.bool, device=q.device).triu(1)
            m = m + torch.zeros(lq, lk, dtype=m.dtype, device=q.device).masked_fill(
                above, float("-inf"))
        return F.scaled_dot_product_attention(q, k, v, attn_mask=m)

    got = _grads(ours, q, k, v, bias, dout, dtype)
    ref_hp = _grads(torch_ref, q, k, v, bias, dout, torch.float64)
    ref_lp = _grads(torch_ref, q, k, v, bias, dout, dtype)
    assert got[3] is not None and got[3].shape == bias.shape and got[3].dtype == dtype
    for name, g, hp, lp in zip(("dq", "dk", "dv", "dmask"), got, ref_hp, ref_lp):
        assert_close_to_reference(g.float(), hp, lp, factor=GRAD_FACTOR, name=name)


def test_mask_without_grad_gets_none_and_keep_masks_stay_non_differentiable():
    q, k, v, bias, dout = _inputs((1, 2, 17, 17, 16), (1, 1, 17, 17), torch.float32)
    q.requires_grad_()
    fastattn.scaled_dot_product_attention(q, k, v, attn_mask=bias, backend="triton").sum().backward()
    assert bias.grad is None and q.grad is not None
    keep = (bias > 0).float().requires_grad_()
    out = fastattn.attention(q, k, v, keep, backend="triton")
    out.sum().backward()
    assert keep.grad is None  # the guide's rule: mask == 0 replaces the score, no gradient
