"""The specializations of the shared attention tile loops against the float64 reference:
key-padding masks read as lengths (prefix and non-prefix rows in one batch, fully padded and
fully real rows), even and odd key lengths, causal with L_q != L_k, the TMA descriptor path and
the pointer fallback, and the scale folding (negative and zero scales)."""
import pytest
import torch

import fastattn
import fastattn.ops.attention as attention_ops
from fastattn.reference import attention_reference
from tests.helpers import DEVICE, GRAD_FACTOR, assert_close_to_reference


def _inputs(n, h, lq, lk, d, dtype):
    g = torch.Generator().manual_seed(3)
    return [torch.randn(n, h, length, d, generator=g).to(DEVICE, dtype)
            for length in (lq, lk, lk)]


def _check(q, k, v, mask=None, causal=False, scale=None, torch_bool=False):
    """Forward + backward vs the float64 and same-precision references; returns the output
    and the gradients."""
    qkv = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    if torch_bool:  # torch's bool attn_mask semantics: masked scores are -inf
        out = fastattn.scaled_dot_product_attention(*qkv, attn_mask=mask, is_causal=causal,
                                                    scale=scale, backend="triton")
    else:  # the guide's rule: masked scores are -1e10
        out = fastattn.attention(*qkv, mask, causal=causal, scale=scale, backend="triton")
    dout = torch.randn_like(out)
    grads = torch.autograd.grad(out, qkv, dout)

    def reference(dtype):
        ts = [t.detach().to(dtype).requires_grad_() for t in (q, k, v)]
        if torch_bool:
            r = torch.nn.functional.scaled_dot_product_attention(
                *ts, attn_mask=mask, is_causal=causal, scale=scale)
            r = torch.nan_to_num(r)  # a fully masked row: NaN in torch, 0 in the kernels
        else:
            r = attention_reference(*ts, mask, causal=causal, scale=scale)
        return r, torch.autograd.grad(r, ts, dout.to(dtype))

    hp, hp_grads = reference(torch.float64)
    lp, lp_grads = reference(q.dtype)
    assert_close_to_reference(out, hp, lp, name="out")
    for name, g, ghp, glp in zip("qkv", grads, hp_grads, lp_grads):
        assert_close_to_reference(g, torch.nan_to_num(ghp), torch.nan_to_num(glp),
                                  factor=GRAD_FACTOR, name=f"d{name}")
    return out, grads


def _padding_mask(n, lk, lengths, holes=()):
    """(N, L_k) bool: row b keeps its first lengths[b] keys; rows in ``holes`` also drop one key
    inside the prefix (not a prefix mask any more)."""
    mask = torch.arange(lk)[None, :] < torch.tensor(lengths)[:, None]
    for b in holes:
        mask[b, 1] = False
    return mask.to(DEVICE)


# (L_k, lengths): L_k a multiple of the interpreter's 32-key tile and not; lengths 0 (fully
# padded), L_k (fully real), a partial tile, an exact tile boundary; row 3 is not a prefix.
CASES = [(64, [0, 64, 33, 40, 32]), (45, [45, 0, 17, 45, 32])]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("lk,lengths", CASES, ids=["even", "odd"])
def test_key_padding_lengths_prefix_and_non_prefix_rows(lk, lengths, dtype):
    n = len(lengths)
    q, k, v = _inputs(n, 2, 19, lk, 32, dtype)
    mask = _padding_mask(n, lk, lengths, holes=(3,))
    out, (dq, dk, dv) = _check(q, k, v, mask)
    # a fully padded row attends uniformly over all L_k keys (the guide's -1e10 rule)
    padded = lengths.index(0)
    mean_v = v[padded].double().mean(dim=1, keepdim=True).expand(2, 19, 32)
    torch.testing.assert_close(out[padded].double(), mean_v, atol=5e-3, rtol=0)
    # padded keys of a prefix row with real keys get no gradient at all
    for b, length in enumerate(lengths):
        if length > 0 and b != 3:
            assert torch.count_nonzero(dk[b, :, length:]) == 0
            assert torch.count_nonzero(dv[b, :, length:]) == 0


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_key_padding_under_torch_bool_semantics(causal):
    """masked_score = -inf: a fully padded row gives 0, prefix rows skip their padded keys."""
    lengths = [0, 45, 20, 7]
    q, k, v = _inputs(4, 2, 23, 45, 16, torch.float32)
    mask = _padding_mask(4, 45, lengths, holes=(2,))[:, None, None, :]
    out, _ = _check(q, k, v, mask, causal=causal, torch_bool=True)
    assert torch.count_nonzero(out[0]) == 0


@pytest.mark.parametrize("lq,lk", [(40, 70), (70, 40), (33, 64)])
def test_causal_with_unequal_lengths(lq, lk):
    q, k, v = _inputs(2, 1, lq, lk, 16, torch.float32)
    _check(q, k, v, None, causal=True)
    mask = _padding_mask(2, lk, [lk // 2, lk], holes=())
    _check(q, k, v, mask, causal=True)


def test_tma_path_and_pointer_fallback(monkeypatch):
    """fp16 with 16-byte aligned strides goes through tensor descriptors in the forward and the
    backward (the interpreter runs them); with TMA switched off, or with a head_dim that TMA
    cannot take, the pointer loads."""
    taken = []
    real = attention_ops.tma_compatible
    monkeypatch.setattr(attention_ops, "tma_compatible",
                        lambda *a: taken.append(real(*a)) or taken[-1])
    q, k, v = _inputs(2, 2, 37, 45, 32, torch.float16)
    mask = _padding_mask(2, 45, [45, 30], holes=())
    out_tma, _ = _check(q, k, v, mask)
    assert taken == [True, True]  # forward, backward
    monkeypatch.setattr(attention_ops, "tma_supported", lambda device: False)
    out_ptr, _ = _check(q, k, v, mask)
    torch.testing.assert_close(out_tma, out_ptr, atol=1e-3, rtol=0)
    q2, k2, v2 = _inputs(1, 1, 17, 21, 24, torch.float16)  # head_dim 24 < BLOCK_D 32
    taken.clear()
    monkeypatch.undo()
    monkeypatch.setattr(attention_ops, "tma_compatible",
                        lambda *a: taken.append(real(*a)) or taken[-1])
    _check(q2, k2, v2)
    assert taken == [False, False]


def test_odd_strides_fall_back_to_pointer_loads():
    """A packed projection whose row stride is not a multiple of 16 bytes."""
    n, h, l, d = 2, 3, 29, 16
    packed = torch.randn(n, l, 3 * h * d + 1, device=DEVICE, dtype=torch.float16)
    qkv = packed[..., :-1].view(n, l, 3, h, d)
    q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))
    assert not attention_ops.tma_compatible((q, k, v), d, d)
    _check(q, k, v, _padding_mask(n, l, [29, 11], holes=()))


@pytest.mark.parametrize("scale", [-0.3, 0.0], ids=["negative", "zero"])
def test_negative_and_zero_scale(scale):
    q, k, v = _inputs(2, 1, 21, 37, 16, torch.float32)
    _check(q, k, v, _padding_mask(2, 37, [37, 12], holes=(1,)), scale=scale)


@pytest.mark.parametrize("shape", [(3, 40), (3, 1, 1, 40)], ids=["2d", "4d"])
def test_head_shared_key_padding_masks_are_read_as_lengths(shape):
    """The launcher hands a key-padding keep mask shared by all heads to the kernels as
    per-sequence lengths (-1 for a row that is not a prefix); other masks are read as masks."""
    q = torch.zeros(3, 2, 5, 16, device=DEVICE)
    mask = _padding_mask(3, 40, [40, 0, 21], holes=(0,)).reshape(shape)
    view, strides = attention_ops._mask_view(mask, q, (3, 2, 5, 40))
    layout = attention_ops._mask_layout(mask, view, strides)
    lens, used = attention_ops._key_lengths(view, strides, 1, layout, q)
    assert used and lens.tolist() == [-1, 0, 21]
    per_head = mask.reshape(3, 1, 1, 40).expand(3, 2, 1, 40).contiguous()
    view, strides = attention_ops._mask_view(per_head, q, (3, 2, 5, 40))
    assert not attention_ops._key_lengths(view, strides, 1, "row", q)[1]
    assert not attention_ops._key_lengths(view, strides, 2, "row", q)[1]  # additive


@pytest.mark.parametrize("scale", [0.125, 80 ** -0.5, 0.37, 1e-3, 5.0])
def test_replaced_product_times_scale_is_exact(scale):
    """The forward's fused FFMA (qk * qk_scale - m) is exact for a replaced product, so a fully
    masked row is uniform on the GPU too; its score stays within [-2e10, -1e10]."""
    log2e = 1.4426950408889634
    qk_scale = torch.tensor(scale * log2e, dtype=torch.float32)
    raw = attention_ops._masked_raw(-1.0e10, float(qk_scale))
    product = torch.tensor(raw, dtype=torch.float32) * qk_scale
    assert product.double().item() == raw * qk_scale.double().item()
    assert -2.0e10 * log2e <= product.item() <= -1.0e10 * log2e
    assert attention_ops._masked_raw(float("-inf"), float(qk_scale)) == float("-inf")
