"""Backend selection: which implementation runs an op.

Backends:

* ``"auto"``   — Triton on CUDA tensors, the PyTorch path on CPU tensors.
* ``"triton"`` — the Triton kernels; on CPU tensors only under ``TRITON_INTERPRET=1``.
* ``"torch"``  — plain PyTorch (works on every device).
* ``"cuda"``   — the CUDA C++ extension (``fastattn._C``), where it was built.

The process-wide default comes from the ``FASTATTN_BACKEND`` environment variable (read once,
at import) and can be changed with :func:`set_default_backend` or, for a block of code, the
:func:`use_backend` context manager.  Nothing here touches CUDA at import time.
"""
from __future__ import annotations

import contextlib
import os
from typing import Iterator, Optional

import torch

BACKENDS = ("auto", "triton", "torch", "cuda")


class BackendUnavailableError(RuntimeError):
    """A backend was asked for explicitly but cannot run here."""


def _check_name(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return backend


_default_backend = _check_name(os.environ.get("FASTATTN_BACKEND", "auto") or "auto")


def get_default_backend() -> str:
    return _default_backend


def set_default_backend(backend: str) -> None:
    global _default_backend
    _default_backend = _check_name(backend)


@contextlib.contextmanager
def use_backend(backend: str) -> Iterator[None]:
    """Run the enclosed block with ``backend`` as the default of every op and module."""
    global _default_backend
    previous, _default_backend = _default_backend, _check_name(backend)
    try:
        yield
    finally:
        _default_backend = previous


def interpreter_enabled() -> bool:
    """True when Triton kernels run through the CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "yes", "on")


_probes: dict = {}  # memo of the probes below (a plain dict: torch.compile traces it cleanly)


def triton_version() -> Optional[str]:
    if "triton" not in _probes:
        try:
            import triton
            _probes["triton"] = triton.__version__
        except Exception:  # not installed (or a broken install)
            _probes["triton"] = None
    return _probes["triton"]


def cuda_extension_error() -> Optional[str]:
    """None when the CUDA C++ extension imports, else why it does not."""
    if "cuda_extension" not in _probes:
        try:
            from fastattn import _C  # noqa: F401
            _probes["cuda_extension"] = None
        except ImportError as exc:
            _probes["cuda_extension"] = f"the CUDA extension fastattn._C was not built ({exc})"
    return _probes["cuda_extension"]


def triton_unavailable_reason(device: torch.device) -> Optional[str]:
    """None when the Triton kernels can run on tensors of ``device``, else why not."""
    if triton_version() is None:
        return "triton is not installed (pip install triton; Linux only)"
    if device.type == "cuda":
        if interpreter_enabled():
            return "TRITON_INTERPRET=1 is set, which runs Triton on CPU tensors only"
        return None
    if device.type == "cpu":
        if interpreter_enabled():
            return None
        return ("Triton kernels need CUDA tensors; on CPU they run only under the "
                "interpreter (set TRITON_INTERPRET=1 before importing triton)")
    return f"Triton kernels do not run on {device.type} tensors"


def resolve_backend(backend: Optional[str], device: torch.device) -> str:
    """Turn ``backend`` (None = the process default) into the concrete backend for ``device``.

    Raises BackendUnavailableError when an explicitly requested backend cannot run.
    """
    backend = _check_name(get_default_backend() if backend is None else backend)
    if backend == "auto":
        if device.type == "cuda" and triton_unavailable_reason(device) is None:
            return "triton"
        return "torch"
    if backend == "triton":
        reason = triton_unavailable_reason(device)
        if reason is not None:
            raise BackendUnavailableError(f"backend='triton' is unavailable: {reason}")
    if backend == "cuda":
        if device.type != "cuda":
            raise BackendUnavailableError(
                f"backend='cuda' needs CUDA tensors, got tensors on {device.type}")
        reason = cuda_extension_error()
        if reason is not None:
            raise BackendUnavailableError(f"backend='cuda' is unavailable: {reason}")
    return backend


def report() -> dict:
    """What is available here and why not: used by ``fastattn check``."""
    cuda = torch.cuda.is_available()
    rows = {
        "torch": (True, f"torch {torch.__version__}"),
        "triton (cuda)": (
            cuda and triton_unavailable_reason(torch.device("cuda")) is None,
            triton_unavailable_reason(torch.device("cuda")) if cuda else "no CUDA device",
        ),
        "triton (cpu interpreter)": (
            triton_unavailable_reason(torch.device("cpu")) is None,
            triton_unavailable_reason(torch.device("cpu")) or f"triton {triton_version()}",
        ),
        "cuda extension": (cuda_extension_error() is None and cuda,
                           cuda_extension_error() or ("built" if cuda else "no CUDA device")),
    }
    return rows
