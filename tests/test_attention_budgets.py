"""Instruction budgets of the attention kernels, read from the faithful sm_90a build (no GPU).

The kernels are compiled with the specialization the launcher's JIT call really gets at a BERT
shape (B = 8, L = 512, Q/K/V as head views of one fused projection; see
:mod:`fastattn.kernel_cases`), in one subprocess without the interpreter, and their SASS is read
(:mod:`fastattn.kernel_report`).  Budgets, in non-MMA instructions per score element per thread
in the hot loop (the innermost loop with the most wgmma; on a tie the shorter one, i.e. the
interior-tile loop of the split walk):

    forward   fp16, head_dim 64 and 128, no mask             <= 8.5
              fp16 and bf16, head_dim 64, key padding        <= 9.5
    dK/dV     fp16 and bf16, head_dim 64, no mask            <= 12
    and dQ    fp16 and bf16, head_dim 64, key padding        <= 14

and for every case: no register spills, TMA tensor descriptors in use, wgmma and no mma.sync
anywhere in the kernel; the backward kernels also hold no atomic instruction (deterministic).
"""
import json
import os
import subprocess
import sys
import textwrap

import pytest

FORWARD_BUDGETS = {  # (dtype, head_dim, mask) -> non-MMA instructions per score
    ("fp16", 64, "none"): 8.5,
    ("fp16", 128, "none"): 8.5,
    ("fp16", 64, "key_padding"): 9.5,
    ("bf16", 64, "key_padding"): 9.5,
}
BACKWARD_BUDGETS = {  # the same, for each of the dK/dV and dQ kernels
    ("fp16", 64, "none"): 12.0,
    ("bf16", 64, "none"): 12.0,
    ("fp16", 64, "key_padding"): 14.0,
    ("bf16", 64, "key_padding"): 14.0,
}
CASES = sorted(set(FORWARD_BUDGETS) | set(BACKWARD_BUDGETS))

SCRIPT = textwrap.dedent("""
    import json, sys
    from fastattn import kernel_cases as kc, kernel_report as kr
    cases = [kc.attention_case(dt, d, 512, mask, backward=bwd)
             for dt, d, mask, bwd in json.loads(sys.argv[1])]
    rows = kr.report_cases(cases, ["sm_90a"], jobs=2)
    print("ROWS=" + json.dumps(rows, default=str))
""")


@pytest.fixture(scope="module")
def rows():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    cases = [list(c) + [c in BACKWARD_BUDGETS] for c in CASES]
    out = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(cases)], env=env,
                         capture_output=True, text=True, timeout=1800)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return json.loads(out.stdout.split("ROWS=")[-1])


def _row(rows, kernel, case):
    dtype, head_dim, mask = case
    (row,) = [r for r in rows if r["kernel"] == kernel and r["dtype"] == dtype
              and r["head_dim"] == head_dim and r["mask"] == mask]
    assert row["error"] is None, row["error"]
    return row


def _check_budget(row, budget):
    assert row["spill_bytes"] == 0, row
    assert row["tma"] and row["mma"] == "wgmma", row  # no mma.sync anywhere in the kernel
    assert row["loop_mma"] > 0 and row["loop_hmma"] == 0, row
    assert row["non_mma_per_score"] <= budget, (
        f"{row['name']}: {row['non_mma_per_score']} non-MMA instructions per score > "
        f"{budget} (loop {row['loop_instructions']} instructions, {row['loop_mma']} MMA, "
        f"tile {row['block_m']}x{row['block_n']} w{row['num_warps']})")


@pytest.mark.parametrize("case", list(FORWARD_BUDGETS), ids=lambda c: "{}-d{}-{}".format(*c))
def test_attention_forward_budget_on_sm90a(rows, case):
    _check_budget(_row(rows, "attention_fwd", case), FORWARD_BUDGETS[case])


@pytest.mark.parametrize("kernel", ["attention_bwd_dkdv", "attention_bwd_dq"])
@pytest.mark.parametrize("case", list(BACKWARD_BUDGETS), ids=lambda c: "{}-d{}-{}".format(*c))
def test_attention_backward_budget_on_sm90a(rows, case, kernel):
    row = _row(rows, kernel, case)
    _check_budget(row, BACKWARD_BUDGETS[case])
    assert row["sass_counts"]["atomic"] == 0, row  # deterministic: no atomics
