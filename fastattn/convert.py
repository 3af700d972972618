"""Swap fastattn's fused modules into a model built from plain-PyTorch pieces, in place.

    model = fastattn.reference.BertEncoder(...)      # or any model holding these pieces
    fastattn.convert.from_reference(model, backend="triton")

What is replaced (exact types only, so a converted model converts to itself):

* :class:`fastattn.reference.SelfAttention`  -> :class:`fastattn.SelfAttention`
* ``nn.LayerNorm``                            -> :class:`fastattn.modules.layer_norm.LayerNorm`
* ``nn.Sequential(Linear(E, fe·E), ReLU or GELU, Linear(fe·E, E))``
                                              -> :class:`fastattn.modules.feedforward.FeedForward`
* :class:`fastattn.reference.BertEncoderLayer` -> :class:`fastattn.modules.encoder.BertEncoderLayer`
  (same children, but its residual adds run inside the LayerNorm kernels)

The new modules take over the very ``nn.Parameter`` objects of the old ones (no copies), so an
optimizer built before the swap keeps working; the training flag is kept, hooks are not.  The
object passed in is never replaced itself, only its descendants.
"""
from __future__ import annotations

from typing import Optional

import torch.nn as nn

from fastattn import reference as ref
from fastattn.backends import BACKENDS
from fastattn.modules.encoder import BertEncoderLayer
from fastattn.modules.feedforward import FeedForward
from fastattn.modules.layer_norm import LayerNorm
from fastattn.modules.self_attention import SelfAttention

def _activation_name(act: nn.Module) -> Optional[str]:
    if type(act) is nn.ReLU:
        return "relu"
    if type(act) is nn.GELU:
        return {"none": "gelu", "tanh": "gelu_tanh"}.get(act.approximate)
    return None


def _adopt(new: nn.Module, old: nn.Module) -> nn.Module:
    """``new`` (built on the meta device) takes over ``old``'s parameters and buffers."""
    new.load_state_dict(old.state_dict(keep_vars=True), strict=True, assign=True)
    return new.train(old.training)


def _feedforward_shape(seq: nn.Sequential):
    """(embed_size, forward_expansion, activation) when ``seq`` is a feed-forward block, else None."""
    if len(seq) != 3:
        return None
    first, act, second = seq
    if type(first) is not nn.Linear or type(second) is not nn.Linear:
        return None
    if _activation_name(act) is None:
        return None
    e, hidden = first.in_features, first.out_features
    if (second.in_features, second.out_features) != (hidden, e) or hidden % e:
        return None
    if first.bias is None or second.bias is None:
        return None
    return e, hidden // e, _activation_name(act)


def _fused(m: nn.Module, backend: Optional[str]) -> Optional[nn.Module]:
    """The fused replacement of ``m`` (children already converted), or None to keep ``m``."""
    kw = dict(backend=backend, device="meta")
    if type(m) is ref.SelfAttention:
        new = SelfAttention(m.embed_size, m.heads, qkv_projection=m.qkv_projection, **kw)
        return _adopt(new, m)
    if type(m) is nn.LayerNorm:
        new = LayerNorm(m.normalized_shape, m.eps, m.elementwise_affine,
                        bias=m.bias is not None, **kw)
        return _adopt(new, m)
    if type(m) is nn.Sequential and _feedforward_shape(m) is not None:
        e, fe, act = _feedforward_shape(m)
        return _adopt(FeedForward(e, fe, act, **kw), m)
    if (type(m) is ref.BertEncoderLayer and type(m.attention) is SelfAttention
            and type(m.norm1) is LayerNorm and type(m.norm2) is LayerNorm
            and type(m.feedforward) is FeedForward):
        new = BertEncoderLayer.__new__(BertEncoderLayer)
        nn.Module.__init__(new)
        new.attention, new.norm1, new.norm2 = m.attention, m.norm1, m.norm2
        new.feedforward = m.feedforward
        return new.train(m.training)
    return None


def _convert_children(module: nn.Module, backend: Optional[str]) -> None:
    for name, child in module.named_children():
        _convert_children(child, backend)
        new = _fused(child, backend)
        if new is not None:
            setattr(module, name, new)


def from_reference(model: nn.Module, *, backend: Optional[str] = None) -> nn.Module:
    """Replace the plain-PyTorch attention, LayerNorm and feed-forward modules inside ``model``
    by fastattn's fused ones, in place, keeping the weights; returns ``model``.

    Args:
        model: any ``nn.Module`` (typically built from :mod:`fastattn.reference` classes).
        backend: the backend of every new module: "auto", "triton", "torch", "cuda" or None
            (the process default at call time of each forward).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS} or None, got {backend!r}")
    _convert_children(model, backend)
    return model
