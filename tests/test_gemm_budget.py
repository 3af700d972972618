"""Static budget of the feed-forward GEMMs on the faithful sm_90a build (no GPU needed).

Compiles, in a subprocess without the interpreter, the GEMMs exactly as the launcher
specializes them for BERT-base FFN1 (X W1^T + b1, GELU, pre-activation stored; M = 8192,
K = 768, N = 3072) and FFN2 (A W2^T + b2 + residual; K = 3072, N = 768), fp16 and bf16, and
reads the SASS: TMA used, no ldmatrix (LDSM) in the K loop, no spills, and at most 0.012
non-MMA instructions per multiply-accumulate in the K loop.  sm_80 keeps the mma.sync path.
"""
import json
import os
import subprocess
import sys
import textwrap

import pytest

BUDGET_NON_MMA_PER_MAC = 0.012

SCRIPT = textwrap.dedent("""
    import json
    from fastattn import kernel_cases as kc, kernel_report as kr
    cases = [c for g in ("ffn1", "ffn2") for dt in ("fp16", "bf16") for c in kc.gemm_case(g, dt)]
    rows = kr.report_cases(cases, ["sm_90a"], jobs=2)
    rows += kr.report_cases(kc.gemm_case("ffn1", "fp16"), ["sm_80"], jobs=1)
    print("ROWS=" + json.dumps(rows))
""")


@pytest.fixture(scope="module")
def rows():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True,
                         text=True, timeout=1200)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return json.loads(out.stdout.split("ROWS=")[-1])


def test_ffn_gemms_meet_the_hopper_budget(rows):
    hopper = [r for r in rows if r["arch"] == "sm_90a"]
    assert {(r["case"], r["dtype"]) for r in hopper} == {
        (c, d) for c in ("ffn1", "ffn2") for d in ("fp16", "bf16")}
    for r in hopper:
        what = f"{r['name']}: {json.dumps(r)}"
        assert r["error"] is None, what
        assert r["tma"] and r["mma"] == "wgmma", what
        assert r["loop_ldsm"] == 0 and r["loop_mma"] > 0, what
        assert r["spill_bytes"] == 0, what
        assert r["non_mma_per_mac"] <= BUDGET_NON_MMA_PER_MAC, what
        macs = r["block_m"] * r["block_n"] * r["block_k"]
        expected = (r["loop_instructions"] - r["loop_mma"]) * r["loop_threads"] / macs
        assert r["non_mma_per_mac"] == pytest.approx(expected, abs=1e-4), what


def test_ampere_keeps_the_mma_sync_pointer_kernel(rows):
    (r,) = [r for r in rows if r["arch"] == "sm_80"]
    assert r["error"] is None and r["mma"] == "mma.sync" and not r["tma"]
    assert r["spill_bytes"] == 0
