"""fastattn.convert.from_reference: in-place module swap that keeps the weights."""
import copy

import pytest
import torch
import torch.nn as nn

import fastattn
from fastattn import reference
from fastattn.convert import from_reference
from fastattn.modules.encoder import BertEncoderLayer
from fastattn.modules.feedforward import FeedForward
from fastattn.modules.layer_norm import LayerNorm
from tests.helpers import DEVICE, GRAD_FACTOR, assert_close_to_reference

E, HEADS, FE, VOCAB, MAX_LEN = 32, 2, 2, 40, 32


def _encoder(num_layers=2, qkv_projection=True):
    return reference.BertEncoder(VOCAB, E, num_layers, HEADS, FE, 0.0, MAX_LEN,
                                 qkv_projection=qkv_projection).to(DEVICE)


def _out_and_grads(model, ids, mask):
    out = model(ids, mask)
    params = [p for _, p in model.named_parameters()]
    grads = torch.autograd.grad(out.square().sum(), params, allow_unused=True)
    return out, [torch.zeros_like(p) if g is None else g for g, p in zip(grads, params)]


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("qkv_projection", [True, False], ids=["proj", "listing"])
def test_swaps_in_place_and_keeps_outputs(backend, qkv_projection):
    model = _encoder(2 if backend == "torch" else 1, qkv_projection)
    hp = copy.deepcopy(model).double()
    params_before = {name: p for name, p in model.named_parameters()}
    keys_before = list(model.state_dict())
    ids = torch.randint(0, VOCAB, (2, 17), device=DEVICE)
    mask = (ids != 0)[:, None, None, :]
    mask[1] = False  # a fully padded sequence
    lp, lp_grads = _out_and_grads(model, ids, mask)

    assert from_reference(model, backend=backend) is model
    assert type(model) is reference.BertEncoder  # the root object stays
    for layer in model.layers:
        assert type(layer) is BertEncoderLayer
        assert type(layer.attention) is fastattn.SelfAttention
        assert layer.attention.backend == backend
        assert layer.attention.qkv_projection == qkv_projection
        assert type(layer.norm1) is LayerNorm and type(layer.norm2) is LayerNorm
        assert type(layer.feedforward) is FeedForward
    assert not any(type(m) in (reference.SelfAttention, nn.LayerNorm, nn.Sequential)
                   for m in model.modules())
    assert list(model.state_dict()) == keys_before
    for name, p in model.named_parameters():  # the very same Parameter objects
        assert p is params_before[name], name

    out, grads = _out_and_grads(model, ids, mask)
    ref_hp, hp_grads = _out_and_grads(hp, ids, mask)
    assert_close_to_reference(out, ref_hp, lp)
    for name, g, ghp, glp in zip(params_before, grads, hp_grads, lp_grads):
        assert_close_to_reference(g, ghp, glp, factor=GRAD_FACTOR, name=f"grad {name}")


def test_converted_model_trains_with_an_optimizer_built_before():
    model = _encoder(1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    from_reference(model, backend="torch")
    before = model.layers[0].feedforward.state_dict()["0.weight"].clone()
    ids = torch.randint(0, VOCAB, (2, 5), device=DEVICE)
    model(ids, None).square().sum().backward()
    opt.step()
    assert not torch.equal(model.layers[0].feedforward.state_dict()["0.weight"], before)


def test_loose_pieces_and_training_flag():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = reference.SelfAttention(E, HEADS)
            self.norm = nn.LayerNorm(E, eps=1e-6, bias=False)
            self.mlp = nn.Sequential(nn.Linear(E, 3 * E), nn.ReLU(), nn.Linear(3 * E, E))
            self.mlp2 = nn.Sequential(nn.Linear(E, E), nn.GELU("tanh"), nn.Linear(E, E))
            self.mlp3 = nn.Sequential(nn.Linear(E, E), nn.Tanh(), nn.Linear(E, E))  # not a FF
            self.head = nn.Sequential(nn.Linear(E, 5), nn.ReLU(), nn.Linear(5, 3))  # not a FF

        def forward(self, x):
            x = self.norm(self.attn(x, x, x, None) + x)
            return self.head(self.mlp3(self.mlp2(self.mlp(x) + x)))

    block = Block().to(DEVICE).eval()
    x = torch.randn(2, 7, E, device=DEVICE)
    with torch.no_grad():
        expected = block(x)
    from_reference(block, backend="torch")
    assert type(block.attn) is fastattn.SelfAttention
    assert type(block.norm) is LayerNorm and block.norm.eps == 1e-6 and block.norm.bias is None
    assert type(block.mlp) is FeedForward and block.mlp.activation == "relu"
    assert type(block.mlp2) is FeedForward and block.mlp2.activation == "gelu_tanh"
    assert type(block.mlp3) is nn.Sequential
    assert type(block.head) is nn.Sequential
    assert not any(m.training for m in block.modules())
    with torch.no_grad():
        torch.testing.assert_close(block(x), expected, rtol=1e-5, atol=1e-5)


def test_converting_twice_changes_nothing():
    model = from_reference(_encoder(1), backend="torch")
    layer = model.layers[0]
    from_reference(model, backend="torch")
    assert model.layers[0] is layer


def test_bad_arguments():
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        from_reference("bert")
    with pytest.raises(ValueError, match="backend must be one of"):
        from_reference(_encoder(1), backend="tpu")
