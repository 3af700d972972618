"""fastattn.FeedForward as a drop-in for the guide's nn.Sequential(Linear, ReLU, Linear)."""
import pytest
import torch
import torch.nn as nn

import fastattn
from tests.helpers import DEVICE


def _guide_block(e, fe):
    return nn.Sequential(nn.Linear(e, fe * e), nn.ReLU(), nn.Linear(fe * e, e))


def test_state_dict_moves_both_ways_and_outputs_match():
    guide = _guide_block(24, 4).to(DEVICE)
    ff = fastattn.FeedForward(24, 4, backend="triton").to(DEVICE)
    assert list(ff.state_dict()) == list(guide.state_dict()) == [
        "0.weight", "0.bias", "2.weight", "2.bias"]
    ff.load_state_dict(guide.state_dict())
    x = torch.randn(3, 7, 24, device=DEVICE)
    torch.testing.assert_close(ff(x), guide(x), atol=1e-5, rtol=1e-5)
    back = _guide_block(24, 4).to(DEVICE)
    back.load_state_dict(ff.state_dict())
    torch.testing.assert_close(back(x), guide(x))


@pytest.mark.parametrize("act,module", [("relu", nn.ReLU()), ("gelu", nn.GELU()),
                                        ("gelu_tanh", nn.GELU(approximate="tanh"))])
def test_activation_matches_torch_module(act, module):
    ff = fastattn.FeedForward(16, 2, act, backend="triton").to(DEVICE)
    x = torch.randn(5, 16, device=DEVICE)
    r = torch.randn(5, 16, device=DEVICE)
    expected = ff[2](module(ff[0](x))) + r
    torch.testing.assert_close(ff(x, residual=r), expected, atol=1e-5, rtol=1e-5)
    assert type(ff[1]) is type(module)


def test_bad_activation_and_repr():
    with pytest.raises(ValueError, match="activation must be one of"):
        fastattn.FeedForward(8, 2, "tanh")
    assert "activation='gelu'" in repr(fastattn.FeedForward(8, 2, "gelu"))
