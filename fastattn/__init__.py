"""fastattn: fused attention, LayerNorm and feed-forward kernels for BERT-style encoders.

``import fastattn`` touches no CUDA and works without triton; kernels are compiled on first use.
It does not import transformers either: where transformers is installed, the
``attn_implementation="fastattn"`` name is registered when transformers' model code is first
imported (``fastattn/integrations/_import_hook.py``).
"""
from fastattn import reference
from fastattn.backends import (BackendUnavailableError, UnsupportedDtypeError,
                               UnsupportedInputError, get_default_backend, set_default_backend,
                               use_backend)
from fastattn.functional import (attention, feedforward, layer_norm,
                                 scaled_dot_product_attention, varlen_attention)
from fastattn.convert import from_reference
from fastattn.modules import (BertEncoder, BertEncoderLayer, BertForSequenceClassification,
                              FeedForward, LayerNorm, SelfAttention)
from fastattn.padding import pad_input, unpad_input
from fastattn.integrations import _import_hook

__version__ = "0.1.0"


def optimize(model, *, attention=True, layer_norm=True, feedforward=True, unpad=True,
             backend=None):
    """Swap fastattn's kernels into a Hugging Face transformers BERT model, in place.

    See :func:`fastattn.integrations.transformers.optimize` (imported here on first call, so
    ``import fastattn`` does not import transformers).  Returns ``model``.
    """
    from fastattn.integrations.transformers import optimize as _optimize

    return _optimize(model, attention=attention, layer_norm=layer_norm,
                     feedforward=feedforward, unpad=unpad, backend=backend)


_import_hook.install()

__all__ = [
    "BackendUnavailableError",
    "BertEncoder",
    "BertEncoderLayer",
    "BertForSequenceClassification",
    "FeedForward",
    "LayerNorm",
    "SelfAttention",
    "UnsupportedDtypeError",
    "UnsupportedInputError",
    "attention",
    "feedforward",
    "from_reference",
    "get_default_backend",
    "layer_norm",
    "optimize",
    "reference",
    "scaled_dot_product_attention",
    "pad_input",
    "set_default_backend",
    "unpad_input",
    "use_backend",
    "varlen_attention",
]
