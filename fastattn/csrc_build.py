"""Compile the CUDA C++ kernels in ``csrc/`` standalone with nvcc and read ``-Xptxas -v``.

No GPU and no torch CUDA build are needed: every kernel ``.cu`` file includes only CUDA
headers, so ``nvcc -c`` compiles it on its own for a given architecture.  Used by
``tests/csrc/test_compile.py`` (CI) and by ``fastattn kernels``.

    rows = compile_all(["sm_80", "sm_90a"], jobs=2)   # one KernelRow per kernel and arch
    print(format_table(rows))

A KernelRow holds kernel, config, arch, registers, spill_stores, spill_loads, shared_bytes
(static shared memory), stack_bytes, source and error (None when the file compiled); for the
tensor-core kernels (the attention forward) also the figures of the innermost loop holding the
most MMA instructions, read from the SASS of the compiled cubin with :mod:`fastattn.sass`
(cuobjdump bundled with Triton): loop_instructions, loop_mma, loop_mufu, non_mma_per_score =
(loop_instructions - loop_mma) * loop_threads / (block_m * block_n), and ``loops``, the
instruction counts of every innermost MMA loop (the key-padding kernel has two: the prefix walk,
which is the reported one, and the walk that reads the keep row).
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

from fastattn.enums import ACTIVATION_NAMES

ARCHS = ("sm_80", "sm_90a")

# The attention forward's compiled (mask path, mask dtype) pairs, mirroring
# csrc/attention/attention_fwd_variants.h (FwdMask / MaskDType enum order); each has one
# translation unit csrc/attention/fwd/attention_fwd_<mask>[_<dtype>].cu.
FWD_MASKS = ("none", "key_padding", "keep", "add")  # FwdMask 0..3
MASK_DTYPES = ("uint8", "int8", "int16", "int32", "int64", "float16", "bfloat16", "float32",
               "float64")  # MaskDType 0..8
ATTENTION_FWD_VARIANTS = (
    ("none", None),
    ("key_padding", "uint8"),
    *(("keep", dt) for dt in MASK_DTYPES),
    *(("add", dt) for dt in ("float16", "bfloat16", "float32", "float64")),
)


def attention_fwd_source(mask: str, mask_dtype: Optional[str]) -> str:
    """Path (relative to the repository root) of the translation unit of one variant."""
    name = "none" if mask == "none" else f"{mask}_{mask_dtype}"
    return f"csrc/attention/fwd/attention_fwd_{name}.cu"
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
    symbol: str = ""  # mangled name
    loop_instructions: Optional[int] = None
    loop_mma: Optional[int] = None
    loop_mufu: Optional[int] = None
    non_mma_per_score: Optional[float] = None
    loops: str = ""  # instructions of every innermost MMA loop, e.g. "878/975"


# Kernels whose KV loop is measured: name -> (loop_threads, block_m, block_n), as in
# csrc/attention/attention_fwd.cuh (kThreads, kBlockM, kBlockN).
LOOP_GEOMETRY = {"attention_fwd_kernel": (128, 64, 64)}


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
_ACTIVATIONS = {str(int(code)): name for name, code in ACTIVATION_NAMES.items()}
# Enum template arguments as c++filt prints them, "(fastattn::FwdMask)1", -> names.
_ENUMS = {"Activation": _ACTIVATIONS,
          "FwdMask": {str(i): name for i, name in enumerate(FWD_MASKS)},
          "MaskDType": {str(i): name for i, name in enumerate(MASK_DTYPES)}}


def _split_name(demangled: str):
    """('attention_fwd_kernel', 'fp16, 128') from a demangled kernel signature."""
    head = demangled.split("(", 1)[0] if "<" not in demangled.split("(", 1)[0] else demangled
    m = re.match(r"(?:void )?(?:[\w:]+::)?(\w+)<(.*)>\(", head)
    if not m:
        return re.sub(r"^void |\(.*$|^.*::", "", demangled), ""
    config = m.group(2)
    config = re.sub(r"\(fastattn::(\w+)\)(\d+)",
                    lambda a: _ENUMS.get(a.group(1), {}).get(a.group(2), a.group(0)), config)
    config = config.replace("none, uint8", "none")  # the no-mask kernel has no mask dtype
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
    for name, (symbol, arch, stack, stores, loads, regs, smem) in zip(names, entries):
        kernel, config = _split_name(name)
        rows.append(KernelRow(kernel, config, arch, regs, stores, loads, smem, stack, source,
                              symbol=symbol))
    return rows


def _cubins(obj: Path, workdir: Path) -> dict:
    """{arch: cubin path} of an nvcc object file (``cuobjdump -xelf all``)."""
    from fastattn import sass

    cuobjdump = sass.tool("cuobjdump")
    if cuobjdump is None:
        return {}
    subprocess.run([cuobjdump, "-xelf", "all", str(obj)], cwd=workdir, capture_output=True)
    found = {}
    for path in workdir.glob("*.cubin"):
        m = re.search(r"\.(sm_\d+a?)\.cubin$", path.name)
        if m:
            found[m.group(1)] = path
    return found


def add_loop_metrics(rows: Sequence[KernelRow], cubins: dict) -> None:
    """Fills the loop figures of the LOOP_GEOMETRY kernels from their cubins' SASS."""
    if not cubins:
        return
    from fastattn import sass

    parsed = {}
    for row in rows:
        if row.kernel not in LOOP_GEOMETRY or row.arch not in cubins:
            continue
        if row.arch not in parsed:
            parsed[row.arch] = sass.parse(sass.disassemble(str(cubins[row.arch])))
        insns = parsed[row.arch].get(row.symbol)
        if not insns:
            continue
        loops = sass.find_loops(insns)
        hot = sass.hot_loop(loops)
        if hot is None:
            continue
        mma_loops = [lp for lp in loops if lp.mma > 0]
        innermost = [lp for lp in mma_loops if not any(lp.contains(o) for o in mma_loops)]
        threads, block_m, block_n = LOOP_GEOMETRY[row.kernel]
        row.loop_instructions, row.loop_mma = hot.instructions, hot.mma
        row.loop_mufu = hot.counts["mufu"]
        row.non_mma_per_score = sass.non_mma_per_score(hot.instructions, hot.mma, threads,
                                                       block_m, block_n)
        row.loops = "/".join(str(lp.instructions) for lp in innermost)


def _relative(path: Path) -> str:
    root = csrc_root()
    try:
        return str(path.relative_to(root.parent)) if root else str(path)
    except ValueError:
        return str(path)


def compile_source(source: Path, archs: Sequence[str] = ARCHS, nvcc: Optional[str] = None,
                   extra_flags: Iterable[str] = (), loop_metrics: bool = True) -> List[KernelRow]:
    """``nvcc -c`` one .cu file for every arch in ``archs`` (one nvcc run, one -gencode each).

    Returns one KernelRow per kernel entry and arch, with the loop figures of the
    LOOP_GEOMETRY kernels when ``loop_metrics``; raises CompileError with nvcc's output.
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
        rows = parse_ptxas(log, _relative(source))
        if loop_metrics and any(r.kernel in LOOP_GEOMETRY for r in rows):
            add_loop_metrics(rows, _cubins(Path(tmp) / "out.o", Path(tmp)))
    return rows


# Compile-check flag: each attention forward file instantiates fp16 / head dim 64 only.
COMPILE_CHECK_ONLY_FLAG = "-DFASTATTN_FWD_COMPILE_CHECK_ONLY"
# The forward variants whose loops carry a budget: always compiled in full.
BUDGET_FWD_VARIANTS = (("none", None), ("key_padding", "uint8"))


def compile_check_flags(source: Path) -> List[str]:
    """Flags for a quick compile check of ``source`` (CI): attention forward files other than
    BUDGET_FWD_VARIANTS compile one kernel each (fp16, head dim 64), every mask path and dtype
    still compiled for every arch; everything else compiles in full."""
    rel = _relative(Path(source))
    budget = {attention_fwd_source(*v) for v in BUDGET_FWD_VARIANTS}
    fwd = {attention_fwd_source(*v) for v in ATTENTION_FWD_VARIANTS}
    return [COMPILE_CHECK_ONLY_FLAG] if rel in fwd and rel not in budget else []


def compile_all(archs: Sequence[str] = ARCHS, jobs: Optional[int] = None,
                sources: Optional[Sequence[Path]] = None,
                loop_metrics: bool = True, compile_check: bool = False) -> List[KernelRow]:
    """Compile every kernel source for every arch (``jobs`` nvcc processes at once).

    ``compile_check``: the quick CI form of :func:`compile_check_flags` (the full set is what
    ``fastattn kernels`` and the extension build compile).

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
            flags = compile_check_flags(Path(src)) if compile_check else []
            return compile_source(Path(src), archs, nvcc, flags, loop_metrics=loop_metrics)
        except CompileError as exc:
            return [KernelRow("(compile failed)", "", arch, None, None, None, None, None,
                              _relative(Path(src)), error=str(exc)[-4000:]) for arch in archs]

    with ThreadPoolExecutor(max_workers=jobs or os.cpu_count() or 1) as pool:
        results = list(pool.map(run, sources))
    rows = [row for rows in results for row in rows]
    return sorted(rows, key=lambda r: (r.source, r.arch, r.kernel, r.config))


def format_table(rows: Sequence[KernelRow]) -> str:
    """Markdown table: kernel, config, arch, registers, spills, static shared memory, the loop
    figures (blank for kernels without a measured loop), source."""
    header = ("| kernel | config | arch | registers | spill stores | spill loads | smem bytes "
              "| loop instructions | loop mma | loop mufu | non-mma per score | loops | source |\n"
              "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|")
    lines = [header]
    for r in rows:
        if r.error:
            lines.append(f"| {r.kernel} | | {r.arch} | | | | | | | | | | {r.source} |")
            continue
        loop = ["" if v is None else v for v in (r.loop_instructions, r.loop_mma, r.loop_mufu)]
        per_score = "" if r.non_mma_per_score is None else f"{r.non_mma_per_score:.1f}"
        lines.append(f"| {r.kernel} | {r.config} | {r.arch} | {r.registers} | {r.spill_stores} "
                     f"| {r.spill_loads} | {r.shared_bytes} | {loop[0]} | {loop[1]} | {loop[2]} "
                     f"| {per_score} | {r.loops} | {r.source} |")
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
