"""Work counted per case: FLOPs as FlashAttention counts them, bytes for memory-bound ops.

Attention (one head: two matmuls of Lq x Lk x D, 2 FLOPs per multiply-add):
    forward   = 4 * B * H * Lq * Lk * D
    backward  = 2.5 * forward  (five matmuls instead of two)
    fwd + bwd = 3.5 * forward
    causal halves every count; a padded batch counts real tokens only:
    4 * H * D * sum_b(len_b ** 2) in place of 4 * B * H * L * L.
Linear layers: 2 * tokens * in * out forward, 3x that for forward + backward.
LayerNorm bytes (the fewest a kernel must move): forward reads x and writes y; backward also
reads x and dy and writes dx:  forward = 2 * rows * hidden * elem, fwd + bwd = 5 * ...
(weights, biases and per-row statistics are O(hidden + rows) and left out).
"""
from __future__ import annotations

from typing import Optional, Sequence

MODES = ("fwd", "bwd", "fwd+bwd")
_ATTN_FACTOR = {"fwd": 1.0, "bwd": 2.5, "fwd+bwd": 3.5}
_LINEAR_FACTOR = {"fwd": 1.0, "bwd": 2.0, "fwd+bwd": 3.0}


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


def _check_positive(**sizes: int) -> None:
    for name, value in sizes.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")


def attention_flops(batch: int, heads: int, seqlen_q: int, seqlen_k: int, head_dim: int, *,
                    causal: bool = False, mode: str = "fwd",
                    lengths: Optional[Sequence[int]] = None) -> float:
    """FLOPs of attention over (batch, heads, seqlen_q, seqlen_k, head_dim).

    ``lengths``: the real length of each sequence of a padded self-attention batch
    (len(lengths) == batch, each <= seqlen_k); only real query/key pairs are counted.
    """
    _check_mode(mode)
    _check_positive(batch=batch, heads=heads, seqlen_q=seqlen_q, seqlen_k=seqlen_k,
                    head_dim=head_dim)
    if lengths is None:
        pairs = batch * seqlen_q * seqlen_k
    else:
        if len(lengths) != batch or any(not 0 <= n <= seqlen_k for n in lengths):
            raise ValueError(f"lengths must hold {batch} values in [0, {seqlen_k}], got "
                             f"{list(lengths)}")
        pairs = sum(int(n) ** 2 for n in lengths)
    flops = 4.0 * heads * head_dim * pairs * _ATTN_FACTOR[mode]
    return flops / 2 if causal else flops


def linear_flops(tokens: int, in_features: int, out_features: int, *, mode: str = "fwd") -> float:
    """FLOPs of ``tokens`` rows through a (in_features -> out_features) linear layer."""
    _check_mode(mode)
    _check_positive(tokens=tokens, in_features=in_features, out_features=out_features)
    return 2.0 * tokens * in_features * out_features * _LINEAR_FACTOR[mode]


def feedforward_flops(tokens: int, embed: int, hidden: int, *, mode: str = "fwd") -> float:
    """Linear(embed, hidden) -> activation -> Linear(hidden, embed); the activation is free."""
    return (linear_flops(tokens, embed, hidden, mode=mode)
            + linear_flops(tokens, hidden, embed, mode=mode))


def encoder_flops(lengths: Sequence[int], embed: int, heads: int, forward_expansion: int,
                  num_layers: int, *, mode: str = "fwd") -> float:
    """A post-LN BERT encoder over sequences of the given real lengths (padding not counted).

    Per layer: Q, K, V and output projections (4 linears E -> E), attention over each
    sequence, and the feed-forward E -> fe*E -> E.  Embeddings and LayerNorms are left out.
    """
    _check_positive(embed=embed, heads=heads, forward_expansion=forward_expansion,
                    num_layers=num_layers)
    tokens = int(sum(lengths))
    longest = max(lengths)
    per_layer = (4 * linear_flops(tokens, embed, embed, mode=mode)
                 + attention_flops(len(lengths), heads, longest, longest, embed // heads,
                                   mode=mode, lengths=lengths)
                 + feedforward_flops(tokens, embed, forward_expansion * embed, mode=mode))
    return num_layers * per_layer


def layernorm_bytes(rows: int, hidden: int, element_size: int, *, mode: str = "fwd") -> float:
    """Bytes a LayerNorm must move: forward 2 tensors of (rows, hidden), fwd + bwd 5."""
    _check_mode(mode)
    _check_positive(rows=rows, hidden=hidden, element_size=element_size)
    tensors = {"fwd": 2, "bwd": 3, "fwd+bwd": 5}[mode]
    return float(tensors * rows * hidden * element_size)
