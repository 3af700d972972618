"""Padding-free Hugging Face BERT encoders: every layer runs on the packed real tokens only.

:func:`fastattn.optimize` gives each BERT encoder (a module with a ``layer`` list of BERT layers,
``BertEncoder`` in transformers 4.x and 5.x) the forward :func:`packed_encoder_forward`::

    mask (B, 1, 1, L) or (B, 1, L, L) key padding  ->  keep (B, L)          (no other mask kind)
    hidden (B, L, E) --unpad_input--> (1, T, E), T = real tokens, once after the embeddings
    every layer(hidden (1, T, E), PackedSequences(cu_seqlens, max_seqlen))  # the real modules
    (1, T, E) --pad_input--> (B, L, E), zeros at the padded positions

The layers are the model's own modules, called as usual (hooks, gradient checkpointing and
transformers' hidden-state capture run); a :class:`PackedSequences` takes the attention mask's
place and fastattn's attention function (:func:`fastattn.integrations.transformers.
attention_forward`) runs variable-length attention on it: the Triton varlen kernels on CUDA,
on CPU torch's fused SDPA kernel once per sequence.  Linear layers, LayerNorms, dropout and the
feed-forward see T rows instead of B·L.

Real tokens get the padded computation's result (the padded keys were masked anyway); padded
positions of ``last_hidden_state`` and of every hidden state after the embeddings are 0 (and get
no gradient).  A batch without padding runs the padded layout without any mask.  Anything else
— another mask pattern, cross-attention, caches, head masks, ``output_attentions``, another
attention implementation, torch.compile tracing, transformers 4.x gradient checkpointing —
runs the original forward unchanged.
"""
from __future__ import annotations

import dataclasses
import inspect
from typing import Callable, Dict, List, Optional

import torch
import torch.nn as nn

from fastattn.padding import pad_input, unpad_input


@dataclasses.dataclass(frozen=True)
class PackedSequences:
    """The attention mask of a packed batch: hidden states (1, T, E) hold B sequences back to
    back; sequence b is tokens ``cu_seqlens[b]:cu_seqlens[b + 1]`` ((B + 1,) int32)."""
    cu_seqlens: torch.Tensor
    max_seqlen: int


def key_padding_from_mask(mask, batch: int, length: int) -> Optional[torch.Tensor]:
    """(B, L) bool of real tokens when ``mask`` is a key-padding mask as transformers builds it
    for a BERT encoder, else None.  Takes bool (True attends) and additive float masks (0
    attends, the dtype's minimum or -inf does not), (B, 1, 1, L) or (B, 1, L, L) with every row
    equal (transformers 4.x SDPA expands the padding mask to that)."""
    if not isinstance(mask, torch.Tensor) or mask.dim() != 4:
        return None
    if mask.shape[0] != batch or mask.shape[1] != 1 or mask.shape[3] != length or (
            mask.shape[2] not in (1, length)):
        return None
    if mask.dtype == torch.bool:
        keep = mask[:, 0]
    elif mask.is_floating_point():
        keep = mask[:, 0] == 0
        if not bool((keep | (mask[:, 0] <= torch.finfo(mask.dtype).min / 2)).all()):
            return None  # an additive bias, not a padding mask
    else:
        return None
    if keep.shape[1] != 1 and not bool((keep == keep[:, :1]).all()):
        return None
    return keep[:, 0]


def _captured_hidden_states() -> Optional[list]:
    """transformers >= 5 records hidden states with hooks on the layers into a per-call list;
    that list when hidden states are being recorded, else None."""
    try:
        from transformers.utils.output_capturing import _active_collector
    except ImportError:
        return None
    collected = _active_collector.get()
    return None if not collected else collected.get("hidden_states")


def _arguments(base: Callable, module, args, kwargs) -> Dict[str, object]:
    bound = inspect.signature(base).bind(module, *args, **kwargs)
    named = dict(bound.arguments)
    for name, p in inspect.signature(base).parameters.items():
        if p.kind is inspect.Parameter.VAR_KEYWORD:
            named.update(named.pop(name, {}))
    return named


def _layers_checkpoint_themselves(layers) -> bool:
    try:
        from transformers.modeling_layers import GradientCheckpointingLayer
    except ImportError:  # transformers < 4.52: the encoder's own loop checkpoints
        return False
    return all(isinstance(layer, GradientCheckpointingLayer) for layer in layers)


def _attention_is_fastattn(encoder: nn.Module) -> bool:
    """Whether the layers' self-attention is fastattn's (which alone reads PackedSequences):
    ``attn_implementation="fastattn"`` (transformers >= 5) or the swapped 4.x modules."""
    if getattr(getattr(encoder, "config", None), "_attn_implementation", None) == "fastattn":
        return True
    from fastattn.integrations.transformers import SelfAttention

    return all(isinstance(getattr(getattr(layer, "attention", None), "self", None), SelfAttention)
               for layer in encoder.layer)


def is_bert_encoder(module: nn.Module) -> bool:
    """A BERT encoder whose layers can run packed: a ``layer`` list of self-attention layers
    (``attention.self`` with query / key / value, ``attention.output``, ``intermediate``,
    ``output``), not a decoder."""
    layers = getattr(module, "layer", None)
    if not isinstance(layers, nn.ModuleList) or len(layers) == 0:
        return False
    if getattr(getattr(module, "config", None), "is_decoder", False):
        return False
    for layer in layers:
        attention = getattr(layer, "attention", None)
        self_attention = getattr(attention, "self", None)
        if self_attention is None or getattr(attention, "output", None) is None or not all(
                isinstance(getattr(self_attention, n, None), nn.Linear)
                for n in ("query", "key", "value")):
            return False
        if getattr(layer, "intermediate", None) is None or getattr(layer, "output", None) is None:
            return False
    return True


def _packable(encoder: nn.Module, named: Dict[str, object]) -> bool:
    unsupported = ("encoder_hidden_states", "past_key_values", "past_key_value", "cache")
    if any(named.get(name) is not None for name in unsupported):
        return False
    head_mask = named.get("head_mask")
    if head_mask is not None and any(h is not None for h in head_mask):
        return False
    if named.get("output_attentions") or named.get("use_cache"):
        return False
    if not _attention_is_fastattn(encoder):
        return False
    if getattr(encoder, "gradient_checkpointing", False) and encoder.training and (
            not _layers_checkpoint_themselves(encoder.layer)):
        return False
    return True


def packed_encoder_forward(self, hidden_states, attention_mask=None, *args, **kwargs):
    """BERT encoder forward on packed real tokens (see the module docstring); the original
    forward wherever that does not apply or ``self.fastattn_unpad`` is False."""
    base = self._fastattn_base.forward
    if not self.fastattn_unpad or torch.compiler.is_compiling() or not isinstance(
            hidden_states, torch.Tensor) or hidden_states.dim() != 3:
        return base(self, hidden_states, attention_mask, *args, **kwargs)
    named = _arguments(base, self, (hidden_states, attention_mask, *args), kwargs)
    batch, length = hidden_states.shape[:2]
    keep = key_padding_from_mask(attention_mask, batch, length) if _packable(self, named) else None
    if keep is None:
        return base(self, hidden_states, attention_mask, *args, **kwargs)
    if bool(keep.all()):  # no padding: the padded layout without a mask
        return base(self, hidden_states, None, *args, **kwargs)
    packed, indices, cu_seqlens, max_seqlen = unpad_input(hidden_states, keep)
    sequences = PackedSequences(cu_seqlens, max_seqlen)
    x = packed[None]
    produced: List[torch.Tensor] = [x]
    for layer in self.layer:
        out = layer(x, sequences)
        x = out[0] if isinstance(out, tuple) else out
        produced.append(x)
    padded = {}

    def pad(t: torch.Tensor) -> torch.Tensor:
        if t is produced[0]:
            return hidden_states
        if id(t) not in padded:
            padded[id(t)] = pad_input(t[0], indices, batch, length)
        return padded[id(t)]

    captured = _captured_hidden_states()
    if captured is not None:
        ours = {id(t) for t in produced}
        captured[:] = [pad(t) if t is not None and id(t) in ours else t for t in captured]
    last = pad(x)
    from transformers.modeling_outputs import BaseModelOutputWithPastAndCrossAttentions

    hidden = tuple(pad(t) for t in produced) if named.get("output_hidden_states") else None
    if named.get("return_dict", True) is False:
        return tuple(v for v in (last, hidden) if v is not None)
    return BaseModelOutputWithPastAndCrossAttentions(last_hidden_state=last, hidden_states=hidden)
