"""Hugging Face transformers integration: ``attn_implementation="fastattn"`` and ``optimize``.

Small randomly initialised BERTs (hidden 32, 2 heads, 2 layers, intermediate 64, vocab 100, no
download).  The oracle is a float64 copy of the eager model, the same-precision reference the
float32 eager model (tests/helpers.py's rule: 2x its error + atol for outputs, 3x for
gradients).  A key-padding mask never masks a query row, so padded positions of the output are
well defined (they attend to the real tokens) in eager and in fastattn alike and are compared
too.  "triton" runs the kernels (through the interpreter on CPU); "auto" is the default backend.

Tests that need ``AttentionInterface`` (transformers >= 5 BERT) are marked; the 4.x
module-swapping path of ``optimize`` is what runs where transformers 4.x is installed (CI runs
this file a second time against transformers 4.46).
"""
import copy
import os
import subprocess
import sys

import pytest
import torch

import transformers  # noqa: E402  (in the "test" extra)
from transformers import BertConfig, BertForSequenceClassification, BertModel  # noqa: E402

import fastattn  # noqa: E402
from fastattn.integrations import transformers as hf  # noqa: E402
from tests.helpers import GRAD_FACTOR, assert_close_to_reference  # noqa: E402

HAS_INTERFACE = hf._uses_attention_interface(
    BertModel(BertConfig(hidden_size=32, num_attention_heads=2, num_hidden_layers=1,
                         intermediate_size=64, vocab_size=100, max_position_embeddings=64)))
needs_interface = pytest.mark.skipif(
    not HAS_INTERFACE, reason=f"transformers {transformers.__version__}: BERT does not use "
                              "AttentionInterface (optimize swaps modules there, tested below)")

BACKENDS = [pytest.param("triton", id="triton"), pytest.param("auto", id="auto")]
# row lengths: (batch of 3 of length 17, one row with 2 real tokens) and no padding
BATCHES = {"padded": (17, [17, 9, 2]), "full": (5, [5, 5])}


def config(**overrides):
    kw = dict(hidden_size=32, num_attention_heads=2, num_hidden_layers=2, intermediate_size=64,
              vocab_size=100, max_position_embeddings=64, attn_implementation="eager")
    kw.update(overrides)
    return BertConfig(**kw)


def bert(cls=BertModel, **overrides):
    torch.manual_seed(0)
    model = cls(config(**overrides)) if cls is not BertModel else cls(
        config(**overrides), add_pooling_layer=False)
    return model.eval()


def batch(kind):
    length, lengths = BATCHES[kind]
    ids = torch.randint(1, 100, (len(lengths), length))
    mask = (torch.arange(length)[None, :] < torch.tensor(lengths)[:, None]).long()
    return ids, mask


def run(model, ids, mask, weight, **kwargs):
    """last_hidden_state and every parameter's gradient of sum(weight * output)."""
    model.zero_grad(set_to_none=True)
    out = model(input_ids=ids, attention_mask=mask, **kwargs).last_hidden_state
    (out * weight.to(out.dtype)).sum().backward()
    return out.detach(), {n: p.grad for n, p in model.named_parameters()}


def assert_matches(got, ref64, ref32, what):
    (out, grads), (out64, g64), (out32, g32) = got, ref64, ref32
    assert_close_to_reference(out, out64, out32, name=f"{what}: last_hidden_state")
    assert grads.keys() == g64.keys()
    for name, grad in grads.items():
        assert grad is not None, f"{what}: no gradient for {name}"
        assert_close_to_reference(grad, g64[name], g32[name], factor=GRAD_FACTOR,
                                  name=f"{what}: grad {name}")


def references(model, ids, mask, weight, **kwargs):
    return (run(copy.deepcopy(model).double(), ids, mask, weight, **kwargs),
            run(model, ids, mask, weight, **kwargs))


def with_fastattn(model):
    fast = copy.deepcopy(model)
    fast.set_attn_implementation("fastattn")
    assert fast.config._attn_implementation == "fastattn"
    return fast


# --- attn_implementation="fastattn" ----------------------------------------------------------

@needs_interface
@pytest.mark.parametrize("kind", list(BATCHES))
@pytest.mark.parametrize("backend", BACKENDS)
def test_bert_matches_eager(backend, kind):
    eager = bert()
    ids, mask = batch(kind)
    weight = torch.randn(*ids.shape, 32)
    ref64, ref32 = references(eager, ids, mask, weight)
    with fastattn.use_backend(backend):
        got = run(with_fastattn(eager), ids, mask, weight)
    assert_matches(got, ref64, ref32, f"fastattn/{backend}/{kind}")


@needs_interface
def test_decoder_causal_matches_eager():
    eager = bert(is_decoder=True)
    ids, mask = batch("padded")
    weight = torch.randn(*ids.shape, 32)
    ref64, ref32 = references(eager, ids, mask, weight, use_cache=False)
    with fastattn.use_backend("triton"):
        got = run(with_fastattn(eager), ids, mask, weight, use_cache=False)
    assert_matches(got, ref64, ref32, "causal decoder")


@needs_interface
def test_padding_mask_reaches_the_kernel(monkeypatch):
    fast = with_fastattn(bert())
    ids, mask = batch("padded")
    other = torch.where(mask.bool(), ids, torch.randint(1, 100, ids.shape))
    assert (other != ids).any()
    seen = []
    sdpa = hf.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, **kwargs):
        seen.append(attn_mask)
        return sdpa(q, k, v, attn_mask=attn_mask, **kwargs)

    monkeypatch.setattr(hf, "scaled_dot_product_attention", spy)
    with fastattn.use_backend("triton"), torch.no_grad():
        out = fast(input_ids=ids, attention_mask=mask).last_hidden_state
        out_other = fast(input_ids=other, attention_mask=mask).last_hidden_state
        unmasked = fast(input_ids=other, attention_mask=torch.ones_like(mask)).last_hidden_state
    real = mask.bool()
    assert torch.equal(out[real], out_other[real])
    # without the mask the changed padding tokens do reach the real positions
    assert (unmasked[real] - out[real]).abs().max() > 1e-3
    # a (B, 1, 1, L_k) bool key-padding mask, True at real tokens; None without padding
    assert seen[0].dtype == torch.bool and seen[0].shape == (3, 1, 1, 17)
    assert torch.equal(seen[0][:, 0, 0], real)
    assert seen[-1] is None


@needs_interface
def test_mask_function():
    from transformers import masking_utils

    padding = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]]).bool()
    common = dict(batch_size=2, q_length=4, kv_length=4, q_offset=0, kv_offset=0,
                  dtype=torch.float32, config=None, use_vmap=False, device="cpu")
    bidir = masking_utils.bidirectional_mask_function
    got = hf.build_attention_mask(mask_function=bidir, attention_mask=padding,
                            allow_is_bidirectional_skip=True, **common)
    assert got.dtype == torch.bool and torch.equal(got, padding[:, None, None, :])
    assert hf.build_attention_mask(mask_function=bidir, attention_mask=None, **common) is None
    assert hf.build_attention_mask(mask_function=bidir, attention_mask=torch.ones_like(padding),
                             allow_is_bidirectional_skip=True, **common) is None
    causal = hf.build_attention_mask(mask_function=masking_utils.causal_mask_function,
                               attention_mask=padding, allow_is_causal_skip=True, **common)
    expected = torch.tril(torch.ones(4, 4)).bool() & padding[:, None, None, :]
    assert causal.shape == (2, 1, 4, 4) and torch.equal(causal, expected)
    # a causal mask without padding is left to is_causal
    assert hf.build_attention_mask(mask_function=masking_utils.causal_mask_function,
                             attention_mask=None, allow_is_causal_skip=True, **common) is None


def test_attention_forward_masks_and_unknown_kwargs():
    torch.manual_seed(1)
    q, k, v = (torch.randn(2, 2, 5, 16) for _ in range(3))
    module = torch.nn.Module().eval()
    module.is_causal = False
    keep = torch.rand(2, 1, 1, 5) > 0.3
    keep[..., 0] = True
    additive = torch.randn(2, 1, 5, 5)
    cases = {"none": None, "bool": keep, "float": additive}
    with fastattn.use_backend("triton"):
        for name, mask in cases.items():
            out, weights = hf.attention_forward(
                module, q, k, v, mask, dropout=0.0, scaling=0.3, is_causal=None,
                output_attentions=False, sliding_window=None, position_ids=None,
                cu_seq_lens_q=None, some_future_argument=123)
            ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, mask, scale=0.3)
            assert weights is None
            assert out.shape == (2, 5, 2, 16) and out.is_contiguous()
            torch.testing.assert_close(out, ref.transpose(1, 2), atol=1e-5, rtol=1e-5,
                                       msg=f"mask {name}")
        causal, _ = hf.attention_forward(module, q, k, v, None, is_causal=True)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(causal, ref.transpose(1, 2), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="softcap"):
        hf.attention_forward(module, q, k, v, None, softcap=30.0)


@needs_interface
def test_sequence_classification():
    eager = bert(BertForSequenceClassification, num_labels=3)
    ids, mask = batch("padded")
    labels = torch.tensor([0, 2, 1])
    with torch.no_grad():
        logits64 = copy.deepcopy(eager).double()(input_ids=ids, attention_mask=mask).logits
        logits32 = eager(input_ids=ids, attention_mask=mask).logits
    torch.manual_seed(0)
    fast = BertForSequenceClassification(config(num_labels=3, attn_implementation="fastattn"))
    fast.load_state_dict(eager.state_dict())
    assert fast.config._attn_implementation == "fastattn"
    with fastattn.use_backend("triton"):
        out = fast.eval()(input_ids=ids, attention_mask=mask, labels=labels)
        out.loss.backward()
    assert_close_to_reference(out.logits, logits64, logits32, name="logits")
    assert torch.isfinite(out.loss)
    assert all(torch.isfinite(p.grad).all() for p in fast.parameters() if p.grad is not None)


@needs_interface
def test_attention_dropout_in_training():
    fast = with_fastattn(bert(attention_probs_dropout_prob=0.5, hidden_dropout_prob=0.0))
    ids, mask = batch("padded")
    with torch.no_grad():
        evaluated = fast(input_ids=ids, attention_mask=mask).last_hidden_state
    trained = fast.train()(input_ids=ids, attention_mask=mask).last_hidden_state
    trained.sum().backward()
    assert torch.isfinite(trained).all()
    assert (trained - evaluated).abs().max() > 1e-3
    assert all(torch.isfinite(p.grad).all() for p in fast.parameters() if p.grad is not None)


@needs_interface
def test_from_pretrained_and_set_attn_implementation(tmp_path):
    bert().save_pretrained(tmp_path)
    model = BertModel.from_pretrained(tmp_path, attn_implementation="fastattn")
    assert model.config._attn_implementation == "fastattn"
    model.set_attn_implementation("eager")
    assert model.config._attn_implementation == "eager"
    model.set_attn_implementation("fastattn")
    assert model.config._attn_implementation == "fastattn"
    assert BertModel(config(attn_implementation="fastattn")).config._attn_implementation == (
        "fastattn")


# --- fastattn.optimize (both transformers generations) ---------------------------------------

@pytest.mark.parametrize("impl", ["eager", "sdpa"])  # 4.x: additive (B,1,1,L) / (B,1,L,L) masks
def test_optimize_matches_original_and_keeps_state_dict(impl):
    original = bert(attn_implementation=impl)
    ids, mask = batch("padded")
    weight = torch.randn(*ids.shape, 32)
    ref64, ref32 = references(original, ids, mask, weight)
    model = copy.deepcopy(original)
    params = {n: id(p) for n, p in model.named_parameters()}
    assert fastattn.optimize(model, backend="triton", unpad=False) is model  # padded layout
    assert {n: id(p) for n, p in model.named_parameters()} == params
    assert list(model.state_dict()) == list(original.state_dict())
    model.load_state_dict(original.state_dict())  # strict: same keys, same shapes
    norms = [m for m in model.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert len(norms) == 5 and all(isinstance(m, fastattn.LayerNorm) for m in norms)
    assert all(m.eps == 1e-12 for m in norms)
    layer = model.encoder.layer[0]
    assert layer.fastattn_activation == "gelu"
    assert type(layer).feed_forward_chunk is hf._feed_forward_chunk
    if HAS_INTERFACE:
        assert model.config._attn_implementation == "fastattn"
    else:
        assert isinstance(layer.attention.self, hf.SelfAttention)
    assert_matches(run(model, ids, mask, weight), ref64, ref32, "optimize")


def test_optimize_keeps_dropout_semantics():
    """Hidden dropout in training mode: same random masks at the same places as the original."""
    original = bert(attention_probs_dropout_prob=0.0, hidden_dropout_prob=0.2).train()
    model = fastattn.optimize(copy.deepcopy(original), backend="triton", unpad=False)
    ids, mask = batch("padded")
    torch.manual_seed(3)
    ref = original(input_ids=ids, attention_mask=mask).last_hidden_state
    torch.manual_seed(3)
    out = model(input_ids=ids, attention_mask=mask).last_hidden_state
    torch.manual_seed(4)
    other = model(input_ids=ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-5)
    assert (other - ref).abs().max() > 1e-2  # dropout really is on


def _count_packed_calls(monkeypatch):
    calls = []
    real = hf.varlen_attention

    def counting(q, *args, **kwargs):
        calls.append(q.shape[0])
        return real(q, *args, **kwargs)
    monkeypatch.setattr(hf, "varlen_attention", counting)
    return calls


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("impl", ["eager", "sdpa"])  # 4.x: (B,1,1,L) and (B,1,L,L) masks
def test_optimize_runs_packed_real_tokens(impl, backend, monkeypatch):
    """Padding-free encoder: real tokens (outputs, every hidden state, every gradient of a loss
    over real tokens) equal the padded computation; padded positions are 0."""
    original = bert(attn_implementation=impl)
    ids, mask = batch("padded")
    keep = mask.bool()[..., None]
    weight = torch.randn(*ids.shape, 32) * keep
    ref64, ref32 = references(original, ids, mask, weight)
    model = fastattn.optimize(copy.deepcopy(original), backend=backend)
    calls = _count_packed_calls(monkeypatch)
    out, grads = run(model, ids, mask, weight)
    assert calls == [28, 28], "every layer attends the 28 packed real tokens"
    assert torch.count_nonzero(out * ~keep) == 0, "padded positions are 0"
    masked = lambda ref: (torch.where(keep, ref[0], 0.0), ref[1])
    assert_matches((out, grads), masked(ref64), masked(ref32), f"unpad/{impl}/{backend}")
    with torch.no_grad():
        states = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        ref_states = original(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    assert len(states.hidden_states) == len(ref_states.hidden_states) == 3
    torch.testing.assert_close(states.hidden_states[0], ref_states.hidden_states[0])
    for got, ref in zip(states.hidden_states[1:], ref_states.hidden_states[1:]):
        assert got.shape == ref.shape and torch.count_nonzero(got * ~keep) == 0
        torch.testing.assert_close(got, torch.where(keep, ref, 0.0), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(states.last_hidden_state, states.hidden_states[-1])


def test_optimize_unpad_switch_and_unpadded_batches(monkeypatch):
    original = bert()
    model = fastattn.optimize(copy.deepcopy(original))
    calls = _count_packed_calls(monkeypatch)
    ids, mask = batch("full")
    with torch.no_grad():  # no padding: the padded layout, no mask, no packing
        torch.testing.assert_close(model(input_ids=ids, attention_mask=mask).last_hidden_state,
                                   original(input_ids=ids, attention_mask=mask).last_hidden_state)
        assert calls == []
        ids, mask = batch("padded")
        model.encoder.fastattn_unpad = False  # the switch: padded layout, padded positions too
        torch.testing.assert_close(model(input_ids=ids, attention_mask=mask).last_hidden_state,
                                   original(input_ids=ids, attention_mask=mask).last_hidden_state)
        assert calls == []
        fastattn.optimize(model, unpad=False)
        assert model.encoder.fastattn_unpad is False


def test_optimize_finds_bert_inside_any_module(monkeypatch):
    class Wrapper(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body = bert()
            self.head = torch.nn.Linear(32, 2)

        def forward(self, ids, mask):
            return self.head(self.body(input_ids=ids, attention_mask=mask).last_hidden_state)
    original = Wrapper().eval()
    model = fastattn.optimize(copy.deepcopy(original))
    calls = _count_packed_calls(monkeypatch)
    ids, mask = batch("padded")
    keep = mask.bool()[..., None]
    with torch.no_grad():
        got, ref = model(ids, mask), original(ids, mask)
    assert calls == [28, 28]
    torch.testing.assert_close(got * keep, ref * keep, atol=1e-5, rtol=1e-5)


def test_optimize_rejects_bad_arguments():
    with pytest.raises(TypeError, match="model"):
        fastattn.optimize("bert")
    with pytest.raises(ValueError, match="backend"):
        fastattn.optimize(bert(), backend="tpu")
    with pytest.raises(ValueError, match="nothing fastattn.optimize can swap"):
        fastattn.optimize(torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU()))


@pytest.mark.skipif(HAS_INTERFACE, reason="transformers 4.x path: tested where 4.x is installed")
def test_optimize_4x_rejects_decoder():
    with pytest.raises(ValueError, match="is_decoder"):
        fastattn.optimize(bert(is_decoder=True))


# --- torch.compile -----------------------------------------------------------------------------

def test_compile_fullgraph():
    original = bert()
    model = fastattn.optimize(copy.deepcopy(original), backend="triton")
    ids, mask = batch("padded")
    explanation = torch._dynamo.explain(model)(input_ids=ids, attention_mask=mask)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    with torch.no_grad():
        out64 = copy.deepcopy(original).double()(input_ids=ids, attention_mask=mask)
        out32 = original(input_ids=ids, attention_mask=mask)
        for compiler in ("aot_eager", "inductor"):
            torch._dynamo.reset()
            compiled = torch.compile(model, backend=compiler, fullgraph=True)
            out = compiled(input_ids=ids, attention_mask=mask)
            assert_close_to_reference(out.last_hidden_state, out64.last_hidden_state,
                                      out32.last_hidden_state, name=compiler)
    torch._dynamo.reset()


# --- registration and imports ------------------------------------------------------------------

REGISTRATION_SCRIPT = """
import sys
import fastattn
assert "transformers" not in sys.modules, "import fastattn imported transformers"
import transformers.modeling_utils as modeling_utils
from transformers import BertConfig, BertModel
interface = getattr(modeling_utils, "AttentionInterface", None)
if interface is not None:
    from transformers.masking_utils import AttentionMaskInterface
    from fastattn.integrations.transformers import attention_forward, build_attention_mask
    assert interface._global_mapping["fastattn"] is attention_forward
    assert AttentionMaskInterface._global_mapping["fastattn"] is build_attention_mask
    model = BertModel(BertConfig(hidden_size=32, num_attention_heads=2, num_hidden_layers=1,
                                 intermediate_size=64, vocab_size=100))
    model.set_attn_implementation("fastattn")
    assert model.config._attn_implementation == "fastattn"
print("registered" if interface is not None else "no interface")
"""


def test_import_fastattn_first_registers_lazily():
    """``import fastattn`` does not import transformers, yet registers "fastattn" with it."""
    env = dict(os.environ, TRITON_INTERPRET="1")
    done = subprocess.run([sys.executable, "-W", "error::RuntimeWarning", "-c",
                           REGISTRATION_SCRIPT], capture_output=True, text=True, env=env,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == ("registered" if HAS_INTERFACE else "no interface")


def test_clear_import_error_without_transformers(monkeypatch):
    saved = sys.modules.pop("fastattn.integrations.transformers")
    try:
        monkeypatch.setitem(sys.modules, "transformers", None)
        with pytest.raises(ImportError, match=r"pip install 'fastattn\[hf\]'"):
            import fastattn.integrations.transformers  # noqa: F401
    finally:
        sys.modules["fastattn.integrations.transformers"] = saved
