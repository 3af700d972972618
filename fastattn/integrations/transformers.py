"""Hugging Face transformers integration: ``attn_implementation="fastattn"`` and :func:`optimize`.

* :func:`attention_forward` — an ``AttentionInterface`` function with the signature of
  transformers' ``sdpa_attention_forward``: query, key, value (B, H, S, D) -> ((B, S, H, D), None),
  computed by :func:`fastattn.scaled_dot_product_attention`.
* :func:`build_attention_mask` — the matching ``AttentionMaskInterface`` function.  Without one,
  transformers 5.x passes ``attention_mask=None`` to a custom implementation and padding is
  silently ignored.  Encoder (bidirectional) masks become a (B, 1, 1, L_k) bool key-padding mask,
  which the kernels read as one row per key block; every other pattern (causal, sliding window,
  packed sequences, overlays) is built by transformers' own ``sdpa_mask`` as a (B, 1, L_q, L_k)
  bool mask, or None when ``is_causal`` suffices.
* :func:`register` — registers both under ``"fastattn"``; runs on import of this module (and,
  through :mod:`fastattn.integrations._import_hook`, after ``import fastattn``).
* :func:`optimize` — swaps fastattn's kernels into a BERT model: the attention implementation
  (transformers >= 5, whose BERT uses ``AttentionInterface``) or the self-attention modules
  (transformers 4.x), LayerNorms, residual adds and the feed-forward GEMMs.  Parameters are
  shared with the original modules, so ``state_dict`` keys and values are unchanged.
"""
from __future__ import annotations

import inspect
from typing import List, Optional

try:
    import transformers  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised only without transformers
    raise ImportError("fastattn.integrations.transformers needs Hugging Face transformers: "
                      "pip install 'fastattn[hf]' (or pip install transformers)") from exc

import torch
import torch.nn as nn

from fastattn.backends import BACKENDS
from fastattn.functional import feedforward, scaled_dot_product_attention, varlen_attention
from fastattn.modules.layer_norm import LayerNorm
from fastattn.integrations.packed_bert import (PackedSequences, is_bert_encoder,
                                               packed_encoder_forward)

NAME = "fastattn"


# --- the attention function --------------------------------------------------------------------

def attention_forward(module: nn.Module, query: torch.Tensor, key: torch.Tensor,
                      value: torch.Tensor, attention_mask: Optional[torch.Tensor],
                      dropout: float = 0.0, scaling: Optional[float] = None,
                      is_causal: Optional[bool] = None, **kwargs):
    """transformers ``AttentionInterface`` function on fastattn's scaled_dot_product_attention.

    Args:
        module: the calling attention module; read for ``training``, ``is_causal``,
            ``fastattn_backend`` (set by :func:`optimize`).
        query: (B, H, L_q, D).  key, value: (B, H_kv, L_k, D).
        attention_mask: None, bool (True = attend) or additive float, broadcastable to
            (B, H, L_q, L_k); usually (B, 1, 1, L_k) or (B, 1, L_q, L_k).
        dropout: attention-probability dropout, applied only when ``module.training``.
        scaling: score scale, default 1/sqrt(D).
        is_causal: None = ``module.is_causal``; as in transformers' SDPA integration, the causal
            flag is used only when there is no mask and L_q > 1 (a mask already encodes it).
        kwargs: other transformers arguments; ``position_bias`` and ``softcap`` raise, the rest
            is ignored.
    Returns:
        (attn_output (B, L_q, H, D), None) — attention weights are never materialized.
    """
    if isinstance(attention_mask, PackedSequences):
        return _packed_attention(module, query, key, value, attention_mask,
                                 dropout if module.training else 0.0, scaling), None
    if kwargs.get("softcap") is not None:
        raise ValueError("attn_implementation='fastattn' does not support softcap")
    if kwargs.get("position_bias") is not None:
        raise ValueError("attn_implementation='fastattn' does not support position_bias")
    if is_causal is None:
        is_causal = getattr(module, "is_causal", True)
    is_causal = query.shape[2] > 1 and attention_mask is None and bool(is_causal)
    if attention_mask is not None and attention_mask.shape[-1] > key.shape[2]:
        attention_mask = attention_mask[..., :key.shape[2]]  # masks sized for a static cache
    out = scaled_dot_product_attention(
        query, key, value, attn_mask=attention_mask,
        dropout_p=dropout if module.training else 0.0, is_causal=is_causal, scale=scaling,
        enable_gqa=key.shape[1] != query.shape[1],  # grouped K/V heads: read, not repeated
        backend=getattr(module, "fastattn_backend", None))
    return out.transpose(1, 2).contiguous(), None


def _packed_attention(module, query, key, value, sequences, dropout_p, scaling):
    """(1, H, T, D) packed sequences -> (1, T, H, D) on fastattn.varlen_attention."""
    if query.shape[0] != 1 or key.shape[2] != query.shape[2]:
        raise ValueError(f"packed sequences take (1, H, T, D) self-attention inputs, got query "
                         f"{tuple(query.shape)}, key {tuple(key.shape)}")
    q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))  # (T, H, D), (T, H_kv, D)
    out = varlen_attention(q, k, v, sequences.cu_seqlens, sequences.cu_seqlens,
                           sequences.max_seqlen, sequences.max_seqlen, scale=scaling,
                           dropout_p=dropout_p, backend=getattr(module, "fastattn_backend", None))
    return out[None]


# --- the mask function -------------------------------------------------------------------------

def build_attention_mask(*, mask_function=None, attention_mask: Optional[torch.Tensor] = None,
                         allow_is_bidirectional_skip: bool = False, **kwargs):
    """transformers ``AttentionMaskInterface`` function for ``"fastattn"``.

    Called by ``create_bidirectional_mask`` / ``create_causal_mask`` with keyword arguments
    (batch_size, q_length, kv_length, q_offset, kv_offset, mask_function, attention_mask — the
    2-D (B, kv_offset + L_k) padding mask, True = token — allow_is_*_skip, dtype, config, ...).

    Returns:
        * plain bidirectional attention (an encoder): None without padding, else the key-padding
          mask (B, 1, 1, L_k) bool;
        * anything else: transformers' ``sdpa_mask`` result, (B, 1, L_q, L_k) bool, or None where
          a causal mask reduces to ``is_causal`` (which :func:`attention_forward` then applies).
    """
    from transformers import masking_utils

    if mask_function is getattr(masking_utils, "bidirectional_mask_function", None):
        if attention_mask is None:
            return None
        kv_length, kv_offset = kwargs["kv_length"], kwargs.get("kv_offset", 0)
        padding = masking_utils.prepare_padding_mask(attention_mask, kv_length, kv_offset)
        padding = padding[:, kv_offset:kv_offset + kv_length].to(torch.bool)
        if (allow_is_bidirectional_skip and not torch.compiler.is_compiling()
                and bool(padding.all())):
            return None
        return padding[:, None, None, :]
    return masking_utils.sdpa_mask(mask_function=mask_function, attention_mask=attention_mask,
                                   allow_is_bidirectional_skip=allow_is_bidirectional_skip,
                                   **kwargs)


def _attention_interface():
    try:
        from transformers.modeling_utils import AttentionInterface
    except ImportError:  # transformers < 4.48
        return None
    return AttentionInterface


def register() -> bool:
    """Register ``"fastattn"`` with transformers' attention (and mask) interfaces.

    Idempotent.  Returns False where transformers has no ``AttentionInterface`` (< 4.48); there
    :func:`optimize` swaps the self-attention modules instead.
    """
    interface = _attention_interface()
    if interface is None:
        return False
    interface.register(NAME, attention_forward)
    try:
        from transformers.masking_utils import AttentionMaskInterface
    except ImportError:  # transformers < 4.53: models build their masks themselves
        return True
    AttentionMaskInterface.register(NAME, build_attention_mask)
    return True


register()


# --- transformers 4.x: swapped self-attention modules -------------------------------------------

class SelfAttention(nn.Module):
    """BERT self-attention on fastattn, for transformers 4.x BERT (no ``AttentionInterface``).

    Holds the original module's ``query``, ``key``, ``value`` Linears (same state dict keys) and
    dropout; ``forward`` takes the 4.x ``BertSelfAttention.forward`` arguments and returns
    ``(context (B, L, H·D),)``.  Encoder self-attention only: cross-attention, caches, head masks
    and returned attention weights raise.
    """

    is_causal = False

    def __init__(self, original: nn.Module, backend: Optional[str] = None):
        super().__init__()
        self.num_attention_heads = original.num_attention_heads
        self.attention_head_size = original.attention_head_size
        self.query, self.key, self.value = original.query, original.key, original.value
        self.dropout = original.dropout
        self.fastattn_backend = backend
        self.train(original.training)

    def forward(self, hidden_states, attention_mask=None, head_mask=None,
                encoder_hidden_states=None, encoder_attention_mask=None, past_key_value=None,
                output_attentions=False, **kwargs):
        unsupported = (("head_mask", head_mask), ("encoder_hidden_states", encoder_hidden_states),
                       ("past_key_value", past_key_value))
        for name, arg in unsupported:
            if arg is not None:
                raise ValueError(f"fastattn's BERT self-attention does not support {name}")
        if output_attentions:
            raise ValueError("fastattn's BERT self-attention does not return attention weights "
                             "(output_attentions=True)")
        b, s, _ = hidden_states.shape
        shape = (b, s, self.num_attention_heads, self.attention_head_size)
        q, k, v = (proj(hidden_states).view(shape).transpose(1, 2)
                   for proj in (self.query, self.key, self.value))
        out, _ = attention_forward(self, q, k, v, attention_mask, dropout=self.dropout.p)
        return (out.reshape(b, s, -1),)


def _check_bert_config(config) -> None:
    if getattr(config, "is_decoder", False):
        raise ValueError("optimize(attention=True) on transformers 4.x supports BERT encoders "
                         "only, got config.is_decoder=True")
    kind = getattr(config, "position_embedding_type", "absolute")
    if kind != "absolute":
        raise ValueError(f"optimize(attention=True) on transformers 4.x supports "
                         f"position_embedding_type='absolute' only, got {kind!r}")


def _is_bert_attention(module: nn.Module, suffix: str = "Attention") -> bool:
    return (type(module).__name__.endswith(suffix)
            and all(isinstance(getattr(module, n, None), nn.Linear)
                    for n in ("query", "key", "value"))
            and hasattr(module, "num_attention_heads"))


def _uses_attention_interface(model: nn.Module) -> bool:
    can_set = getattr(model, "_can_set_attn_implementation", None)
    return (_attention_interface() is not None and hasattr(model, "set_attn_implementation")
            and callable(can_set) and bool(can_set()))


# --- LayerNorm, residual and feed-forward fusion ------------------------------------------------

def _fastattn_layer_norm(ln: nn.LayerNorm, backend: Optional[str]) -> LayerNorm:
    """A fastattn.LayerNorm sharing ``ln``'s Parameter objects (and so its state dict)."""
    new = LayerNorm(ln.normalized_shape, eps=ln.eps, elementwise_affine=ln.elementwise_affine,
                    bias=ln.bias is not None, device="meta", backend=backend)
    new.weight, new.bias = ln.weight, ln.bias
    new.train(ln.training)
    return new


def _output_forward(self, hidden_states, input_tensor):
    """BertSelfOutput / BertOutput: LayerNorm(dropout(dense(h)) + input), the add fused."""
    return self.LayerNorm(self.dropout(self.dense(hidden_states)), residual=input_tensor)


def _feed_forward_chunk(self, attention_output):
    """BertLayer's intermediate + output: the two GEMMs on fastattn.feedforward (bias and
    activation in the first GEMM's epilogue), then dropout and LayerNorm(h + x)."""
    inter, out = self.intermediate, self.output
    h = feedforward(attention_output, inter.dense.weight, inter.dense.bias, out.dense.weight,
                    out.dense.bias, self.fastattn_activation, backend=self.fastattn_backend)
    h = out.dropout(h)
    if isinstance(out.LayerNorm, LayerNorm):
        return out.LayerNorm(h, residual=attention_output)
    return out.LayerNorm(h + attention_output)


_subclasses = {}


def _swap_method(module: nn.Module, name: str, fn) -> None:
    """Give ``module`` a subclass of its class whose method ``name`` is ``fn``.

    The subclass keeps the class name (so ``_no_split_modules`` and isinstance checks still
    match) and adds no parameters or buffers: the state dict is unchanged.
    """
    cls = type(module)
    if getattr(cls, "_fastattn_base", None) is not None and getattr(cls, name) is fn:
        return
    key = (cls, name)
    if key not in _subclasses:
        _subclasses[key] = type(cls.__name__, (cls,), {name: fn, "_fastattn_base": cls,
                                                       "__module__": cls.__module__})
    module.__class__ = _subclasses[key]


def _activation_name(act) -> Optional[str]:
    """fastattn's name for an activation module that it computes exactly, else None."""
    if isinstance(act, nn.ReLU):
        return "relu"
    if isinstance(act, nn.GELU):
        return "gelu" if act.approximate == "none" else "gelu_tanh"
    if type(act).__name__ == "GELUActivation" and getattr(act, "act", None) is (
            torch.nn.functional.gelu):  # transformers' "gelu": torch's erf gelu
        return "gelu"
    return None


def _fusable_output(module: nn.Module) -> bool:
    params = list(inspect.signature(type(module).forward).parameters)
    return (type(module).__name__.endswith("Output") and len(params) == 3
            and isinstance(getattr(module, "dense", None), nn.Linear)
            and isinstance(getattr(module, "dropout", None), nn.Dropout)
            and isinstance(getattr(module, "LayerNorm", None), LayerNorm))


def _fusable_layer(layer: nn.Module) -> Optional[str]:
    """The activation name when ``layer`` is a BERT layer whose feed-forward can be fused."""
    inter, out = getattr(layer, "intermediate", None), getattr(layer, "output", None)
    if not hasattr(layer, "feed_forward_chunk") or inter is None or out is None:
        return None
    if not (isinstance(getattr(inter, "dense", None), nn.Linear)
            and isinstance(getattr(out, "dense", None), nn.Linear)
            and isinstance(getattr(out, "dropout", None), nn.Dropout)
            and isinstance(getattr(out, "LayerNorm", None), nn.LayerNorm)
            and inter.dense.bias is not None and out.dense.bias is not None):
        return None
    return _activation_name(getattr(inter, "intermediate_act_fn", None))


def _outermost_models(model: nn.Module) -> List[nn.Module]:
    """``model`` when it is a transformers model, else the outermost ones inside it."""
    if hasattr(model, "config"):
        return [model]
    found = []
    for child in model.children():
        found += _outermost_models(child)
    return found


def _swap_attention(model: nn.Module, backend: Optional[str]) -> None:
    if _uses_attention_interface(model):
        register()
        model.set_attn_implementation(NAME)
        for module in model.modules():
            if _is_bert_attention(module):
                module.fastattn_backend = backend
        return
    _check_bert_config(getattr(model, "config", None))
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if _is_bert_attention(child, "SelfAttention"):
                setattr(parent, name, SelfAttention(child, backend))


def optimize(model: nn.Module, *, attention: bool = True, layer_norm: bool = True,
             feedforward: bool = True, unpad: bool = True,
             backend: Optional[str] = None) -> nn.Module:
    """Swap fastattn's kernels into a transformers BERT model, in place.

    Args:
        model: a ``BertModel`` / ``BertFor*`` (or a model built from the same blocks), or any
            module holding such models (each outermost one inside is optimized).
        attention: transformers >= 5: ``model.set_attn_implementation("fastattn")``;
            transformers 4.x: each ``BertSelfAttention`` is replaced by :class:`SelfAttention`
            (encoders with absolute positions only).
        layer_norm: every ``nn.LayerNorm`` becomes a ``fastattn.LayerNorm`` sharing its
            parameters and eps; the BERT output blocks' ``LayerNorm(h + input)`` fuse the add.
        feedforward: BERT layers whose intermediate activation fastattn computes exactly (erf
            "gelu", "relu", torch's tanh gelu) run the intermediate and output Linears on
            :func:`fastattn.feedforward`; the output dropout is kept where it was.
        unpad: padding-free encoders (needs ``attention``): with a padded batch, every BERT
            encoder inside ``model`` removes the padding once after the embeddings, runs its
            layers on the packed real tokens (variable-length attention) and restores the
            padded layout at its output, where padded positions are 0 (see
            :mod:`fastattn.integrations.packed_bert`).  Switched per encoder, also later, by
            its ``fastattn_unpad`` attribute.
        backend: "auto", "triton", "torch", "cuda" or None (the process default at each call)
            for every swapped op.
    Returns:
        ``model``, with the same parameters (identical objects) and state dict keys.
    Raises:
        ValueError when ``model`` holds no transformers model, BERT encoder or LayerNorm.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS} or None, got {backend!r}")
    if not _outermost_models(model) and not any(
            isinstance(m, nn.LayerNorm) or is_bert_encoder(m) for m in model.modules()):
        raise ValueError(f"model ({type(model).__name__}) holds nothing fastattn.optimize can "
                         f"swap: no transformers model, BERT encoder or nn.LayerNorm inside")
    if attention:
        for sub in _outermost_models(model):
            _swap_attention(sub, backend)
    if layer_norm:
        for parent in list(model.modules()):
            for name, child in list(parent.named_children()):
                if type(child) is nn.LayerNorm:
                    setattr(parent, name, _fastattn_layer_norm(child, backend))
        for module in model.modules():
            if _fusable_output(module):
                _swap_method(module, "forward", _output_forward)
    for module in list(model.modules()):
        if is_bert_encoder(module):
            module.fastattn_unpad = bool(unpad and attention)
            _swap_method(module, "forward", packed_encoder_forward)
    if feedforward:
        for module in list(model.modules()):
            activation = _fusable_layer(module)
            if activation is not None:
                module.fastattn_activation = activation
                module.fastattn_backend = backend
                _swap_method(module, "feed_forward_chunk", _feed_forward_chunk)
    return model
