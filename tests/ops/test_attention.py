"""Fused attention (Triton) against the float64 reference: forward and backward, every mask kind,
odd lengths, cross-attention, head dims 16..256, strided inputs, fully masked rows."""
import math

import pytest
import torch

import fastattn
from fastattn.reference import attention_reference
from tests.helpers import (ATOL, DEVICE, DTYPES, GRAD_FACTOR, assert_close_to_reference)

# (N, H, L_q, L_k, D): odd lengths, L_q != L_k, every supported head-dim bucket incl. 80 and 96.
SHAPES = [
    (1, 1, 1, 1, 16),
    (2, 2, 17, 17, 32),
    (1, 2, 70, 129, 80),
    (2, 1, 129, 70, 64),
    (1, 1, 17, 33, 96),
    (1, 1, 33, 17, 128),
    (1, 1, 17, 20, 256),
]


def _mask(kind, n, h, lq, lk):
    """Masks under the guide's rule (mask == 0 is masked), built to keep >= 1 key per row except
    where a fully masked row is intended."""
    g = torch.Generator().manual_seed(1)
    if kind == "none" or kind == "causal":
        return None
    if kind == "key_padding_2d":  # (N, L_k) bool; batch 0 fully padded
        m = torch.rand(n, lk, generator=g) > 0.3
        m[0] = False
        return m.to(DEVICE)
    if kind == "key_padding_4d_int":  # (N, 1, 1, L_k) int 0/1
        return (torch.rand(n, 1, 1, lk, generator=g) > 0.4).to(torch.int32).to(DEVICE)
    if kind == "full_bool":  # (N, 1, L_q, L_k), broadcast over heads; row 0 fully masked
        m = torch.rand(n, 1, lq, lk, generator=g) > 0.5
        m[:, :, 0] = False
        return m.to(DEVICE)
    if kind == "per_head_float":  # (1, H, L_q, L_k) float 0/1, broadcast over batch
        return (torch.rand(1, h, lq, lk, generator=g) > 0.5).float().to(DEVICE)
    if kind == "causal_and_padding":
        return (torch.rand(n, 1, 1, lk, generator=g) > 0.3).to(DEVICE)
    raise ValueError(kind)


MASK_KINDS = ["none", "key_padding_2d", "key_padding_4d_int", "full_bool", "per_head_float",
              "causal", "causal_and_padding"]


def _inputs(n, h, lq, lk, d, dtype):
    q = torch.randn(n, h, lq, d, device=DEVICE, dtype=dtype)
    k = torch.randn(n, h, lk, d, device=DEVICE, dtype=dtype)
    v = torch.randn(n, h, lk, d, device=DEVICE, dtype=dtype)
    return q, k, v


def _check(q, k, v, mask=None, causal=False, scale=None):
    """Forward + backward of the Triton kernel vs float64 and same-precision references."""
    qkv = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    out = fastattn.attention(*qkv, mask, causal=causal, scale=scale, backend="triton")
    dout = torch.randn_like(out)
    grads = torch.autograd.grad(out, qkv, dout)

    def reference(dtype):
        ts = [t.detach().to(dtype).requires_grad_() for t in (q, k, v)]
        r = attention_reference(*ts, mask, causal=causal, scale=scale)
        return r, torch.autograd.grad(r, ts, dout.to(dtype))

    hp, hp_grads = reference(torch.float64)
    lp, lp_grads = reference(q.dtype)
    assert_close_to_reference(out, hp, lp, name="out")
    for name, g, ghp, glp in zip("qkv", grads, hp_grads, lp_grads):
        assert_close_to_reference(g, ghp, glp, factor=GRAD_FACTOR, name=f"d{name}")
    return out, grads


@pytest.mark.parametrize("mask_kind", MASK_KINDS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "N{}H{}Lq{}Lk{}D{}".format(*s))
@pytest.mark.parametrize("dtype", DTYPES)
def test_forward_backward(shape, dtype, mask_kind):
    n, h, lq, lk, d = shape
    q, k, v = _inputs(n, h, lq, lk, d, dtype)
    mask = _mask(mask_kind, n, h, lq, lk)
    _check(q, k, v, mask, causal=mask_kind.startswith("causal"))


@pytest.mark.parametrize("dtype", DTYPES)
def test_fully_masked_row_is_mean_of_v_over_real_keys(dtype):
    """Length 70 with 32-key blocks: the tail block's padding keys are excluded entirely, so a
    fully masked row averages exactly the 70 real rows of V, and its scores get no gradient."""
    q, k, v = _inputs(2, 2, 5, 70, 32, dtype)
    mask = torch.ones(2, 70, dtype=torch.bool, device=DEVICE)
    mask[1] = False
    out, (dq, dk, dv) = _check(q, k, v, mask)
    mean_v = v[1].double().mean(dim=1, keepdim=True).expand(2, 5, 32)
    torch.testing.assert_close(out[1].double(), mean_v, atol=ATOL[dtype] * 10, rtol=0)
    assert torch.count_nonzero(dq[1]) == 0 and torch.count_nonzero(dk[1]) == 0
    assert torch.count_nonzero(dv[1]) > 0


def test_fully_masked_row_under_causal_averages_visible_keys():
    q, k, v = _inputs(1, 1, 40, 40, 16, torch.float32)
    mask = torch.zeros(1, 1, 40, 40, dtype=torch.bool, device=DEVICE)
    mask[..., :20, :] = True  # rows 20.. are fully masked
    out, _ = _check(q, k, v, mask, causal=True)
    expected = torch.stack([v[0, 0, : i + 1].double().mean(0) for i in range(20, 40)])
    torch.testing.assert_close(out[0, 0, 20:].double(), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_strided_inputs(dtype):
    """q/k/v as views into a packed (N, L, 3, H, D) projection, and a last-dim-strided k."""
    n, h, l, d = 2, 3, 37, 32
    packed = torch.randn(n, l, 3, h, d, device=DEVICE, dtype=dtype)
    q, k, v = (packed[:, :, i].transpose(1, 2) for i in range(3))
    assert not q.is_contiguous()
    mask = torch.rand(n, 2 * l, device=DEVICE)[:, ::2] > 0.3  # strided key-padding mask
    _check(q, k, v, mask)
    k_t = torch.randn(n, h, d, l, device=DEVICE, dtype=dtype).transpose(-1, -2)  # stride(-1) != 1
    _check(q, k_t, v, None)


def test_expanded_mask_is_read_through_strides():
    q, k, v = _inputs(2, 4, 17, 23, 16, torch.float32)
    row = torch.rand(2, 1, 1, 23, device=DEVICE) > 0.5
    expanded = row.expand(2, 4, 17, 23)  # stride 0 on heads and queries
    out_expanded = fastattn.attention(q, k, v, expanded, backend="triton")
    out_row = fastattn.attention(q, k, v, row, backend="triton")
    assert torch.equal(out_expanded, out_row)


def test_scale_argument():
    q, k, v = _inputs(1, 2, 17, 19, 32, torch.float32)
    _check(q, k, v, None, scale=0.37)
    _check(q, k, v, None, scale=1.0 / math.sqrt(32))


def test_long_sequence():
    q, k, v = _inputs(1, 1, 300, 513, 16, torch.float32)
    _check(q, k, v, None, causal=True)


def test_backward_is_deterministic():
    q, k, v = (t.requires_grad_() for t in _inputs(1, 2, 70, 70, 32, torch.float16))
    mask = _mask("full_bool", 1, 2, 70, 70)
    runs = []
    for _ in range(2):
        out = fastattn.attention(q, k, v, mask, backend="triton")
        runs.append(torch.autograd.grad(out, (q, k, v), torch.ones_like(out)))
    for a, b in zip(*runs):
        assert torch.equal(a, b)


def test_empty_batch():
    q, k, v = _inputs(0, 2, 5, 7, 16, torch.float32)
    out = fastattn.attention(q, k, v, backend="triton")
    assert out.shape == (0, 2, 5, 16)


def test_output_layout_merges_heads_for_free():
    q, k, v = _inputs(2, 3, 9, 9, 16, torch.float32)
    out = fastattn.attention(q, k, v, backend="triton")
    merged = out.transpose(1, 2)
    assert merged.is_contiguous()  # (N, L, H, D) memory: reshaping to (N, L, E) is a view


def test_torch_backend_matches_reference():
    q, k, v = _inputs(2, 2, 17, 33, 32, torch.float16)
    mask = _mask("full_bool", 2, 2, 17, 33)
    out = fastattn.attention(q, k, v, mask, causal=True, backend="torch")
    hp = attention_reference(q.double(), k.double(), v.double(), mask, causal=True)
    lp = attention_reference(q, k, v, mask, causal=True)
    assert_close_to_reference(out, hp, lp)
