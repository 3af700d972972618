"""The command line: ``fastattn check`` runs and reports every backend."""
import subprocess
import sys


def test_check_reports_backends_and_passes():
    out = subprocess.run([sys.executable, "-m", "fastattn.cli", "check"], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    for needle in ("torch", "triton (cuda)", "cuda extension", "check attention backend=torch"):
        assert needle in out.stdout, out.stdout


def test_unknown_command_fails():
    out = subprocess.run([sys.executable, "-m", "fastattn.cli", "frobnicate"],
                         capture_output=True, text=True)
    assert out.returncode != 0 and "invalid choice" in out.stderr
