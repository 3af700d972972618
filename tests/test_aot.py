"""Ahead-of-time compile of the Triton kernels for sm_80 and sm_90a (no GPU), as launched.

Every row is compiled with the specialization the launcher's JIT call gets (the real
launchers run on CPU tensors laid out like real inputs; :mod:`fastattn.launch_capture`).

Cost: the full sweep is ~930 distinct specializations per arch (~35 min on 2 cores), so CI
(a) captures the whole sweep and checks it reaches every configuration the launch tables can
pick, with Triton's binder run on each launch (seconds), and (b) compiles a deterministic
sample: one specialization per kernel x arch x head_dim group (``fastattn kernels --sample 1``,
84 compiles, ~190 s of CPU).  ``FASTATTN_AOT_FULL=1`` compiles the whole sweep;
``FASTATTN_AOT_SEED=n`` samples another specialization of each group.  Checks: everything compiles, the sm_90a
attention forward never spills for head_dim <= 128, fp16 / bf16 matrix products use tensor
cores; and ``--cases bert --dump`` writes its documented layout.
"""
import json
import os
import subprocess
import sys
import textwrap

import pytest

ENV = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
FULL = os.environ.get("FASTATTN_AOT_FULL", "0") == "1"
SEED = os.environ.get("FASTATTN_AOT_SEED", "0")
REQUIRED_KEYS = {"name", "kernel", "arch", "dtype", "head_dim", "seqlen", "mask", "block_m",
                 "block_n", "num_warps", "num_stages", "loop_threads", "registers",
                 "spill_bytes", "shared_bytes", "tma", "mma", "loop_instructions", "loop_mma",
                 "loop_mufu", "non_mma_per_score", "cubin"}
GEMM_KEYS = {"case", "block_k", "non_mma_per_mac"}


def _kernels(*args, timeout=3600):
    return subprocess.run([sys.executable, "-m", "fastattn.cli", "kernels", *args], env=ENV,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    path = tmp_path_factory.mktemp("aot") / "kernels.json"
    sample = [] if FULL else ["--sample", "1", "--seed", SEED]
    out = _kernels("--triton-only", "--json", str(path), *sample, timeout=7200)
    assert path.exists(), out.stdout[-3000:] + out.stderr[-3000:]
    return json.loads(path.read_text()), out


COVERAGE = textwrap.dedent("""
    from fastattn import kernel_report, kernel_sweep
    for arch, major in (("sm_80", 8), ("sm_90a", 9)):
        planned, sources = kernel_report.plan_cases(kernel_sweep.sweep_cases(), [arch])
        missing = kernel_sweep.missing_configs(sources.values(), major)
        print(arch, len(sources), "specializations; missing:", missing)
        assert not missing
        assert len(kernel_sweep.table_configs(major)) > 400
""")


def test_sweep_reaches_every_configuration_of_the_tables():
    out = subprocess.run([sys.executable, "-c", COVERAGE], env=ENV, capture_output=True,
                         text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert out.stdout.count("missing: []") == 2


def test_every_configuration_compiles(rows):
    data, out = rows
    failed = [f"{r['name']}: {r['error']}" for r in data if r["error"]]
    assert not failed, "\n".join(failed[:20])
    assert out.returncode == 0
    assert {r["arch"] for r in data} == {"sm_80", "sm_90a"}
    kernels = {r["kernel"] for r in data}
    assert {"attention_fwd", "attention_bwd_dkdv", "attention_bwd_dq", "varlen_fwd",
            "varlen_bwd_dkdv", "varlen_bwd_dq", "layer_norm_fwd", "layer_norm_bwd",
            "layer_norm_fwd_looped", "layer_norm_reduce", "matmul"} <= kernels
    # one row per distinct specialization, each with the JIT's divisibility attributes
    assert len({r["name"] for r in data}) == len(data)
    assert all("stride" in r["divisible"] for r in data
               if r["kernel"] in ("attention_fwd", "attention_bwd_dkdv", "attention_bwd_dq"))
    heads = {r["head_dim"] for r in data if r["kernel"] == "attention_fwd"}
    assert heads == {16, 32, 64, 128, 256}


def test_attention_forward_does_not_spill_on_sm90a(rows):
    data, _ = rows
    fwd = [r for r in data if r["kernel"] in ("attention_fwd", "varlen_fwd")
           and r["arch"] == "sm_90a" and r["head_dim"] <= 128]
    assert len(fwd) >= 8
    spilling = [f"{r['name']}: {r['spill_bytes']} B" for r in fwd if r["spill_bytes"]]
    assert not spilling, "\n".join(spilling)


def test_half_precision_uses_tensor_cores(rows):
    """Every fp16/bf16 matrix-product kernel emits tensor-core instructions; on sm_90a the
    forward kernels and the GEMMs use wgmma, and so do the backward kernels wherever the rows of
    their products (the key block of dK/dV, the query block of dQ) are 64 or more: only there,
    never beside it, mma.sync (narrow-mask and head_dim-256 tiles of 32 rows)."""
    data, _ = rows
    checked = 0
    for r in data:
        if r["dtype"] not in ("fp16", "bf16") or not r["kernel"].startswith(
                ("attention_fwd", "attention_bwd_d", "varlen", "matmul")):
            continue
        checked += 1
        assert r["mma"] != "none", r["name"]
        if r["arch"] == "sm_90a" and r["kernel"] in ("attention_fwd", "varlen_fwd", "matmul"):
            assert "wgmma" in r["mma"], r["name"]
            assert r["loop_mma"] > 0, r["name"]
        product_rows = r["block_n"] if r["kernel"].endswith("dkdv") else r["block_m"]
        if (r["arch"] == "sm_90a" and "bwd_d" in r["kernel"] and r["head_dim"] <= 128
                and product_rows >= 64):
            assert r["mma"] == "wgmma" and r["loop_hmma"] == 0, r["name"]
    assert checked >= 10


def test_table_lists_every_row(rows):
    data, out = rows
    assert out.stdout.count("\n| attention_fwd-") == sum(r["kernel"] == "attention_fwd"
                                                         for r in data)


def test_bert_cases_dump_layout(tmp_path):
    only = ["attention_fwd-fp16-d64-L128-key_padding", "varlen_bwd_dq-bf16-d128-L512-causal",
            "matmul-ffn_dx-dh-fp16"]
    out = _kernels("--cases", "bert", "--arch", "sm_90a", "--dump", str(tmp_path), "--only",
                   *only, timeout=1800)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    data = json.loads((tmp_path / "kernels.json").read_text())
    assert sorted(r["name"] for r in data) == sorted(f"{o}-sm_90a" for o in only)
    for r in data:
        assert REQUIRED_KEYS <= set(r), REQUIRED_KEYS - set(r)
        assert r["error"] is None and r["arch"] == "sm_90a"
        cubin = tmp_path / r["cubin"]
        assert r["cubin"] == f"{r['name']}.cubin" and cubin.read_bytes()[:4] == b"\x7fELF"
        assert r["loop_mma"] > 0 and r["non_mma_per_score"] > 0
        assert f"| {r['name']} |" in out.stdout
    fwd = next(r for r in data if r["kernel"] == "attention_fwd")
    assert (fwd["dtype"], fwd["head_dim"], fwd["seqlen"], fwd["mask"]) == (
        "fp16", 64, 128, "key_padding")
    assert fwd["loop_threads"] == 32 * fwd["num_warps"]
    gemm = next(r for r in data if r["kernel"] == "matmul")
    assert GEMM_KEYS <= set(gemm) and gemm["case"] == "ffn_dx" and gemm["product"] == "dh"
    assert gemm["non_mma_per_mac"] == pytest.approx(
        gemm["non_mma_per_score"] / gemm["block_k"], rel=0.02)
