"""The reference modules: the guide's semantics, with its two listing defects corrected."""
import pytest
import torch

from fastattn import reference


def test_masked_score_is_replaced_not_added():
    q, k, v = (torch.randn(1, 1, 3, 8, dtype=torch.float64) for _ in range(3))
    mask = torch.tensor([[1, 0, 1]])
    out = reference.attention_reference(q, k, v, mask)
    s = (q @ k.transpose(-1, -2)) / 8 ** 0.5
    s[..., 1] = -1e10
    torch.testing.assert_close(out, torch.softmax(s, -1) @ v)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("mask_dtype", [torch.bool, torch.int64, torch.float32])
def test_fully_masked_row_is_mean_of_v(dtype, mask_dtype):
    q, k, v = (torch.randn(2, 2, 4, 8).to(dtype) for _ in range(3))
    mask = torch.ones(2, 1, 1, 4).to(mask_dtype)
    mask[1] = 0
    out = reference.attention_reference(q, k, v, mask)
    torch.testing.assert_close(out[1].double(), v[1].double().mean(1, keepdim=True).expand(2, 4, 8),
                               atol=1e-2 if dtype in (torch.float16, torch.bfloat16) else 1e-6,
                               rtol=0)


def test_causal_is_top_left_aligned():
    q, k, v = (torch.randn(1, 1, 3, 8, dtype=torch.float64) for _ in range(3))
    k5, v5 = torch.randn(1, 1, 5, 8, dtype=torch.float64), torch.randn(1, 1, 5, 8, dtype=torch.float64)
    out = reference.attention_reference(q, k5, v5, causal=True)
    torch.testing.assert_close(out[..., 0, :], v5[..., 0, :])  # query 0 sees key 0 only
    full = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(reference.attention_reference(q, k, v, causal=True), full)


def test_self_attention_applies_projections_unless_listing_mode():
    torch.manual_seed(0)
    m = reference.SelfAttention(16, 2).double()
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    q = m.queries(x).view(2, 5, 2, 8).transpose(1, 2)
    k = m.keys(x).view(2, 5, 2, 8).transpose(1, 2)
    v = m.values(x).view(2, 5, 2, 8).transpose(1, 2)
    expected = m.fc_out(reference.attention_reference(q, k, v).transpose(1, 2).reshape(2, 5, 16))
    torch.testing.assert_close(m(x, x, x, None), expected)
    m.qkv_projection = False
    raw = x.view(2, 5, 2, 8).transpose(1, 2)
    listing = m.fc_out(reference.attention_reference(raw, raw, raw).transpose(1, 2).reshape(2, 5, 16))
    torch.testing.assert_close(m(x, x, x, None), listing)


def test_encoder_state_dict_keys_follow_the_guide():
    enc = reference.BertEncoder(50, 16, 2, 2, 4, 0.0, 32)
    keys = set(enc.state_dict())
    assert {"embeddings.weight", "pos_embeddings.weight", "layers.1.attention.fc_out.bias",
            "layers.0.norm1.weight", "layers.0.norm2.bias", "layers.0.feedforward.0.weight",
            "layers.0.feedforward.2.bias", "layers.0.attention.values.weight"} <= keys


def test_encoder_positions_follow_the_input_device():
    enc = reference.BertEncoder(50, 16, 1, 2, 4, 0.0, 32).to("meta")
    out = enc(torch.zeros(2, 7, dtype=torch.long, device="meta"), None)
    assert out.device.type == "meta" and out.shape == (2, 7, 16)
