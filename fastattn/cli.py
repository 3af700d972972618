"""Command line: ``fastattn bench | check | tune | kernels``.

* ``fastattn bench``   — benchmark fastattn against eager PyTorch and SDPA (see ``--help``).
* ``fastattn check``   — what is installed, which backends and launch tables run here and why
  not, and every kernel family (forward and backward) on every available backend against the
  float64 reference with the tolerance table; exits 1 on a mismatch.
* ``fastattn tune``    — time the candidate launch configurations of the BERT cases on this GPU
  and write the tuned table the launchers read (``--dry-run`` lists them without a GPU).
* ``fastattn kernels`` — compile every configuration the launchers can pick ahead of time for
  sm_80 and sm_90a (no GPU needed), with the specialization the JIT gives real inputs, and print
  registers, spills, shared memory and tensor-core use; ``--cases bert`` the kernels a BERT
  encoder launches with their hot-loop instruction mix (``--dump DIR``: cubins + kernels.json).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from typing import List, Optional


def _cmd_check(args) -> int:
    import torch

    from fastattn import selfcheck

    cuda = torch.cuda.is_available()
    if args.device is None:
        args.device = "cuda" if cuda else "cpu"
    if args.device == "cuda" and not cuda:
        print("fastattn check: --device cuda asked for, but torch sees no CUDA device",
              file=sys.stderr)
        return 2
    if args.info:
        _print_environment()
        return 0
    interpret = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
    if args.device == "cpu" and not interpret and not args.no_interpret and _has_triton():
        # the Triton kernels run on CPU tensors only under the interpreter, which must be
        # switched on before triton is imported: run the check again in a process that has it
        env = dict(os.environ, TRITON_INTERPRET="1")
        return subprocess.call([sys.executable, "-m", "fastattn.cli", *sys.argv[1:]], env=env)
    if args.device == "cuda" and interpret:
        print("fastattn check: TRITON_INTERPRET is set, which runs Triton on CPU tensors only",
              file=sys.stderr)
        return 2
    args.dtypes = args.dtypes or (["float16", "bfloat16"] if args.device == "cuda"
                                  else ["float32"])
    if not args.quiet:
        _print_environment()
        note = selfcheck.interpreter_note()
        if note and "bfloat16" in args.dtypes:
            print(f"  {note}: dropped from --dtypes")
        print(f"numerics against the float64 reference ({args.device}; tolerance: 2x the "
              "same-precision reference's error for outputs, 3x for gradients):")
    if selfcheck.interpreter_note():
        args.dtypes = [d for d in args.dtypes if d != "bfloat16"] or ["float32"]
    return selfcheck.main_numerics(args)


def _has_triton() -> bool:
    import importlib.util
    return importlib.util.find_spec("triton") is not None


def _print_environment() -> None:
    import torch

    import fastattn
    from fastattn import backends, tuning

    cuda = torch.cuda.is_available()
    print(f"fastattn {fastattn.__version__}  python {platform.python_version()}  "
          f"torch {torch.__version__}  triton {backends.triton_version() or 'not installed'}")
    print(f"CUDA device: {torch.cuda.get_device_name() if cuda else 'none'}"
          f"  (torch built with CUDA {torch.version.cuda or 'no'})")
    print(f"default backend: {backends.get_default_backend()}"
          f"  (FASTATTN_BACKEND={os.environ.get('FASTATTN_BACKEND', '')!r})")
    for name, (ok, why) in backends.report().items():
        print(f"  {name:<26} {'available' if ok else 'unavailable'}: {why}")
    if cuda:
        path = tuning.table_path_for("cuda")
        table = tuning.table_for("cuda")
        print(f"launch configurations: {'tuned table ' + path if table else 'static tables'}"
              f"{'' if table else f' (no tuned table {os.path.basename(path)} shipped)'}")
        from fastattn.ops.feedforward import feedforward_dispatch_reason
        print("feed-forward GEMMs (BERT-base, 8192 tokens, fp16, backend 'auto'):")
        try:
            lines = feedforward_dispatch_reason("cuda", torch.float16, 8192, 768, 3072,
                                                training=True).splitlines()
        except Exception as exc:  # the report must not stop the rest of the check
            lines = [f"unknown ({type(exc).__name__}: {exc})"]
        for line in lines:
            print(f"  {line}")
    else:
        print("launch configurations: static tables (tuned tables apply to CUDA devices)")


def _cmd_kernels(args) -> int:
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        return subprocess.call([sys.executable, "-m", "fastattn.cli", *sys.argv[1:]], env=env)
    from fastattn import aot, csrc_build

    progress = sys.stderr.isatty()
    if args.cases == "bert":
        rows = aot.bert(archs=args.arch, jobs=args.jobs, dump=args.dump, only=args.only,
                        families=args.family, progress=progress)
        tables = ["## BERT kernels (launcher specialization, SASS hot loop)\n", aot.tables(rows)]
    else:
        rows = aot.sweep(archs=args.arch, families=args.family, jobs=args.jobs,
                         sample=args.sample, seed=args.seed, progress=progress)
        tables = ["## Triton kernels (launcher specialization, triton.compile, cuobjdump)\n",
                  aot.sweep_table(rows)]
    print(tables[-1])
    counts = aot.summary(rows)
    print("\n{compiled} compiled, {failed} failed, {with_spills} with spills".format(**counts))
    failed = counts["failed"]
    want_cuda = args.family is None and not args.triton_only and args.cases is None
    if want_cuda and csrc_build.find_nvcc() and csrc_build.csrc_root():
        crows = csrc_build.compile_all(archs=args.arch, jobs=args.jobs)
        tables += ["\n## CUDA C++ kernels (nvcc -Xptxas -v)\n", csrc_build.format_table(crows)]
        print("\n" + tables[-1])
        print("\n{compiled} compiled, {failed} failed, {with_spills} with spills".format(
            **csrc_build.summary(crows)))
        failed += csrc_build.summary(crows)["failed"]
    elif want_cuda:
        print("\nCUDA C++ kernels: not compiled (nvcc or csrc/ not found)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write("\n".join(tables) + "\n")
    return 1 if failed else 0


def _check_families():
    from fastattn.selfcheck import FAMILIES
    return FAMILIES


def _cmd_bench(argv: List[str]) -> int:
    from fastattn.benchmark import main as bench_main

    return bench_main(argv)


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "bench":  # the benchmark owns its own argument parser
        return _cmd_bench(argv[1:])
    if argv and argv[0] == "tune":  # so does the tuner
        from fastattn.tune import main as tune_main
        return tune_main(argv[1:])
    parser = argparse.ArgumentParser(prog="fastattn", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("bench", help="benchmark against eager PyTorch and SDPA (fastattn bench -h)")
    sub.add_parser("tune", help="time launch configurations on this GPU and write a tuned "
                                "table (fastattn tune -h)")
    c = sub.add_parser("check", help="what runs here, and every kernel family against the "
                                     "float64 reference (exit 1 on a mismatch)")
    c.add_argument("--device", choices=["cpu", "cuda"], default=None,
                   help="default: cuda when available")
    c.add_argument("--families", nargs="+", default=list(_check_families()),
                   choices=list(_check_families()))
    c.add_argument("--dtypes", nargs="+", default=None,
                   choices=["float32", "float16", "bfloat16"],
                   help="default: float16 bfloat16 on CUDA, float32 on CPU")
    c.add_argument("--backends", nargs="+", default=None, choices=["triton", "cuda", "torch"],
                   help="default: every backend that runs here")
    c.add_argument("--jobs", type=int, default=1,
                   help="families checked in parallel processes (kernels compile in parallel)")
    c.add_argument("--json", default=None, help="write the rows as JSON here ('-': stdout)")
    c.add_argument("--quiet", action="store_true", help="no table, only --json")
    c.add_argument("--info", action="store_true",
                   help="only what is installed and which backends and tables run here")
    c.add_argument("--no-interpret", action="store_true",
                   help="on CPU, do not run the Triton kernels under the interpreter")
    k = sub.add_parser("kernels", help="compile all kernel configurations ahead of time")
    k.add_argument("--arch", nargs="+", default=["sm_80", "sm_90a"], choices=["sm_80", "sm_90a"])
    k.add_argument("--family", nargs="+", default=None,
                   help="kernel name prefixes, e.g. attention_fwd layer_norm")
    k.add_argument("--jobs", type=int, default=None, help="parallel compile processes")
    k.add_argument("--triton-only", action="store_true", help="skip the CUDA C++ kernels")
    k.add_argument("--json", help="also write the Triton rows as JSON here")
    k.add_argument("--markdown", help="also write the table as Markdown here")
    k.add_argument("--cases", choices=["bert"], default=None,
                   help="compile the kernels a BERT encoder launches (attention fwd/bwd padded "
                        "and varlen, feed-forward GEMMs) with their hot-loop figures")
    k.add_argument("--dump", metavar="DIR",
                   help="with --cases: write <name>.cubin and kernels.json in DIR")
    k.add_argument("--only", nargs="+", metavar="SUBSTR",
                   help="with --cases: keep the rows whose name contains one of these")
    k.add_argument("--sample", type=int, default=None, metavar="K",
                   help="sweep: compile K specializations per kernel x arch x head_dim group "
                        "(default: all)")
    k.add_argument("--seed", type=int, default=0, help="sweep: seed of --sample's choice")
    args = parser.parse_args(argv)
    if args.cmd == "kernels" and args.cases is None and (args.dump or args.only):
        parser.error("--dump and --only go with --cases")
    return {"check": _cmd_check, "kernels": _cmd_kernels}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
