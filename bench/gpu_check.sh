#!/usr/bin/env bash
# fastattn on a fresh GPU machine in one call: tests, benchmarks and tuned configs, highest
# value first, each step time-boxed, the whole run under GPU_CHECK_TOTAL_S (default 330 s).
#
# HOW TO RUN IT — one device call from the repository root ($OUT: the folder that comes back):
#
#     bash bench/gpu_check.sh "$OUT"            # device call with timeout_s=420
#
# $OUT then holds 3 files: summary.txt (one line per step: status, seconds, key figure),
# gpu_check.tgz (every log, junit XML, the benchmark's report.md / results.json(l) / plots, the
# numerics JSON and the tuned table; rebuilt after every step, so a run stopped at any point
# returns everything done so far) and report.md (the benchmark report, once it exists).
#
# HOW TO COMMIT WHAT CAME BACK — from the repository root, FILES = where the files landed:
#
#     tar -xzf FILES/gpu_check.tgz   # -> bench/results/<gpu>-<date>/, fastattn/kernels/tuned/<gpu>.json
#     git add bench/results fastattn/kernels/tuned && git commit -m "GPU check on <gpu>"
#
# Steps and their time boxes on one H200 (seconds; see bench/README.md for why):
#   env + nvidia-smi 5 | install 20 | check 15 | numerics 45 | bench 90 | tune 60 | tests 80 |
#   build_ext + its GPU tests: what is left.
# CPU-only work (ahead-of-time compiles, nvcc compile checks, two-rank gloo tests, examples)
# stays with CI.  Without a CUDA device (or with GPU_CHECK_DRY_RUN=1) the same steps run in
# their CPU form (tiny benchmark, a few tests, `fastattn tune --dry-run`), same 3-file layout.
# PYTHON=... picks the interpreter.  Exit status: 0 when no step failed (skips do not count).
set -u -o pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-python3}
START=$(date +%s)
TOTAL=${GPU_CHECK_TOTAL_S:-330}
RESERVE=8   # seconds kept for the last archive and summary

if [ "${GPU_CHECK_DRY_RUN:-0}" != "1" ] &&
   "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  DRY=0
  GPU=$("$PY" -c "import torch; print(torch.cuda.get_device_name())" 2>/dev/null)
else
  DRY=1
  GPU=cpu
fi
SLUG=$(echo "$GPU" | tr '[:upper:]' '[:lower:]' | tr -cs 'a-z0-9' '-' | sed 's/^-//; s/-$//')
OUT=${1:-bench/out/gpu_check}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
# the work folder, archived under this path (a dry run's stays in the git-ignored bench/out)
RESULTS=bench/results; [ $DRY -eq 1 ] && RESULTS=bench/out/results
REL=$RESULTS/${SLUG}-$(date +%Y%m%d-%H%M%S)
WORK=$ROOT/$REL
TUNED_REL=fastattn/kernels/tuned/${SLUG}.json
mkdir -p "$WORK"
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"
FAILED=0
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"   # the source tree even if install fails
export PYTHONUNBUFFERED=1

left() { echo $(( TOTAL - ($(date +%s) - START) - RESERVE )); }
note() {
  printf '%-10s %-8s %4ss  %s\n' "$1" "$2" "$3" "$4" | tee -a "$SUMMARY" "$WORK/summary.txt" \
    >/dev/null
  printf '%-10s %-8s %4ss  %s\n' "$1" "$2" "$3" "$4"
}
archive() {  # everything so far, into $OUT (atomic replace)
  local items=("$REL")
  [ -f "$ROOT/$TUNED_REL" ] && items+=("$TUNED_REL")
  tar -czf "$OUT/gpu_check.tgz.tmp" -C "$ROOT" "${items[@]}" 2>/dev/null &&
    mv "$OUT/gpu_check.tgz.tmp" "$OUT/gpu_check.tgz"
  [ -f "$WORK/bench/report.md" ] && cp "$WORK/bench/report.md" "$OUT/report.md"
  return 0
}
# step NAME LIMIT_S CMD...: CMD's output in $WORK/NAME.log, under min(LIMIT, time left).
step() {
  local name=$1 limit=$2; shift 2
  local remaining; remaining=$(left)
  [ "$remaining" -lt "$limit" ] && limit=$remaining
  if [ "$limit" -lt 5 ]; then note "$name" skipped 0 "no time left (GPU_CHECK_TOTAL_S=$TOTAL)"; return; fi
  local t0 rc fig
  t0=$(date +%s)
  echo ">>> $name (timeout ${limit}s): $*" > "$WORK/$name.log"
  timeout --kill-after=5 "$limit" "$@" >> "$WORK/$name.log" 2>&1
  rc=$?
  local dt=$(( $(date +%s) - t0 ))
  fig=$("$PY" bench/gpu_check_figure.py "$name" "$WORK/$name.log" "$WORK" 2>/dev/null)
  if [ $rc -eq 0 ]; then note "$name" ok "$dt" "$fig"
  elif [ $rc -eq 124 ] || [ $rc -eq 137 ]; then FAILED=1; note "$name" TIMEOUT "$dt" "after ${limit}s; $fig"
  else FAILED=1; note "$name" FAILED "$dt" "exit $rc; $fig"; fi
  archive
}
skip() { note "$1" skipped 0 "$2"; archive; }

echo "fastattn gpu check: device=$GPU dry_run=$DRY work=$REL out=$OUT deadline=${TOTAL}s" |
  tee -a "$SUMMARY" "$WORK/summary.txt"

# 1. the machine
if [ $DRY -eq 0 ] && command -v nvidia-smi >/dev/null; then
  step nvidia-smi 10 nvidia-smi
else skip nvidia-smi "no GPU (dry run)"; fi
step env 20 "$PY" -c "
import platform, torch
from importlib import metadata
print('python', platform.python_version(), 'torch', torch.__version__, 'cuda', torch.version.cuda)
for name in ('triton', 'setuptools', 'wheel', 'pip', 'pytest', 'pytest-xdist', 'pytest-timeout',
             'hypothesis', 'transformers', 'matplotlib', 'tqdm', 'numpy', 'flash-attn',
             'xformers', 'liger-kernel'):
    try:
        print(f'{name:18} {metadata.version(name)}')
    except metadata.PackageNotFoundError:
        print(f'{name:18} not installed')"

# 2. install without downloads (no dependencies, no build isolation, no extension build here)
if [ $DRY -eq 0 ]; then
  FASTATTN_BUILD_CUDA=0 step install 30 "$PY" -m pip install --no-deps --no-build-isolation \
    --no-index --no-cache-dir -e .
else
  skip install "dry run: would run 'pip install --no-deps --no-build-isolation --no-index -e .'"
fi

# 3. what runs here (backends, launch tables), then 4. first light: every kernel family,
#    forward and backward, fp16 and bf16, against the float64 reference (families in parallel)
step check 20 "$PY" -m fastattn.cli check --info
if [ $DRY -eq 0 ]; then
  step numerics 45 "$PY" -m fastattn.cli check --device cuda --jobs 5 \
    --json "$WORK/numerics.json"
else
  step numerics 120 "$PY" -m fastattn.cli check --device cpu --families layer_norm feedforward \
    --json "$WORK/numerics.json"
fi

# 5. the benchmark's BERT priority cases (L <= 512), written case by case
if [ $DRY -eq 0 ]; then
  LIMIT=90; [ "$(left)" -lt $LIMIT ] && LIMIT=$(left)
  step bench "$LIMIT" "$PY" -m fastattn.cli bench --device cuda --max-priority 0 \
    --budget $(( LIMIT > 30 ? LIMIT - 20 : 10 )) --out "$WORK/bench" --no-progress
else
  step bench 90 "$PY" -m fastattn.cli bench --quick --device cpu --only layernorm \
    --budget 20 --out "$WORK/bench" --no-progress --no-plots
fi

# 6. tuned launch configurations for this GPU (the launchers read fastattn/kernels/tuned/)
if [ $DRY -eq 0 ]; then
  LIMIT=60; [ "$(left)" -lt $LIMIT ] && LIMIT=$(left)
  step tune "$LIMIT" "$PY" -m fastattn.cli tune --budget $(( LIMIT > 20 ? LIMIT - 10 : 5 )) \
    --jobs 8 --out fastattn/kernels/tuned
else
  step tune 60 "$PY" -m fastattn.cli tune --dry-run --out "$WORK/tuned"
fi

# 7. the CUDA-facing test suite, most important first, 8 workers, a per-test timeout and a
#    deadline past which tests not yet started are skipped (so the XML is always written)
PYTEST=("$PY" -m pytest -p no:cacheprovider -q -rfE)
if [ $DRY -eq 0 ]; then
  "$PY" -c "import xdist" 2>/dev/null && PYTEST+=(-n 8)
  "$PY" -c "import pytest_timeout" 2>/dev/null && PYTEST+=(--timeout 90)
  TESTS=(tests/ops tests/modules tests/test_functional.py tests/test_backends.py
         tests/test_reference.py tests/test_convert.py tests/test_tune.py)
  "$PY" -c "import transformers" 2>/dev/null && TESTS+=(tests/integrations)
  TESTS+=(tests/test_compile.py tests/test_export.py)
  LIMIT=80; [ "$(left)" -lt $LIMIT ] && LIMIT=$(left)
  FASTATTN_TEST_DEADLINE=$(( $(date +%s) + LIMIT - 15 )) step tests "$LIMIT" "${PYTEST[@]}" \
    "${TESTS[@]}" --junitxml="$WORK/tests.xml"
else
  step tests 120 "${PYTEST[@]}" tests/test_tune.py --junitxml="$WORK/tests.xml"
fi

# 8. the CUDA C++ extension and its GPU tests, with whatever time is left
if [ $DRY -eq 1 ]; then skip build_ext "dry run: no CUDA device"
elif ! command -v nvcc >/dev/null; then skip build_ext "nvcc not found"
elif [ "$(left)" -lt 60 ]; then skip build_ext "only $(left) s left: the build needs about a minute"
else
  FASTATTN_BUILD_CUDA=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0a} \
    MAX_JOBS=${MAX_JOBS:-16} step build_ext 150 "$PY" setup.py build_ext --inplace
  if ls fastattn/_C*.so >/dev/null 2>&1; then
    LIMIT=$(left)
    FASTATTN_TEST_DEADLINE=$(( $(date +%s) + LIMIT - 10 )) step tests_csrc "$LIMIT" \
      "${PYTEST[@]}" tests/csrc/test_cuda_backend.py --junitxml="$WORK/tests_csrc.xml"
  fi
fi

echo "total $(( $(date +%s) - START )) s of ${TOTAL}; failed steps: $FAILED" |
  tee -a "$SUMMARY" "$WORK/summary.txt"
archive
echo "--- $OUT: $(ls "$OUT" | tr '\n' ' ')"
exit $FAILED
