"""fastattn.modules.LayerNorm: a drop-in nn.LayerNorm (state dicts both ways) with a fused
residual add."""
import pytest
import torch
import torch.nn as nn

from fastattn.modules.layer_norm import LayerNorm
from tests.helpers import CUDA, DEVICE, GRAD_FACTOR, assert_close_to_reference

VARIANTS = [dict(), dict(bias=False), dict(elementwise_affine=False)]
VARIANT_IDS = ["affine", "no-bias", "no-affine"]


def _randomize(module):
    with torch.no_grad():
        for p in module.parameters():
            p.normal_()
    return module


@pytest.mark.parametrize("kwargs", VARIANTS, ids=VARIANT_IDS)
def test_matches_nn_layer_norm_and_state_dicts_move_both_ways(kwargs):
    ours = _randomize(LayerNorm(33, eps=1e-6, device=DEVICE, backend="triton", **kwargs))
    ref = nn.LayerNorm(33, eps=1e-6, device=DEVICE, **kwargs)
    assert isinstance(ours, nn.LayerNorm)
    assert list(ours.state_dict()) == list(ref.state_dict())
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(3, 17, 33, device=DEVICE, requires_grad=True)
    dy = torch.randn(3, 17, 33, device=DEVICE)
    out = ours(x)
    out.backward(dy)
    x_ref = x.detach().clone().requires_grad_(True)
    ref_out = ref(x_ref)
    ref_out.backward(dy)
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(x.grad, x_ref.grad, atol=1e-5, rtol=1e-5)
    for (name, p), p_ref in zip(ours.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, p_ref.grad, atol=1e-4, rtol=1e-5, msg=name)
    # and back: an nn.LayerNorm state dict loads into ours
    _randomize(ref)
    ours.load_state_dict(ref.state_dict())
    torch.testing.assert_close(ours(x), ref(x), atol=1e-5, rtol=1e-5)


def test_constructor_reset_parameters_and_repr():
    m = LayerNorm((4, 9), eps=1e-3, dtype=torch.float16, device=DEVICE)
    ref = nn.LayerNorm((4, 9), eps=1e-3, dtype=torch.float16, device=DEVICE)
    assert m.normalized_shape == (4, 9) and m.weight.shape == (4, 9)
    assert m.weight.dtype == torch.float16 and m.weight.device.type == DEVICE.type
    assert repr(m) == repr(ref) and m.extra_repr() == ref.extra_repr()
    assert "backend='triton'" in repr(LayerNorm(8, backend="triton"))
    _randomize(m)
    m.reset_parameters()
    assert torch.equal(m.weight, torch.ones_like(m.weight))
    assert torch.equal(m.bias, torch.zeros_like(m.bias))
    assert LayerNorm(8, bias=False).bias is None and LayerNorm(8, bias=False).weight is not None
    plain = LayerNorm(8, elementwise_affine=False)
    assert plain.weight is None and plain.bias is None and len(plain.state_dict()) == 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_residual_forward_is_post_ln_norm_of_sum(dtype):
    """norm(attention + query): one fused call, gradients reach both summands."""
    ours = _randomize(LayerNorm(768, device=DEVICE, dtype=dtype, backend="triton"))
    ref64 = nn.LayerNorm(768, device=DEVICE, dtype=torch.float64)
    ref = nn.LayerNorm(768, device=DEVICE, dtype=dtype)
    ref64.load_state_dict(ours.state_dict())
    ref.load_state_dict(ours.state_dict())
    attn = torch.randn(2, 9, 768, device=DEVICE, dtype=dtype, requires_grad=True)
    query = torch.randn(2, 9, 768, device=DEVICE, dtype=dtype, requires_grad=True)
    out = ours(attn, query)
    dy = torch.randn_like(out)
    out.backward(dy)
    a64, q64 = (t.detach().double().requires_grad_(True) for t in (attn, query))
    out64 = ref64(a64 + q64)
    out64.backward(dy.double())
    a, q = (t.detach().clone().requires_grad_(True) for t in (attn, query))
    out_lp = ref(a + q)
    out_lp.backward(dy)
    assert_close_to_reference(out, out64, out_lp)
    assert_close_to_reference(attn.grad, a64.grad, a.grad, factor=GRAD_FACTOR, name="dattn")
    assert_close_to_reference(query.grad, q64.grad, q.grad, factor=GRAD_FACTOR, name="dquery")
    assert torch.equal(attn.grad, query.grad)


def test_autocast_follows_nn_layer_norm():
    """CUDA autocast runs layer_norm in float32 (bf16 in, fp32 out); CPU autocast leaves it."""
    ours = _randomize(LayerNorm(33, device=DEVICE, backend="triton"))
    ref = nn.LayerNorm(33, device=DEVICE)
    ref.load_state_dict(ours.state_dict())
    dtypes = [torch.float32] + ([torch.bfloat16, torch.float16] if CUDA else [])
    for dtype in dtypes:
        x = torch.randn(5, 33, device=DEVICE, dtype=dtype)
        with torch.autocast(DEVICE.type, dtype=torch.bfloat16):
            out, ref_out = ours(x, x), ref(x + x)
        assert out.dtype == ref_out.dtype, dtype
        torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=1e-5)


def test_bad_input_names_the_argument():
    m = LayerNorm(8, backend="triton")
    with pytest.raises(ValueError, match="normalized_shape"):
        m(torch.randn(3, 7))
    with pytest.raises(ValueError, match="residual"):
        m(torch.randn(3, 8), torch.randn(2, 8))
    with pytest.raises(TypeError, match="weight"):
        m(torch.randn(3, 8, dtype=torch.float16))
