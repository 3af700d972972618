"""Key-padding masks as lengths: the common BERT mask ``[1, 1, ..., 1, 0, ..., 0]`` per sequence.

:func:`key_padding_lengths` reads a key-padding mask (N, L_k) on its device, with no host sync
(a few elementwise ops and two reductions), and returns per sequence the number of real keys when
the row is a prefix mask, or -1 when it is not.  Kernels bound their key walk by the length for
prefix rows (padded key blocks are neither loaded nor masked) and read the mask only for rows
marked -1.
"""
from __future__ import annotations

import torch


def key_padding_lengths(mask: torch.Tensor) -> torch.Tensor:
    """mask: (N, L_k), any dtype, nonzero = keep.  Returns (N,) int32 on mask's device:
    ``length`` where row n is ``[1] * length + [0] * (L_k - length)``, else -1."""
    if mask.dim() != 2:
        raise ValueError(f"mask must be (N, L_k), got shape {tuple(mask.shape)}")
    keep = mask != 0
    lengths = keep.sum(dim=1, dtype=torch.int32)
    positions = torch.arange(mask.shape[1], device=mask.device, dtype=torch.int32)
    is_prefix = (keep == (positions[None, :] < lengths[:, None])).all(dim=1)
    return torch.where(is_prefix, lengths, torch.full_like(lengths, -1))
