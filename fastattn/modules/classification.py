"""``BertForSequenceClassification``: the encoder, padding-aware pooling and a linear classifier.

    logits = classifier(dropout(pool(encoder(input_ids, key_padding_mask))))

``pooling="cls"`` takes the first token's vector (pad on the right); ``pooling="mean"`` averages
the vectors of the real tokens only.  Padded keys are masked in every attention layer, so the
logits do not depend on what the padded positions hold.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

from fastattn import reference as ref
from fastattn.modules.encoder import BertEncoder

POOLINGS = ("cls", "mean")


class BertForSequenceClassification(nn.Module):
    """Sequence classifier on :class:`fastattn.modules.encoder.BertEncoder`.

    Args:
        vocab_size: number of token ids.  num_classes: number of labels.
        embed_size, num_layers, heads, forward_expansion, dropout, max_length: the encoder's.
        pad_id: the padding token id, used when ``attention_mask`` is not given.
        pooling: "mean" (masked mean over real tokens) or "cls" (first token).
        qkv_projection, activation, attention_dropout, backend: passed to the fused encoder
            (attention_dropout: BERT's attention_probs_dropout_prob, 0.0 by default).
        init_std: BERT's initialization, normal(0, init_std) for every matrix (embeddings and
            linear weights) and zero biases (LayerNorms keep weight 1, bias 0); None keeps the
            PyTorch defaults of the guide's modules (unit-variance embeddings), which train
            much more slowly from scratch.
        reference: build the same classifier on :class:`fastattn.reference.BertEncoder` (plain
            PyTorch, same parameter names): the oracle for tests.  Only ``activation="relu"``.
    Shapes:
        forward(input_ids (N, L) integer, attention_mask (N, L) of 1 (real) / 0 (pad) or None)
        -> logits (N, num_classes).
    """

    def __init__(self, vocab_size: int, num_classes: int, *, embed_size: int = 128,
                 num_layers: int = 2, heads: int = 4, forward_expansion: int = 4,
                 dropout: float = 0.1, max_length: int = 512, pad_id: int = 0,
                 pooling: str = "mean", qkv_projection: bool = True, activation: str = "relu",
                 attention_dropout: float = 0.0,
                 init_std: Optional[float] = 0.02, backend: Optional[str] = None,
                 reference: bool = False,
                 device=None, dtype=None):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        if not 0 <= pad_id < vocab_size:
            raise ValueError(f"pad_id must be a token id in [0, {vocab_size}), got {pad_id}")
        kw = dict(qkv_projection=qkv_projection, device=device, dtype=dtype)
        if reference:
            if attention_dropout:
                raise ValueError("the reference encoder has no attention dropout, got "
                                 f"attention_dropout={attention_dropout}")
            if activation != "relu":
                raise ValueError(f"the reference encoder has a ReLU feed-forward only, "
                                 f"got activation={activation!r}")
            self.encoder = ref.BertEncoder(vocab_size, embed_size, num_layers, heads,
                                           forward_expansion, dropout, max_length, **kw)
        else:
            self.encoder = BertEncoder(vocab_size, embed_size, num_layers, heads,
                                       forward_expansion, dropout, max_length,
                                       activation=activation,
                                       attention_dropout=attention_dropout, backend=backend,
                                       **kw)
        self.num_classes, self.pad_id, self.pooling = num_classes, pad_id, pooling
        self.max_length = max_length
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(embed_size, num_classes, device=device, dtype=dtype)
        if init_std is not None:
            self.init_weights(init_std)

    @torch.no_grad()
    def init_weights(self, std: float = 0.02) -> None:
        """normal(0, std) for every parameter of 2 or more dims, zeros for every bias."""
        for name, p in self.named_parameters():
            if p.dim() >= 2:
                p.normal_(0.0, std)
            elif name.rsplit(".", 1)[-1] == "bias":
                p.zero_()

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, pad_id={self.pad_id}, pooling={self.pooling!r}"

    def _check(self, input_ids, attention_mask):
        if not isinstance(input_ids, torch.Tensor):
            raise TypeError(f"input_ids must be a torch.Tensor, got {type(input_ids).__name__}")
        if input_ids.dim() != 2 or input_ids.dtype.is_floating_point or input_ids.is_complex():
            raise ValueError(f"input_ids must be (N, L) integer token ids, got shape "
                             f"{tuple(input_ids.shape)} of {input_ids.dtype}")
        if input_ids.shape[1] > self.max_length:
            raise ValueError(f"input_ids has length {input_ids.shape[1]} > max_length "
                             f"{self.max_length}")
        if attention_mask is None:
            return input_ids != self.pad_id
        if not isinstance(attention_mask, torch.Tensor):
            raise TypeError(f"attention_mask must be a torch.Tensor or None, got "
                            f"{type(attention_mask).__name__}")
        if attention_mask.shape != input_ids.shape:
            raise ValueError(f"attention_mask must have the shape of input_ids "
                             f"{tuple(input_ids.shape)}, got {tuple(attention_mask.shape)}")
        return attention_mask != 0

    def forward(self, input_ids: torch.Tensor,
                attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        keep = self._check(input_ids, attention_mask)  # (N, L) bool, True = real token
        hidden = self.encoder(input_ids, keep[:, None, None, :])  # (N, L, E)
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            real = keep.unsqueeze(-1)  # (N, L, 1)
            count = real.sum(1).clamp(min=1).to(hidden.dtype)  # (N, 1); an all-pad row pools 0
            pooled = torch.where(real, hidden, 0.0).sum(1) / count
        return self.classifier(self.dropout(pooled))
