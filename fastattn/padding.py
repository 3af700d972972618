"""Moving between padded and packed layouts, like flash-attention's ``bert_padding``.

    unpad_input(x (N, L, ...), key_padding_mask (N, L) | lengths (N,))
        -> (packed (total, ...), indices (total,), cu_seqlens (N + 1,) int32, max_seqlen int)
    pad_input(packed (total, ...), indices, batch, seqlen) -> (batch, seqlen, ...)

The packed layout is what :func:`fastattn.varlen_attention` and the modules' padding-free
path take.  :func:`unpad_input` is the one place of that path that synchronises with the device
(it reads the longest length); both are differentiable and plain PyTorch on any device.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch


def unpad_input(x: torch.Tensor, key_padding_mask: Optional[torch.Tensor] = None, *,
                lengths: Optional[torch.Tensor] = None
                ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Drop the padding of a batch: (N, L, ...) -> (total, ...).

    Args:
        x: (N, L, ...) padded batch.
        key_padding_mask: (N, L), nonzero / True at real tokens (any positions, kept in order).
        lengths: alternatively (N,) integer lengths: the first lengths[i] tokens are real.
    Returns:
        packed (total, ...), indices (total,) int64 into the flattened (N·L) positions,
        cu_seqlens (N + 1,) int32, max_seqlen (Python int).
    Reading max_seqlen synchronises with the device once: do it once per batch and pass the
    results to every layer.  Under torch.compile / torch.export max_seqlen is L, an upper
    bound read from the shape (the kernels' extra programs exit at once), and ``total`` is a
    data-dependent size (``torch._dynamo.config.capture_dynamic_output_shape_ops = True``
    lets dynamo capture the ``nonzero``).  Differentiable in x.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() < 2:
        raise ValueError(f"x must have at least 2 dims (N, L, ...), got shape {tuple(x.shape)}")
    n, l = x.shape[:2]
    if (key_padding_mask is None) == (lengths is None):
        raise ValueError("pass exactly one of key_padding_mask and lengths")
    if lengths is not None:
        if not isinstance(lengths, torch.Tensor):
            raise TypeError(f"lengths must be a torch.Tensor, got {type(lengths).__name__}")
        if lengths.shape != (n,) or lengths.dtype.is_floating_point or lengths.is_complex():
            raise ValueError(f"lengths must be an integer tensor of shape (N,) = ({n},), got "
                             f"{tuple(lengths.shape)} {lengths.dtype}")
        lengths = lengths.to(x.device)
        key_padding_mask = torch.arange(l, device=x.device)[None, :] < lengths[:, None]
    else:
        if not isinstance(key_padding_mask, torch.Tensor):
            raise TypeError(f"key_padding_mask must be a torch.Tensor, got "
                            f"{type(key_padding_mask).__name__}")
        if key_padding_mask.shape != (n, l):
            raise ValueError(f"key_padding_mask must have shape (N, L) = {(n, l)}, got "
                             f"{tuple(key_padding_mask.shape)}")
        if key_padding_mask.device != x.device:
            raise ValueError(f"key_padding_mask is on {key_padding_mask.device} but x is on "
                             f"{x.device}")
    keep = key_padding_mask != 0
    seqlens = keep.sum(1, dtype=torch.int32)
    indices = torch.nonzero(keep.flatten()).flatten()
    cu_seqlens = torch.nn.functional.pad(torch.cumsum(seqlens, 0, dtype=torch.int32), (1, 0))
    if torch.compiler.is_compiling():
        max_seqlen = l  # an upper bound: reading the longest length would need a host read
    else:
        max_seqlen = int(seqlens.max()) if n > 0 else 0
    packed = x.reshape(n * l, *x.shape[2:]).index_select(0, indices)
    return packed, indices, cu_seqlens, max_seqlen


def pad_input(packed: torch.Tensor, indices: torch.Tensor, batch: int,
              seqlen: int) -> torch.Tensor:
    """Inverse of :func:`unpad_input`: (total, ...) -> (batch, seqlen, ...), zeros at padding.
    Differentiable in ``packed``."""
    if not isinstance(packed, torch.Tensor) or not isinstance(indices, torch.Tensor):
        raise TypeError("packed and indices must be torch.Tensors")
    if indices.dim() != 1 or indices.shape[0] != packed.shape[0]:
        raise ValueError(f"indices must have shape (total,) = ({packed.shape[0]},), got "
                         f"{tuple(indices.shape)}")
    out = packed.new_zeros(batch * seqlen, *packed.shape[1:])
    out = out.index_put((indices,), packed)
    # a fresh tensor, not a view of the flat one (FSDP2 warns on modules returning views)
    return torch.ops.aten._unsafe_view(out, (batch, seqlen, *packed.shape[1:]))
