"""torch.compile over fastattn: no graph break, and the compiled model equals eager.

* every ``fastattn::`` custom op passes ``torch.library.opcheck`` (schema, fake tensors with
  their strides and dtypes, autograd registration, AOT dispatch) on the strided layouts the
  modules hand them;
* ``BertEncoder`` and ``BertForSequenceClassification``: ``torch._dynamo.explain`` finds no
  graph break, and ``torch.compile(fullgraph=True)`` (AOT autograd, the eager kernels) gives
  eager's forward and parameter gradients, on the Triton kernels (interpreter on CPU) and the
  default backend, without a mask, with a key-padding mask on the traced padded path (the
  default under compile) and on the packed path (with data-dependent shapes captured);
* ``fastattn.attention`` / ``fastattn.scaled_dot_product_attention`` compile with
  ``fullgraph=True`` on every mask kind, and with ``dynamic=True`` run two sequence lengths
  without recompiling;
* ``fastattn.varlen_attention`` compiles with ``fullgraph=True``: the Triton op as one node, and
  the plain-PyTorch path (which reads ``cu_seqlens`` on the host in eager mode) through its
  gather-based traced form, equal to eager on cross lengths, empty sequences and causal;
* one inductor compile of the classifier, forward and backward.

Tolerances: a compiled graph that runs the same kernels on the same rows as eager may differ
only where AOT autograd reorders a sum of gradient contributions, so those comparisons use
``SAME_PATH`` (a few float32 ulps).  The traced padded path computes the same values as the
eager packed path in another order (masked key blocks, GEMM and LayerNorm over N·L rows), so
it is held to the suite's rule: its error against a float64 oracle is bounded by the eager
float32 model's own error (tests/helpers.py).
"""
import pytest
import torch

import fastattn
from fastattn.ops.attention import attention_bwd_op, attention_fwd_op
from fastattn.ops.feedforward import feedforward_bwd_op, feedforward_fwd_op
from fastattn.ops.layer_norm import layer_norm_bwd_op, layer_norm_fwd_op
from fastattn.ops.varlen import varlen_attention_bwd_op, varlen_attention_fwd_op
from tests.helpers import DEVICE, GRAD_FACTOR, assert_close_to_reference

E, HEADS, FE, VOCAB, MAX_LEN, CLASSES = 32, 2, 2, 50, 40, 3
SAME_PATH = dict(rtol=1e-6, atol=1e-6)
BACKENDS = [pytest.param("triton", id="triton"), pytest.param(None, id="default")]


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    """Each test compiles from scratch (no cache-size limit reached across tests)."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


# ------------------------------------------------------------------------------ custom ops

def _leaf(*shape):
    return torch.randn(*shape, device=DEVICE, requires_grad=True)


def _opcheck_cases():
    """(op, args) with the layouts the modules pass: Q, K, V as strided views of one
    projection, a bool key-padding mask, packed tokens, a LayerNorm residual."""
    n, l, h, d, t = 2, 5, 2, 16, 7
    qkv = _leaf(n, l, 3 * h * d)
    q, k, v = (c.unflatten(-1, (h, d)).transpose(1, 2) for c in qkv.chunk(3, dim=-1))
    pad = torch.ones(n, l, dtype=torch.bool, device=DEVICE)
    pad[0, 3:] = False
    out, lse = attention_fwd_op(q, k, v, pad, 1, False, 0.25)
    attn_bwd = (torch.randn_like(out), *(x.detach() for x in (q, k, v, out)), lse, pad, 1,
                False, 0.25)

    packed = _leaf(t, 3, h, d)
    pq, pk, pv = packed.unbind(1)
    cu = torch.tensor([0, 3, t], dtype=torch.int32, device=DEVICE)
    vout, vlse = varlen_attention_fwd_op(pq, pk, pv, cu, cu, 4, 4, True, 0.25)
    varlen_bwd = (torch.randn_like(vout), *(x.detach() for x in (pq, pk, pv, vout)), vlse, cu,
                  cu, 4, 4, True, 0.25)

    x, res, w, b = _leaf(t, E), _leaf(t, E), _leaf(E), _leaf(E)
    _, mean, rstd, xsum = layer_norm_fwd_op(x, res, w, b, 1e-5, True)
    ln_bwd = (torch.randn(t, E, device=DEVICE), xsum.detach(), w.detach(), mean, rstd, True,
              True)

    w1, b1, w2, b2 = _leaf(FE * E, E), _leaf(FE * E), _leaf(E, FE * E), _leaf(E)
    _, hid, act = feedforward_fwd_op(x, w1, b1, w2, b2, res, 2)
    ff_bwd = (torch.randn(t, E, device=DEVICE), x.detach(), w1.detach(), w2.detach(), hid, act, 2)
    return [
        ("attention_fwd-padding", attention_fwd_op, (q, k, v, pad, 1, False, 0.25)),
        ("attention_fwd-causal", attention_fwd_op, (q, k, v, None, 0, True, 0.25)),
        ("attention_bwd", attention_bwd_op, attn_bwd),
        ("varlen_attention_fwd", varlen_attention_fwd_op, (pq, pk, pv, cu, cu, 4, 4, True, 0.25)),
        ("varlen_attention_bwd", varlen_attention_bwd_op, varlen_bwd),
        ("layer_norm_fwd", layer_norm_fwd_op, (x, res, w, b, 1e-5, True)),
        ("layer_norm_bwd", layer_norm_bwd_op, ln_bwd),
        ("feedforward_fwd", feedforward_fwd_op, (x, w1, b1, w2, b2, res, 2)),
        ("feedforward_bwd", feedforward_bwd_op, ff_bwd),
    ]


def test_opcheck_every_custom_op():
    failures = {}
    for name, op, args in _opcheck_cases():
        result = torch.library.opcheck(op, args, raise_exception=False)
        bad = {test: outcome for test, outcome in result.items() if outcome != "SUCCESS"}
        if bad:
            failures[name] = bad
    assert not failures, failures


# ------------------------------------------------------------------------ models: helpers

def _param_grads(model, out):
    """Gradients of sum(out * w) for fixed weights w, by parameter name."""
    names, params = zip(*[(n, p) for n, p in model.named_parameters() if p.requires_grad])
    w = torch.linspace(-1, 1, out.numel(), device=out.device, dtype=out.dtype).view_as(out)
    grads = torch.autograd.grad(out, params, w, allow_unused=True)
    return {n: torch.zeros_like(p) if g is None else g for n, p, g in zip(names, params, grads)}


def _run(model, args, run=None):
    """Output and parameter gradients of ``run`` (default: ``model``) over ``model``'s
    parameters (a compiled module prefixes their names)."""
    out = (model if run is None else run)(*args)
    return out.detach(), _param_grads(model, out)


def _assert_same_path(model, compiled, args):
    out, grads = _run(model, args, compiled)
    ref, ref_grads = _run(model, args)
    torch.testing.assert_close(out, ref, **SAME_PATH)
    for name in ref_grads:
        torch.testing.assert_close(grads[name], ref_grads[name], **SAME_PATH,
                                   msg=lambda m: f"grad {name}: {m}")


def _assert_within_eager_error(model, compiled, oracle, args):
    """Compiled vs a float64 oracle, bounded by the eager float32 model's error."""
    out, grads = _run(model, args, compiled)
    lp, lp_grads = _run(model, args)
    hp, hp_grads = _run(oracle, args)
    assert_close_to_reference(out, hp, lp)
    for name in hp_grads:
        assert_close_to_reference(grads[name], hp_grads[name], lp_grads[name],
                                  factor=GRAD_FACTOR, name=f"grad {name}")


def _explain_no_break(model, args):
    explanation = torch._dynamo.explain(model)(*args)
    reasons = [r.reason for r in explanation.break_reasons]
    assert explanation.graph_break_count == 0, reasons
    assert explanation.graph_count == 1
    torch._dynamo.reset()


def _encoder(backend, num_layers=2):
    torch.manual_seed(1)
    model = fastattn.BertEncoder(VOCAB, E, num_layers, HEADS, FE, 0.0, MAX_LEN, backend=backend)
    return model.to(DEVICE)


def _oracle_like(model, factory):
    """The same weights on the plain-PyTorch backend in float64."""
    oracle = factory("torch").double()
    oracle.load_state_dict(model.state_dict())
    return oracle


def _ids_and_padding(n=3, length=17):
    """Token ids and a (N, 1, 1, L) key-padding mask: full, half and fully padded rows."""
    ids = torch.randint(0, VOCAB, (n, length), device=DEVICE)
    keep = torch.ones(n, length, dtype=torch.bool, device=DEVICE)
    keep[1, length // 2:] = False
    keep[2] = False
    return ids, keep[:, None, None, :]


# ------------------------------------------------------------------------------- encoder

@pytest.mark.parametrize("backend", BACKENDS)
def test_encoder_without_mask(backend):
    model = _encoder(backend)
    args = (torch.randint(0, VOCAB, (2, 5), device=DEVICE), None)
    _explain_no_break(model, args)
    _assert_same_path(model, torch.compile(model, fullgraph=True, backend="aot_eager"), args)


@pytest.mark.parametrize("backend", BACKENDS)
def test_encoder_key_padding_traced_padded(backend):
    """Default under compile: the padded computation, padded positions zeroed as eager's
    packed path leaves them; real tokens and gradients within eager's float32 error."""
    model = _encoder(backend)
    ids, mask = _ids_and_padding()
    args = (ids, mask)
    _explain_no_break(model, args)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        out = compiled(*args)
    keep = mask[:, 0, 0, :]
    assert torch.count_nonzero(out[~keep]) == 0 and torch.count_nonzero(out[keep]) > 0
    _assert_within_eager_error(model, compiled, _oracle_like(model, _encoder), args)


@pytest.mark.parametrize("backend", BACKENDS)
def test_encoder_key_padding_traced_packed(backend):
    """With data-dependent shapes captured, the packed path is traced (token count unbacked,
    max_seqlen = L): eager's result, and other masks reuse the graph without recompiling."""
    model = _encoder(backend, num_layers=1)
    ids, mask = _ids_and_padding(length=9)
    with torch._dynamo.config.patch(capture_dynamic_output_shape_ops=True):
        _explain_no_break(model, (ids, mask))
        compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
        _assert_same_path(model, compiled, (ids, mask))
        other = mask.clone()
        other[0, ..., 2:] = False
        with torch._dynamo.config.patch(error_on_recompile=True):
            _assert_same_path(model, compiled, (ids, other))


# ------------------------------------------------------------------------ classification

def _classifier(backend):
    torch.manual_seed(3)
    model = fastattn.BertForSequenceClassification(
        VOCAB, CLASSES, embed_size=E, num_layers=1, heads=HEADS, forward_expansion=FE,
        dropout=0.0, max_length=MAX_LEN, backend=backend)
    return model.to(DEVICE)


def _ids_and_attention_mask(n=3, length=9):
    ids = torch.randint(1, VOCAB, (n, length), device=DEVICE)
    mask = (torch.arange(length, device=DEVICE)[None, :]
            < torch.tensor([length, 4, 1], device=DEVICE)[:, None]).long()
    return ids * mask, mask


@pytest.mark.parametrize("backend", BACKENDS)
def test_classifier_compiles_without_graph_break(backend):
    model = _classifier(backend)
    args = _ids_and_attention_mask()
    _explain_no_break(model, args)
    _explain_no_break(model, args[:1])  # mask derived from the pad id
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    _assert_within_eager_error(model, compiled, _oracle_like(model, _classifier), args)


def test_classifier_inductor_forward_backward():
    """One inductor compile (C++ codegen on CPU) around the Triton ops."""
    model = _classifier("triton")
    args = _ids_and_attention_mask()
    compiled = torch.compile(model, fullgraph=True)
    _assert_within_eager_error(model, compiled, _oracle_like(model, _classifier), args)


# ------------------------------------------------------------------------------ functions

def _attention_masks(n, h, lq, lk):
    """mask kind -> (function, mask, causal) over every mask kind of both functions."""
    keep = torch.rand(n, h, lq, lk, device=DEVICE) > 0.3
    pad = torch.rand(n, lk, device=DEVICE) > 0.3
    pad[:, 0] = True
    return {
        "attention-none": ("attention", None, False),
        "attention-causal": ("attention", None, True),
        "attention-padding-2d": ("attention", pad, False),
        "attention-padding-4d": ("attention", pad[:, None, None, :], False),
        "attention-bool": ("attention", keep, False),
        "attention-int": ("attention", keep.int(), False),
        "attention-float": ("attention", keep.float(), True),
        "sdpa-none": ("sdpa", None, False),
        "sdpa-causal": ("sdpa", None, True),
        "sdpa-bool": ("sdpa", keep, False),
        "sdpa-bool-2d": ("sdpa", keep[0, 0], False),
        "sdpa-float": ("sdpa", torch.randn(1, h, lq, lk, device=DEVICE), False),
    }


def _call(which, backend):
    if which == "attention":
        return lambda q, k, v, m, causal: fastattn.attention(q, k, v, m, causal=causal,
                                                             backend=backend)
    return lambda q, k, v, m, causal: fastattn.scaled_dot_product_attention(
        q, k, v, m, is_causal=causal, backend=backend)


def _qkv(lq, lk, n=1, h=2, d=16):
    return [torch.randn(n, h, length, d, device=DEVICE, requires_grad=True)
            for length in (lq, lk, lk)]


def _fn_out_and_grads(fn, q, k, v, mask, causal):
    out = fn(q, k, v, mask, causal)
    return (out.detach(), *torch.autograd.grad(out, (q, k, v), torch.ones_like(out)))


@pytest.mark.parametrize("backend", BACKENDS)
def test_functions_fullgraph_every_mask_kind(backend):
    """Every mask kind in one compiled call each; the cases share one test to keep the
    interpreter's launches few."""
    q, k, v = _qkv(5, 7)
    for kind, (which, mask, causal) in _attention_masks(1, 2, 5, 7).items():
        fn = _call(which, backend)
        compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
        got = _fn_out_and_grads(compiled, q, k, v, mask, causal)
        want = _fn_out_and_grads(fn, q, k, v, mask, causal)
        for name, a, b in zip(("out", "dq", "dk", "dv"), got, want):
            torch.testing.assert_close(a, b, **SAME_PATH, msg=lambda m: f"{kind} {name}: {m}")
        torch._dynamo.reset()


@pytest.mark.parametrize("which,mask_kind", [("attention", "padding-2d"), ("sdpa", "bool"),
                                             ("sdpa", "causal")])
def test_functions_dynamic_lengths_do_not_recompile(which, mask_kind):
    fn = _call(which, "triton")
    compiled = torch.compile(fn, fullgraph=True, dynamic=True, backend="aot_eager")
    for i, length in enumerate((5, 17)):
        _, mask, causal = _attention_masks(1, 2, length, length)[f"{which}-{mask_kind}"]
        q, k, v = _qkv(length, length)
        with torch._dynamo.config.patch(error_on_recompile=i > 0):
            got = _fn_out_and_grads(compiled, q, k, v, mask, causal)
        want = _fn_out_and_grads(fn, q, k, v, mask, causal)
        for name, a, b in zip(("out", "dq", "dk", "dv"), got, want):
            torch.testing.assert_close(a, b, **SAME_PATH, msg=lambda m: f"L={length} {name}: {m}")


VARLEN_CASES = [  # (query lengths, key lengths, causal)
    ([1, 9, 5], [1, 9, 5], True),
    ([3, 0, 6], [4, 7, 0], False),  # an empty sequence; queries without keys give 0
]


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_varlen_attention_fullgraph(backend):
    """The torch path is compared in float64, where the traced gather form and eager's
    per-sequence loop agree to rounding; the Triton op runs the same kernel either way."""
    dtype = torch.float32 if backend == "triton" else torch.float64

    def fn(q, k, v, cu_q, cu_k, max_q, max_k, causal):
        return fastattn.varlen_attention(q, k, v, cu_q, cu_k, max_q, max_k, causal=causal,
                                         backend=backend)

    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    for lens_q, lens_k, causal in VARLEN_CASES:
        cu = lambda lens: torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()],
                                       dtype=torch.int32, device=DEVICE)
        q = torch.randn(sum(lens_q), 2, 16, device=DEVICE, dtype=dtype, requires_grad=True)
        k, v = (torch.randn(sum(lens_k), 2, 16, device=DEVICE, dtype=dtype, requires_grad=True)
                for _ in range(2))
        args = (q, k, v, cu(lens_q), cu(lens_k), max(lens_q), max(lens_k), causal)
        got, want = compiled(*args), fn(*args)
        dout = torch.randn_like(want)
        got_grads = torch.autograd.grad(got, (q, k, v), dout)
        want_grads = torch.autograd.grad(want, (q, k, v), dout)
        for name, a, b in zip(("out", "dq", "dk", "dv"), (got, *got_grads), (want, *want_grads)):
            torch.testing.assert_close(a, b, **SAME_PATH,
                                       msg=lambda m: f"{lens_q}/{lens_k} {name}: {m}")
        torch._dynamo.reset()
