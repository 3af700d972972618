"""``fastattn.FeedForward``: the guide's ``nn.Sequential(Linear, ReLU, Linear)`` on fused GEMMs.

Subclasses ``nn.Sequential`` with the same three children, so the state dict keys are the
guide's (``0.weight, 0.bias, 2.weight, 2.bias``) and the parameters are initialised exactly like
``nn.Linear``'s.  ``forward(x, residual=None)`` runs :func:`fastattn.ops.feedforward.feedforward`.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

from fastattn.functional import feedforward
from fastattn.kernels.matmul_configs import ACTIVATIONS


def _activation_module(activation: str) -> nn.Module:
    if activation == "relu":
        return nn.ReLU()
    return nn.GELU(approximate="tanh" if activation == "gelu_tanh" else "none")


class FeedForward(nn.Sequential):
    """``linear2(act(linear1(x))) (+ residual)``.

    Args:
        embed_size: E.  forward_expansion: the hidden size is forward_expansion · E.
        activation: "relu" (the guide's), "gelu" (erf) or "gelu_tanh".
        backend: "auto", "triton", "torch", "cuda" or None (the process default).
    Shapes:
        forward(x (..., E), residual (..., E) or None) -> (..., E).
    """

    def __init__(self, embed_size: int, forward_expansion: int, activation: str = "relu", *,
                 backend: Optional[str] = None, device=None, dtype=None):
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {tuple(ACTIVATIONS)}, got "
                             f"{activation!r}")
        kw = dict(device=device, dtype=dtype)
        hidden = forward_expansion * embed_size
        super().__init__(nn.Linear(embed_size, hidden, **kw), _activation_module(activation),
                         nn.Linear(hidden, embed_size, **kw))
        self.activation = activation
        self.backend = backend

    def extra_repr(self) -> str:
        return f"activation={self.activation!r}, backend={self.backend}"

    def forward(self, x: torch.Tensor, residual: Optional[torch.Tensor] = None) -> torch.Tensor:
        first, _, second = self
        return feedforward(x, first.weight, first.bias, second.weight, second.bias,
                           self.activation, residual, backend=self.backend)
