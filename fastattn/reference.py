"""Plain-PyTorch reference modules: the oracle every kernel in fastattn is tested against.

The modules follow the BERT encoder of the guide this project implements (constructor
arguments, forward signatures and parameter names), with two corrections to its printed listing:

* ``SelfAttention`` applies the ``values`` / ``keys`` / ``queries`` projections before splitting
  heads, as the guide's text describes.  ``qkv_projection=False`` reproduces the printed listing,
  which never calls them (the parameters still exist, so state dicts keep the same keys).
* ``BertEncoder`` builds ``positions`` on the input's device.

Mask rule (the guide's): wherever ``mask == 0`` the *scaled* score is replaced by ``-1e10``
before the softmax.  A fully masked row therefore attends uniformly to all of its keys (the
output is the mean of V); it never produces NaN.

Shapes: ``N`` batch, ``L`` sequence length, ``E`` embed size, ``H`` heads, ``D = E // H``.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn

MASKED_SCORE = -1e10
"""The value a masked score is replaced with (the guide's rule)."""


def attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: Optional[torch.Tensor] = None,
    *,
    causal=False,
    scale: Optional[float] = None,
    additive_mask: Optional[torch.Tensor] = None,
    dropout_mask: Optional[torch.Tensor] = None,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """Attention written out in plain PyTorch, scores materialized.

    Args:
        q: (N, H, L_q, D).  k, v: (N, H_kv, L_k, D) with H a multiple of H_kv (grouped-query
            attention: query head h uses kv head h // (H // H_kv)).
        mask: broadcastable to (N, H, L_q, L_k); ``mask == 0`` replaces the score by -1e10.
            A 2-D mask is taken as a key-padding mask (N, L_k).
        causal: key j is excluded entirely (probability 0) for query i when j > i + offset:
            False; True or "top_left" (offset 0, as torch's ``is_causal``); "bottom_right"
            (offset L_k - L_q, flash-attention's alignment).  A row that sees no key gives 0.
        scale: score scale, default 1/sqrt(D).
        additive_mask: broadcastable to (N, H, L_q, L_k), added to the scaled scores
            (torch's float ``attn_mask`` rule).
        dropout_mask: attention dropout given explicitly, broadcastable to (N, H, L_q, L_k):
            the softmax weights are multiplied by ``dropout_mask / (1 - dropout_p)``
            (0 = dropped).  None applies no dropout.
    Returns:
        (N, H, L_q, D) in the dtype of ``q``; the softmax is taken in that dtype too.
    """
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    if k.dim() >= 3 and k.shape[-3] != q.shape[-3]:  # grouped-query attention
        group = q.shape[-3] // k.shape[-3]
        k, v = k.repeat_interleave(group, dim=-3), v.repeat_interleave(group, dim=-3)
    energy = torch.matmul(q, k.transpose(-1, -2)) * scale
    if additive_mask is not None:
        energy = energy + additive_mask
    if mask is not None:
        if mask.dim() == 2:
            mask = mask[:, None, None, :]
        # -1e10 overflows float16: there the most negative finite value plays its role.
        fill = max(MASKED_SCORE, torch.finfo(energy.dtype).min)
        energy = energy.masked_fill(mask == 0, fill)
    blind = None
    if causal:
        lq, lk = energy.shape[-2:]
        offset = lk - lq if causal_alignment(causal) == "bottom_right" else 0
        future = torch.ones(lq, lk, dtype=torch.bool, device=energy.device).triu(1 + offset)
        energy = energy.masked_fill(future, float("-inf"))
        blind = future.all(-1, keepdim=True)  # rows that see no key
        energy = energy.masked_fill(blind, 0.0)  # finite, then zeroed: no NaN, no gradient
    weights = torch.softmax(energy, dim=-1)
    if blind is not None:
        weights = weights.masked_fill(blind, 0.0)
    if dropout_mask is not None:
        weights = weights * dropout_mask.to(weights.dtype) / (1.0 - dropout_p)
    return torch.matmul(weights, v)


def causal_alignment(causal) -> Optional[str]:
    """None, "top_left" or "bottom_right" for a causal argument: False / True / the strings,
    or fastattn's op codes 0 / 1 / 2."""
    if causal is False or causal is None or (causal == 0 and causal is not True):
        return None
    if causal == "bottom_right" or (causal == 2 and causal is not True):
        return "bottom_right"
    return "top_left"


class SelfAttention(nn.Module):
    """Multi-head attention, ``forward(values, keys, query, mask)`` as in the guide.

    values: (N, L_k, E), keys: (N, L_k, E), query: (N, L_q, E),
    mask: broadcastable to (N, H, L_q, L_k) (usually (N, 1, 1, L_k)) or None.
    Returns (N, L_q, E).
    """

    def __init__(self, embed_size: int, heads: int, *, qkv_projection: bool = True,
                 device=None, dtype=None):
        super().__init__()
        if embed_size % heads != 0:
            raise ValueError(f"embed_size ({embed_size}) must be divisible by heads ({heads})")
        self.embed_size = embed_size
        self.heads = heads
        self.head_dim = embed_size // heads
        self.qkv_projection = qkv_projection
        kw = dict(device=device, dtype=dtype)
        self.values = nn.Linear(embed_size, embed_size, **kw)
        self.keys = nn.Linear(embed_size, embed_size, **kw)
        self.queries = nn.Linear(embed_size, embed_size, **kw)
        self.fc_out = nn.Linear(embed_size, embed_size, **kw)

    def forward(self, values, keys, query, mask):
        n, lq = query.shape[:2]
        if self.qkv_projection:
            values, keys, query = self.values(values), self.keys(keys), self.queries(query)
        v = values.reshape(n, values.shape[1], self.heads, self.head_dim).transpose(1, 2)
        k = keys.reshape(n, keys.shape[1], self.heads, self.head_dim).transpose(1, 2)
        q = query.reshape(n, lq, self.heads, self.head_dim).transpose(1, 2)
        out = attention_reference(q, k, v, mask)
        return self.fc_out(out.transpose(1, 2).reshape(n, lq, self.embed_size))


class BertEncoderLayer(nn.Module):
    """Post-LN encoder layer: ``norm1(attention + query)``, then ``norm2(feedforward(x) + x)``."""

    def __init__(self, embed_size: int, heads: int, forward_expansion: int, *,
                 qkv_projection: bool = True, device=None, dtype=None):
        super().__init__()
        kw = dict(device=device, dtype=dtype)
        self.attention = SelfAttention(embed_size, heads, qkv_projection=qkv_projection, **kw)
        self.norm1 = nn.LayerNorm(embed_size, **kw)
        self.norm2 = nn.LayerNorm(embed_size, **kw)
        self.feedforward = nn.Sequential(
            nn.Linear(embed_size, forward_expansion * embed_size, **kw),
            nn.ReLU(),
            nn.Linear(forward_expansion * embed_size, embed_size, **kw),
        )

    def forward(self, values, keys, query, mask):
        x = self.norm1(self.attention(values, keys, query, mask) + query)
        return self.norm2(self.feedforward(x) + x)


class BertEncoder(nn.Module):
    """Token + position embeddings, dropout, then ``num_layers`` encoder layers.

    forward(x: (N, L) token ids, mask: broadcastable to (N, H, L, L) or None) -> (N, L, E).
    """

    def __init__(self, src_vocab_size: int, embed_size: int, num_layers: int, heads: int,
                 forward_expansion: int, dropout: float, max_length: int, *,
                 qkv_projection: bool = True, device=None, dtype=None):
        super().__init__()
        kw = dict(device=device, dtype=dtype)
        self.embed_size = embed_size
        self.src_vocab_size = src_vocab_size
        self.num_layers = num_layers
        self.embeddings = nn.Embedding(src_vocab_size, embed_size, **kw)
        self.pos_embeddings = nn.Embedding(max_length, embed_size, **kw)
        self.layers = nn.ModuleList(
            BertEncoderLayer(embed_size, heads, forward_expansion,
                             qkv_projection=qkv_projection, **kw)
            for _ in range(num_layers)
        )
        self.dropout = nn.Dropout(dropout)

    def forward(self, x, mask):
        n, seq_length = x.shape
        positions = torch.arange(seq_length, device=x.device).expand(n, seq_length)
        out = self.dropout(self.embeddings(x) + self.pos_embeddings(positions))
        for layer in self.layers:
            out = layer(out, out, out, mask)
        return out
