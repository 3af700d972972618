"""Variable-length (packed) attention against a float64 per-sequence reference: forward and
backward, causal, cross lengths, empty sequences, strided inputs, equality with the padded
kernel, unpad / pad round trips, the custom ops and bad inputs."""
import pytest
import torch

import fastattn
from fastattn.ops.attention_sdpa import sdpa_varlen
from fastattn.ops.varlen import (pad_input, unpad_input, varlen_attention,
                                 varlen_attention_bwd_op, varlen_attention_fwd_op)
from fastattn.reference import attention_reference
from tests.helpers import DEVICE, DTYPES, GRAD_FACTOR, assert_close_to_reference

# (query lengths, key lengths or None for self-attention, H, D)
CASES = [
    ([1, 17, 5, 32], None, 2, 16),     # lengths 1 .. max, several key blocks
    ([33], None, 1, 80),                # a batch of one, head_dim 80
    ([17, 17, 17], None, 2, 64),        # every sequence full
    ([3, 20, 1], [9, 4, 35], 1, 16),    # cross: L_q != L_k per sequence
    ([0, 6, 0, 9], [4, 7, 0, 9], 1, 16),  # empty sequences (no queries / no keys at all)
]


def _cu(lengths):
    return torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.int32,
                        device=DEVICE)


def _inputs(lens_q, lens_k, h, d, dtype):
    q = torch.randn(sum(lens_q), h, d, device=DEVICE, dtype=dtype)
    k = torch.randn(sum(lens_k), h, d, device=DEVICE, dtype=dtype)
    v = torch.randn(sum(lens_k), h, d, device=DEVICE, dtype=dtype)
    return q, k, v


def _reference(q, k, v, lens_q, lens_k, causal, scale=None):
    """Per-sequence attention_reference in the inputs' dtype; (total_q, H, D)."""
    outs, sq, sk = [], 0, 0
    for lq, lk in zip(lens_q, lens_k):
        qb, kb, vb = (t.transpose(0, 1)[None] for t in (q[sq:sq + lq], k[sk:sk + lk],
                                                        v[sk:sk + lk]))
        if lk == 0:
            outs.append(q[sq:sq + lq] * 0)
        else:
            outs.append(attention_reference(qb, kb, vb, causal=causal, scale=scale)[0]
                        .transpose(0, 1))
        sq, sk = sq + lq, sk + lk
    return torch.cat(outs, 0)


def _check(q, k, v, lens_q, lens_k, causal=False, scale=None, backend="triton"):
    qkv = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    out = varlen_attention(*qkv, _cu(lens_q), _cu(lens_k), max(lens_q), max(lens_k),
                           causal=causal, scale=scale, backend=backend)
    assert out.shape == q.shape
    dout = torch.randn_like(out)
    grads = torch.autograd.grad(out, qkv, dout)

    def reference(dtype):
        ts = [t.detach().to(dtype).requires_grad_() for t in (q, k, v)]
        r = _reference(*ts, lens_q, lens_k, causal, scale)
        return r, torch.autograd.grad(r, ts, dout.to(dtype), allow_unused=True)

    hp, hp_grads = reference(torch.float64)
    lp, lp_grads = reference(q.dtype)
    assert_close_to_reference(out, hp, lp, name="out")
    for name, g, ghp, glp in zip("qkv", grads, hp_grads, lp_grads):
        assert_close_to_reference(g, ghp, glp, factor=GRAD_FACTOR, name=f"d{name}")
    return out, grads


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "Lq{}Lk{}H{}D{}".format(
    "-".join(map(str, c[0])), "-".join(map(str, c[1] or c[0])), c[2], c[3]))
def test_forward_backward_fp32(case, causal):
    lens_q, lens_k, h, d = case
    lens_k = lens_k or lens_q
    _check(*_inputs(lens_q, lens_k, h, d, torch.float32), lens_q, lens_k, causal)


@pytest.mark.parametrize("dtype", DTYPES[1:])
def test_forward_backward_half(dtype):
    lens_q, lens_k = [1, 19, 6], [7, 19, 30]
    _check(*_inputs(lens_q, lens_k, 2, 64, dtype), lens_q, lens_k, causal=True)


def test_sequences_without_keys_give_zeros():
    lens_q, lens_k = [3, 4], [0, 5]
    out, (dq, dk, dv) = _check(*_inputs(lens_q, lens_k, 1, 16, torch.float32), lens_q, lens_k)
    assert torch.count_nonzero(out[:3]) == 0 and torch.count_nonzero(dq[:3]) == 0
    assert torch.count_nonzero(out[3:]) > 0


def test_scale_and_torch_backend():
    lens = [4, 13]
    q, k, v = _inputs(lens, lens, 2, 32, torch.float32)
    _check(q, k, v, lens, lens, causal=True, scale=0.3)
    _check(q, k, v, lens, lens, causal=True, scale=0.3, backend="torch")


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("lens", [[5, 0, 17, 1, 9, 9, 12, 3, 30, 2], [6, 6, 6], [0, 4]],
                         ids=["ten_mixed", "equal", "with_empty"])
def test_torch_backend_length_buckets(lens, causal):
    """CPU self-attention without dropout runs in sorted length buckets (a few SDPA calls):
    equal to the per-sequence reference, gradients too, empty sequences included."""
    q, k, v = (t.cpu() for t in _inputs(lens, lens, 2, 16, torch.float32))
    cu = _cu(lens).cpu()
    for buckets in (1, 3, 4, 100):
        qkv = [t.detach().clone().requires_grad_() for t in (q, k, v)]
        out = sdpa_varlen(*qkv, cu, causal, None, buckets=buckets)
        ref64 = [t.detach().double().requires_grad_() for t in (q, k, v)]
        ref = _reference(*ref64, lens, lens, causal)
        torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)
        dout = torch.randn_like(out)
        for g, r in zip(torch.autograd.grad(out, qkv, dout),
                        torch.autograd.grad(ref, ref64, dout.double(), allow_unused=True)):
            torch.testing.assert_close(g.double(), r, atol=1e-5, rtol=1e-5)
    if DEVICE.type == "cpu":
        _check(q, k, v, lens, lens, causal=causal, backend="torch")


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_matches_padded_attention_on_real_tokens(causal):
    """unpad -> varlen -> pad equals fastattn.attention with the key-padding mask wherever the
    query is a real token (causal: prefix masks, so positions agree)."""
    n, l, h, d = 3, 21, 2, 16
    x = torch.randn(n, l, 3, h, d, device=DEVICE)
    if causal:
        lengths = torch.tensor([21, 1, 9])
        mask = torch.arange(l)[None, :] < lengths[:, None]
    else:
        mask = torch.rand(n, l) > 0.4
        mask[1] = True
    mask = mask.to(DEVICE)
    packed, idx, cu, max_len = unpad_input(x, mask)
    q, k, v = packed.unbind(1)  # strided views into the packed projection
    out = pad_input(varlen_attention(q, k, v, cu, cu, max_len, max_len, causal=causal,
                                     backend="triton"), idx, n, l)
    qp, kp, vp = (x[:, :, i].transpose(1, 2) for i in range(3))
    ref = fastattn.attention(qp, kp, vp, mask, causal=causal, backend="triton").transpose(1, 2)
    torch.testing.assert_close(out[mask], ref[mask], atol=1e-5, rtol=1e-5)
    assert torch.count_nonzero(out[~mask]) == 0


def test_strided_inputs_and_last_dim_copy():
    lens = [7, 18]
    packed = torch.randn(sum(lens), 3, 2, 32, device=DEVICE)
    q, k, v = packed.unbind(1)
    assert not q.is_contiguous()
    _check(q, k, v, lens, lens, causal=True)
    k_t = torch.randn(2, 32, sum(lens), device=DEVICE).permute(2, 0, 1)  # stride(-1) != 1
    _check(q, k_t, v, lens, lens)


def test_backward_is_deterministic():
    lens = [30, 9]
    q, k, v = (t.requires_grad_() for t in _inputs(lens, lens, 1, 16, torch.float32))
    runs = []
    for _ in range(2):
        out = varlen_attention(q, k, v, _cu(lens), _cu(lens), 30, 30, backend="triton")
        runs.append(torch.autograd.grad(out, (q, k, v), torch.ones_like(out)))
    for a, b in zip(*runs):
        assert torch.equal(a, b)


def test_larger_max_seqlen_only_adds_idle_programs():
    lens = [5, 12]
    q, k, v = _inputs(lens, lens, 1, 16, torch.float32)
    a = varlen_attention(q, k, v, _cu(lens), _cu(lens), 12, 12, backend="triton")
    b = varlen_attention(q, k, v, _cu(lens), _cu(lens), 64, 64, backend="triton")
    assert torch.equal(a, b)


# ------------------------------------------------------------------------------ pack / unpad

def test_unpad_pad_round_trip_and_gradients():
    x = torch.randn(3, 6, 2, 4, device=DEVICE, requires_grad=True)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [0, 0, 0, 0, 0, 0], [1, 0, 1, 1, 1, 1]],
                        device=DEVICE, dtype=torch.bool)
    packed, idx, cu, max_len = unpad_input(x, mask)
    assert packed.shape == (8, 2, 4)
    assert cu.dtype == torch.int32 and cu.tolist() == [0, 3, 3, 8]
    assert max_len == 5
    torch.testing.assert_close(packed, x[mask])
    back = pad_input(packed, idx, 3, 6)
    torch.testing.assert_close(back, x * mask[:, :, None, None])
    g = torch.randn_like(back)
    (gx,) = torch.autograd.grad(back, x, g)
    torch.testing.assert_close(gx, g * mask[:, :, None, None])
    # pad_input's own gradient reads back the real positions
    p = packed.detach().requires_grad_()
    (gp,) = torch.autograd.grad(pad_input(p, idx, 3, 6), p, g)
    torch.testing.assert_close(gp, g[mask])


def test_unpad_with_lengths_equals_prefix_mask():
    x = torch.randn(2, 5, 3, device=DEVICE)
    a = unpad_input(x, lengths=torch.tensor([2, 5]))
    b = unpad_input(x, torch.tensor([[1, 1, 0, 0, 0], [1] * 5], device=DEVICE))
    for s, t in zip(a[:3], b[:3]):
        assert torch.equal(s, t)
    assert a[3] == b[3] == 5


# ------------------------------------------------------------------------------ custom ops

def test_opcheck_on_the_custom_ops():
    lens = [3, 9]
    q, k, v = (t.requires_grad_() for t in _inputs(lens, [4, 9], 1, 16, torch.float32))
    cu_q, cu_k = _cu(lens), _cu([4, 9])
    torch.library.opcheck(varlen_attention_fwd_op, (q, k, v, cu_q, cu_k, 9, 9, True, 0.25))
    out, lse = varlen_attention_fwd_op(q, k, v, cu_q, cu_k, 9, 9, False, 0.25)
    assert lse.shape == (1, 12) and lse.dtype == torch.float32
    torch.library.opcheck(varlen_attention_bwd_op,
                          (torch.randn_like(out), q.detach(), k.detach(), v.detach(),
                           out.detach(), lse, cu_q, cu_k, 9, 9, False, 0.25),
                          test_utils=("test_schema", "test_faketensor"))


def test_opcheck_with_dropout():
    lens = [3, 9]
    q, k, v = (t.requires_grad_() for t in _inputs(lens, lens, 1, 16, torch.float32))
    seed = torch.tensor([5], dtype=torch.int64, device=DEVICE)
    torch.library.opcheck(varlen_attention_fwd_op,
                          (q, k, v, _cu(lens), _cu(lens), 9, 9, False, 0.25, 0.3, seed))


# ------------------------------------------------------------------------------ dropout

@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_dropout_equals_the_padded_kernel_with_the_same_seed(causal):
    """Sequence b gets the dropout mask of batch row b of the padded kernel: outputs and
    gradients are those of the padded kernel with a key-padding mask, on the real tokens."""
    from fastattn.ops.attention import triton_attention

    lens, h, d, p = [5, 17, 1, 33], 2, 16, 0.3
    q, k, v = (t.requires_grad_() for t in _inputs(lens, lens, h, d, torch.float32))
    cu, seed = _cu(lens), torch.tensor([20261129], dtype=torch.int64, device=DEVICE)
    out = varlen_attention_fwd_op(q, k, v, cu, cu, max(lens), max(lens), causal, 0.25, p,
                                  seed)[0]
    dout = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), dout)
    lengths = torch.tensor(lens, device=DEVICE)
    keep = torch.arange(max(lens), device=DEVICE)[None, :] < lengths[:, None]
    idx = keep.flatten().nonzero().squeeze(1)
    padded = [pad_input(t.detach(), idx, len(lens), max(lens)).transpose(1, 2).requires_grad_()
              for t in (q, k, v)]
    ref = triton_attention(*padded, keep[:, None, None, :], 3, causal, 0.25, p, seed)
    ref_grads = torch.autograd.grad(ref, padded, pad_input(dout, idx, len(lens), max(lens))
                                    .transpose(1, 2))
    unpad = lambda t: t.transpose(1, 2).reshape(-1, h, d)[idx]
    torch.testing.assert_close(out, unpad(ref), rtol=1e-6, atol=1e-6)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, unpad(r), rtol=1e-6, atol=1e-6)
    plain = varlen_attention(q, k, v, cu, cu, max(lens), max(lens), causal=causal, scale=0.25,
                             backend="triton")
    assert (plain - out).abs().max() > 0.05  # dropout really ran


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_dropout_public_function(backend):
    lens = [4, 9]
    q, k, v = _inputs(lens, lens, 2, 16, torch.float32)
    cu = _cu(lens)
    torch.manual_seed(3)
    a = varlen_attention(q, k, v, cu, cu, 9, 9, dropout_p=0.5, backend=backend)
    torch.manual_seed(3)
    b = varlen_attention(q, k, v, cu, cu, 9, 9, dropout_p=0.5, backend=backend)
    plain = varlen_attention(q, k, v, cu, cu, 9, 9, backend=backend)
    assert torch.equal(a, b) and not torch.allclose(a, plain) and torch.isfinite(a).all()
    with pytest.raises(ValueError, match="dropout_p"):
        varlen_attention(q, k, v, cu, cu, 9, 9, dropout_p=1.0, backend=backend)


# ------------------------------------------------------------------------------ bad inputs

def _good():
    q, k, v = _inputs([3, 4], [3, 4], 2, 16, torch.float32)
    return dict(q=q, k=k, v=v, cu_seqlens_q=_cu([3, 4]), cu_seqlens_k=_cu([3, 4]),
                max_seqlen_q=4, max_seqlen_k=4)


BAD = [
    ("q", lambda a: a["q"][None], ValueError, "q must have 3 dims"),
    ("k", lambda a: a["k"].double(), TypeError, "share one dtype"),
    ("v", lambda a: a["v"][:, :1], ValueError, "k and v must have one shape"),
    ("k", lambda a: a["k"][:, :1], ValueError, "k and v must have one shape"),
    ("q", lambda a: a["q"].to(torch.int64), TypeError, "dtype"),
    ("cu_seqlens_q", lambda a: a["cu_seqlens_q"].long(), TypeError, "cu_seqlens_q must be int32"),
    ("cu_seqlens_k", lambda a: a["cu_seqlens_k"][None], ValueError, "cu_seqlens_k must be a contiguous 1-D int32"),
    ("cu_seqlens_k", lambda a: a["cu_seqlens_k"][:2], ValueError, "one length"),
    ("cu_seqlens_q", lambda a: [0, 3, 7], TypeError, "cu_seqlens_q must be a torch.Tensor"),
    ("max_seqlen_q", lambda a: torch.tensor(4), TypeError, "max_seqlen_q must be a Python int"),
    ("max_seqlen_k", lambda a: -1, ValueError, "max_seqlen_k must be >= 0"),
]


@pytest.mark.parametrize("arg,make,exc,match", BAD, ids=[f"{b[0]}-{i}" for i, b in enumerate(BAD)])
def test_bad_inputs(arg, make, exc, match):
    args = _good()
    args[arg] = make(args)
    with pytest.raises(exc, match=match):
        varlen_attention(**args, backend="triton")


def test_bad_head_dim_and_scale():
    q, k, v = _inputs([3], [3], 1, 20, torch.float32)
    with pytest.raises(ValueError, match="head_dim"):
        varlen_attention(q, k, v, _cu([3]), _cu([3]), 3, 3, backend="triton")
    args = _good()
    with pytest.raises(TypeError, match="scale"):
        varlen_attention(**args, scale=torch.tensor(1.0), backend="triton")


def test_bad_unpad_inputs():
    x = torch.randn(2, 5, 3, device=DEVICE)
    with pytest.raises(ValueError, match="key_padding_mask must have shape"):
        unpad_input(x, torch.ones(2, 4, dtype=torch.bool, device=DEVICE))
    with pytest.raises(ValueError, match="exactly one"):
        unpad_input(x)
    with pytest.raises(ValueError, match="lengths must be"):
        unpad_input(x, lengths=torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match="indices must have shape"):
        pad_input(x[0], torch.arange(4, device=DEVICE), 1, 5)
