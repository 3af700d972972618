"""Faithful ahead-of-time compiles: the kernels a launcher really launches, built for a GPU
target on a machine without one.

:func:`capture_launches` runs a launcher (``attention_forward``, ``varlen_backward``,
``matmul``, ...) on CPU tensors inside :func:`fastattn.ops.launch.compile_target`, so it
picks the configuration it would pick on sm_80 / sm_90a, and records each ``kernel[grid](...)``
call instead of running it.  :func:`specialize` then feeds the recorded arguments to Triton's
own binder (``create_function_from_signature`` + ``JITFunction._pack_args``, the code path of
``JITFunction.run``), which yields exactly the signature, constexprs and ``attrs`` (16-byte
divisibility of pointers and integers) the JIT would compile on the GPU for tensors with the
same alignment and strides; :func:`compile_source` compiles that with ``triton.compile`` for
the target.  Representative tensors must therefore have the real inputs' alignment and
stride divisibility (fresh CPU tensors are 64-byte aligned like CUDA ones).

Needs ``TRITON_INTERPRET`` unset when the kernel modules are imported (interpreted functions
cannot be compiled): run it in a process started without the variable (``fastattn kernels``
does).  Tested with triton 3.6 and 3.8.
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib
import os
from typing import Any, Callable, Dict, List, Optional, Tuple

from fastattn.ops.launch import TargetDevice, compile_target

ARCHS = {"sm_80": 80, "sm_90a": 90}
# What the launchers may ask about the target (opt-in shared memory per block, SMs): A100 and
# H100 / H200 figures.
TARGETS = {"sm_80": TargetDevice((8, 0), 163 * 1024, 108),
           "sm_90a": TargetDevice((9, 0), 227 * 1024, 132)}


@dataclasses.dataclass
class Launch:
    """One captured ``kernel[grid](*args, **kwargs)`` call."""
    fn: Any  # the JITFunction
    grid: Any
    args: tuple
    kwargs: dict

    @property
    def name(self) -> str:
        return self.fn.fn.__name__


@dataclasses.dataclass
class KernelSource:
    """Everything ``triton.compile`` needs, picklable (the function by module and name)."""
    fn: str  # "module:name"
    signature: Dict[str, str]
    constexprs: Dict[tuple, Any]
    attrs: Dict[tuple, Any]
    options: Dict[str, Any]
    arch: str

    @property
    def name(self) -> str:
        return self.fn.split(":")[1]

    def constexpr(self, name: str, default=None):
        """The value of a constexpr parameter by name (BLOCK_M, ...)."""
        names = list(self.signature)
        if name not in names:
            return default
        return self.constexprs.get((names.index(name),), default)

    def key(self) -> tuple:
        """Identifies the compiled binary: equal keys give the same cubin."""
        return (self.fn, self.arch, tuple(self.signature.items()),
                tuple(sorted(self.constexprs.items(), key=str)),
                tuple(sorted((k, str(v)) for k, v in self.attrs.items())),
                tuple(sorted((k, str(v)) for k, v in self.options.items())))

    def divisible_args(self) -> List[str]:
        """Parameters specialized as divisible by 16 (tt.divisibility)."""
        names = list(self.signature)
        return [names[path[0]] for path, attr in sorted(self.attrs.items())
                if "tt.divisibility" in str(attr)]


def _require_compiled_triton():
    if os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "yes", "on"):
        raise RuntimeError("faithful compiles need TRITON_INTERPRET unset (run in a process "
                           "started without it, as `fastattn kernels` does)")


@contextlib.contextmanager
def _intercept(launches: List[Launch]):
    from triton.runtime.jit import JITFunction

    original = JITFunction.run

    def record(self, *args, grid, warmup, **kwargs):
        launches.append(Launch(self, grid, args, dict(kwargs)))
        return None

    JITFunction.run = record
    try:
        yield
    finally:
        JITFunction.run = original


def capture_launches(launcher: Callable[[], Any], arch: str = "sm_90a") -> List[Launch]:
    """Run ``launcher()`` (a call of a real launcher on CPU tensors) as if on ``arch``; return
    its kernel launches, in order, without running them (outputs stay uninitialised)."""
    _require_compiled_triton()
    import torch

    launches: List[Launch] = []
    with compile_target(TARGETS[arch]), _intercept(launches), torch.no_grad():
        launcher()
    return launches


def _backend(arch: str):
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend

    target = GPUTarget("cuda", ARCHS[arch], 32)
    return target, make_backend(target)


def _pack_args(fn, backend, kwargs, bound_args, specialization, options):
    """``JITFunction._pack_args`` (triton >= 3.4); the same steps for versions without it."""
    if hasattr(fn, "_pack_args"):
        return fn._pack_args(backend, kwargs, bound_args, specialization, options)
    from triton._utils import find_paths_if, get_iterable_path

    options = backend.parse_options(kwargs)
    sigvals = [x[0] for x in specialization]
    signature = dict(zip([p.name for p in fn.params], sigvals))
    constexprs = find_paths_if(sigvals, lambda _, val: val == "constexpr")
    constexprs = {p: get_iterable_path(list(bound_args.values()), p) for p in constexprs}
    attrvals = ["" if x[0] == "constexpr" else x[1] for x in specialization]
    attrs = find_paths_if(attrvals, lambda _, x: isinstance(x, str))
    attrs = {k: backend.parse_attr(get_iterable_path(attrvals, k)) for k in attrs}
    return options, signature, constexprs, attrs


def specialize(launch: Launch, arch: str = "sm_90a") -> KernelSource:
    """The signature, constexprs, attrs and options ``JITFunction.run`` would compile for
    ``launch``'s arguments on ``arch`` (Triton's own binder on the recorded arguments)."""
    from triton import knobs
    from triton.runtime.jit import create_function_from_signature

    fn = launch.fn
    _, backend = _backend(arch)
    kwargs = dict(launch.kwargs)
    # as JITFunction.run does before binding
    kwargs["debug"] = kwargs.get("debug", getattr(fn, "debug", None)) or knobs.runtime.debug
    option_fields = getattr(type(backend.parse_options({})), "__dataclass_fields__", {})
    if "instrumentation_mode" in option_fields and hasattr(knobs.compilation,
                                                           "instrumentation_mode"):
        kwargs["instrumentation_mode"] = knobs.compilation.instrumentation_mode
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    bound_args, specialization, options = binder(*launch.args, **kwargs)
    options, signature, constexprs, attrs = _pack_args(fn, backend, kwargs, bound_args,
                                                       specialization, options)
    return KernelSource(fn=f"{fn.module}:{fn.fn.__name__}", signature=dict(signature),
                        constexprs=dict(constexprs), attrs=dict(attrs),
                        options=dict(options.__dict__), arch=arch)


def jit_function(source: KernelSource):
    module, name = source.fn.split(":")
    return getattr(importlib.import_module(module), name)


def compile_source(source: KernelSource):
    """``triton.compile`` of a :class:`KernelSource` for its arch; returns the CompiledKernel
    (``asm["cubin"]``, ``asm["ptx"]``, ``metadata.shared``...)."""
    _require_compiled_triton()
    import triton
    from triton.compiler import ASTSource

    target, _ = _backend(source.arch)
    src = ASTSource(jit_function(source), source.signature, source.constexprs, source.attrs)
    return triton.compile(src, target=target, options=dict(source.options))


def capture_sources(launcher: Callable[[], Any], arch: str = "sm_90a"
                    ) -> List[Tuple[Launch, KernelSource]]:
    """:func:`capture_launches` then :func:`specialize` each launch."""
    return [(launch, specialize(launch, arch)) for launch in capture_launches(launcher, arch)]


def loop_threads(source: KernelSource, loop_warps: Optional[int] = None) -> int:
    """Threads that execute the hot loop: ``loop_warps`` * 32 when given (the consumer warps of a
    warp-specialized kernel), else num_warps * 32."""
    return 32 * (loop_warps if loop_warps else int(source.options.get("num_warps", 4)))
