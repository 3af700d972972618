"""Drop-in ``nn.Module``s built on the fused kernels."""
from fastattn.modules.classification import BertForSequenceClassification
from fastattn.modules.encoder import BertEncoder, BertEncoderLayer
from fastattn.modules.feedforward import FeedForward
from fastattn.modules.layer_norm import LayerNorm
from fastattn.modules.self_attention import SelfAttention

__all__ = ["BertEncoder", "BertEncoderLayer", "BertForSequenceClassification", "FeedForward",
           "LayerNorm", "SelfAttention"]
