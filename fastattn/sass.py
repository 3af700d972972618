"""Static reading of a cubin's SASS: the instruction mix of a kernel's hot loop.

:func:`analyze` disassembles a cubin with the ``cuobjdump -sass`` that ships with Triton
(``triton/backends/nvidia/bin``; ``nvdisasm`` when cuobjdump is missing), finds its loops from
the backward branches (a branch whose target is at or before itself closes a loop spanning
target..branch), and reports, for the **innermost loop that holds the most MMA instructions**
(HGMMA = ``wgmma`` on sm_90a, HMMA = ``mma.sync``): its instruction count, MMA count, MUFU
count and memory operations; plus the kernel-wide counts, registers and spills.

Definitions (the figures ``fastattn kernels`` prints):

* ``loop_instructions``: every SASS instruction of that loop, its MMA instructions and closing
  branch included.  Loops that contain another MMA-holding loop are not innermost; among the
  innermost, the one with the most MMA instructions wins, and on a tie the shorter one (the
  interior-tile loop of a split KV walk).  Every innermost MMA loop is listed in ``loops``.
* ``non_mma_per_score`` = (loop_instructions - loop_mma) * loop_threads / (block_m * block_n):
  non-MMA instructions issued per score element per KV tile.  ``loop_threads`` = the threads
  that execute the loop: num_warps * 32, or only the consumer warps of a warp-specialized
  kernel.
* ``non_mma_per_mac`` = (loop_instructions - loop_mma) * loop_threads /
  (block_m * block_n * block_k): the same per multiply-accumulate of a GEMM's K loop.
* ``registers``: REG of ``cuobjdump -res-usage`` (what ptxas allocated for this cubin).
  ``spill_stores`` / ``spill_loads``: bytes of the STL / LDL instructions in the SASS, which is
  what ``ptxas -v`` reports as spill stores / loads for Triton kernels (they use no local
  arrays); ``spill_bytes`` is their sum.
* ``tma``: the kernel issues TMA / bulk copies (UTMALDG, UTMASTG, UBLKCP, ...).
  ``mma``: "wgmma", "mma.sync", "wgmma+mma.sync" or "none", kernel-wide.

Needs no GPU and no triton import beyond locating the bundled tools.
"""
from __future__ import annotations

import collections
import dataclasses
import os
import re
import shutil
import subprocess
import tempfile
from typing import Dict, List, Optional, Tuple, Union

WGMMA_OPS = ("HGMMA", "IGMMA", "QGMMA", "BGMMA")
MMA_SYNC_OPS = ("HMMA", "IMMA", "DMMA", "BMMA")
MMA_OPS = WGMMA_OPS + MMA_SYNC_OPS
TMA_OPS = ("UTMALDG", "UTMASTG", "UTMAPF", "UTMAREDG", "UBLKCP", "UBLKRED", "UBLKPF")
BRANCH_OPS = ("BRA", "JMP", "BRX", "JMX")
# Categories counted kernel-wide and in the loop: name -> opcode bases.
CATEGORIES = {
    "mma": MMA_OPS, "hgmma": WGMMA_OPS, "hmma": MMA_SYNC_OPS, "mufu": ("MUFU",),
    "tma": TMA_OPS, "ldgsts": ("LDGSTS",), "ldsm": ("LDSM",), "ldg": ("LDG",), "stg": ("STG",),
    "lds": ("LDS",), "sts": ("STS",), "stl": ("STL",), "ldl": ("LDL",),
}
# Read-modify-write atomics ("atomic" in the counts).  Exchanges are left out: they are how a
# kernel writes the TMA descriptors it builds on the device (its own scratch, one writer), not
# a reduction whose order could change a result.
ATOMIC_OPS = ("ATOM", "ATOMG", "ATOMS", "RED", "REDG")

_INSN = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;")
_LABEL = re.compile(r"^\s*(\.L_[\w]+):")
_FUNC = re.compile(r"Function\s*:\s*(\S+)|^\s*\.text\.(\S+):")
_WIDTH = {"64": 8, "128": 16, "U8": 1, "S8": 1, "U16": 2, "S16": 2}


def tool(name: str) -> Optional[str]:
    """Path of a CUDA binary tool bundled with Triton (or on PATH), or None."""
    try:
        import triton.backends.nvidia as nv

        path = os.path.join(os.path.dirname(nv.__file__), "bin", name)
        if os.path.exists(path):
            return path
    except ImportError:
        pass
    return shutil.which(name)


def _run_on_cubin(args: List[str], cubin: Union[bytes, str]) -> str:
    if isinstance(cubin, (bytes, bytearray)):
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "k.cubin")
            with open(path, "wb") as f:
                f.write(cubin)
            return _run_on_cubin(args, path)
    out = subprocess.run([*args, cubin], capture_output=True, text=True, check=True)
    return out.stdout


def disassemble(cubin: Union[bytes, str]) -> str:
    """SASS text of a cubin (bytes or path): ``cuobjdump -sass``, else ``nvdisasm``."""
    cuobjdump = tool("cuobjdump")
    if cuobjdump:
        return _run_on_cubin([cuobjdump, "-sass"], cubin)
    nvdisasm = tool("nvdisasm")
    if nvdisasm:
        return _run_on_cubin([nvdisasm, "-c"], cubin)
    raise RuntimeError("neither cuobjdump nor nvdisasm found (they ship with triton)")


def resource_usage(cubin: Union[bytes, str]) -> Dict[str, Dict[str, int]]:
    """``cuobjdump -res-usage``: {function: {"REG": .., "STACK": .., "SHARED": .., "LOCAL": ..}}."""
    text = _run_on_cubin([tool("cuobjdump") or "cuobjdump", "-res-usage"], cubin)
    usage, name = {}, None
    for line in text.splitlines():
        m = re.match(r"\s*Function\s+(\S+?):?\s*$", line)
        if m:
            name = m.group(1)
            continue
        if name and "REG:" in line:
            usage[name] = {k: int(v) for k, v in re.findall(r"(\w+(?:\[\d+\])?):(\d+)", line)}
            name = None
    return usage


@dataclasses.dataclass
class Instruction:
    offset: int
    opcode: str  # full opcode, e.g. HGMMA.64x64x16.F32
    text: str  # the whole instruction without predicate

    @property
    def base(self) -> str:
        return self.opcode.split(".")[0]


def parse(sass: str) -> Dict[str, List[Instruction]]:
    """Instructions per function.  Branch targets are kept in ``text`` (an address ``0x...``
    for cuobjdump, a label for nvdisasm; labels are rewritten to their address)."""
    funcs: Dict[str, List[Instruction]] = {}
    labels: Dict[str, Dict[str, int]] = {}
    current, pending = None, []
    for line in sass.splitlines():
        m = _FUNC.search(line)
        if m and "/*" not in line:
            current = m.group(1) or m.group(2)
            funcs[current], labels[current], pending = [], {}, []
            continue
        if current is None:
            continue
        m = _LABEL.match(line)
        if m:
            pending.append(m.group(1))
            continue
        m = _INSN.search(line)
        if not m:
            continue
        offset = int(m.group(1), 16)
        for label in pending:
            labels[current][label] = offset
        pending = []
        text = re.sub(r"^@!?U?P\w+\s+", "", m.group(2).strip())
        opcode = text.split()[0] if text else ""
        funcs[current].append(Instruction(offset, opcode, text))
    for name, insns in funcs.items():  # nvdisasm: `(.L_x_3) -> 0x...
        for insn in insns:
            if insn.base in BRANCH_OPS and ".L_" in insn.text:
                insn.text = re.sub(r"`?\(?(\.L_\w+)\)?",
                                   lambda mm: hex(labels[name].get(mm.group(1), -1)), insn.text)
    return funcs


def _branch_target(insn: Instruction) -> Optional[int]:
    if insn.base not in BRANCH_OPS:
        return None
    m = re.search(r"\b0x([0-9a-f]+)\b", insn.text.split(None, 1)[1] if " " in insn.text else "")
    return int(m.group(1), 16) if m else None


def count(insns: List[Instruction]) -> Dict[str, int]:
    """Counts per category of :data:`CATEGORIES`, plus ``instructions`` and ``atomic``
    (read-modify-write atomics, :data:`ATOMIC_OPS` other than exchanges)."""
    bases = collections.Counter(i.base for i in insns)
    out = {"instructions": len(insns)}
    for name, ops in CATEGORIES.items():
        out[name] = sum(bases[o] for o in ops)
    out["atomic"] = sum(1 for i in insns if i.base in ATOMIC_OPS and ".EXCH" not in i.opcode)
    return out


def _local_bytes(insns: List[Instruction], base: str) -> int:
    total = 0
    for i in insns:
        if i.base == base:
            mods = i.opcode.split(".")[1:]
            total += next((_WIDTH[m] for m in mods if m in _WIDTH), 4)
    return total


@dataclasses.dataclass
class Loop:
    start: int  # offset of the first instruction (the back edge's target)
    end: int  # offset of the closing branch
    instructions: int
    mma: int
    counts: Dict[str, int]
    top_ops: List[Tuple[str, int]]

    def contains(self, other: "Loop") -> bool:
        return (self.start <= other.start and other.end <= self.end
                and (self.start, self.end) != (other.start, other.end))


def find_loops(insns: List[Instruction]) -> List[Loop]:
    """Every loop closed by a backward branch (one per header, spanning to its last back edge)."""
    ends: Dict[int, int] = {}
    for insn in insns:
        target = _branch_target(insn)
        if target is not None and target <= insn.offset:
            ends[target] = max(ends.get(target, target), insn.offset)
    loops = []
    for start, end in sorted(ends.items()):
        body = [i for i in insns if start <= i.offset <= end]
        counts = count(body)
        top = collections.Counter(i.opcode for i in body).most_common(8)
        loops.append(Loop(start, end, len(body), counts["mma"], counts, top))
    return loops


def hot_loop(loops: List[Loop]) -> Optional[Loop]:
    """The innermost loop holding the most MMA instructions (ties: the shorter one)."""
    mma_loops = [lp for lp in loops if lp.mma > 0]
    innermost = [lp for lp in mma_loops if not any(lp.contains(o) for o in mma_loops)]
    if not innermost:
        return None
    return min(innermost, key=lambda lp: (-lp.mma, lp.instructions, lp.start))


@dataclasses.dataclass
class SassReport:
    function: str
    registers: int
    stack_bytes: int
    spill_stores: int
    spill_loads: int
    mma: str
    tma: bool
    counts: Dict[str, int]  # kernel-wide
    loop: Optional[Loop]
    loops: List[Loop]  # every innermost MMA loop

    @property
    def spill_bytes(self) -> int:
        return self.spill_stores + self.spill_loads

    def loop_summary(self) -> Dict[str, object]:
        """Flat loop figures: loop_instructions, loop_mma, loop_mufu, loop_<category>..."""
        if self.loop is None:
            return {"loop_instructions": None, "loop_mma": None, "loop_mufu": None}
        out = {"loop_instructions": self.loop.instructions}
        out.update({f"loop_{k}": v for k, v in self.loop.counts.items() if k != "instructions"})
        out["loop_top_ops"] = " ".join(f"{op}:{n}" for op, n in self.loop.top_ops)
        return out


def _mma_kind(counts: Dict[str, int]) -> str:
    kinds = [k for k, key in (("wgmma", "hgmma"), ("mma.sync", "hmma")) if counts[key]]
    return "+".join(kinds) or "none"


def analyze(cubin: Union[bytes, str], function: Optional[str] = None) -> SassReport:
    """Analyze one kernel of a cubin (bytes or path); ``function``: its name when the cubin
    holds several (default: the first)."""
    funcs = parse(disassemble(cubin))
    if not funcs:
        raise ValueError("no function found in the cubin's SASS")
    name = function if function in funcs else next(iter(funcs))
    insns = funcs[name]
    usage = resource_usage(cubin).get(name, {})
    counts = count(insns)
    loops = find_loops(insns)
    mma_loops = [lp for lp in loops if lp.mma > 0]
    innermost = [lp for lp in mma_loops if not any(lp.contains(o) for o in mma_loops)]
    return SassReport(
        function=name, registers=usage.get("REG", -1), stack_bytes=usage.get("STACK", -1),
        spill_stores=_local_bytes(insns, "STL"), spill_loads=_local_bytes(insns, "LDL"),
        mma=_mma_kind(counts), tma=counts["tma"] > 0, counts=counts, loop=hot_loop(loops),
        loops=innermost)


def non_mma_per_score(loop_instructions: Optional[int], loop_mma: Optional[int],
                      loop_threads: int, block_m: int, block_n: int) -> Optional[float]:
    """(loop_instructions - loop_mma) * loop_threads / (block_m * block_n); None without loop."""
    if loop_instructions is None or loop_mma is None:
        return None
    return (loop_instructions - loop_mma) * loop_threads / (block_m * block_n)


def non_mma_per_mac(loop_instructions: Optional[int], loop_mma: Optional[int],
                    loop_threads: int, block_m: int, block_n: int,
                    block_k: int) -> Optional[float]:
    """(loop_instructions - loop_mma) * loop_threads / (block_m * block_n * block_k)."""
    per_score = non_mma_per_score(loop_instructions, loop_mma, loop_threads, block_m, block_n)
    return None if per_score is None else per_score / block_k
