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


# bench/gpu_check.sh gives the suite a wall-clock deadline (epoch seconds): past it, the tests
# not yet started are reported as skipped, so the run still ends with its junit XML and summary.
_DEADLINE = float(os.environ.get("FASTATTN_TEST_DEADLINE", "0") or 0)


def pytest_runtest_setup(item):
    if _DEADLINE:
        import time
        if time.time() > _DEADLINE:
            pytest.skip("not run: bench/gpu_check.sh's deadline for the test step was reached")
