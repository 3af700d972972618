"""Fused BertEncoderLayer / BertEncoder against the reference (guide's) modules."""
import pytest
import torch

from fastattn import reference
from fastattn.modules.encoder import BertEncoder, BertEncoderLayer
from fastattn.modules.feedforward import FeedForward
from fastattn.modules.layer_norm import LayerNorm
from tests.helpers import DEVICE, GRAD_FACTOR, assert_close_to_reference

E, HEADS, FE, VOCAB, MAX_LEN = 32, 2, 2, 50, 80


def _padding_mask(n, length):
    """(n, 1, 1, length) key-padding mask: row 0 keeps a random prefix, row 1 is fully padded."""
    mask = torch.ones(n, 1, 1, length, dtype=torch.bool, device=DEVICE)
    mask[0, ..., max(1, length // 2 + 1):] = False
    mask[1] = False
    return mask


def _grads(module, out, inputs):
    """Gradients of sum(out * w) (fixed weights w) w.r.t. inputs and every named parameter."""
    names = [n for n, _ in module.named_parameters()]
    wrt = list(inputs) + [p for _, p in module.named_parameters()]
    w = torch.linspace(-1, 1, out.numel(), device=out.device, dtype=out.dtype).view_as(out)
    grads = torch.autograd.grad(out, wrt, w, allow_unused=True)
    grads = [torch.zeros_like(t) if g is None else g for g, t in zip(grads, wrt)]
    return dict(zip([f"input{i}" for i in range(len(inputs))] + names, grads))


def _run_layer(module, x, kv, mask, dtype):
    module = module.to(dtype)
    x = x.detach().to(dtype).requires_grad_()
    if kv is None:
        out, inputs = module(x, x, x, mask), [x]
    else:
        kv = kv.detach().to(dtype).requires_grad_()
        out, inputs = module(kv, kv, x, mask), [x, kv]
    return out, _grads(module, out, inputs)


def _check(out, grads, hp, hp_grads, lp, lp_grads):
    assert_close_to_reference(out, hp, lp)
    assert grads.keys() == hp_grads.keys()
    for name in grads:
        assert_close_to_reference(grads[name], hp_grads[name], lp_grads[name],
                                  factor=GRAD_FACTOR, name=f"grad {name}")


LAYER_CASES = [  # (backend, length, qkv_projection, mask, cross)
    *[("torch", n, qkv, m, False) for n in (1, 17, 70) for qkv in (True, False)
      for m in (None, "padding")],
    ("torch", 17, True, "padding", True),
    ("triton", 1, True, "padding", False),
    ("triton", 17, True, None, False),
    ("triton", 17, False, "padding", False),
    ("triton", 70, True, "padding", False),
    ("triton", 17, True, "padding", True),
]


@pytest.mark.parametrize(
    "backend,length,qkv_projection,mask_kind,cross", LAYER_CASES,
    ids=[f"{b}-L{n}-{'proj' if q else 'listing'}-{m or 'nomask'}{'-cross' if c else ''}"
         for b, n, q, m, c in LAYER_CASES])
def test_layer_matches_reference(backend, length, qkv_projection, mask_kind, cross):
    ref = reference.BertEncoderLayer(E, HEADS, FE, qkv_projection=qkv_projection).to(DEVICE)
    fused = BertEncoderLayer(E, HEADS, FE, qkv_projection=qkv_projection, backend=backend)
    fused.load_state_dict(ref.state_dict())
    fused.to(DEVICE)
    n = 2
    x = torch.randn(n, length, E, device=DEVICE)
    kv = torch.randn(n, length + 3, E, device=DEVICE) if cross else None
    mask = None if mask_kind is None else _padding_mask(n, length + (3 if cross else 0))
    out, grads = _run_layer(fused, x, kv, mask, torch.float32)
    hp, hp_grads = _run_layer(ref, x, kv, mask, torch.float64)
    lp, lp_grads = _run_layer(ref, x, kv, mask, torch.float32)
    _check(out, grads, hp, hp_grads, lp, lp_grads)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_layer_low_precision(dtype):
    # On CPU the torch path runs (bf16 tl.dot is wrong in the interpreter); on CUDA the kernels.
    backend = "triton" if DEVICE.type == "cuda" else "torch"
    ref = reference.BertEncoderLayer(E, HEADS, FE).to(DEVICE)
    fused = BertEncoderLayer(E, HEADS, FE, backend=backend)
    fused.load_state_dict(ref.state_dict())
    fused.to(DEVICE)
    x = torch.randn(2, 17, E, device=DEVICE)
    mask = _padding_mask(2, 17)
    out, grads = _run_layer(fused, x, None, mask, dtype)
    assert out.dtype == dtype
    hp, hp_grads = _run_layer(ref, x, None, mask, torch.float64)
    lp, lp_grads = _run_layer(ref, x, None, mask, dtype)
    _check(out, grads, hp, hp_grads, lp, lp_grads)


def test_layer_is_built_from_fused_pieces():
    layer = BertEncoderLayer(E, HEADS, FE, backend="torch")
    assert type(layer.norm1) is LayerNorm and type(layer.norm2) is LayerNorm
    assert type(layer.feedforward) is FeedForward
    assert layer.norm1.eps == torch.nn.LayerNorm(E).eps


def _encoders(backend, num_layers, qkv_projection=True, unpad=True):
    torch.manual_seed(1)
    ref = reference.BertEncoder(VOCAB, E, num_layers, HEADS, FE, 0.1, MAX_LEN,
                                qkv_projection=qkv_projection).to(DEVICE)
    fused = BertEncoder(VOCAB, E, num_layers, HEADS, FE, 0.1, MAX_LEN,
                        qkv_projection=qkv_projection, backend=backend, unpad=unpad)
    fused.load_state_dict(ref.state_dict())
    return ref.eval(), fused.to(DEVICE).eval()


def _run_encoder(module, ids, mask, dtype, real=None):
    """Output and gradients; with ``real`` (N, L) only real tokens count: padded positions are
    zeroed, so they feed no gradient (the packed path does not compute them at all)."""
    module = module.to(dtype)
    out = module(ids, mask)
    if real is not None:
        out = out * real[..., None]
    return out, _grads(module, out, [])


ENCODER_CASES = [("torch", 2, 1, True), ("torch", 2, 70, False), ("torch", 1, 17, True),
                 ("triton", 2, 17, True), ("triton", 1, 70, True)]


@pytest.mark.parametrize("unpad", [True, False], ids=["packed", "padded"])
@pytest.mark.parametrize("backend,num_layers,length,qkv_projection", ENCODER_CASES,
                         ids=[f"{b}-{k}layers-L{n}-{'proj' if q else 'listing'}"
                              for b, k, n, q in ENCODER_CASES])
def test_encoder_matches_reference(backend, num_layers, length, qkv_projection, unpad):
    """Padded path: every position matches.  Packed path (the default for key-padding masks):
    real tokens match, padded positions are 0 and are not compared with the reference."""
    ref, fused = _encoders(backend, num_layers, qkv_projection, unpad=unpad)
    ids = torch.randint(0, VOCAB, (2, length), device=DEVICE)
    mask = _padding_mask(2, length)
    real = mask[:, 0, 0, :].to(torch.float32) if unpad else None
    out, grads = _run_encoder(fused, ids, mask, torch.float32)
    if unpad:
        assert torch.count_nonzero(out[~mask[:, 0, 0, :]]) == 0
    out, grads = _run_encoder(fused, ids, mask, torch.float32, real)
    hp, hp_grads = _run_encoder(ref, ids, mask, torch.float64, real)
    lp, lp_grads = _run_encoder(ref, ids, mask, torch.float32, real)
    _check(out, grads, hp, hp_grads, lp, lp_grads)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_packed_real_tokens_never_depend_on_padding(backend):
    _, fused = _encoders(backend, 1)
    lengths = torch.tensor([1, 17, 9], device=DEVICE)
    keep = torch.arange(17, device=DEVICE)[None, :] < lengths[:, None]
    ids = torch.randint(1, VOCAB, (3, 17), device=DEVICE)
    other = torch.where(keep, ids, torch.randint(1, VOCAB, (3, 17), device=DEVICE))
    with torch.no_grad():
        a, b = fused(ids, keep), fused(other, keep)
        padded_path = BertEncoder._key_padding(keep[:, None, None, :], ids.shape)
        assert torch.equal(padded_path, keep)
    assert torch.equal(a[keep], b[keep])


def test_other_mask_shapes_keep_the_padded_path():
    _, packed = _encoders("torch", 1, unpad=True)
    _, padded = _encoders("torch", 1, unpad=False)
    ids = torch.randint(0, VOCAB, (2, 9), device=DEVICE)
    full = torch.rand(2, 1, 9, 9, device=DEVICE) > 0.3
    with torch.no_grad():
        torch.testing.assert_close(packed(ids, full), padded(ids, full))
    assert BertEncoder._key_padding(full, ids.shape) is None


def test_encoder_state_dict_moves_both_ways():
    ref, fused = _encoders("torch", 2)
    assert list(ref.state_dict()) == list(fused.state_dict())
    assert {"embeddings.weight", "pos_embeddings.weight", "layers.1.attention.fc_out.bias",
            "layers.0.norm2.weight", "layers.1.feedforward.0.weight",
            "layers.0.feedforward.2.bias"} <= set(fused.state_dict())
    back = reference.BertEncoder(VOCAB, E, 2, HEADS, FE, 0.1, MAX_LEN).to(DEVICE)
    back.load_state_dict(fused.state_dict())
    for (name, a), b in zip(ref.state_dict().items(), back.state_dict().values()):
        assert torch.equal(a, b), name


def test_encoder_dropout_only_in_training():
    _, fused = _encoders("torch", 1)
    ids = torch.randint(0, VOCAB, (2, 9), device=DEVICE)
    with torch.no_grad():
        assert torch.equal(fused(ids, None), fused(ids, None))
        fused.train()
        assert not torch.equal(fused(ids, None), fused(ids, None))


def test_encoder_bad_inputs():
    _, fused = _encoders("torch", 1)
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        fused([[1, 2]], None)
    with pytest.raises(ValueError, match="x must be"):
        fused(torch.randn(2, 3, device=DEVICE), None)
    with pytest.raises(ValueError, match="x must be"):
        fused(torch.ones(2, 3, 4, dtype=torch.long, device=DEVICE), None)
    with pytest.raises(ValueError, match="max_length"):
        fused(torch.ones(1, MAX_LEN + 1, dtype=torch.long, device=DEVICE), None)
    with pytest.raises(ValueError, match="divisible"):
        BertEncoderLayer(30, 4, 2)


def test_attention_dropout_packed_and_padded_paths_agree():
    """Training with attention dropout: the packed path (varlen kernels) and the padded path
    draw the same seeds in the same order and give the same masks to the real tokens, so the
    two agree on every real token, forward and backward; eval mode has no dropout at all."""
    kw = dict(attention_dropout=0.3, backend="triton")
    packed = BertEncoder(VOCAB, E, 2, HEADS, FE, 0.0, MAX_LEN, unpad=True, **kw).to(DEVICE)
    padded = BertEncoder(VOCAB, E, 2, HEADS, FE, 0.0, MAX_LEN, unpad=False, **kw).to(DEVICE)
    padded.load_state_dict(packed.state_dict())
    lengths = torch.tensor([1, 17, 9], device=DEVICE)
    keep = torch.arange(17, device=DEVICE)[None, :] < lengths[:, None]
    ids = torch.randint(1, VOCAB, (3, 17), device=DEVICE)
    outs = {}
    for name, model in (("packed", packed), ("padded", padded)):
        torch.manual_seed(7)
        out = model.train()(ids, keep)
        w = torch.linspace(-1, 1, out.numel(), device=DEVICE).view_as(out) * keep[..., None]
        (out * w).sum().backward()
        outs[name] = out.detach()
    torch.testing.assert_close(outs["packed"][keep], outs["padded"][keep], rtol=1e-5, atol=1e-5)
    for (name, a), b in zip(packed.named_parameters(), padded.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-5, msg=name)
    with torch.no_grad():
        torch.manual_seed(7)
        train_again = packed(ids, keep)
        evaluated = packed.eval()(ids, keep)
    assert torch.equal(train_again, outs["packed"])  # same seed, same masks
    assert (evaluated - train_again)[keep].abs().max() > 1e-3  # dropout did run in training
    with torch.no_grad():
        assert torch.equal(evaluated, packed(ids, keep))
