"""fastattn.SelfAttention as a drop-in for the reference (guide's) module."""
import pytest
import torch

import fastattn
from fastattn import reference
from tests.helpers import DEVICE, DTYPES, GRAD_FACTOR, assert_close_to_reference

E, HEADS = 64, 4


def _pair(qkv_projection, dtype=torch.float32, backend="triton"):
    ref = reference.SelfAttention(E, HEADS, qkv_projection=qkv_projection).to(DEVICE)
    fused = fastattn.SelfAttention(E, HEADS, qkv_projection=qkv_projection, backend=backend)
    fused.load_state_dict(ref.state_dict())
    return ref, fused.to(DEVICE, dtype)


def _run(module, values, keys, query, mask, dtype):
    module = module.to(dtype)
    ins = [t.detach().to(dtype).requires_grad_() for t in (values, keys, query)]
    if values is keys is query:
        ins = [ins[0]] * 3
    elif values is keys:
        ins[1] = ins[0]
    out = module(*ins, mask)
    params = [p for _, p in sorted(module.named_parameters())]
    wrt = list(dict.fromkeys(ins)) + params
    grads = torch.autograd.grad(out, wrt, torch.ones_like(out), allow_unused=True)
    # Unused parameters (the projections under the guide's listing) get zeros on both sides.
    return out, [torch.zeros_like(t) if g is None else g for g, t in zip(grads, wrt)]


@pytest.mark.parametrize("qkv_projection", [True, False], ids=["projected", "guide_listing"])
@pytest.mark.parametrize("inputs", ["self", "cross_kv_shared", "cross_all_distinct"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_reference_outputs_and_gradients(qkv_projection, inputs, dtype):
    ref, fused = _pair(qkv_projection, dtype)
    n, lq, lk = 2, 17, 17 if inputs == "self" else 29
    query = torch.randn(n, lq, E, device=DEVICE)
    keys = query if inputs == "self" else torch.randn(n, lk, E, device=DEVICE)
    values = keys if inputs != "cross_all_distinct" else torch.randn(n, lk, E, device=DEVICE)
    mask = (torch.rand(n, 1, 1, lk, device=DEVICE) > 0.3)
    mask[0] = False  # a fully padded sequence
    out, grads = _run(fused, values, keys, query, mask, dtype)
    hp, hp_grads = _run(ref, values, keys, query, mask, torch.float64)
    lp, lp_grads = _run(ref, values, keys, query, mask, dtype)
    assert_close_to_reference(out, hp, lp)
    for i, (g, ghp, glp) in enumerate(zip(grads, hp_grads, lp_grads)):
        assert_close_to_reference(g, ghp, glp, factor=GRAD_FACTOR, name=f"grad[{i}]")


def test_state_dict_moves_both_ways():
    ref = reference.SelfAttention(E, HEADS)
    fused = fastattn.SelfAttention(E, HEADS)
    assert list(ref.state_dict()) == list(fused.state_dict())
    assert set(ref.state_dict()) == {f"{m}.{p}" for m in ("values", "keys", "queries", "fc_out")
                                     for p in ("weight", "bias")}
    fused.load_state_dict(ref.state_dict())
    back = reference.SelfAttention(E, HEADS)
    back.load_state_dict(fused.state_dict())
    for (name, a), b in zip(ref.state_dict().items(), back.state_dict().values()):
        assert torch.equal(a, b), name


def test_projection_switch_changes_the_result():
    ref, fused = _pair(True, backend="torch")
    x = torch.randn(1, 5, E, device=DEVICE)
    with torch.no_grad():
        projected = fused(x, x, x, None)
        fused.qkv_projection = False
        listing = fused(x, x, x, None)
    assert not torch.allclose(projected, listing)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_cpu_and_kernel_paths_agree(backend):
    _, fused = _pair(True, backend=backend)
    x = torch.randn(2, 17, E, device=DEVICE)
    mask = torch.rand(2, 17, device=DEVICE) > 0.2
    with torch.no_grad():
        out = fused(x, x, x, mask)
        with fastattn.use_backend("torch"):
            fused.backend = None
            out_torch = fused(x, x, x, mask)
    torch.testing.assert_close(out, out_torch, atol=1e-5, rtol=1e-5)


def test_bad_inputs_name_the_argument():
    m = fastattn.SelfAttention(E, HEADS)
    x = torch.randn(2, 5, E)
    with pytest.raises(ValueError, match=r"query must have shape \(N, L, 64\)"):
        m(x, x, torch.randn(2, 5, E + 1), None)
    with pytest.raises(ValueError, match="keys must have shape .* with N=2"):
        m(x, torch.randn(3, 5, E), x, None)
    with pytest.raises(ValueError, match="keys and values must have the same length"):
        m(torch.randn(2, 4, E), x, x, None)
    with pytest.raises(TypeError, match="values must be a torch.Tensor"):
        m(None, x, x, None)
    with pytest.raises(ValueError, match="divisible by heads"):
        fastattn.SelfAttention(65, 4)


def test_torch_compile_fullgraph_has_no_graph_break():
    _, fused = _pair(True, backend="triton")
    x = torch.randn(2, 9, E, device=DEVICE)
    mask = torch.rand(2, 1, 1, 9, device=DEVICE) > 0.3
    explanation = torch._dynamo.explain(fused)(x, x, x, mask)
    assert explanation.graph_break_count == 0
    compiled = torch.compile(fused, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x, x, x, mask), fused(x, x, x, mask))


def test_opcheck_on_the_custom_ops():
    from fastattn.ops.attention import attention_fwd_op

    q, k, v = (torch.randn(1, 2, 17, 16, device=DEVICE, requires_grad=True) for _ in range(3))
    mask = torch.rand(1, 1, 1, 17, device=DEVICE) > 0.3
    torch.library.opcheck(attention_fwd_op, (q, k, v, mask, 1, False, 0.25))
    torch.library.opcheck(attention_fwd_op, (q, k, v, None, 0, True, 0.25))


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_attention_dropout_in_training_only(backend):
    """Training mode: the attention weights are dropped — for the Triton kernels exactly with
    the mask of the seed drawn from torch's generator; eval mode equals the reference module."""
    from fastattn.ops.attention import draw_dropout_seed, dropout_keep_mask
    from fastattn.reference import attention_reference

    e, h, p = 32, 2, 0.4
    ref = reference.SelfAttention(e, h).to(DEVICE)
    fused = fastattn.SelfAttention(e, h, attention_dropout=p, backend=backend).to(DEVICE)
    fused.load_state_dict(ref.state_dict())
    x = torch.randn(2, 17, e, device=DEVICE)
    mask = torch.rand(2, 17, device=DEVICE) > 0.2
    torch.manual_seed(5)
    trained = fused.train()(x, x, x, mask)
    with torch.no_grad():
        torch.testing.assert_close(fused.eval()(x, x, x, mask), ref(x, x, x, mask),
                                   rtol=1e-5, atol=1e-5)
    assert (trained - ref(x, x, x, mask)).abs().max() > 1e-3
    assert "attention_dropout=0.4" in repr(fused)
    if backend == "triton":
        torch.manual_seed(5)
        keep = dropout_keep_mask(draw_dropout_seed(x.device), (2, h, 17, 17), p)
        split = lambda t: t.unflatten(-1, (h, e // h)).transpose(1, 2)
        q, k, v = (split(lin(x)) for lin in (ref.queries, ref.keys, ref.values))
        att = attention_reference(q, k, v, mask, dropout_mask=keep, dropout_p=p)
        expected = ref.fc_out(att.transpose(1, 2).reshape(2, 17, e))
        torch.testing.assert_close(trained, expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="attention_dropout"):
        fastattn.SelfAttention(e, h, attention_dropout=1.0)
