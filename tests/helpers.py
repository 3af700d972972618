"""Shared test helpers: the device under test, the tolerance table and a verbose comparison.

Tolerance rule (flash-attention's, in :mod:`fastattn.testing`, shared with ``fastattn
check``): the kernel's error against a float64 reference may be at most FACTOR times the error
of the same-precision PyTorch reference against float64, plus a small per-dtype absolute term.
FACTOR is 2 for forward outputs and 3 for gradients.
"""
import pytest
import torch

from fastattn.testing import ATOL, FWD_FACTOR, GRAD_FACTOR, compare  # noqa: F401

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")

INTERPRETER_BF16 = "bf16 tl.dot is wrong in the Triton interpreter: bf16 runs on CUDA only"
DTYPES = [
    pytest.param(torch.float32, id="fp32"),
    pytest.param(torch.float16, id="fp16"),
    pytest.param(torch.bfloat16, id="bf16",
                 marks=pytest.mark.skipif(not CUDA, reason=INTERPRETER_BF16)),
]


def assert_close_to_reference(out, ref_hp, ref_lp, *, factor=FWD_FACTOR, atol=None, name="out"):
    """``out`` (kernel) vs ``ref_hp`` (float64 oracle), bounded by ``ref_lp``'s own error
    (:func:`fastattn.testing.compare`)."""
    try:
        result = compare(out, ref_hp, ref_lp, factor=factor, atol=atol, name=name)
    except ValueError as exc:
        raise AssertionError(str(exc)) from None
    if not result.ok:
        raise AssertionError(result.message)
    return result.error, result.bound
