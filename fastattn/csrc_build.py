"""Compile the CUDA C++ kernels in ``csrc/`` standalone with nvcc and read ``-Xptxas -v``.

No GPU and no torch CUDA build are needed: every kernel ``.cu`` file includes only CUDA
headers, so ``nvcc -c`` compiles it on its own for a given architecture.  Used by
``tests/csrc/test_compile.py`` (CI) and by ``fastattn kernels``.

    rows = compile_all(["sm_80", "sm_90a"], jobs=2)   # one KernelRow per kernel and arch
    print(format_table(rows))

A KernelRow holds kernel, config, arch, registers, spill_stores, spill_loads, shared_bytes
(static shared memory), stack_bytes, source and error (None when the file compiled).
:func:`check_bindings` compiles the torch binding layer (``csrc/*.cpp``) with ``-fsyntax-only``
against torch's headers, which works even with a CPU build of torch when its CUDA headers ship.
"""
from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterable, List, Optional, Sequence

ARCHS = ("sm_80", "sm_90a")
# What torch's CUDAExtension defines: the kernels must build without the half operators.
TORCH_NVCC_DEFINES = ("-D__CUDA_NO_HALF_OPERATORS__", "-D__CUDA_NO_HALF_CONVERSIONS__",
                      "-D__CUDA_NO_BFLOAT16_CONVERSIONS__", "-D__CUDA_NO_HALF2_OPERATORS__")
NVCC_FLAGS = ("-std=c++17", "-O3", "--use_fast_math") + TORCH_NVCC_DEFINES


@dataclasses.dataclass
class KernelRow:
    kernel: str
    config: str
    arch: str
    registers: Optional[int]
    spill_stores: Optional[int]
    spill_loads: Optional[int]
    shared_bytes: Optional[int]
    stack_bytes: Optional[int]
    source: str
    error: Optional[str] = None


class CompileError(RuntimeError):
    """nvcc or the host compiler rejected a source file."""


def csrc_root() -> Optional[Path]:
    """The ``csrc`` folder of a source checkout, or None (installed wheels do not ship it)."""
    root = Path(__file__).resolve().parent.parent / "csrc"
    return root if root.is_dir() else None


def find_nvcc() -> Optional[str]:
    """nvcc from $CUDA_HOME / $CUDA_PATH, then $PATH, then /usr/local/cuda; None if absent."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        home = os.environ.get(var)
        if home and (Path(home) / "bin" / "nvcc").is_file():
            return str(Path(home) / "bin" / "nvcc")
    found = shutil.which("nvcc")
    if found:
        return found
    default = Path("/usr/local/cuda/bin/nvcc")
    return str(default) if default.is_file() else None


def cuda_include_dir(nvcc: Optional[str] = None) -> Optional[Path]:
    """The toolkit's include folder (holding cuda_runtime_api.h), or None."""
    candidates = [Path(os.environ[v]) / "include" for v in ("CUDA_HOME", "CUDA_PATH")
                  if os.environ.get(v)]
    if nvcc:
        candidates.append(Path(nvcc).resolve().parent.parent / "include")
    candidates.append(Path("/usr/local/cuda/include"))
    for path in candidates:
        if (path / "cuda_runtime_api.h").is_file():
            return path
    return None


def kernel_sources(root: Optional[Path] = None) -> List[Path]:
    """Every kernel translation unit (``csrc/**/*.cu``), sorted."""
    root = csrc_root() if root is None else root
    return sorted(root.rglob("*.cu")) if root is not None else []


def gencode(arch: str) -> List[str]:
    """nvcc flags for one real architecture: "sm_80" or "sm_90a" (arch-specific features)."""
    m = re.fullmatch(r"sm_(\d+a?)", arch)
    if not m:
        raise ValueError(f"arch must look like 'sm_80' or 'sm_90a', got {arch!r}")
    return ["-gencode", f"arch=compute_{m.group(1)},code=sm_{m.group(1)}"]


_ENTRY = re.compile(r"Compiling entry function '([^']+)' for '(sm_\w+)'")
_PROPS = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"Used (\d+) registers")
_SMEM = re.compile(r"(\d+) bytes smem")


def _demangle(names: Sequence[str]) -> List[str]:
    tool = shutil.which("c++filt")
    if tool is None or not names:
        return list(names)
    out = subprocess.run([tool], input="\n".join(names), capture_output=True, text=True)
    lines = out.stdout.splitlines()
    return lines if out.returncode == 0 and len(lines) == len(names) else list(names)


_SHORT_TYPES = (("__nv_bfloat16", "bf16"), ("__half", "fp16"), ("float", "fp32"))
_ACTIVATIONS = {"0": "relu", "1": "gelu", "2": "gelu_tanh"}


def _split_name(demangled: str):
    """('attention_fwd_kernel', 'fp16, 128') from a demangled kernel signature."""
    head = demangled.split("(", 1)[0] if "<" not in demangled.split("(", 1)[0] else demangled
    m = re.match(r"(?:void )?(?:[\w:]+::)?(\w+)<(.*)>\(", head)
    if not m:
        return re.sub(r"^void |\(.*$|^.*::", "", demangled), ""
    config = m.group(2)
    config = re.sub(r"\(fastattn::Activation\)(\d)", lambda a: _ACTIVATIONS[a.group(1)], config)
    for long, short in _SHORT_TYPES:
        config = re.sub(rf"\b{long}\b", short, config)
    return m.group(1), config.replace("(bool)1", "true").replace("(bool)0", "false")


def parse_ptxas(log: str, source: str = "") -> List[KernelRow]:
    """KernelRows from nvcc ``-Xptxas -v`` output (entry functions only)."""
    entries = []  # [mangled, arch, stack, stores, loads, regs, smem]
    current = None
    for line in log.splitlines():
        m = _ENTRY.search(line)
        if m:
            current = [m.group(1), m.group(2), None, None, None, None, 0]
            entries.append(current)
            continue
        if current is None:
            continue
        m = _PROPS.search(line)
        if m and current[2] is None:
            current[2:5] = [int(g) for g in m.groups()]
            continue
        m = _USED.search(line)
        if m and current[5] is None:
            current[5] = int(m.group(1))
            s = _SMEM.search(line)
            current[6] = int(s.group(1)) if s else 0
    names = _demangle([e[0] for e in entries])
    rows = []
    for name, (_, arch, stack, stores, loads, regs, smem) in zip(names, entries):
        kernel, config = _split_name(name)
        rows.append(KernelRow(kernel, config, arch, regs, stores, loads, smem, stack, source))
    return rows


def _relative(path: Path) -> str:
    root = csrc_root()
    try:
        return str(path.relative_to(root.parent)) if root else str(path)
    except ValueError:
        return str(path)


def compile_source(source: Path, archs: Sequence[str] = ARCHS, nvcc: Optional[str] = None,
                   extra_flags: Iterable[str] = ()) -> List[KernelRow]:
    """``nvcc -c`` one .cu file for every arch in ``archs`` (one nvcc run, one -gencode each).

    Returns one KernelRow per kernel entry and arch; raises CompileError with nvcc's output.
    """
    if isinstance(archs, str):
        archs = [archs]
    nvcc = nvcc or find_nvcc()
    if nvcc is None:
        raise FileNotFoundError("nvcc not found (set CUDA_HOME or put nvcc on PATH)")
    source = Path(source)
    root = csrc_root() or source.parent
    codes = [flag for arch in archs for flag in gencode(arch)]
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [nvcc, "-c", str(source), "-o", os.path.join(tmp, "out.o"), f"-I{root}",
               *NVCC_FLAGS, *codes, "-Xptxas", "-v", *extra_flags]
        proc = subprocess.run(cmd, capture_output=True, text=True)
    log = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise CompileError(f"{' '.join(cmd)}\n{log}")
    return parse_ptxas(log, _relative(source))


def compile_all(archs: Sequence[str] = ARCHS, jobs: Optional[int] = None,
                sources: Optional[Sequence[Path]] = None) -> List[KernelRow]:
    """Compile every kernel source for every arch (``jobs`` nvcc processes at once).

    Returns one KernelRow per kernel entry and arch, sorted by source, arch, kernel, config; a
    file that fails to compile gives one row per arch with ``error`` set (the end of the
    compiler output) and no numbers.
    """
    sources = kernel_sources() if sources is None else list(sources)
    nvcc = find_nvcc()
    if nvcc is None:
        raise FileNotFoundError("nvcc not found (set CUDA_HOME or put nvcc on PATH)")

    def run(src):
        try:
            return compile_source(Path(src), archs, nvcc)
        except CompileError as exc:
            return [KernelRow("(compile failed)", "", arch, None, None, None, None, None,
                              _relative(Path(src)), error=str(exc)[-4000:]) for arch in archs]

    with ThreadPoolExecutor(max_workers=jobs or os.cpu_count() or 1) as pool:
        results = list(pool.map(run, sources))
    rows = [row for rows in results for row in rows]
    return sorted(rows, key=lambda r: (r.source, r.arch, r.kernel, r.config))


def format_table(rows: Sequence[KernelRow]) -> str:
    """Markdown table: kernel, config, arch, registers, spills, static shared memory, source."""
    header = ("| kernel | config | arch | registers | spill stores | spill loads | smem bytes "
              "| source |\n|---|---|---|---:|---:|---:|---:|---|")
    lines = [header]
    for r in rows:
        if r.error:
            lines.append(f"| {r.kernel} | | {r.arch} | | | | | {r.source} |")
            continue
        lines.append(f"| {r.kernel} | {r.config} | {r.arch} | {r.registers} | {r.spill_stores} "
                     f"| {r.spill_loads} | {r.shared_bytes} | {r.source} |")
    return "\n".join(lines)


def summary(rows: Sequence[KernelRow]) -> dict:
    return {"compiled": sum(r.error is None for r in rows),
            "failed": sum(r.error is not None for r in rows),
            "with_spills": sum(bool(r.spill_stores or r.spill_loads) for r in rows)}


def binding_sources(root: Optional[Path] = None) -> List[Path]:
    """The host-side translation units (``csrc/**/*.cpp``): torch bindings and dispatch."""
    root = csrc_root() if root is None else root
    return sorted(root.rglob("*.cpp")) if root is not None else []


def binding_flags(nvcc: Optional[str] = None) -> List[str]:
    """Host compiler flags to parse the binding layer against torch's and CUDA's headers."""
    import torch
    from torch.utils import cpp_extension

    cuda_include = cuda_include_dir(nvcc or find_nvcc())
    if cuda_include is None:
        raise FileNotFoundError("the CUDA toolkit headers (cuda_runtime_api.h) were not found")
    includes = cpp_extension.include_paths()
    flags = [f"-I{p}" for p in includes]
    flags += [f"-I{cuda_include}", f"-I{sysconfig.get_paths()['include']}",
              f"-I{csrc_root()}", "-DTORCH_EXTENSION_NAME=_C", "-DTORCH_API_INCLUDE_EXTENSION_H"]
    torch_major_minor = tuple(int(x) for x in torch.__version__.split(".")[:2])
    flags.append("-std=c++20" if torch_major_minor >= (2, 10) else "-std=c++17")
    generated = Path(includes[0]) / "c10" / "cuda" / "impl" / "cuda_cmake_macros.h"
    if not generated.is_file():  # CPU wheels omit this configure-time header
        flags.append("-DC10_CUDA_NO_CMAKE_CONFIGURE_FILE")
    return flags


def missing_binding_headers() -> Optional[str]:
    """None when torch ships the CUDA headers the binding layer includes, else which is absent."""
    from torch.utils import cpp_extension

    root = Path(cpp_extension.include_paths()[0])
    for header in ("c10/cuda/CUDAGuard.h", "c10/cuda/CUDAStream.h", "torch/extension.h"):
        if not (root / header).is_file():
            return f"torch's include dir has no {header}"
    return None


def check_bindings(sources: Optional[Sequence[Path]] = None, compiler: str = "c++",
                   jobs: Optional[int] = None) -> None:
    """``-fsyntax-only`` every .cpp of ``csrc``; raises CompileError with the compiler output."""
    sources = binding_sources() if sources is None else list(sources)
    flags = binding_flags()

    def run(src):
        cmd = [compiler, "-fsyntax-only", *flags, str(src)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        return src, proc, cmd

    with ThreadPoolExecutor(max_workers=jobs or os.cpu_count() or 1) as pool:
        for src, proc, cmd in pool.map(run, sources):
            if proc.returncode != 0:
                raise CompileError(f"{' '.join(cmd)}\n{proc.stdout}{proc.stderr}"[-8000:])


if __name__ == "__main__":  # python -m fastattn.csrc_build [sm_80 sm_90a]
    table_rows = compile_all(sys.argv[1:] or ARCHS)
    print(format_table(table_rows))
    print(summary(table_rows))
