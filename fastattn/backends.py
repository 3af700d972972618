"""Backend selection: which implementation runs an op.

Backends, and the one policy every public op follows (:func:`choose_backend`):

* ``"auto"``   — the fastest path that computes the same result, and never an error where
  torch's own path works: the Triton kernels on CUDA tensors they take, the PyTorch path for
  everything else (CPU tensors, float64, a head_dim outside the kernels, no triton installed).
* ``"triton"`` — the Triton kernels; on CPU tensors only under ``TRITON_INTERPRET=1`` (and not
  for bfloat16 there: the interpreter's bfloat16 ``tl.dot`` is wrong).
* ``"torch"``  — plain PyTorch (works on every device and dtype).
* ``"cuda"``   — the CUDA C++ extension (``fastattn._C``), where it was built.  A call the
  extension has no kernel for (variable-length attention, attention dropout, rows above its
  LayerNorm limit, float32 attention) runs on the Triton kernels, as does every backward the
  extension lacks.

An explicit backend that cannot serve a call raises :class:`BackendUnavailableError` with the
reason: :class:`UnsupportedDtypeError` (also a ``TypeError``) for a dtype the kernels do not
take, :class:`UnsupportedInputError` (also a ``ValueError``) for a shape they do not take.

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
KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)  # what every fused kernel takes
MIN_HEAD_DIM, MAX_HEAD_DIM = 16, 256  # attention kernels: multiples of 8 in this range


class BackendUnavailableError(RuntimeError):
    """A backend was asked for explicitly but cannot run here, or cannot serve this call."""


class UnsupportedDtypeError(BackendUnavailableError, TypeError):
    """The requested backend's kernels do not take the inputs' dtype."""


class UnsupportedInputError(BackendUnavailableError, ValueError):
    """The requested backend's kernels do not take the inputs' shape (head_dim, ...)."""


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
    """Turn ``backend`` (None = the process default) into the concrete backend for ``device``,
    from the device alone (what the benchmark and dispatch reports ask).  The ops themselves
    decide with :func:`choose_backend`, which also weighs the call's inputs.

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
        _raise_if_cuda_unavailable(device)
    return backend


def _raise_if_cuda_unavailable(device: torch.device, op: str = "") -> None:
    """BackendUnavailableError (its message led by ``op``) when ``backend="cuda"`` cannot run
    on ``device``: not CUDA tensors, or no usable extension."""
    prefix = f"{op}: " if op else ""
    if device.type != "cuda":
        raise BackendUnavailableError(
            f"{prefix}backend='cuda' needs CUDA tensors, got tensors on {device.type}")
    reason = cuda_extension_error()
    if reason is not None:
        raise BackendUnavailableError(f"{prefix}backend='cuda' is unavailable: {reason}")


def kernel_refusal(x: torch.Tensor, name: str = "q", *, head_dim: Optional[int] = None,
                   what: str = "fused kernels") -> Optional[BackendUnavailableError]:
    """Why the fused kernels cannot take ``x`` (its dtype; ``head_dim`` for attention), as the
    error to raise where they were asked for explicitly; None when they can."""
    if x.dtype not in KERNEL_DTYPES:
        return UnsupportedDtypeError(
            f"the {what} take float16, bfloat16 or float32 {name}, got {x.dtype}")
    if x.dtype == torch.bfloat16 and x.device.type == "cpu" and interpreter_enabled():
        return UnsupportedDtypeError(
            f"{name} is torch.bfloat16, which the Triton interpreter (TRITON_INTERPRET=1) "
            f"computes wrongly (its bfloat16 tl.dot); run bfloat16 on a CUDA device or with "
            f"backend='torch'")
    if head_dim is not None and (head_dim % 8 or not MIN_HEAD_DIM <= head_dim <= MAX_HEAD_DIM):
        return UnsupportedInputError(f"head_dim must be a multiple of 8 between {MIN_HEAD_DIM} "
                                     f"and {MAX_HEAD_DIM}, got {head_dim}")
    return None


def choose_backend(op: str, backend: Optional[str], device: torch.device, *,
                   refusal: Optional[BackendUnavailableError] = None,
                   cuda_kernel: bool = True) -> str:
    """The backend policy of every public op: "torch", "triton" or "cuda" for this call.

    Args:
        op: the public function's name, for messages.
        backend: as passed by the caller (None = the process default).
        device: the inputs' device.
        refusal: why the fused kernels cannot take these inputs (dtype, head_dim, ...), or
            None; built by the op from its inputs (see :mod:`fastattn.functional`).
        cuda_kernel: whether the CUDA extension has a kernel for this call; without one,
            ``"cuda"`` runs the Triton kernels.
    Rules: "torch" always runs.  "auto" runs Triton on CUDA tensors when triton is usable and
    ``refusal`` is None, else torch: it never raises where the torch path works.  "triton" and
    "cuda" raise :class:`BackendUnavailableError` (or a subclass) saying why they cannot run.
    """
    requested = _check_name(get_default_backend() if backend is None else backend)
    if requested == "torch":
        return "torch"
    if requested == "auto":
        if device.type == "cuda" and triton_unavailable_reason(device) is None and refusal is None:
            return "triton"
        return "torch"
    if requested == "cuda":
        _raise_if_cuda_unavailable(device, op)
    if refusal is not None:
        raise type(refusal)(f"{op}: backend={requested!r} cannot serve this call: {refusal}")
    if requested == "cuda" and cuda_kernel:
        return "cuda"
    reason = triton_unavailable_reason(device)
    if reason is not None:
        via = "" if requested == "triton" else " (the CUDA extension has no kernel for this call)"
        raise BackendUnavailableError(
            f"{op}: backend={requested!r} runs on the Triton kernels{via}, which are "
            f"unavailable: {reason}")
    return "triton"


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
