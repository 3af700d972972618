"""bench/gpu_check.sh's dry run (no GPU): the same steps in their CPU form, at most 3 files in
the output folder, an archive with every step's output, a deadline that skips what no longer
fits and still leaves the archive."""
import os
import re
import subprocess
import tarfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "bench", "gpu_check.sh")
STEPS = ("nvidia-smi", "env", "install", "check", "numerics", "bench", "tune", "tests",
         "build_ext")


def _dry_run(out, **env):
    import sys
    full = dict(os.environ, GPU_CHECK_DRY_RUN="1", PYTHON=sys.executable, **env)
    full.pop("TRITON_INTERPRET", None)  # the script's own commands decide
    return subprocess.run(["bash", SCRIPT, str(out)], capture_output=True, text=True,
                          env=full, timeout=900)


def _summary(out):
    lines = (out / "summary.txt").read_text().splitlines()
    return {line.split()[0]: line.split()[1] for line in lines[1:] if line.split()
            and line.split()[0] in STEPS}


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check")
    done = _dry_run(out)
    return out, done


def test_default_deadline_fits_the_device_window():
    text = open(SCRIPT).read()
    total = int(re.search(r"TOTAL=\$\{GPU_CHECK_TOTAL_S:-(\d+)\}", text).group(1))
    assert total <= 330
    assert 'bash bench/gpu_check.sh "$OUT"' in text  # how to run it, at the top
    assert "tar -xzf" in text and "git add bench/results fastattn/kernels/tuned" in text


def test_dry_run_passes_with_three_files(dry_run):
    out, done = dry_run
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert sorted(os.listdir(out)) == ["gpu_check.tgz", "report.md", "summary.txt"]
    status = _summary(out)
    assert set(status) == set(STEPS), status
    for name in ("env", "check", "numerics", "bench", "tune", "tests"):
        assert status[name] == "ok", (name, (out / "summary.txt").read_text())
    assert status["nvidia-smi"] == status["install"] == status["build_ext"] == "skipped"
    assert "# fastattn benchmark" in (out / "report.md").read_text()


def test_archive_holds_every_step_output(dry_run):
    out, _ = dry_run
    with tarfile.open(out / "gpu_check.tgz") as tar:
        names = tar.getnames()
    summaries = [n for n in names if n.endswith("/summary.txt")]
    assert len(summaries) == 1, names
    work = summaries[0][:-len("summary.txt")]
    assert work.startswith("bench/out/results/cpu-")  # a dry run stays out of bench/results
    folder = {n[len(work):].split("/")[0] for n in names if n.startswith(work)}
    for needed in ("env.log", "check.log", "numerics.log", "numerics.json", "bench.log",
                   "bench", "tune.log", "tuned", "tests.log", "tests.xml", "summary.txt"):
        assert needed in folder, (needed, sorted(folder))
    assert any(n.endswith("bench/results.jsonl") for n in names)
    assert any(n.endswith("bench/report.md") for n in names)
    assert any(n.endswith("tuned/dry-run.json") for n in names)


def test_deadline_skips_late_steps_and_keeps_the_archive(tmp_path):
    done = _dry_run(tmp_path, GPU_CHECK_TOTAL_S="30")
    status = _summary(tmp_path)
    assert "skipped" in status.values() or "TIMEOUT" in status.values(), status
    assert "no time left" in (tmp_path / "summary.txt").read_text() or \
        "TIMEOUT" in (tmp_path / "summary.txt").read_text()
    assert (tmp_path / "gpu_check.tgz").exists()
    assert len(os.listdir(tmp_path)) <= 3
    assert done.returncode in (0, 1)
