"""The benchmark harness itself: reports written and well-formed, work formulas, filters, n/a rows.

One ``fastattn bench --quick`` run on this device (a subprocess, as a user runs it) feeds the
report checks; the rest call the harness's functions on tiny inputs.
"""
import json
import math
import os
import subprocess
import sys

import pytest
import torch

from fastattn.benchmark import flops, providers, runner, timing, workloads
from tests.helpers import CUDA

DEVICE = "cuda" if CUDA else "cpu"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    cmd = [sys.executable, "-m", "fastattn.cli", "bench", "--quick", "--device", DEVICE,
           "--out", str(out), "--no-progress"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    with open(out / "results.json") as f:
        results = json.load(f)
    return out, results, done.stdout


def test_quick_run_writes_three_kinds_of_report(quick_run):
    out, results, stdout = quick_run
    assert (out / "report.md").stat().st_size > 0
    lines = (out / "results.jsonl").read_text().splitlines()
    assert json.loads(lines[0])["environment"]["device"] == DEVICE
    assert len(lines) - 1 == len(json.load(open(out / "results.json"))["rows"])
    for family in workloads.FAMILIES:
        png = out / f"{family}.png"
        assert png.read_bytes()[:8] == PNG_MAGIC, f"{png} is not a PNG"
        assert f"wrote {png}" in stdout


def test_results_json_environment_and_ceilings(quick_run):
    _, results, _ = quick_run
    env = results["environment"]
    assert env["torch"] == torch.__version__
    assert env["device"] == DEVICE and env["quick"] is True
    assert "--quick" in env["command"] and env["command"].startswith("fastattn bench")
    for key in ("triton", "cuda", "driver", "git_commit", "timestamp", "python", "libraries"):
        assert key in env
    assert env["only"] == list(workloads.FAMILIES)
    ceil = results["ceilings"]
    assert ceil["matmul_tflops"] > 0 and ceil["copy_gbps"] > 0


def test_every_row_is_measured_or_says_why_not(quick_run):
    _, results, _ = quick_run
    rows, ceil = results["rows"], results["ceilings"]
    expected = sum(len(c.providers) for c in workloads.build_cases(torch.device(DEVICE),
                                                                     quick=True))
    assert len(rows) == expected
    assert {r["family"] for r in rows} == set(workloads.FAMILIES)
    assert [r for r in rows if r["status"] == "error"] == []
    for r in rows:
        assert r["status"] in ("ok", "n/a")
        if r["status"] == "n/a":
            assert r["reason"] and r["median_ms"] is None
            continue
        assert 0 < r["p20_ms"] <= r["median_ms"] <= r["p80_ms"], r
        assert r["reps"] >= 3 and r["backend"]
        scale = 1e12 if r["unit"] == "flop" else 1e9
        assert math.isclose(r["throughput"], r["work"] / (r["median_ms"] * 1e-3) / scale,
                            rel_tol=1e-9)
        ceiling = ceil["matmul_tflops"] if r["unit"] == "flop" else ceil["copy_gbps"]
        assert math.isclose(r["fraction_of_ceiling"], r["throughput"] / ceiling, rel_tol=1e-9)
        if r["provider"] == "eager":
            assert r["speedup_vs_eager"] == 1.0
        elif r["rel_err_vs_eager"] is not None:  # same function, fp32 on CPU
            assert r["rel_err_vs_eager"] < (2e-2 if CUDA else 1e-4), r


def test_providers_say_which_backend_ran(quick_run):
    _, results, _ = quick_run
    rows = results["rows"]
    fast = [r for r in rows if r["provider"] == "fastattn" and r["status"] == "ok"]
    assert fast and {r["backend"] for r in fast} == {"triton" if CUDA else "torch"}
    sdpa = [r for r in rows if r["provider"] == "sdpa-math"]
    assert sdpa and all(r["backend"] == "sdpa MATH" for r in sdpa if r["status"] == "ok")
    if not CUDA:
        for name in ("sdpa-efficient", "sdpa-cudnn", "flash-attn", "xformers", "liger"):
            na = [r for r in rows if r["provider"] == name]
            assert na and all(r["status"] == "n/a" for r in na)
            assert all("CPU" in r["reason"] or "CUDA" in r["reason"] for r in na), na[0]


def test_dropout_rows_are_timed_but_not_compared(quick_run):
    _, results, _ = quick_run
    rows = [r for r in results["rows"] if r["params"].get("dropout")]
    assert {r["provider"] for r in rows} == set(workloads.DROPOUT_PROVIDERS)
    assert all(r["mode"] == "fwd+bwd" and r["params"]["dropout"] == workloads.ATTENTION_DROPOUT
               for r in rows)
    ok = [r for r in rows if r["status"] == "ok"]
    assert {"fastattn", "eager", "sdpa"} <= {r["provider"] for r in ok}
    for r in ok:
        assert r["rel_err_vs_eager"] is None
        if r["provider"] != "eager":
            assert "dropout" in r["reason"]


def test_speedups_are_ratios_of_medians(quick_run):
    _, results, _ = quick_run
    by_case = {}
    for r in results["rows"]:
        by_case.setdefault((r["workload"], r["case"]), {})[r["provider"]] = r
    checked = 0
    for peers in by_case.values():
        for r in peers.values():
            peer = peers.get(r["torch_peer"])
            if r["status"] == "ok" and peer and peer["status"] == "ok":
                assert math.isclose(r["speedup_vs_torch"], peer["median_ms"] / r["median_ms"])
                assert math.isclose(r["speedup_vs_eager"],
                                    peers["eager"]["median_ms"] / r["median_ms"])
                checked += 1
    assert checked > 20


def test_markdown_has_one_table_per_workload(quick_run):
    out, results, _ = quick_run
    text = (out / "report.md").read_text()
    workloads_in_json = list(dict.fromkeys(r["workload"] for r in results["rows"]))
    sections = [line[3:] for line in text.splitlines() if line.startswith("## ")]
    assert sections == workloads_in_json
    table_rows = [line for line in text.splitlines()
                  if line.startswith("| ") and not line.startswith("| case ")]
    assert len(table_rows) == len(results["rows"])
    assert "TFLOP/s" in text and "GB/s" in text and "ceilings measured in this run" in text
    na = next(r for r in results["rows"] if r["status"] == "n/a")
    assert na["reason"] in text


def test_only_filter_runs_only_that_family(tmp_path):
    code = runner.main(["--quick", "--device", "cpu", "--only", "layernorm", "--out",
                        str(tmp_path), "--no-progress"])
    assert code == 0
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert rows and {r["family"] for r in rows} == {"layernorm"}
    assert sorted(os.listdir(tmp_path)) == ["layernorm.png", "report.md", "results.json",
                                            "results.jsonl"]


def test_build_cases_filters_and_sizes():
    cpu = torch.device("cpu")
    attention = workloads.build_cases(cpu, quick=True, only=["attention"])
    assert {c.family for c in attention} == {"attention"}
    assert any(c.workload.startswith("self-attention module") for c in attention)
    masks = {c.params["mask"] for c in attention}
    assert masks == set(workloads.ATTENTION_MASKS)
    both = workloads.build_cases(cpu, quick=True, only=["feedforward", "encoder"])
    assert {c.family for c in both} == {"feedforward", "encoder"}
    full = workloads.sizes_for(torch.device("cuda"))
    assert full.attention_lengths == (128, 512, 2048, 8192) and full.attention_tokens == 16384
    assert full.layernorm_hidden == (768, 1024, 4096, 8192) and full.encoder_layers == 12
    assert (full.encoder_batch, full.encoder_length) == (16, 512)
    hf = workloads.build_cases(cpu, only=["hf"])  # the MiniLM 16 x 128 batch runs on CPU
    minilm = [c for c in hf if c.params["model"] == "MiniLM"]
    assert {(c.params["batch"], c.params["length"], c.params["layers"], c.params["hidden"])
            for c in minilm} == {(16, 128, 6, 384)}
    assert {(c.mode, c.params["padded"]) for c in minilm} == {
        (m, p) for m in workloads.MODES for p in (True, False)}
    assert all(c.providers == workloads.HF_PROVIDERS and c.torch_peer == "sdpa" for c in hf)
    for quick in (False, True):  # CPU: same workloads, smaller sizes
        small = workloads.sizes_for(cpu, quick)
        assert max(small.attention_lengths) < max(full.attention_lengths)
        assert small.attention_grid == full.attention_grid


def test_bad_filters_and_options_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="only"):
        workloads.build_cases(torch.device("cpu"), only=["attn"])
    with pytest.raises(SystemExit):
        runner.parse_args(["--only", "attn"])
    assert runner.main(["--budget", "0", "--out", str(tmp_path)]) == 2
    assert runner.main(["--threads", "0", "--out", str(tmp_path)]) == 2
    if not CUDA:
        assert runner.main(["--device", "cuda", "--out", str(tmp_path)]) == 2


def test_attention_flops_known_values():
    fwd = 4 * 2 * 12 * 128 * 128 * 64
    assert flops.attention_flops(2, 12, 128, 128, 64) == fwd == 100663296
    assert flops.attention_flops(2, 12, 128, 128, 64, mode="bwd") == 2.5 * fwd
    assert flops.attention_flops(2, 12, 128, 128, 64, mode="fwd+bwd") == 3.5 * fwd
    assert flops.attention_flops(2, 12, 128, 128, 64, causal=True) == fwd / 2
    padded = flops.attention_flops(2, 12, 128, 128, 64, lengths=[128, 64])
    assert padded == 4 * 12 * 64 * (128 ** 2 + 64 ** 2)
    assert flops.attention_flops(1, 1, 3, 5, 8) == 4 * 3 * 5 * 8


def test_linear_encoder_and_layernorm_formulas():
    assert flops.feedforward_flops(10, 768, 3072) == 2 * (2 * 10 * 768 * 3072)
    assert flops.feedforward_flops(10, 768, 3072, mode="fwd+bwd") == 3 * 2 * (2 * 10 * 768 * 3072)
    e, h, fe, lengths = 64, 4, 4, [10, 6]
    t = sum(lengths)
    layer = 4 * 2 * t * e * e + 4 * e * (10 ** 2 + 6 ** 2) + 2 * 2 * t * e * fe * e
    assert flops.encoder_flops(lengths, e, h, fe, 3) == 3 * layer
    assert flops.layernorm_bytes(16384, 768, 2) == 2 * 16384 * 768 * 2
    assert flops.layernorm_bytes(16384, 768, 2, mode="fwd+bwd") == 5 * 16384 * 768 * 2


def test_formulas_reject_bad_arguments():
    with pytest.raises(ValueError, match="mode"):
        flops.attention_flops(1, 1, 1, 1, 1, mode="backward")
    with pytest.raises(ValueError, match="batch"):
        flops.attention_flops(0, 1, 1, 1, 1)
    with pytest.raises(ValueError, match="lengths"):
        flops.attention_flops(2, 1, 8, 8, 8, lengths=[8])
    with pytest.raises(ValueError, match="lengths"):
        flops.attention_flops(1, 1, 8, 8, 8, lengths=[9])
    with pytest.raises(ValueError, match="hidden"):
        flops.layernorm_bytes(4, -1, 2)


def test_padded_lengths_average_six_tenths():
    assert workloads.padded_lengths(4, 100) == [20, 47, 73, 100]
    assert workloads.padded_lengths(1, 100) == [60]
    lengths = workloads.padded_lengths(16, 512)
    assert abs(sum(lengths) / len(lengths) - 0.6 * 512) < 1 and max(lengths) == 512


def test_quantiles_and_cpu_timer():
    q = timing.quantiles([5.0, 1.0, 3.0, 2.0, 4.0])
    assert (q.p20_ms, q.median_ms, q.p80_ms, q.reps) == pytest.approx((1.8, 3.0, 4.2, 5))
    with pytest.raises(ValueError, match="times_ms"):
        timing.quantiles([])
    import time
    t = timing.time_cpu(lambda: time.sleep(0.002), timing.Settings(warmup_ms=0, rep_ms=10))
    assert t.reps >= 3 and 2.0 <= t.median_ms < 50


def test_relative_error_ignores_padded_rows():
    ref = torch.ones(2, 3, 4)
    out = ref.clone()
    out[1, 2] = 100.0
    keep = torch.tensor([[True, True, True], [True, True, False]])[:, :, None]
    assert runner.relative_error(out, ref, keep) == 0.0
    assert runner.relative_error(out, ref) == pytest.approx(99.0)
    with pytest.raises(ValueError, match="shape"):
        runner.relative_error(out, ref[:1])


def test_missing_module_becomes_na_with_reason():
    with pytest.raises(providers.NotApplicable, match="not available in this build"):
        providers.fastattn_module("NoSuchModule", "no_such_module")
    with pytest.raises(providers.NotApplicable, match="is not installed"):
        providers.optional_module("no_such_library_xyz")


def test_budget_turns_remaining_cases_into_na():
    cases = workloads.build_cases(torch.device("cpu"), quick=True, only=["layernorm"])[:3]
    results = runner.run(cases, torch.device("cpu"), quick=True, budget_s=1e-9, progress=False)
    rows = results["rows"]
    assert len(rows) == 3 * len(cases)
    first = [r for r in rows if r["case"] == cases[0].label and r["mode"] == cases[0].mode]
    assert any(r["status"] == "ok" for r in first)
    skipped = rows[len(cases[0].providers):]
    assert all(r["status"] == "n/a" and "budget" in r["reason"] for r in skipped)
    assert results["interrupted"] is False


def test_budget_clock_keeps_a_margin_for_the_next_case():
    clock = runner.BudgetClock(budget_s=10.0, safety=1.5)
    assert clock.allows("attention")  # the first case always runs
    clock.record("attention", 4.0)
    clock.start -= 3.0  # 3 s spent: 3 + 1.5 * 4 <= 10
    assert clock.allows("attention")
    clock.start -= 1.5  # 4.5 s spent: 4.5 + 6 > 10
    assert not clock.allows("attention")
    assert clock.allows("layernorm") is False  # unseen family: the longest case so far
    clock.record("layernorm", 0.1)
    assert clock.allows("layernorm")
    assert runner.BudgetClock(None).allows("x")


def test_max_priority_keeps_the_bert_cases():
    cuda = workloads.build_cases(torch.device("cuda"), max_priority=0)
    assert cuda and all(c.priority == 0 for c in cuda)
    lengths = {c.params["length"] for c in cuda if c.family == "attention"}
    assert lengths == {128, 512}
    assert {c.family for c in cuda} == {"attention", "layernorm", "feedforward", "encoder"}
    assert not any("padding sweep" in c.workload for c in cuda)


def _bench_proc(out, *extra):
    cmd = [sys.executable, "-m", "fastattn.cli", "bench", "--quick", "--device", "cpu",
           "--out", str(out), "--no-progress", "--no-plots", *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for_rows(path, proc, n_rows, timeout=240):
    import time
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and len(path.read_text().splitlines()) >= 1 + n_rows:
            return
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.2)
    raise AssertionError("no rows written in time")


def test_killed_run_keeps_every_finished_row(tmp_path):
    """SIGKILL mid-run: results.jsonl holds every finished row and report.md lists them."""
    import signal
    proc = _bench_proc(tmp_path, "--only", "layernorm")
    _wait_for_rows(tmp_path / "results.jsonl", proc, 2 * len(workloads.LAYERNORM_PROVIDERS))
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    lines = [json.loads(x) for x in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert lines[0]["environment"]["device"] == "cpu"
    rows = lines[1:]
    assert len(rows) >= 2 * len(workloads.LAYERNORM_PROVIDERS)
    assert all(r["family"] == "layernorm" for r in rows)
    report_md = (tmp_path / "report.md").read_text()
    done = json.loads((tmp_path / "results.json").read_text())
    assert len(done["rows"]) >= len(rows) - len(workloads.LAYERNORM_PROVIDERS)
    for r in done["rows"]:
        assert f"| {r['case']} | {r['provider']} |" in report_md


def test_sigterm_ends_the_run_with_the_rest_as_na(tmp_path):
    import signal
    proc = _bench_proc(tmp_path, "--only", "layernorm")
    _wait_for_rows(tmp_path / "results.jsonl", proc, len(workloads.LAYERNORM_PROVIDERS))
    proc.send_signal(signal.SIGTERM)
    output = proc.communicate(timeout=120)[0]
    assert proc.returncode == 1, output
    assert "interrupted" in output
    done = json.loads((tmp_path / "results.json").read_text())
    expected = sum(len(c.providers) for c in workloads.build_cases(
        torch.device("cpu"), quick=True, only=["layernorm"]))
    assert len(done["rows"]) == expected
    assert any(r["status"] == "ok" for r in done["rows"])
    assert any(r["status"] == "n/a" and "interrupted" in r["reason"] for r in done["rows"])
