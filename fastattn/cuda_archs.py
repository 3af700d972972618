"""The architectures the CUDA extension is compiled for when ``TORCH_CUDA_ARCH_LIST`` is unset.

    sm_80   SASS: A100, and by binary compatibility sm_86 / sm_89 (RTX 30xx / 40xx, L4, L40)
    sm_90a  SASS: H100 / H200 with the arch-specific features
    compute_90 PTX: portable PTX, JIT-compiled by the driver for any later GPU (Blackwell
            sm_100 / sm_120 and on); arch-specific PTX (compute_90a) would not load there.

torch's ``TORCH_CUDA_ARCH_LIST`` cannot spell this set: "9.0+PTX" would also compile a third,
redundant sm_90 SASS image, and "9.0a+PTX" gives only arch-specific PTX.  So ``setup.py`` passes
these ``-gencode`` flags itself, and torch (which adds its own arch flags only when the nvcc
flags hold none) leaves them alone.  A ``TORCH_CUDA_ARCH_LIST`` in the environment wins: then
no flags come from here and torch applies the list as usual.

Standalone (no imports from fastattn): ``setup.py`` loads this file by path.
"""
from __future__ import annotations

import os
from typing import List, Mapping, Optional, Tuple

# (virtual arch, code): code sm_* is a SASS image, compute_* a PTX image.
DEFAULT_TARGETS: Tuple[Tuple[str, str], ...] = (
    ("compute_80", "sm_80"),
    ("compute_90a", "sm_90a"),
    ("compute_90", "compute_90"),
)


def gencode_flags(targets=DEFAULT_TARGETS) -> List[str]:
    """``-gencode=arch=...,code=...`` for each (virtual arch, code) pair."""
    return [f"-gencode=arch={arch},code={code}" for arch, code in targets]


def extension_arch_flags(environ: Optional[Mapping[str, str]] = None) -> List[str]:
    """nvcc arch flags for the extension build: none when TORCH_CUDA_ARCH_LIST is set (torch
    applies it), else :data:`DEFAULT_TARGETS`."""
    environ = os.environ if environ is None else environ
    if environ.get("TORCH_CUDA_ARCH_LIST", "").strip():
        return []
    return gencode_flags()
