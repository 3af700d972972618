"""Command line: ``fastattn bench | check | kernels``.

* ``fastattn bench``   — benchmark fastattn against eager PyTorch and SDPA (see ``--help``).
* ``fastattn check``   — what is installed, which backends run here and why not, and a small
  correctness check of every available backend against the reference.
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

    import fastattn
    from fastattn import backends

    print(f"fastattn {fastattn.__version__}  python {platform.python_version()}  "
          f"torch {torch.__version__}  triton {backends.triton_version() or 'not installed'}")
    cuda = torch.cuda.is_available()
    print(f"CUDA device: {torch.cuda.get_device_name() if cuda else 'none'}"
          f"  (torch built with CUDA {torch.version.cuda or 'no'})")
    print(f"default backend: {backends.get_default_backend()}"
          f"  (FASTATTN_BACKEND={os.environ.get('FASTATTN_BACKEND', '')!r})")
    for name, (ok, why) in backends.report().items():
        print(f"  {name:<26} {'available' if ok else 'unavailable'}: {why}")
    failures = 0
    devices = ["cuda"] if cuda else ["cpu"]
    for device in devices:
        for backend in ("torch", "triton"):
            if backends.triton_unavailable_reason(torch.device(device)) and backend == "triton":
                continue
            err = _quick_error(device, backend)
            ok = err < 2e-2
            failures += not ok
            print(f"  check attention backend={backend} device={device}: max error {err:.2e} "
                  f"{'ok' if ok else 'FAILED'}")
    return 1 if failures else 0


def _quick_error(device: str, backend: str) -> float:
    import torch

    import fastattn
    from fastattn.reference import attention_reference

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 2, 37, 64, generator=g).to(device) for _ in range(3))
    mask = (torch.rand(2, 1, 1, 37, generator=g) > 0.3).to(device)
    dtype = torch.float16 if device == "cuda" else torch.float32
    out = fastattn.attention(q.to(dtype), k.to(dtype), v.to(dtype), mask, backend=backend)
    ref = attention_reference(q.double(), k.double(), v.double(), mask)
    return (out.double() - ref).abs().max().item()


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


def _cmd_bench(argv: List[str]) -> int:
    from fastattn.benchmark import main as bench_main

    return bench_main(argv)


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "bench":  # the benchmark owns its own argument parser
        return _cmd_bench(argv[1:])
    parser = argparse.ArgumentParser(prog="fastattn", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("bench", help="benchmark against eager PyTorch and SDPA (fastattn bench -h)")
    sub.add_parser("check", help="show available backends and run a quick correctness check")
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
