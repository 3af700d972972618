"""Ahead-of-time compilation of every shipped Triton kernel configuration, with no GPU.

Each kernel family lists its configurations as *specs* (``aot_specs(capability_major)`` in its
config module): the jit function, argument types in order, constexpr values, warps and stages.
:func:`compile_spec` compiles one for a target such as sm_90a with ``triton.compile`` and reads
its resources with the ptxas that ships with Triton (``ptxas -v``): registers, spill bytes,
shared memory (Triton's dynamic allocation), and whether tensor-core instructions (``mma`` on
sm_80, ``wgmma`` on sm_90a) were emitted.  ``fastattn kernels`` prints the table.

Must run without ``TRITON_INTERPRET`` (interpreted functions cannot be compiled); the CLI and
the tests call it in a subprocess with the variable removed.
"""
from __future__ import annotations

import dataclasses
import importlib
import os
import re
import subprocess
import tempfile
from concurrent.futures import ProcessPoolExecutor
from typing import Dict, Iterable, List, Optional

# Kernel families: modules that define ``aot_specs(capability_major)``.
SPEC_PROVIDERS = [
    "fastattn.kernels.attention_configs",
    "fastattn.kernels.attention_varlen_configs",
    "fastattn.kernels.layer_norm_configs",
    "fastattn.kernels.matmul_configs",
]

ARCHS = {"sm_80": 80, "sm_90a": 90}


@dataclasses.dataclass
class KernelResources:
    kernel: str
    config: str
    arch: str
    registers: int = -1
    spill_stores: int = -1
    spill_loads: int = -1
    shared_bytes: int = -1
    tensor_cores: str = ""
    error: Optional[str] = None
    head_dim: Optional[int] = None

    @property
    def spills(self) -> int:
        return max(self.spill_stores, 0) + max(self.spill_loads, 0)


def all_specs(capability_major: int, families: Optional[Iterable[str]] = None) -> List[dict]:
    specs = []
    for module in SPEC_PROVIDERS:
        for spec in importlib.import_module(module).aot_specs(capability_major):
            if families is None or any(spec["kernel"].startswith(f) for f in families):
                specs.append(spec)
    return specs


def _ptxas() -> str:
    import triton.backends.nvidia as nv

    path = os.path.join(os.path.dirname(nv.__file__), "bin", "ptxas")
    return os.environ.get("TRITON_PTXAS_PATH", path)


def _parse_ptxas(text: str, res: KernelResources) -> None:
    m = re.search(r"Used (\d+) registers", text)
    res.registers = int(m.group(1)) if m else -1
    m = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", text)
    if m:
        res.spill_stores, res.spill_loads = int(m.group(1)), int(m.group(2))


def compile_spec(spec: dict, arch: str) -> KernelResources:
    """Compile one spec for ``arch`` ("sm_80" or "sm_90a") and measure it."""
    res = KernelResources(spec["kernel"], spec["config"], arch, head_dim=spec.get("head_dim"))
    try:
        import triton
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource

        module, name = spec["fn"].split(":")
        fn = getattr(importlib.import_module(module), name)
        signature = dict(zip(fn.arg_names, spec["signature"].values()))
        src = ASTSource(fn=fn, signature=signature, constexprs=spec["constexprs"])
        compiled = triton.compile(
            src, target=GPUTarget("cuda", ARCHS[arch], 32),
            options={"num_warps": spec["num_warps"], "num_stages": spec["num_stages"]})
        ptx = compiled.asm["ptx"]
        res.shared_bytes = int(compiled.metadata.shared)
        ops = [op for op in ("wgmma", "mma.sync") if op in ptx]
        res.tensor_cores = ",".join(op.split(".")[0] for op in ops) or "no"
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "k.ptx")
            with open(path, "w") as f:
                f.write(ptx)
            target = re.search(r"^\.target\s+(\S+)", ptx, re.M).group(1)
            out = subprocess.run([_ptxas(), "-v", f"--gpu-name={target}", path,
                                  "-o", os.path.join(tmp, "k.cubin")],
                                 capture_output=True, text=True, check=True)
        _parse_ptxas(out.stdout + out.stderr, res)
    except Exception as exc:  # reported in the table, and a failure in the tests
        res.error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]
    return res


def _compile_star(args):
    return compile_spec(*args)


def compile_all(archs: Iterable[str] = tuple(ARCHS), families: Optional[Iterable[str]] = None,
                jobs: Optional[int] = None, progress: bool = False) -> List[KernelResources]:
    """Compile every spec for every arch, in parallel processes."""
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise RuntimeError("ahead-of-time compilation needs TRITON_INTERPRET unset")
    work = [(spec, arch) for arch in archs for spec in all_specs(ARCHS[arch] // 10, families)]
    jobs = jobs or max(1, os.cpu_count() or 1)
    with ProcessPoolExecutor(jobs) as pool:
        it = pool.map(_compile_star, work, chunksize=4)
        if progress:
            try:
                from tqdm import tqdm
                it = tqdm(it, total=len(work), desc="compiling", unit="kernel")
            except ImportError:
                pass
        return list(it)


def format_table(rows: List[KernelResources]) -> str:
    """A Markdown table: kernel x config x arch with registers, spills, shared memory, MMA."""
    lines = ["| kernel | config | arch | regs | spill B (st/ld) | smem B | tensor cores | status |",
             "|---|---|---|---:|---:|---:|---|---|"]
    for r in rows:
        status = "ok" if r.error is None else r.error
        lines.append(f"| {r.kernel} | {r.config} | {r.arch} | {r.registers} | "
                     f"{r.spill_stores}/{r.spill_loads} | {r.shared_bytes} | {r.tensor_cores} | "
                     f"{status} |")
    return "\n".join(lines)


def summary(rows: List[KernelResources]) -> Dict[str, int]:
    return {
        "compiled": sum(r.error is None for r in rows),
        "failed": sum(r.error is not None for r in rows),
        "with_spills": sum(r.error is None and r.spills > 0 for r in rows),
    }
