"""The guide's BERT encoder on the fused modules: ``BertEncoderLayer`` and ``BertEncoder``.

Same constructor arguments, forward signatures and parameter names as
:class:`fastattn.reference.BertEncoderLayer` / :class:`fastattn.reference.BertEncoder`, so state
dicts move both ways.  Each residual add is fused into the LayerNorm that follows it::

    x   = norm1(attention(values, keys, query, mask), residual=query)   # LN(attn + query)
    out = norm2(feedforward(x), residual=x)                             # LN(ff(x) + x)

The second add could instead sit in the epilogue of the feed-forward's second GEMM; that moves
the same bytes (the GEMM would read x, the LayerNorm one tensor instead of two), so the add stays
in the LayerNorm kernel, which already holds both rows in registers for the statistics.

Shapes: ``N`` batch, ``L`` sequence length, ``E`` embed size.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

from fastattn.modules.feedforward import FeedForward
from fastattn.modules.layer_norm import LayerNorm
from fastattn.modules.self_attention import SelfAttention
from fastattn.padding import pad_input, unpad_input


def _packed_path_traceable() -> bool:
    """Whether the padding-free path may run here: always in eager mode.

    Under ``torch.compile`` / ``torch.export`` its token count is data-dependent (``nonzero``
    of the mask), which dynamo captures only with
    ``torch._dynamo.config.capture_dynamic_output_shape_ops = True``; without that flag the
    traced encoder runs the padded path instead, so that the graph never breaks.
    """
    if not torch.compiler.is_compiling():
        return True
    return bool(torch._dynamo.config.capture_dynamic_output_shape_ops)


class BertEncoderLayer(nn.Module):
    """Post-LN encoder layer: ``norm1(attention + query)``, then ``norm2(feedforward(x) + x)``.

    Args:
        embed_size: E.  heads: H (E divisible by H).  forward_expansion: hidden = fe·E.
        qkv_projection: see :class:`fastattn.SelfAttention`.
        activation: the feed-forward's activation ("relu" as the guide).
        attention_dropout: see :class:`fastattn.SelfAttention` (0.0, the guide's, for none).
        backend: "auto", "triton", "torch", "cuda" or None (the process default).
    Shapes:
        forward(values (N, L_k, E), keys (N, L_k, E), query (N, L_q, E),
        mask None / (N, L_k) / broadcastable to (N, H, L_q, L_k)) -> (N, L_q, E).
    """

    def __init__(self, embed_size: int, heads: int, forward_expansion: int, *,
                 qkv_projection: bool = True, activation: str = "relu",
                 attention_dropout: float = 0.0, backend: Optional[str] = None, device=None,
                 dtype=None):
        super().__init__()
        kw = dict(backend=backend, device=device, dtype=dtype)
        self.attention = SelfAttention(embed_size, heads, qkv_projection=qkv_projection,
                                       attention_dropout=attention_dropout, **kw)
        self.norm1 = LayerNorm(embed_size, **kw)
        self.norm2 = LayerNorm(embed_size, **kw)
        self.feedforward = FeedForward(embed_size, forward_expansion, activation, **kw)

    def forward(self, values: torch.Tensor, keys: torch.Tensor, query: torch.Tensor,
                mask: Optional[torch.Tensor] = None, *,
                cu_seqlens: Optional[torch.Tensor] = None,
                max_seqlen: Optional[int] = None) -> torch.Tensor:
        """With ``cu_seqlens``: the packed layer over ``query``, see :meth:`forward_packed`."""
        attended = self.attention(values, keys, query, mask, cu_seqlens=cu_seqlens,
                                  max_seqlen=max_seqlen)
        x = self.norm1(attended, residual=query)
        return self.norm2(self.feedforward(x), residual=x)

    def forward_packed(self, x: torch.Tensor, cu_seqlens: torch.Tensor,
                       max_seqlen: int) -> torch.Tensor:
        """The layer over packed real tokens x (T, E) of the sequences ``cu_seqlens`` (B + 1,).
        Goes through ``self(...)``, so module hooks (FSDP2's, for one) run."""
        return self(x, x, x, cu_seqlens=cu_seqlens, max_seqlen=max_seqlen)


class BertEncoder(nn.Module):
    """Token + position embeddings, dropout, then ``num_layers`` fused encoder layers.

    Args: the guide's (src_vocab_size, embed_size, num_layers, heads, forward_expansion,
        dropout, max_length), then the keywords of :class:`BertEncoderLayer`, and
        unpad: with a key-padding mask ((N, L) or (N, 1, 1, L)), remove the padding once after
            the embeddings, run every layer on the packed real tokens (variable-length
            attention; LayerNorm and feed-forward on real tokens only) and restore the padded
            layout at the output.  Real tokens get the padded computation's result; padded
            positions are not computed and are 0 in the output.  Masks of other shapes keep
            the padded path.  False always runs the padded path.

    Under ``torch.compile`` and ``torch.export``: the packed path's token count depends on the
    mask's values, so it is traced only when dynamo captures data-dependent shapes
    (``torch._dynamo.config.capture_dynamic_output_shape_ops = True``; the token count is
    then an unbacked size and ``max_seqlen`` the padded length L, an upper bound that needs no
    host read).  Otherwise the traced encoder computes the padded layout (key-padding mask in
    every attention, LayerNorm and feed-forward over all N·L positions) and zeroes the padded
    positions: the same output as the packed path, real tokens equal up to rounding, padded
    positions 0 and no gradient through them, without the packed path's saving of work.

    Shapes:
        forward(x (N, L) token ids with L <= max_length,
        mask None / (N, L) / broadcastable to (N, H, L, L), usually (N, 1, 1, L)) -> (N, L, E).
    """

    def __init__(self, src_vocab_size: int, embed_size: int, num_layers: int, heads: int,
                 forward_expansion: int, dropout: float, max_length: int, *,
                 qkv_projection: bool = True, activation: str = "relu",
                 attention_dropout: float = 0.0, backend: Optional[str] = None,
                 unpad: bool = True, device=None, dtype=None):
        super().__init__()
        kw = dict(device=device, dtype=dtype)
        self.unpad = unpad
        self.embed_size = embed_size
        self.src_vocab_size = src_vocab_size
        self.num_layers = num_layers
        self.max_length = max_length
        self.embeddings = nn.Embedding(src_vocab_size, embed_size, **kw)
        self.pos_embeddings = nn.Embedding(max_length, embed_size, **kw)
        self.layers = nn.ModuleList(
            BertEncoderLayer(embed_size, heads, forward_expansion, qkv_projection=qkv_projection,
                             activation=activation, attention_dropout=attention_dropout,
                             backend=backend, **kw)
            for _ in range(num_layers)
        )
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor of token ids, got {type(x).__name__}")
        if x.dim() != 2 or x.dtype.is_floating_point or x.dtype.is_complex:
            raise ValueError(f"x must be (N, L) integer token ids, got shape {tuple(x.shape)} "
                             f"of {x.dtype}")
        if x.shape[1] > self.max_length:
            raise ValueError(f"x has length {x.shape[1]} > max_length {self.max_length}")
        positions = torch.arange(x.shape[1], device=x.device)
        out = self.dropout(self.embeddings(x) + self.pos_embeddings(positions))
        keep = self._key_padding(mask, x.shape)
        if self.unpad and keep is not None and _packed_path_traceable():
            packed, indices, cu_seqlens, max_seqlen = unpad_input(out, keep)
            for layer in self.layers:
                packed = layer(packed, packed, packed, cu_seqlens=cu_seqlens,
                               max_seqlen=max_seqlen)
            return pad_input(packed, indices, x.shape[0], x.shape[1])
        for layer in self.layers:
            out = layer(out, out, out, mask)
        if self.unpad and keep is not None:  # traced padded path: 0 at padding, as packed
            out = torch.where(keep[..., None], out, 0.0)
        return out

    @staticmethod
    def _key_padding(mask: Optional[torch.Tensor], ids_shape) -> Optional[torch.Tensor]:
        """(N, L) bool of real tokens when ``mask`` is a key-padding mask, else None."""
        n, l = ids_shape
        if mask is None:
            return None
        if tuple(mask.shape) == (n, l):
            return mask != 0
        if tuple(mask.shape) == (n, 1, 1, l):
            return mask[:, 0, 0, :] != 0
        return None
