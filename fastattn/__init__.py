"""fastattn: fused attention, LayerNorm and feed-forward kernels for BERT-style encoders.

``import fastattn`` touches no CUDA and works without triton; kernels are compiled on first use.
"""
from fastattn import reference
from fastattn.backends import (BackendUnavailableError, get_default_backend,
                               set_default_backend, use_backend)
from fastattn.functional import attention, scaled_dot_product_attention
from fastattn.convert import from_reference
from fastattn.modules import (BertEncoder, BertEncoderLayer, BertForSequenceClassification,
                              FeedForward, LayerNorm, SelfAttention)
from fastattn.ops.feedforward import feedforward
from fastattn.ops.layer_norm import layer_norm
from fastattn.ops.varlen import pad_input, unpad_input, varlen_attention

__version__ = "0.1.0"

__all__ = [
    "BackendUnavailableError",
    "BertEncoder",
    "BertEncoderLayer",
    "BertForSequenceClassification",
    "FeedForward",
    "LayerNorm",
    "SelfAttention",
    "attention",
    "feedforward",
    "from_reference",
    "get_default_backend",
    "layer_norm",
    "reference",
    "scaled_dot_product_attention",
    "pad_input",
    "set_default_backend",
    "unpad_input",
    "use_backend",
    "varlen_attention",
]
