"""BertForSequenceClassification: fused vs reference training, padding-aware pooling."""
import pytest
import torch
import torch.nn.functional as F

from fastattn import reference
from fastattn.modules.classification import BertForSequenceClassification
from fastattn.modules.encoder import BertEncoder
from tests.helpers import DEVICE, GRAD_FACTOR, assert_close_to_reference

VOCAB, CLASSES, PAD = 30, 3, 0
SMALL = dict(embed_size=32, num_layers=1, heads=2, forward_expansion=2, max_length=40)


def _batch(n=4, length=13, seed=0):
    """Token ids padded on the right with PAD (row 0 full length, last row a single token)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (n, length), generator=g)
    lengths = torch.linspace(length, 1, n).round().long()
    keep = torch.arange(length)[None, :] < lengths[:, None]
    labels = torch.randint(0, CLASSES, (n,), generator=g)
    return ids.where(keep, PAD).to(DEVICE), keep.long().to(DEVICE), labels.to(DEVICE)


def _pair(backend, pooling="mean", dropout=0.0, **kw):
    cfg = dict(SMALL, **kw)
    torch.manual_seed(3)
    fused = BertForSequenceClassification(VOCAB, CLASSES, pooling=pooling, dropout=dropout,
                                          backend=backend, **cfg).to(DEVICE)
    torch.manual_seed(3)
    ref = BertForSequenceClassification(VOCAB, CLASSES, pooling=pooling, dropout=dropout,
                                        reference=True, **cfg).to(DEVICE)
    return fused, ref


def _train(model, batches, dtype, steps, seed=11):
    """Losses of ``steps`` AdamW steps (dropout masks drawn from ``seed``)."""
    model = model.to(dtype).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    torch.manual_seed(seed)
    losses = []
    for step in range(steps):
        ids, mask, labels = batches[step % len(batches)]
        loss = F.cross_entropy(model(ids, mask), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.detach())
    return torch.stack(losses)


def test_same_seed_gives_the_same_model():
    fused, ref = _pair("torch")
    assert type(ref.encoder) is reference.BertEncoder and type(fused.encoder) is BertEncoder
    assert list(fused.state_dict()) == list(ref.state_dict())
    for (name, a), b in zip(fused.state_dict().items(), ref.state_dict().values()):
        assert torch.equal(a, b), name
    emb = fused.encoder.embeddings.weight
    assert 0.01 < emb.std().item() < 0.03  # BERT's init, not unit variance


@pytest.mark.parametrize("backend,pooling,steps", [("torch", "mean", 6), ("torch", "cls", 6),
                                                   ("triton", "mean", 3)])
def test_training_losses_match_reference(backend, pooling, steps):
    fused, ref = _pair(backend, pooling)
    state = {k: v.clone() for k, v in ref.state_dict().items()}
    batches = [_batch(seed=s) for s in range(2)]
    losses = _train(fused, batches, torch.float32, steps)
    lp = _train(ref, batches, torch.float32, steps)
    ref.load_state_dict(state)
    hp = _train(ref, batches, torch.float64, steps)
    assert_close_to_reference(losses, hp, lp, factor=GRAD_FACTOR, name="losses")
    assert losses[2] < losses[0]  # the same batch, after two updates


def test_dropout_draws_match_reference():
    """With dropout on, both flavours draw the same masks from the same seed."""
    fused, ref = _pair("torch", dropout=0.3)
    batches = [_batch(seed=s) for s in range(2)]
    torch.testing.assert_close(_train(fused, batches, torch.float32, 3),
                               _train(ref, batches, torch.float32, 3), rtol=1e-5, atol=1e-5)
    fused.eval()
    with torch.no_grad():
        ids, mask, _ = batches[0]
        assert torch.equal(fused(ids, mask), fused(ids, mask))


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_pooling_ignores_padded_positions(backend, pooling):
    model, _ = _pair(backend, pooling)
    model.eval()
    ids, mask, _ = _batch()
    other = ids.where(mask.bool(), torch.randint_like(ids, 1, VOCAB))  # new ids at the pads
    assert not torch.equal(other, ids)
    with torch.no_grad():
        torch.testing.assert_close(model(other, mask), model(ids, mask), rtol=0, atol=1e-6)
        # without a mask, it is derived from input_ids != pad_id
        torch.testing.assert_close(model(ids), model(ids, mask), rtol=0, atol=0)


def test_mean_pooling_is_the_masked_mean():
    model, _ = _pair("torch", "mean")
    model.eval()
    ids, mask, _ = _batch()
    with torch.no_grad():
        hidden = model.encoder(ids, mask.bool()[:, None, None, :])
        expected = torch.stack([hidden[i, mask[i].bool()].mean(0) for i in range(len(ids))])
        torch.testing.assert_close(model(ids, mask), model.classifier(expected))


def test_fully_padded_row_gives_finite_logits():
    model, _ = _pair("torch")
    ids, mask, _ = _batch()
    mask[1] = 0
    logits = model(ids, mask)
    assert logits.shape == (len(ids), CLASSES) and torch.isfinite(logits).all()
    logits.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_bad_arguments():
    model, _ = _pair("torch")
    ids, mask, _ = _batch()
    with pytest.raises(ValueError, match="pooling"):
        BertForSequenceClassification(VOCAB, CLASSES, pooling="max", **SMALL)
    with pytest.raises(ValueError, match="num_classes"):
        BertForSequenceClassification(VOCAB, 0, **SMALL)
    with pytest.raises(ValueError, match="pad_id"):
        BertForSequenceClassification(VOCAB, CLASSES, pad_id=VOCAB, **SMALL)
    with pytest.raises(ValueError, match="activation"):
        BertForSequenceClassification(VOCAB, CLASSES, activation="gelu", reference=True, **SMALL)
    with pytest.raises(ValueError, match="attention_dropout"):
        BertForSequenceClassification(VOCAB, CLASSES, attention_dropout=0.1, reference=True,
                                      **SMALL)
    with pytest.raises(TypeError, match="input_ids must be a torch.Tensor"):
        model(ids.tolist())
    with pytest.raises(ValueError, match="input_ids must be"):
        model(ids.float())
    with pytest.raises(ValueError, match="input_ids must be"):
        model(ids[0])
    with pytest.raises(ValueError, match="max_length"):
        model(torch.ones(1, SMALL["max_length"] + 1, dtype=torch.long, device=DEVICE))
    with pytest.raises(ValueError, match="attention_mask must have the shape"):
        model(ids, mask[:, :-1])
    with pytest.raises(TypeError, match="attention_mask must be a torch.Tensor"):
        model(ids, mask.tolist())


def test_training_with_attention_dropout():
    """attention_dropout reaches every layer: losses differ from the run without it, repeat
    with the same seed, and stay finite; eval ignores it."""
    batches = [_batch(seed=i) for i in range(2)]
    runs = {}
    for p in (0.0, 0.3, 0.3):
        torch.manual_seed(3)
        model = BertForSequenceClassification(VOCAB, CLASSES, attention_dropout=p,
                                              backend="triton", **SMALL).to(DEVICE)
        assert all(layer.attention.attention_dropout == p for layer in model.encoder.layers)
        runs.setdefault(p, []).append(_train(model, batches, torch.float32, 3))
    assert torch.isfinite(runs[0.3][0]).all()
    assert torch.equal(runs[0.3][0], runs[0.3][1])
    assert not torch.allclose(runs[0.3][0], runs[0.0][0])
