"""Instruction budgets of the attention forward, read from the faithful sm_90a build (no GPU).

The forward kernels are compiled with the specialization the launcher's JIT call really gets
at a BERT shape (B = 8, L = 512, Q/K/V as head views of one fused projection; see
:mod:`fastattn.kernel_cases`), in one subprocess without the interpreter, and their SASS is read
(:mod:`fastattn.kernel_report`).  Budgets, in non-MMA instructions per score element per thread
in the hot KV loop (the innermost loop with the most wgmma; on a tie the shorter one, i.e. the
interior-tile loop of the split walk):

    fp16, head_dim 64 and 128, no mask         <= 8.5
    fp16 and bf16, head_dim 64, key padding    <= 9.5

and for every case: no register spills, TMA tensor descriptors in use, wgmma.
"""
import json
import os
import subprocess
import sys
import textwrap

import pytest

BUDGETS = {  # (dtype, head_dim, mask) -> non-MMA instructions per score
    ("fp16", 64, "none"): 8.5,
    ("fp16", 128, "none"): 8.5,
    ("fp16", 64, "key_padding"): 9.5,
    ("bf16", 64, "key_padding"): 9.5,
}

SCRIPT = textwrap.dedent("""
    import json, sys
    from fastattn import kernel_cases as kc, kernel_report as kr
    cases = [kc.attention_case(dt, d, 512, mask, backward=False)
             for dt, d, mask in json.loads(sys.argv[1])]
    rows = kr.report_cases(cases, ["sm_90a"], jobs=1)
    print("ROWS=" + json.dumps(rows, default=str))
""")


@pytest.fixture(scope="module")
def rows():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(list(BUDGETS))], env=env,
                         capture_output=True, text=True, timeout=1800)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return json.loads(out.stdout.split("ROWS=")[-1])


@pytest.mark.parametrize("case", list(BUDGETS), ids=lambda c: "{}-d{}-{}".format(*c))
def test_attention_forward_budget_on_sm90a(rows, case):
    dtype, head_dim, mask = case
    (row,) = [r for r in rows if r["kernel"] == "attention_fwd" and r["dtype"] == dtype
              and r["head_dim"] == head_dim and r["mask"] == mask]
    assert row["error"] is None, row["error"]
    assert row["spill_bytes"] == 0, row
    assert row["tma"] and row["mma"] == "wgmma", row
    assert row["loop_mma"] > 0
    assert row["non_mma_per_score"] <= BUDGETS[case], (
        f"{row['name']}: {row['non_mma_per_score']} non-MMA instructions per score > "
        f"{BUDGETS[case]} (loop {row['loop_instructions']} instructions, {row['loop_mma']} MMA, "
        f"tile {row['block_m']}x{row['block_n']} w{row['num_warps']})")
