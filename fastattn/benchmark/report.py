"""The run's environment and its reports: report.md (one table per workload), results.json and
results.jsonl.

results.json = {"environment": {...}, "ceilings": {...}, "rows": [one dict per case x provider]}.
results.jsonl: one JSON object per line, the environment first ({"environment": ...}), then
every row as its case finishes (appended and flushed, so a killed run keeps them).
Every row keeps its status ("ok", "n/a" with a reason, "error" with the message).
"""
from __future__ import annotations

import collections
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
from typing import Dict, List, Optional, Sequence

import torch

import fastattn
from fastattn import backends
from fastattn.benchmark import workloads

OPTIONAL_LIBRARIES = ("flash_attn", "xformers", "liger_kernel")


def _command(args: List[str], cwd: Optional[str] = None) -> Optional[str]:
    """stdout of a short command, or None when it is missing, fails or hangs."""
    if shutil.which(args[0]) is None:
        return None
    try:
        done = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _library_version(name: str) -> Optional[str]:
    from importlib import metadata
    dist = {"flash_attn": "flash-attn", "liger_kernel": "liger-kernel"}.get(name, name)
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: torch.device, *, quick: bool = False,
                only: Optional[Sequence[str]] = None, elapsed_s: Optional[float] = None) -> Dict:
    """Versions, device, commit, time and command line of this run."""
    source = os.path.dirname(os.path.dirname(os.path.abspath(fastattn.__file__)))
    commit = _command(["git", "rev-parse", "HEAD"], cwd=source)
    dirty = _command(["git", "status", "--porcelain", "--untracked-files=no"], cwd=source)
    cuda = device.type == "cuda"
    env = dict(
        timestamp=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        command=" ".join(["fastattn", "bench", *sys.argv[2:]]) if sys.argv[1:2] == ["bench"]
        else " ".join(sys.argv),
        device=device.type,
        device_name=torch.cuda.get_device_name(device) if cuda else _cpu_name(),
        cpu_threads=torch.get_num_threads(),
        python=platform.python_version(),
        torch=torch.__version__,
        triton=backends.triton_version(),
        cuda=torch.version.cuda,
        cudnn=torch.backends.cudnn.version() if cuda else None,
        driver=_command(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]),
        fastattn=fastattn.__version__,
        git_commit=commit,
        git_dirty=None if dirty is None else bool(dirty),
        triton_interpret=backends.interpreter_enabled(),
        quick=quick,
        only=list(only) if only else list(workloads.FAMILIES),
        elapsed_s=elapsed_s,
        libraries={name: _library_version(name) for name in OPTIONAL_LIBRARIES},
    )
    if cuda:
        props = torch.cuda.get_device_properties(device)
        env.update(capability=f"{props.major}.{props.minor}", sm_count=props.multi_processor_count,
                   memory_gib=round(props.total_memory / 2 ** 30, 1))
    return env


def status_counts(rows: List[Dict]) -> str:
    counts = collections.Counter(r["status"] for r in rows)
    return ", ".join(f"{counts[s]} {s}" for s in ("ok", "n/a", "error") if counts[s])


def _fmt(value, spec: str, suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


COLUMNS = ("case", "provider", "backend", "median ms", "p20-p80 ms", "throughput", "% of ceiling",
           "peak MiB", "x eager", "x torch", "rel err", "note")


def _cells(r: Dict) -> List[str]:
    if r["status"] != "ok":
        return [r["case"], r["provider"], "-", r["status"], "-", "-", "-", "-", "-", "-", "-",
                (r["reason"] or "").replace("|", "/")]
    return [r["case"], r["provider"], r["backend"], _fmt(r["median_ms"], ".3f"),
            f"{r['p20_ms']:.3f}-{r['p80_ms']:.3f}",
            f"{r['throughput']:.3g} {r['throughput_unit']}",
            _fmt(100 * r["fraction_of_ceiling"], ".1f", "%"), _fmt(r["peak_mem_mib"], ".0f"),
            _fmt(r["speedup_vs_eager"], ".2f"), _fmt(r["speedup_vs_torch"], ".2f"),
            _fmt(r["rel_err_vs_eager"], ".1e"), (r["reason"] or "").replace("|", "/")]


_FORMULAS = {
    "attention": "TFLOP/s = 4·B·H·L²·D (x3.5 fwd+bwd, /2 causal, real tokens only with key "
                 "padding) / time; module rows add the four E x E projections",
    "layernorm": "GB/s = bytes / time; bytes = 2·rows·hidden·elem (fwd: read x, write y), "
                 "5·rows·hidden·elem (fwd+bwd: + read x, dy, write dx)",
    "feedforward": "TFLOP/s = 4·tokens·E·4E (x3 fwd+bwd) / time",
    "encoder": "TFLOP/s = layers·(projections + attention + feed-forward) over real tokens / time",
    "hf": "TFLOP/s = layers·(projections + attention + feed-forward) over real tokens / time",
}
_PEERS = {
    "sdpa": "torch.nn.functional.scaled_dot_product_attention, torch's own backend choice",
    "torch-mha": "torch.nn.MultiheadAttention",
    "torch-encoder": "nn.TransformerEncoder",
}


def markdown(results: Dict) -> str:
    env, ceil, rows = results["environment"], results["ceilings"], results["rows"]
    lines = [
        f"# fastattn benchmark: {env['device_name']} ({env['device']})", "",
        f"- {env['timestamp']}; `{env['command']}`; {status_counts(rows)}"
        + (f"; {env['elapsed_s']:.0f} s" if env.get("elapsed_s") else ""),
        f"- torch {env['torch']}, triton {env['triton'] or 'not installed'}, CUDA "
        f"{env['cuda'] or '-'}, driver {env['driver'] or '-'}, fastattn {env['fastattn']} "
        f"(commit {(env['git_commit'] or 'unknown')[:12]}"
        f"{' + local changes' if env['git_dirty'] else ''})",
        f"- ceilings measured in this run: {ceil['matmul_tflops']:.3g} TFLOP/s "
        f"({ceil['matmul_desc']}), {ceil['copy_gbps']:.3g} GB/s ({ceil['copy_desc']}); "
        "'% of ceiling' is against these",
        "- x eager / x torch: the eager reference's (or torch's own) median over this row's, "
        "same inputs, same run; rel err: max |out - eager| / max |eager| (forward output, or "
        "the first gradient for fwd+bwd), real tokens only",
    ]
    if env["device"] == "cpu":
        lines.append(f"- CPU run on {env['cpu_threads']} thread(s): fp32, sizes scaled down "
                     "from the CUDA ones (same workloads and columns); no peak memory on CPU; "
                     "small inputs sit in cache, so a row can pass 100% of the copy ceiling")
    workload_rows = collections.OrderedDict()
    for r in rows:
        workload_rows.setdefault(r["workload"], []).append(r)
    for title, group in workload_rows.items():
        family, peer = group[0]["family"], group[0]["torch_peer"]
        lines += ["", f"## {title}", "", _FORMULAS[family] + "."]
        if peer:
            lines.append(f"x torch: against {_PEERS[peer]}.")
        lines += ["", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
        lines += ["| " + " | ".join(_cells(r)) + " |" for r in group]
    return "\n".join(lines) + "\n"


class IncrementalWriter:
    """Writes the reports while the run goes on: :meth:`case_done` after every case appends its
    rows to results.jsonl and rewrites report.md and results.json; :meth:`finish` writes them a
    last time and draws the plots."""

    def __init__(self, out_dir: str, env: Dict):
        os.makedirs(out_dir, exist_ok=True)
        self.out_dir, self.env = out_dir, env
        self.jsonl = os.path.join(out_dir, "results.jsonl")
        with open(self.jsonl, "w") as f:
            f.write(json.dumps({"environment": env}, default=str) + "\n")

    def _results(self, results: Dict, elapsed_s: float) -> Dict:
        return dict(results, environment=dict(self.env, elapsed_s=elapsed_s))

    def case_done(self, results: Dict, new_rows: List[Dict], elapsed_s: float) -> None:
        with open(self.jsonl, "a") as f:
            for row in new_rows:
                f.write(json.dumps(row, default=str) + "\n")
            f.flush()
            os.fsync(f.fileno())
        write_all(self._results(results, elapsed_s), self.out_dir, plots=False)

    def finish(self, results: Dict, elapsed_s: float, *, plots: bool = True) -> List[str]:
        return write_all(self._results(results, elapsed_s), self.out_dir,
                         plots=plots) + [self.jsonl]


def _write_atomic(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def write_all(results: Dict, out_dir: str, *, plots: bool = True) -> List[str]:
    """Write report.md, results.json and (matplotlib permitting) the PNGs; returns the paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = [os.path.join(out_dir, "results.json"), os.path.join(out_dir, "report.md")]
    _write_atomic(paths[0], json.dumps(results, indent=1, default=str))
    _write_atomic(paths[1], markdown(results))
    if plots:
        from fastattn.benchmark import plots as plotting
        paths += plotting.plot_all(results["rows"], out_dir)
    return paths

