"""Test set-up: one suite for CPU (Triton interpreter) and CUDA.

Without a CUDA device the Triton kernels run through the interpreter, which must be switched on
before triton is imported: that is done here, before any test module imports fastattn's kernels.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
