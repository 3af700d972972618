"""Causal alignment (top-left / bottom-right) and grouped-query attention (H_kv < H_q),
padded and packed, forward and every gradient against the float64 reference, on the Triton
kernels and the torch backend; rows that see no key; the deterministic GQA backward; the
input checks."""
import pytest
import torch
import torch.nn.functional as F

import fastattn
from fastattn.torch_paths import torch_varlen_traced
from fastattn.reference import attention_reference
from tests.helpers import DEVICE, GRAD_FACTOR, assert_close_to_reference

FP32 = pytest.param(torch.float32, id="fp32")
FP16 = pytest.param(torch.float16, id="fp16")

# (L_q, L_k, H_q, H_kv, causal, key-padding lengths or None: a fully padded row averages V
# over the keys its causal rule lets it see)
PADDED = [
    pytest.param(17, 33, 6, 2, "bottom_right", None, id="Lq17-Lk33-H6-Hkv2-bottom_right"),
    pytest.param(33, 17, 6, 1, "bottom_right", None, id="Lq33-Lk17-H6-Hkv1-bottom_right"),
    pytest.param(17, 33, 6, 3, True, None, id="Lq17-Lk33-H6-Hkv3-top_left"),
    pytest.param(33, 17, 4, 2, "bottom_right", [11, 0], id="Lq33-Lk17-H4-Hkv2-br-keypad"),
]


def _qkv(shape_q, shape_kv, dtype):
    q = torch.randn(*shape_q, device=DEVICE, dtype=dtype)
    k = torch.randn(*shape_kv, device=DEVICE, dtype=dtype)
    v = torch.randn(*shape_kv, device=DEVICE, dtype=dtype)
    return q, k, v


def _check(fn, reference, inputs, dtype):
    """fn(*inputs) and its gradients vs reference in float64 and in ``dtype``."""
    qkv = [t.detach().clone().requires_grad_() for t in inputs]
    out = fn(*qkv)
    dout = torch.randn_like(out)
    grads = torch.autograd.grad(out, qkv, dout)

    def ref(dt):
        ts = [t.detach().to(dt).requires_grad_() for t in inputs]
        r = reference(*ts)
        return r, torch.autograd.grad(r, ts, dout.to(dt))

    hp, hp_grads = ref(torch.float64)
    lp, lp_grads = ref(dtype)
    assert_close_to_reference(out, hp, lp, name="out")
    for name, g, ghp, glp in zip("qkv", grads, hp_grads, lp_grads):
        assert_close_to_reference(g, ghp, glp, factor=GRAD_FACTOR, name=f"d{name}")
    return out, grads


def _padded_case(lq, lk, h, h_kv, causal, lengths, dtype, backend):
    torch.manual_seed(0)
    n = 2
    q, k, v = _qkv((n, h, lq, 16), (n, h_kv, lk, 16), dtype)
    mask = None
    if lengths is not None:
        mask = torch.arange(lk, device=DEVICE)[None, :] < torch.tensor(lengths,
                                                                        device=DEVICE)[:, None]
    out, (dq, dk, dv) = _check(
        lambda q, k, v: fastattn.attention(q, k, v, mask, causal=causal, backend=backend),
        lambda q, k, v: attention_reference(q, k, v, mask, causal=causal), (q, k, v), dtype)
    assert dk.shape == k.shape and dv.shape == v.shape
    if causal == "bottom_right" and lq > lk:  # rows i < L_q - L_k see no key: 0, no gradient
        assert torch.all(out[:, :, :lq - lk] == 0)
        assert torch.all(dq[:, :, :lq - lk] == 0)
        assert out[:, :, lq - lk:].abs().sum() > 0


@pytest.mark.parametrize("dtype", [FP32])
@pytest.mark.parametrize("lq,lk,h,h_kv,causal,lengths",
                         [c for c in PADDED if "top_left" not in c.id])  # varlen has it
def test_padded_triton(lq, lk, h, h_kv, causal, lengths, dtype):
    _padded_case(lq, lk, h, h_kv, causal, lengths, dtype, "triton")


def test_padded_triton_fp16():
    _padded_case(33, 17, 6, 2, "bottom_right", None, torch.float16, "triton")


@pytest.mark.parametrize("dtype", [FP32, FP16])
@pytest.mark.parametrize("lq,lk,h,h_kv,causal,lengths", PADDED)
def test_padded_torch_backend(lq, lk, h, h_kv, causal, lengths, dtype):
    _padded_case(lq, lk, h, h_kv, causal, lengths, dtype, "torch")


def test_alignments_agree_where_they_should():
    """True == "top_left"; both alignments are one when L_q == L_k; they differ otherwise."""
    q, k, v = _qkv((1, 2, 9, 16), (1, 2, 9, 16), torch.float32)
    A = fastattn.attention
    top = A(q, k, v, causal=True, backend="torch")
    assert torch.equal(top, A(q, k, v, causal="top_left", backend="torch"))
    assert torch.equal(top, A(q, k, v, causal="bottom_right", backend="torch"))
    k2, v2 = torch.cat([k, k], 2), torch.cat([v, v], 2)
    assert not torch.allclose(A(q, k2, v2, causal="top_left", backend="torch"),
                              A(q, k2, v2, causal="bottom_right", backend="torch"))


def test_reference_bottom_right_matches_explicit_mask():
    """The reference's bottom-right rule is torch's SDPA with the mask j <= i + L_k - L_q
    (rows with a key), and 0 on rows without one."""
    q, k, v = _qkv((1, 2, 12, 16), (1, 2, 7, 16), torch.float64)
    allowed = torch.ones(12, 7, dtype=torch.bool, device=DEVICE).tril(7 - 12)
    ref = attention_reference(q, k, v, causal="bottom_right")
    sdpa = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
    seen = allowed.any(-1)
    torch.testing.assert_close(ref[:, :, seen], sdpa[:, :, seen])
    assert torch.all(ref[:, :, ~seen] == 0)


def test_gqa_backward_is_deterministic():
    torch.manual_seed(1)
    q, k, v = _qkv((1, 6, 33, 16), (1, 2, 17, 16), torch.float32)
    runs = []
    for _ in range(2):
        qkv = [t.clone().requires_grad_() for t in (q, k, v)]
        out = fastattn.attention(*qkv, causal="bottom_right", backend="triton")
        runs.append(torch.autograd.grad(out, qkv, torch.ones_like(out)))
    for a, b in zip(*runs):
        assert torch.equal(a, b)


def test_sdpa_enable_gqa_matches_torch():
    q, k, v = _qkv((2, 6, 17, 16), (2, 2, 17, 16), torch.float32)
    want = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    for backend in ("triton", "torch"):
        got = fastattn.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True,
                                                    backend=backend)
        torch.testing.assert_close(got, want, atol=2e-5, rtol=2e-5)
    with pytest.raises(ValueError, match="enable_gqa"):
        fastattn.scaled_dot_product_attention(q, k, v)


# (query lengths, key lengths, H_q, H_kv, causal)
VARLEN = [
    pytest.param([17, 5, 33], [33, 9, 17], 6, 2, "bottom_right", id="H6-Hkv2-bottom_right"),
    pytest.param([17, 0, 4], [9, 3, 6], 6, 1, True, id="H6-Hkv1-top_left"),
]


def _cu(lengths):
    return torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.int32,
                        device=DEVICE)


def _varlen_reference(q, k, v, lens_q, lens_k, causal):
    outs, sq, sk = [], 0, 0
    for lq, lk in zip(lens_q, lens_k):
        qb, kb, vb = (t.transpose(0, 1)[None] for t in (q[sq:sq + lq], k[sk:sk + lk],
                                                        v[sk:sk + lk]))
        outs.append(attention_reference(qb, kb, vb, causal=causal)[0].transpose(0, 1))
        sq, sk = sq + lq, sk + lk
    return torch.cat(outs, 0)


def _varlen_case(lens_q, lens_k, h, h_kv, causal, dtype, backend):
    torch.manual_seed(2)
    q, k, v = _qkv((sum(lens_q), h, 16), (sum(lens_k), h_kv, 16), dtype)
    cu_q, cu_k = _cu(lens_q), _cu(lens_k)
    out, _ = _check(
        lambda q, k, v: fastattn.varlen_attention(q, k, v, cu_q, cu_k, max(lens_q),
                                                  max(lens_k), causal=causal, backend=backend),
        lambda q, k, v: _varlen_reference(q, k, v, lens_q, lens_k, causal), (q, k, v), dtype)
    return q, k, v, cu_q, cu_k, out


@pytest.mark.parametrize("dtype", [FP32])
@pytest.mark.parametrize("lens_q,lens_k,h,h_kv,causal", VARLEN)
def test_varlen_triton(lens_q, lens_k, h, h_kv, causal, dtype):
    _varlen_case(lens_q, lens_k, h, h_kv, causal, dtype, "triton")


@pytest.mark.parametrize("dtype", [FP32, FP16])
@pytest.mark.parametrize("lens_q,lens_k,h,h_kv,causal", VARLEN)
def test_varlen_torch_backend(lens_q, lens_k, h, h_kv, causal, dtype):
    q, k, v, cu_q, cu_k, out = _varlen_case(lens_q, lens_k, h, h_kv, causal, dtype, "torch")
    code = {True: 1, "bottom_right": 2}[causal]  # the traced path (torch.compile / export)
    traced = torch_varlen_traced(q, k, v, cu_q, cu_k, max(lens_q), max(lens_k), code,
                                  16 ** -0.5)
    torch.testing.assert_close(traced, out, atol=2e-3, rtol=2e-3)


@pytest.mark.parametrize("causal", [False, "bottom_right"])
def test_varlen_torch_backend_self_attention(causal):
    """Equal query and key lengths: the torch backend's fused SDPA path."""
    _varlen_case([7, 12], [7, 12], 4, 2, causal, torch.float32, "torch")


def test_bad_causal_and_heads():
    q, k, v = _qkv((1, 6, 5, 16), (1, 4, 5, 16), torch.float32)
    with pytest.raises(ValueError, match="q has 6 heads, k has 4: H_q must be a multiple"):
        fastattn.attention(q, k, v)
    with pytest.raises(ValueError, match="same number of heads"):
        fastattn.attention(q, k[:, :2], v[:, :3])
    with pytest.raises(ValueError, match="causal"):
        fastattn.attention(q, k[:, :2], v[:, :2], causal="diagonal")
    with pytest.raises(TypeError, match="causal"):
        fastattn.attention(q, k[:, :2], v[:, :2], causal=2)
    with pytest.raises(TypeError, match="enable_gqa"):
        fastattn.scaled_dot_product_attention(q, k[:, :2], v[:, :2], enable_gqa="yes")
    cu = _cu([5])
    with pytest.raises(ValueError, match="H_q must be a multiple of H_kv"):
        fastattn.varlen_attention(q[0].transpose(0, 1), k[0].transpose(0, 1),
                                  v[0].transpose(0, 1), cu, cu, 5, 5)
    with pytest.raises(ValueError, match="causal"):
        fastattn.varlen_attention(q[0].transpose(0, 1), k[0, :2].transpose(0, 1),
                                  v[0, :2].transpose(0, 1), cu, cu, 5, 5, causal="bottom")


def test_transformers_attention_reads_grouped_kv_heads():
    """The Hugging Face attention function passes grouped K/V heads through (no repeat)."""
    transformers_integration = pytest.importorskip("fastattn.integrations.transformers")
    module = torch.nn.Module()
    module.is_causal, module.fastattn_backend = False, "torch"
    module.eval()
    q, k, v = _qkv((1, 6, 9, 16), (1, 2, 9, 16), torch.float32)
    out, _ = transformers_integration.attention_forward(module, q, k, v, None)
    want = F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
    torch.testing.assert_close(out, want.transpose(1, 2))


def test_gqa_dropout_uses_the_query_heads_counters():
    """With grouped K/V heads and dropout, the backward regenerates each query head's own
    mask (counter bh = z·H_q + h_q): outputs and gradients match the reference given the
    mask that ``dropout_keep_mask`` writes for the query heads."""
    from fastattn.ops.attention import dropout_keep_mask, triton_attention

    torch.manual_seed(3)
    n, h, h_kv, lq, lk, p = 1, 4, 2, 17, 20, 0.3
    q, k, v = _qkv((n, h, lq, 16), (n, h_kv, lk, 16), torch.float32)
    seed = torch.tensor([1234], dtype=torch.int64, device=DEVICE)
    keep = dropout_keep_mask(seed, (n, h, lq, lk), p)
    _check(lambda q, k, v: triton_attention(q, k, v, None, 0, 2, None, p, seed),
           lambda q, k, v: attention_reference(q, k, v, causal="bottom_right",
                                               dropout_mask=keep, dropout_p=p),
           (q, k, v), torch.float32)


def test_transformers_llama_with_grouped_kv_heads_matches_eager():
    """A tiny Llama (4 query heads, 2 kv heads, causal) on the Triton kernels matches eager."""
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("fastattn.integrations.transformers")
    config = transformers.LlamaConfig(hidden_size=64, num_attention_heads=4,
                                      num_key_value_heads=2, num_hidden_layers=1,
                                      intermediate_size=64, vocab_size=50,
                                      max_position_embeddings=32, attn_implementation="eager")
    torch.manual_seed(0)
    eager = transformers.LlamaModel(config).eval()
    ids = torch.randint(0, 50, (2, 11))
    want = eager(input_ids=ids, use_cache=False).last_hidden_state
    eager.set_attn_implementation("fastattn")
    with fastattn.use_backend("triton"):
        got = eager(input_ids=ids, use_cache=False).last_hidden_state
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_opcheck_grouped_heads_bottom_right():
    """Schema, fake tensors (dK / dV with H_kv heads) and autograd registration of the ops."""
    from fastattn.ops.attention import attention_bwd_op, attention_fwd_op
    from fastattn.ops.varlen import varlen_attention_fwd_op

    q, k, v = (t.requires_grad_() for t in _qkv((1, 4, 6, 16), (1, 2, 4, 16), torch.float32))
    torch.library.opcheck(attention_fwd_op, (q, k, v, None, 0, 2, 0.25))
    out, lse = attention_fwd_op(q, k, v, None, 0, 2, 0.25)
    torch.library.opcheck(attention_bwd_op, (torch.randn_like(out), q.detach(), k.detach(),
                                             v.detach(), out.detach(), lse, None, 0, 2, 0.25),
                          test_utils=("test_schema", "test_faketensor"))
    pq, pk, pv = (t.requires_grad_() for t in _qkv((9, 4, 16), (7, 2, 16), torch.float32))
    torch.library.opcheck(varlen_attention_fwd_op,
                          (pq, pk, pv, _cu([6, 3]), _cu([4, 3]), 6, 4, 2, 0.25))
