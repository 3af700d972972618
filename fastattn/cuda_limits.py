"""Limits of the CUDA C++ kernels, defined once in ``csrc/`` and read from the extension.

    cuda_limit("attention_max_head_dim")   largest head_dim of the CUDA attention forward
    cuda_limit("layer_norm_bwd_max_cols")  largest hidden size of the CUDA LayerNorm backward

With ``fastattn._C`` built, the value is the extension's (``torch.ops.fastattn.cuda_limit``,
which returns the C++ constant); without it (a pure-Python install, where the CUDA backend
does not run anyway) it is :data:`FALLBACK`, which ``tests/csrc/test_limits.py`` checks against
the C++ source.  Nothing is imported or queried at import time.
"""
from __future__ import annotations

import functools
from typing import Dict

import torch

# The C++ constants (kAttentionMaxHeadDim in csrc/attention/attention_params.h,
# kLayerNormBwdMaxCols in csrc/layer_norm/layer_norm.h), for when the extension is absent.
FALLBACK: Dict[str, int] = {
    "attention_max_head_dim": 128,
    "layer_norm_bwd_max_cols": 16384,
}


def _extension_ops():
    """torch.ops.fastattn with the extension's ops registered, or None when it is not built."""
    try:
        import fastattn._C  # noqa: F401  (registers torch.ops.fastattn.cuda_*)
    except ImportError:
        return None
    import torch

    return torch.ops.fastattn


def cuda_limit(name: str) -> int:
    """The named limit (see the module docstring); ValueError naming ``name`` if unknown.
    While torch.compile traces, :data:`FALLBACK` (the same constants, as the test checks):
    importing the extension there would break the graph."""
    if name not in FALLBACK:
        raise ValueError(f"name must be one of {tuple(FALLBACK)}, got {name!r}")
    if torch.compiler.is_compiling():
        return FALLBACK[name]
    return _read_limit(name)


@functools.lru_cache(maxsize=None)
def _read_limit(name: str) -> int:
    ops = _extension_ops()
    return int(ops.cuda_limit(name)) if ops is not None else FALLBACK[name]
