"""Drop-in ``nn.Module``s built on the fused kernels."""
from fastattn.modules.feedforward import FeedForward
from fastattn.modules.layer_norm import LayerNorm
from fastattn.modules.self_attention import SelfAttention

__all__ = ["FeedForward", "LayerNorm", "SelfAttention"]
