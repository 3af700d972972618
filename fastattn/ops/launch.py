"""Small host-side helpers shared by the kernel launchers."""
from __future__ import annotations

import contextlib

import torch


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def last_dim_contiguous(t: torch.Tensor) -> torch.Tensor:
    """``t`` itself when its last stride is 1 (what the kernels need), else a contiguous copy."""
    return t if t.stride(-1) == 1 else t.contiguous()


def launch_on(device: torch.device):
    """Context that makes ``device`` the current CUDA device while launching (none on CPU)."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()
