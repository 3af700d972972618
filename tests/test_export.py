"""torch.export over fastattn models: the fused ops stay single nodes, and the exported program
runs and equals eager.

``torch.export`` captures data-dependent shapes, so an exported encoder keeps the packed path
(``nonzero`` of the mask, an unbacked token count, ``fastattn::varlen_attention_fwd``) and one
program serves every mask; with ``unpad=False`` (or no mask) the padded path exports
``fastattn::attention_fwd``.  Both are exported with a dynamic batch and sequence length and run
at two shapes.  The comparison tolerance is a few float32 ulps: the exported program runs
eager's kernels on the same rows.
"""
import pytest
import torch
from torch.export import Dim

import fastattn
from tests.helpers import DEVICE

E, HEADS, FE, VOCAB, MAX_LEN, CLASSES = 32, 2, 2, 30, 40, 3
SAME_PATH = dict(rtol=1e-6, atol=1e-6)
SHAPES = [(3, 9), (2, 17)]


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _fastattn_targets(program):
    return {node.target for node in program.graph.nodes
            if node.op == "call_function" and str(node.target).startswith("fastattn.")}


def _batch(shape):
    ids = torch.randint(1, VOCAB, shape, device=DEVICE)
    mask = (torch.rand(shape, device=DEVICE) > 0.3).long()
    mask[:, 0] = 1
    mask[-1, 1:] = 0  # one sequence of a single token
    return ids * mask, mask


def _dynamic(*names):
    n, l = Dim("n", min=1, max=64), Dim("l", min=2, max=MAX_LEN)
    return {name: {0: n, 1: l} for name in names}


@pytest.mark.parametrize("backend", ["triton", None], ids=["triton", "default"])
def test_export_classifier_packed_path(backend):
    torch.manual_seed(3)
    model = fastattn.BertForSequenceClassification(
        VOCAB, CLASSES, embed_size=E, num_layers=1, heads=HEADS, forward_expansion=FE,
        dropout=0.0, max_length=MAX_LEN, backend=backend).to(DEVICE).eval()
    program = torch.export.export(model, _batch(SHAPES[0]),
                                  dynamic_shapes=_dynamic("input_ids", "attention_mask"))
    if backend == "triton":  # the default backend runs plain PyTorch on CPU tensors
        ops = torch.ops.fastattn
        assert {ops.varlen_attention_fwd.default, ops.layer_norm_fwd.default,
                ops.feedforward_fwd.default} <= _fastattn_targets(program)
    exported = program.module()
    with torch.no_grad():
        for shape in SHAPES:
            args = _batch(shape)
            torch.testing.assert_close(exported(*args), model(*args), **SAME_PATH)


@pytest.mark.parametrize("with_mask", [True, False], ids=["padding-mask", "no-mask"])
def test_export_padded_encoder(with_mask):
    torch.manual_seed(1)
    model = fastattn.BertEncoder(VOCAB, E, 1, HEADS, FE, 0.0, MAX_LEN, backend="triton",
                                 unpad=False).to(DEVICE).eval()

    def args_for(shape):
        ids, mask = _batch(shape)
        return ids, (mask.bool()[:, None, None, :] if with_mask else None)

    dynamic = _dynamic("x")
    dynamic["mask"] = {0: dynamic["x"][0], 3: dynamic["x"][1]} if with_mask else None
    program = torch.export.export(model, args_for(SHAPES[0]), dynamic_shapes=dynamic)
    ops = torch.ops.fastattn
    assert {ops.attention_fwd.default, ops.layer_norm_fwd.default,
            ops.feedforward_fwd.default} <= _fastattn_targets(program)
    exported = program.module()
    with torch.no_grad():
        for shape in SHAPES:
            args = args_for(shape)
            torch.testing.assert_close(exported(*args), model(*args), **SAME_PATH)
