"""``fastattn.LayerNorm``: ``torch.nn.LayerNorm`` on the fused kernel, with a fused residual add.

A subclass of :class:`torch.nn.LayerNorm`: same constructor, parameters, initialisation,
``extra_repr`` and state dict keys, so state dicts move both ways and code that looks for
``nn.LayerNorm`` instances (weight-decay groups, initialisers) still finds it.  ``forward``
takes an optional ``residual`` and returns LN(x + residual) in one kernel, the post-LN
encoder's ``norm(sublayer(x) + x)``.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

from fastattn.functional import layer_norm


class LayerNorm(nn.LayerNorm):
    """LayerNorm over the trailing ``normalized_shape`` dims.

    Args:
        normalized_shape, eps, elementwise_affine, bias, device, dtype: as nn.LayerNorm.
        backend: "auto", "triton", "torch" or None (the process default).
    Shapes:
        x: (..., *normalized_shape); residual: None or x's shape.  Returns x's shape.
    """

    def __init__(self, normalized_shape, eps: float = 1e-5, elementwise_affine: bool = True,
                 bias: bool = True, device=None, dtype=None, *, backend: Optional[str] = None):
        super().__init__(normalized_shape, eps=eps, elementwise_affine=elementwise_affine,
                         bias=bias, device=device, dtype=dtype)
        self.backend = backend

    def extra_repr(self) -> str:
        base = super().extra_repr()
        return base if self.backend is None else f"{base}, backend={self.backend!r}"

    def forward(self, x: torch.Tensor, residual: Optional[torch.Tensor] = None) -> torch.Tensor:
        return layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps,
                          residual=residual, backend=self.backend)
