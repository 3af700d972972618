"""Static check that the kernels' address arithmetic is 64-bit, read from the compiled TTGIR.

A tensor with more than 2^31 elements (2.1 M tokens x 1024 hidden, 4 GiB in fp16) is reached
only through offsets computed in 64 bits: an ``offs * stride`` product taken in int32 wraps
silently before it is widened.  :func:`narrow_products` walks a kernel's TTGIR backwards from
every pointer add (``tt.addptr``) through the ops that compute its offset (and through the
lower bound and step of the ``scf.for`` loops whose induction variable it uses) and reports
every 32-bit multiplication of two run-time values; :func:`ttgir` compiles a
:class:`fastattn.launch_capture.KernelSource` up to TTGIR only (about a second per kernel, no
ptxas).  Both need ``TRITON_INTERPRET`` unset, like every ahead-of-time compile.

Design trade-off: a text walk over the IR, not an overflow proof.  Products by a compile-time
constant (a tile index times BLOCK) are allowed, as they stay bounded by a tensor dimension;
values that come out of an ``scf.if`` or a load are not followed (the kernels compute their
offsets next to the access, and a loaded sequence start is widened before any product).
"""
from __future__ import annotations

import dataclasses
import re
from typing import Dict, List, Optional, Tuple

_NAME = r"%[\w.$\-]+(?:#\d+)?"
_DEF = re.compile(rf"^\s*({_NAME}(?:, {_NAME})*)(?::(\d+))? = ([\w.]+)(.*)$")
_FOR = re.compile(rf"scf\.for ({_NAME}) = ({_NAME}) to ({_NAME}) step ({_NAME})"
                  rf"(?: iter_args\((.*?)\))?")
_PAIR = re.compile(rf"({_NAME}) = ({_NAME})")
_ADDPTR = re.compile(rf"tt\.addptr ({_NAME}), ({_NAME})")
_LOC_DEF = re.compile(r"^(#loc\d*) = loc\((.*)\)\s*$")
_TRAILING_LOC = re.compile(r"\s+loc\((.*)\)\s*$")
_PASS_CONSTANT = ("tt.splat", "tt.broadcast", "tt.expand_dims", "ttg.convert_layout",
                  "arith.extsi", "arith.extui", "arith.trunci", "arith.index_cast")
_STOP = ("tt.load", "scf.if", "scf.while", "tt.reduce", "tt.call")


@dataclasses.dataclass
class Product:
    """One multiplication in the address computation of a pointer add."""
    width: int  # bits of the integer type (32, 64)
    where: str  # source "file:line" of the multiplication
    text: str  # the TTGIR line


@dataclasses.dataclass
class _Op:
    name: str
    operands: List[str]
    type: str
    loc: str
    text: str


def _element_bits(type_text: str) -> Optional[int]:
    """Integer width of a scalar or tensor type (``i32``, ``tensor<64x1xi32, #blocked>``)."""
    m = re.search(r"(?:^|[<x\s])i(\d+)\b", type_text.strip())
    return int(m.group(1)) if m else None


def _strip_loc(rest: str) -> Tuple[str, str]:
    m = _TRAILING_LOC.search(rest)
    if not m:
        return rest, ""
    return rest[:m.start()], m.group(1)


class _Module:
    """The SSA definitions of one TTGIR module (text form), enough to walk offsets back."""

    def __init__(self, text: str):
        self.defs: Dict[str, _Op] = {}
        self.loop_inputs: Dict[str, List[str]] = {}  # block argument -> the values it takes
        self.locs: Dict[str, str] = {}
        self.offsets: List[str] = []  # the offset operand of every tt.addptr
        for line in text.splitlines():
            m = _LOC_DEF.match(line)
            if m:
                self.locs[m.group(1)] = m.group(2)
                continue
            body, loc = _strip_loc(line)
            for m in _FOR.finditer(body):
                iv, lb, _ub, step, iters = m.groups()
                self.loop_inputs[iv] = [lb, step]
                for arg, init in _PAIR.findall(iters or ""):
                    self.loop_inputs[arg] = [init]
            m = _ADDPTR.search(body)
            if m:
                self.offsets.append(m.group(2))
            m = _DEF.match(body)
            if not m:
                continue
            results, count, op, rest = m.groups()
            operand_text, _, type_text = rest.partition(" : ")
            if op == "scf.for":  # results of a loop: not followed
                operand_text = ""
            operands = re.findall(_NAME, operand_text)
            names = results.split(", ")
            if count:  # %x:3 = ... defines %x#0 .. %x#2
                names = [f"{names[0]}#{i}" for i in range(int(count))]
            for name in names:
                self.defs[name] = _Op(op, operands, type_text, loc, line.strip())

    def where(self, loc: str, depth: int = 0) -> str:
        """``file:line`` of a location (named and call-site locations resolved)."""
        if depth > 50:
            return loc
        loc = loc.strip()
        if loc.startswith("#loc"):
            return self.where(self.locs.get(loc, loc), depth + 1) if loc in self.locs else loc
        m = re.match(r'^"([^"]*)":(\d+)', loc)
        if m:
            return f"{m.group(1).rsplit('/', 1)[-1]}:{m.group(2)}"
        m = re.match(r"^callsite\((#loc\d*) at", loc)
        if m:
            return self.where(m.group(1), depth + 1)
        m = re.match(r'^"[^"]*"\((#loc\d*)\)', loc)
        if m:
            return self.where(m.group(1), depth + 1)
        return loc

    def constant(self, value: str, depth: int = 0) -> bool:
        op = self.defs.get(value)
        if op is None or depth > 20:
            return False
        if op.name == "arith.constant":
            return True
        return op.name in _PASS_CONSTANT and len(op.operands) == 1 and self.constant(
            op.operands[0], depth + 1)

    def products(self, offset: str) -> List[Product]:
        """Every multiplication the value ``offset`` is computed from."""
        found, seen, todo = [], set(), [offset]
        while todo:
            value = todo.pop()
            if value in seen:
                continue
            seen.add(value)
            if value in self.loop_inputs:
                todo.extend(self.loop_inputs[value])
                continue
            op = self.defs.get(value)
            if op is None or op.name in _STOP:
                continue
            if op.name == "arith.muli" and not any(self.constant(v) for v in op.operands):
                found.append(Product(_element_bits(op.type) or 0, self.where(op.loc), op.text))
            todo.extend(op.operands)
        return found


@dataclasses.dataclass
class AddressReport:
    """What one kernel's pointer adds are computed from."""
    kernel: str
    addptrs: int
    wide: List[Product]  # 64-bit products of run-time values
    narrow: List[Product]  # 32-bit products of run-time values: may wrap


def narrow_products(text: str, kernel: str = "") -> AddressReport:
    """The run-time products feeding the pointer adds of a TTGIR (or TTIR) module."""
    module = _Module(text)
    wide: Dict[str, Product] = {}
    narrow: Dict[str, Product] = {}
    for offset in module.offsets:
        for p in module.products(offset):
            (narrow if p.width < 64 else wide)[p.text] = p
    return AddressReport(kernel, len(module.offsets), list(wide.values()),
                         list(narrow.values()))


def ttgir(source) -> str:
    """TTGIR text of a :class:`~fastattn.launch_capture.KernelSource`, compiled for its arch
    with its options, stopping before LLVM (the passes ``triton.compile`` runs up to there);
    a full ``triton.compile`` where this Triton's stage API differs."""
    from fastattn.launch_capture import _require_compiled_triton, compile_source

    _require_compiled_triton()
    try:
        return _ttgir_only(source)
    except (TypeError, AttributeError, KeyError):
        return compile_source(source).asm["ttgir"]


def _ttgir_only(source) -> str:
    import inspect

    from triton._C.libtriton import ir
    from triton.compiler import ASTSource

    from fastattn.launch_capture import _backend, jit_function

    target, backend = _backend(source.arch)
    src = ASTSource(jit_function(source), source.signature, source.constexprs, source.attrs)
    options = backend.parse_options(dict(source.options))
    stages: dict = {}
    if "language" in inspect.signature(backend.add_stages).parameters:
        backend.add_stages(stages, options, src.language)
    else:
        backend.add_stages(stages, options)
    context = ir.context()
    ir.load_dialects(context)
    backend.load_dialects(context)
    args = (options, backend.get_codegen_implementation(options), backend.get_module_map(),
            context)
    if "target" in inspect.signature(src.make_ir).parameters:
        args = (target,) + args
    module = src.make_ir(*args)
    metadata = {"hash": "address-width", "target": target, **options.__dict__}
    for stage in ("ttir", "ttgir"):
        module = stages[stage](module, metadata)
    return str(module)
