"""Small host-side helpers shared by the kernel launchers: device figures (shared memory per
block, compute capability), the precision and dtype names the launch tables take, dropout
seeds, grid arithmetic and TMA set-up.

:func:`compile_target` lets a launcher run on CPU tensors *as if* on a given GPU: inside it,
the device queries below answer with the target's figures (compute capability, shared memory
per block, SM count).  The ahead-of-time report (:mod:`fastattn.launch_capture`) uses it to
make the launchers pick the configuration they would pick on sm_80 / sm_90a while their kernel
launches are captured, not run.  Launchers that branch on the device read it through these
helpers (never ``torch.cuda`` directly), so the report sees the branch the GPU takes.
"""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
from typing import Iterator, Optional, Tuple

import torch

from fastattn.kernels.attention_configs import DEFAULT_SMEM_LIMIT, smem_limit_for

_DTYPE_NAMES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}


@dataclasses.dataclass(frozen=True)
class TargetDevice:
    """The device figures a launcher may branch on."""
    capability: Tuple[int, int]
    smem_limit: int  # opt-in shared memory per block, bytes
    sm_count: int


_target: contextvars.ContextVar[Optional[TargetDevice]] = contextvars.ContextVar(
    "fastattn_compile_target", default=None)


@contextlib.contextmanager
def compile_target(target: TargetDevice) -> Iterator[TargetDevice]:
    """Inside the block, :func:`target_device` is ``target`` (whatever the tensors' device)."""
    token = _target.set(target)
    try:
        yield target
    finally:
        _target.reset(token)


def target_device() -> Optional[TargetDevice]:
    """The device set by :func:`compile_target`, or None (launch on the tensors' device)."""
    return _target.get()


def device_capability(device: torch.device) -> Optional[Tuple[int, int]]:
    """Compute capability the kernels are built for: the compile target's when one is set,
    the CUDA device's otherwise; None off CUDA (interpreter)."""
    target = _target.get()
    if target is not None:
        return target.capability
    if device.type != "cuda":
        return None
    return torch.cuda.get_device_capability(device)


@functools.lru_cache(maxsize=None)
def _device_smem_limit(index: int) -> int:
    props = torch.cuda.get_device_properties(index)
    limit = getattr(props, "shared_memory_per_block_optin", 0)
    return int(limit) if limit else smem_limit_for(props.major)


def _smem_limit(device: torch.device) -> int:
    """Opt-in shared memory per block (bytes) the launch tables may plan for on ``device``."""
    target = target_device()
    if target is not None:  # compiling for a target (fastattn kernels), see compile_target
        return target.smem_limit
    if device.type != "cuda":
        return DEFAULT_SMEM_LIMIT
    return _device_smem_limit(device.index if device.index is not None else
                              torch.cuda.current_device())


def _precision(dtype: torch.dtype) -> str:
    """fp32 inputs: three-pass TF32 on tensor cores (about fp32 accuracy), or plain TF32 when
    torch allows it for matmuls; half inputs ignore the setting."""
    if dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32:
        return "tf32x3"
    return "tf32"


def check_dropout_seed(seed, device: torch.device) -> None:
    """A dropout seed is a (1,) int64 tensor on the kernels' device (their Philox key)."""
    if not isinstance(seed, torch.Tensor):
        raise TypeError(f"seed must be a (1,) int64 torch.Tensor, got {type(seed).__name__}")
    if seed.dtype != torch.int64:
        raise ValueError(f"seed must be a (1,) int64 tensor, got dtype {seed.dtype}")
    if tuple(seed.shape) != (1,):
        raise ValueError(f"seed must be a (1,) int64 tensor, got shape {tuple(seed.shape)}")
    if seed.device != device:
        raise ValueError(f"seed is on {seed.device} but the inputs are on {device}")


def _seed_arg(seed: Optional[torch.Tensor], dummy: torch.Tensor, dropout_p: float):
    """The SEED pointer argument: the checked seed tensor, or any tensor when dropout is off."""
    if dropout_p > 0 and seed is None:
        raise ValueError("dropout_p > 0 needs a seed tensor")
    if seed is None:
        return dummy
    check_dropout_seed(seed, dummy.device)
    return seed


def draw_dropout_seed(device: torch.device) -> torch.Tensor:
    """A fresh (1,) int64 Philox key from torch's generator for ``device``."""
    return torch.randint(0, 2 ** 62, (1,), dtype=torch.int64, device=device)


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def last_dim_contiguous(t: torch.Tensor) -> torch.Tensor:
    """``t`` itself when its last stride is 1 (what the kernels need), else a contiguous copy."""
    return t if t.stride(-1) == 1 else t.contiguous()


def launch_on(device: torch.device):
    """Context that makes ``device`` the current CUDA device while launching (none on CPU)."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def tma_supported(device: torch.device) -> bool:
    """Whether the kernels may read through TMA tensor descriptors on ``device``: sm_90 or
    newer with a Triton that has ``tl.make_tensor_descriptor`` (3.6 and 3.8 do), or the
    interpreter (which runs descriptors on the CPU)."""
    try:
        import triton.language as tl
    except ImportError:
        return False
    if not hasattr(tl, "make_tensor_descriptor"):
        return False
    from fastattn.backends import interpreter_enabled

    if interpreter_enabled():
        return True
    capability = device_capability(device)
    return capability is not None and capability[0] >= 9


def tma_compatible(tensors, head_dim: int, block_d: int) -> bool:
    """TMA needs 16-byte aligned base addresses and row strides; the kernels also only use it
    for 2-byte elements with head_dim == BLOCK_D <= 128 (one box row of at most 256 bytes per
    tile row, no padding)."""
    if head_dim != block_d or not 8 <= head_dim <= 128:
        return False
    for t in tensors:
        if t.element_size() != 2 or t.data_ptr() % 16:
            return False
        if any((st * t.element_size()) % 16 for st in t.stride()[:-1]):
            return False
    return True


def ensure_tma_allocator() -> None:
    """Device-side tensor descriptors need a small global scratch buffer from the allocator
    Triton was given; install a torch-backed one unless the caller has set their own.  The
    allocator is a context variable, so this runs per thread (autograd's backward runs on
    another thread than the forward)."""
    import triton

    try:
        from triton.runtime._allocation import NullAllocator, _allocator
        if not isinstance(_allocator.get(), NullAllocator):
            return
    except ImportError:  # pragma: no cover - other releases' layout: always install ours
        pass

    def alloc(size: int, alignment: int, stream):
        device = torch.device("cuda", torch.cuda.current_device()) \
            if torch.cuda.is_available() else torch.device("cpu")
        return torch.empty(size, dtype=torch.int8, device=device)

    triton.set_allocator(alloc)
