"""Ahead-of-time compile of every shipped Triton configuration for sm_80 and sm_90a (no GPU).

Runs ``fastattn kernels`` once (in a subprocess, without the interpreter) and checks its rows:
everything compiles, the sm_90a attention forward never spills for head_dim <= 128, and fp16 /
bf16 matrix products use tensor cores (mma.sync on sm_80, wgmma on sm_90a).
"""
import json
import os
import subprocess
import sys

import pytest

from fastattn import aot


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    path = tmp_path_factory.mktemp("aot") / "kernels.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-m", "fastattn.cli", "kernels", "--triton-only", "--json",
                          str(path)],
                         env=env, capture_output=True, text=True, timeout=3600)
    assert path.exists(), out.stdout[-3000:] + out.stderr[-3000:]
    return json.loads(path.read_text()), out


def test_every_configuration_compiles(rows):
    data, out = rows
    failed = [f"{r['kernel']} {r['config']} {r['arch']}: {r['error']}" for r in data if r["error"]]
    assert not failed, "\n".join(failed[:20])
    assert out.returncode == 0
    expected = sum(len(aot.all_specs(aot.ARCHS[a] // 10)) for a in aot.ARCHS)
    assert len(data) == expected
    assert {r["arch"] for r in data} == set(aot.ARCHS)


def test_attention_forward_does_not_spill_on_sm90a(rows):
    data, _ = rows
    fwd = [r for r in data if r["kernel"] in ("attention_fwd", "varlen_fwd")
           and r["arch"] == "sm_90a" and r["head_dim"] <= 128]
    assert fwd
    spilling = [f"{r['config']}: {r['spill_stores']} B stores" for r in fwd
                if r["spill_stores"] or r["spill_loads"]]
    assert not spilling, "\n".join(spilling)


def test_half_precision_uses_tensor_cores(rows):
    """Every fp16/bf16 matrix-product kernel emits tensor-core instructions; on sm_90a the
    forward kernels and the GEMMs use wgmma (some backward tiles with 32 rows use mma.sync)."""
    data, _ = rows
    checked = 0
    for r in data:
        if not r["kernel"].startswith(("attention", "varlen", "matmul")):
            continue
        if "float16" not in r["config"]:  # also matches bfloat16
            continue
        checked += 1
        assert r["tensor_cores"] != "no", (r["kernel"], r["config"], r["arch"])
        wgmma_expected = r["kernel"] in ("attention_fwd", "varlen_fwd") or r["kernel"].startswith(
            "matmul")
        if r["arch"] == "sm_90a" and wgmma_expected:
            assert "wgmma" in r["tensor_cores"], (r["kernel"], r["config"], r["arch"])
    assert checked > 100


def test_table_lists_every_row(rows):
    data, out = rows
    assert out.stdout.count("\n| attention_fwd ") == sum(r["kernel"] == "attention_fwd"
                                                         for r in data)
