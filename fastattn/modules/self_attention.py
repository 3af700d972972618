"""``fastattn.SelfAttention``: the guide's multi-head attention module on the fused kernel.

Same constructor, forward signature and parameter names (``values, keys, queries, fc_out``) as
:class:`fastattn.reference.SelfAttention`, so state dicts move both ways.  When ``values``,
``keys`` and ``query`` are one tensor (self-attention), the three projections run as one GEMM
over the concatenated weights and Q, K, V are strided views of its output: no copies.  On the
"torch" backend (CPU under "auto") they stay three GEMMs, which saves the weight copy.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from fastattn.functional import attention, attention_backend, varlen_attention


class SelfAttention(nn.Module):
    """Multi-head attention: ``forward(values, keys, query, mask)``.

    Args:
        embed_size: E.  heads: H, with E divisible by H; head_dim D = E // H.
        qkv_projection: apply the ``values/keys/queries`` projections (the guide's text);
            False reproduces the guide's printed listing, which never calls them.
        attention_dropout: dropout on the attention weights in training mode (BERT's
            attention_probs_dropout_prob), fused into the kernels; 0.0 (the guide's) for none.
        backend: "auto", "triton", "torch", "cuda" or None (the process default).
    Shapes:
        values, keys: (N, L_k, E); query: (N, L_q, E);
        mask: None, (N, L_k), or broadcastable to (N, H, L_q, L_k) — ``mask == 0`` is masked.
        Returns (N, L_q, E).
    """

    def __init__(self, embed_size: int, heads: int, *, qkv_projection: bool = True,
                 attention_dropout: float = 0.0, backend: Optional[str] = None, device=None,
                 dtype=None):
        super().__init__()
        if embed_size % heads != 0:
            raise ValueError(f"embed_size ({embed_size}) must be divisible by heads ({heads})")
        self.embed_size, self.heads, self.head_dim = embed_size, heads, embed_size // heads
        self.qkv_projection = qkv_projection
        if not 0.0 <= attention_dropout < 1.0:
            raise ValueError(f"attention_dropout must be in [0, 1), got {attention_dropout}")
        self.attention_dropout = float(attention_dropout)
        self.backend = backend
        kw = dict(device=device, dtype=dtype)
        self.values = nn.Linear(embed_size, embed_size, **kw)
        self.keys = nn.Linear(embed_size, embed_size, **kw)
        self.queries = nn.Linear(embed_size, embed_size, **kw)
        self.fc_out = nn.Linear(embed_size, embed_size, **kw)

    def extra_repr(self) -> str:
        drop = f", attention_dropout={self.attention_dropout}" if self.attention_dropout else ""
        return (f"embed_size={self.embed_size}, heads={self.heads}, "
                f"qkv_projection={self.qkv_projection}{drop}, backend={self.backend}")

    def _check(self, name: str, t: torch.Tensor, n: Optional[int]) -> None:
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 3 or t.shape[-1] != self.embed_size or (n is not None and t.shape[0] != n):
            raise ValueError(f"{name} must have shape (N, L, {self.embed_size})"
                             f"{'' if n is None else f' with N={n}'}, got {tuple(t.shape)}")

    def _dropout_p(self) -> float:
        return self.attention_dropout if self.training else 0.0

    def _project(self, values, keys, query):
        """Q (N, L_q, E), K, V (N, L_k, E) after the projections, fused where inputs coincide."""
        if not self.qkv_projection:
            return query, keys, values
        if attention_backend(self.backend, query, self.head_dim) == "torch":
            # torch's GEMMs run as fast on three weights as on their concatenation, which would
            # be a copy of 3 E x E weights (and its backward) on every call
            return self.queries(query), self.keys(keys), self.values(values)
        if values is keys and keys is query:
            w = torch.cat([self.queries.weight, self.keys.weight, self.values.weight])
            b = torch.cat([self.queries.bias, self.keys.bias, self.values.bias])
            return F.linear(query, w, b).chunk(3, dim=-1)
        q = self.queries(query)
        if values is keys:
            w = torch.cat([self.keys.weight, self.values.weight])
            b = torch.cat([self.keys.bias, self.values.bias])
            k, v = F.linear(keys, w, b).chunk(2, dim=-1)
            return q, k, v
        return q, self.keys(keys), self.values(values)

    def forward(self, values: torch.Tensor, keys: torch.Tensor, query: torch.Tensor,
                mask: Optional[torch.Tensor] = None, *,
                cu_seqlens: Optional[torch.Tensor] = None,
                max_seqlen: Optional[int] = None) -> torch.Tensor:
        """With ``cu_seqlens``: packed attention, see :meth:`forward_packed`: values, keys and
        query are then (T, E) packed tokens of the same sequences (each projected with its own
        weights; one tensor passed three times is self-attention), and mask is None."""
        if cu_seqlens is not None:
            if mask is not None:
                raise ValueError("packed attention (cu_seqlens given) takes no mask")
            return self._forward_packed(values, keys, query, cu_seqlens, max_seqlen)
        self._check("query", query, None)
        n, lq = query.shape[:2]
        self._check("keys", keys, n)
        self._check("values", values, n)
        if keys.shape[1] != values.shape[1]:
            raise ValueError(f"keys and values must have the same length, got "
                             f"{tuple(keys.shape)} and {tuple(values.shape)}")
        q, k, v = self._project(values, keys, query)
        split = lambda t: t.unflatten(-1, (self.heads, self.head_dim)).transpose(1, 2)
        out = attention(split(q), split(k), split(v), mask, dropout_p=self._dropout_p(),
                        backend=self.backend)
        return self.fc_out(out.transpose(1, 2).reshape(n, lq, self.embed_size))

    def forward_packed(self, x: torch.Tensor, cu_seqlens: torch.Tensor,
                       max_seqlen: int) -> torch.Tensor:
        """Self-attention over packed tokens, no padding computed.

        x: (T, E) — the real tokens of B sequences, back to back; cu_seqlens: (B + 1,) int32
        offsets of the sequences in x; max_seqlen: the longest length or more (a Python
        int; the padded length under torch.compile).
        Returns (T, E); equal to ``forward(x, x, x, key_padding_mask)`` on the real tokens.
        Goes through ``self(...)``, so module hooks (FSDP2's, for one) run as for ``forward``.
        """
        return self(x, x, x, cu_seqlens=cu_seqlens, max_seqlen=max_seqlen)

    def _forward_packed(self, values, keys, query, cu_seqlens, max_seqlen):
        if max_seqlen is None:
            raise ValueError("max_seqlen is required with cu_seqlens")
        for name, t in (("query", query), ("keys", keys), ("values", values)):
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
            if t.dim() != 2 or t.shape[1] != self.embed_size:
                raise ValueError(f"{name} must be packed tokens of shape (T, {self.embed_size}), "
                                 f"got {tuple(t.shape)}")
        if not values.shape == keys.shape == query.shape:
            raise ValueError(f"packed values, keys and query must be tokens of the same sequences "
                             f"(one shape (T, E)), got {tuple(values.shape)}, "
                             f"{tuple(keys.shape)}, {tuple(query.shape)}")
        q, k, v = self._project(values, keys, query)
        split = lambda t: t.unflatten(-1, (self.heads, self.head_dim))
        out = varlen_attention(split(q), split(k), split(v), cu_seqlens, cu_seqlens,
                               max_seqlen, max_seqlen, dropout_p=self._dropout_p(),
                               backend=self.backend)
        return self.fc_out(out.flatten(-2))
