"""The command line: ``fastattn check`` reports every backend and checks each kernel family
against the float64 reference (and fails when one is wrong)."""
import json
import subprocess
import sys

import pytest
import torch

import fastattn
from fastattn import selfcheck


def _check(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "fastattn.cli", "check", *args],
                          capture_output=True, text=True, timeout=timeout)


def test_check_reports_backends_and_passes():
    out = _check("--families", "attention", "layer_norm")
    assert out.returncode == 0, out.stdout + out.stderr
    for needle in ("torch", "triton (cuda)", "cuda extension", "launch configurations",
                   "attention    key_padding", "layer_norm   residual", " passed, 0 failed"):
        assert needle in out.stdout, out.stdout
    # on CPU the Triton kernels are checked under the interpreter
    assert " triton  " in out.stdout and " torch   " in out.stdout, out.stdout


def test_check_json_and_parallel_families(tmp_path):
    path = tmp_path / "check.json"
    out = _check("--families", "layer_norm", "feedforward", "--backends", "torch",
                 "--jobs", "2", "--json", str(path), "--no-interpret")
    assert out.returncode == 0, out.stdout + out.stderr
    rows = json.loads(path.read_text())
    assert [r["family"] for r in rows] == ["layer_norm", "feedforward"]
    assert all(r["ok"] and r["backend"] == "torch" and r["comparisons"] for r in rows)
    names = {c["name"] for c in rows[0]["comparisons"]}
    assert names == {"out", "dx", "dresidual", "dweight", "dbias"}


def test_check_fails_on_a_wrong_kernel(monkeypatch):
    real = fastattn.layer_norm

    def off_by_a_little(*args, **kwargs):
        y = real(*args, **kwargs)
        return y + 1e-3 * y.detach().abs().amax()

    monkeypatch.setattr(fastattn, "layer_norm", off_by_a_little)
    results = selfcheck.run_checks(torch.device("cpu"), ["layer_norm"], backends=["torch"])
    assert len(results) == 1 and not results[0].ok
    assert not results[0].comparisons[0].ok and results[0].comparisons[0].name == "out"
    assert results[0].worst_ratio() > 1


def test_check_reports_a_crash_as_a_failure(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("kernel exploded")

    monkeypatch.setattr(fastattn, "feedforward", broken)
    results = selfcheck.run_checks(torch.device("cpu"), ["feedforward"], backends=["torch"])
    assert not results[0].ok and "kernel exploded" in results[0].error
    rows = [r.as_dict() for r in results]
    assert "ERROR RuntimeError: kernel exploded" in selfcheck.format_rows(rows)


def test_check_rejects_unknown_family():
    with pytest.raises(ValueError, match="families must be among"):
        selfcheck.run_checks(torch.device("cpu"), ["nope"])


def test_unknown_command_fails():
    out = subprocess.run([sys.executable, "-m", "fastattn.cli", "frobnicate"],
                         capture_output=True, text=True)
    assert out.returncode != 0 and "invalid choice" in out.stderr
