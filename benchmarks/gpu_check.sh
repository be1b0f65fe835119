#!/usr/bin/env bash
# GPU validation of lightning-watt on a machine with one NVIDIA GPU, from a fresh checkout, in
# under 7 minutes (GPU_CHECK_BUDGET_S). Every step runs whatever the others did: a failing step
# is recorded and the next one starts. Writes everything into one folder (and each step's last
# lines, then the summary, to stdout):
#
#   env.txt              GPU, driver, versions, git commit
#   pynvml_api.txt/.xml  tests/test_pynvml_api.py: this machine's nvidia-ml-py against our calls
#   pytest_gpu.txt/.xml  `pytest -m gpu` (tests/test_gpu.py and any other gpu-marked test)
#   doctor.txt/.json     `lightning-watt doctor --load --json` (+ doctor_load.* watt-trace)
#   overhead_10ms.txt    benchmarks/overhead.py, GPU arms only, steps of ~10 ms
#   overhead_1ms.txt     benchmarks/overhead.py, GPU arms only, steps of ~1 ms
#   summary.txt          each step's exit status and duration, and what was skipped
#
# Usage:
#   bash benchmarks/gpu_check.sh [--no-install] [OUTDIR]
#
# OUTDIR defaults to $OUT when set (the device tool copies back only what is under $OUT), else
# gpu_check_out/. Without --no-install it makes a venv (.venv-gpu, with the system's packages
# visible so an installed CUDA torch is kept) and `pip install -e ".[test]"` into it; when that
# fails (no network) it carries on as with --no-install. With --no-install (or LW_NO_INSTALL=1)
# nothing is installed: the checkout runs from PYTHONPATH=. with the Python found (PYTHON, else
# python3), which must already have torch (CUDA), lightning, torchmetrics, nvidia-ml-py and
# tensorboard; pytest and hypothesis are also taken from ./.gpu_deps when that folder exists
# (`pip install --target .gpu_deps pytest hypothesis` on a machine with network).
#
# On a machine without an NVIDIA GPU it still checks the pynvml binding and runs the doctor,
# and says which GPU steps it skipped.
#
# Knobs: GPU_CHECK_BUDGET_S (whole run, default 420), GPU_CHECK_REPEATS (overhead fits per arm,
# default 3), GPU_CHECK_STEPS (default 200), GPU_CHECK_DOCTOR_SECONDS (default 3).
#
# Exit status: 0 every step run passed; 1 a step failed (see summary.txt); 2 no usable NVIDIA
# GPU (the GPU steps were skipped; the others ran and passed).
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2

install=1
[[ "${LW_NO_INSTALL:-0}" == 1 ]] && install=0
outdir=""
for arg in "$@"; do
    case "$arg" in
        --no-install) install=0 ;;
        -h | --help) sed -n '2,36p' "$0"; exit 0 ;;
        -*) echo "gpu_check: unknown option $arg" >&2; exit 2 ;;
        *) outdir="$arg" ;;
    esac
done
outdir="${outdir:-${OUT:-gpu_check_out}}"
mkdir -p "$outdir" || exit 2
outdir="$(cd "$outdir" && pwd)"
summary="$outdir/summary.txt"
: > "$summary"
started=$(date +%s)
budget="${GPU_CHECK_BUDGET_S:-420}"
failed=0
gpu=1

say() { echo "[gpu_check $(date -u +%H:%M:%S)] $*" | tee -a "$summary"; }
skip() { say "SKIPPED $1: $2"; }

PY="${PYTHON:-python3}"
# A step killed at its timeout keeps what it printed (block-buffered output would be lost).
export PYTHONUNBUFFERED=1

use_checkout() {
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
    [[ -d .gpu_deps ]] && export PYTHONPATH="$PYTHONPATH:$PWD/.gpu_deps"
}

# ---------------------------------------------------------------- a GPU?
if ! command -v nvidia-smi > /dev/null 2>&1; then
    gpu=0
    say "no nvidia-smi on PATH: no NVIDIA driver here; the GPU steps are skipped"
elif ! nvidia-smi -L > "$outdir/nvidia-smi-L.txt" 2>&1 || ! grep -q "^GPU " "$outdir/nvidia-smi-L.txt"; then
    gpu=0
    say "nvidia-smi sees no GPU ($(head -c 300 "$outdir/nvidia-smi-L.txt")); the GPU steps are skipped"
else
    say "GPU: $(head -n 1 "$outdir/nvidia-smi-L.txt")"
fi

# ---------------------------------------------------------------- install (or not)
if [[ $install == 1 ]]; then
    t0=$(date +%s)
    if { [[ -x .venv-gpu/bin/python ]] || "$PY" -m venv --system-site-packages .venv-gpu > "$outdir/install.txt" 2>&1; } &&
        timeout 120 .venv-gpu/bin/python -m pip install -q --retries 0 --timeout 10 -e ".[test]" >> "$outdir/install.txt" 2>&1; then
        PY="$PWD/.venv-gpu/bin/python"
        say "install: ok ($(($(date +%s) - t0)) s)"
    else
        use_checkout
        say "install: failed (see install.txt; no network?): running the checkout with $PY instead"
    fi
else
    use_checkout
    say "install: skipped (PYTHONPATH=$PYTHONPATH, python $PY)"
fi

if [[ $gpu == 1 ]] && ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" > "$outdir/torch_cuda.txt" 2>&1; then
    gpu=0
    say "torch sees no CUDA device (CPU-only torch, or CUDA_VISIBLE_DEVICES hides the GPU); the GPU steps are skipped:"
    "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" 2>&1 | tee -a "$summary"
fi

{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "commit: $(git rev-parse HEAD 2> /dev/null || echo unknown) $(git status --porcelain 2> /dev/null | wc -l) changed files"
    echo "kernel: $(uname -r)"
    [[ $gpu == 1 ]] && nvidia-smi --query-gpu=index,name,uuid,driver_version,mig.mode.current,power.limit --format=csv 2>&1
    "$PY" - << 'EOF'
import platform
from importlib import metadata

print("python", platform.python_version())
for dist in ("torch", "lightning", "pytorch-lightning", "torchmetrics", "nvidia-ml-py", "pytest",
             "hypothesis", "tensorboard", "numpy"):
    try:
        print(f"  {dist} {metadata.version(dist)}")
    except metadata.PackageNotFoundError:
        print(f"  {dist} NOT INSTALLED")
try:
    import torch

    print("torch cuda", torch.version.cuda, "| available", torch.cuda.is_available())
    if torch.cuda.is_available():
        print("cuda device 0:", torch.cuda.get_device_name(0))
except Exception as err:
    print("torch:", type(err).__name__, err)
try:
    import pynvml

    print("pynvml at", pynvml.__file__)
except Exception as err:
    print("pynvml:", type(err).__name__, err)
EOF
} > "$outdir/env.txt" 2>&1
grep -E "NOT INSTALLED|nvidia-ml-py" "$outdir/env.txt" | sed 's/^ */env: /' | tee -a "$summary"

# ---------------------------------------------------------------- the steps
left() { echo $((budget - ($(date +%s) - started))); }

step() {  # step NAME TIMEOUT_S OUTFILE CMD...: run it bounded by the budget left, never abort
    # (exit statuses in $STEP_OK, default 0, count as passing)
    local name=$1 limit=$2 file=$3 ok="${STEP_OK:-0}"
    shift 3
    local t0 rc remaining
    remaining=$(left)
    if ((remaining < 20)); then
        skip "$name" "the ${budget} s budget is spent"
        failed=1
        return
    fi
    ((limit > remaining)) && limit=$remaining
    t0=$(date +%s)
    timeout --kill-after=10 "$limit" "$@" > "$outdir/$file" 2>&1
    rc=$?
    if [[ " $ok " == *" $rc "* ]]; then
        say "$name: ok, rc=$rc ($(($(date +%s) - t0)) s) -> $file"
    else
        [[ $rc == 124 || $rc == 137 ]] && rc="$rc (timed out after $limit s)"
        say "$name: FAILED rc=$rc ($(($(date +%s) - t0)) s) -> $file"
        failed=1
    fi
    echo "----- $file (last lines)"
    tail -n 15 "$outdir/$file"
    echo "-----"
}

have_pytest=0
no_pytest="pytest/hypothesis not importable (install them, or put them in .gpu_deps)"
if "$PY" -c "import pytest, hypothesis" 2> /dev/null; then
    have_pytest=1
fi

if [[ $have_pytest == 1 ]]; then
    # Cheap and first: whether this machine's nvidia-ml-py is the binding our code expects.
    step "pynvml binding (tests/test_pynvml_api.py)" 60 pynvml_api.txt \
        "$PY" -m pytest -q -s -p no:cacheprovider --junitxml="$outdir/pynvml_api.xml" \
        tests/test_pynvml_api.py
else
    skip "pynvml binding (tests/test_pynvml_api.py)" "$no_pytest"
    failed=1
fi

# Only the files with gpu-marked tests: collecting the others would need every test extra
# (scikit-learn, matplotlib, jsonargparse) on the GPU machine.
mapfile -t gpu_tests < <(grep -l "pytest.mark.gpu" tests/test_*.py)
if [[ $gpu == 1 && $have_pytest == 1 ]]; then
    step "pytest -m gpu (${gpu_tests[*]})" 180 pytest_gpu.txt \
        "$PY" -m pytest -m gpu -s -q -rs -p no:cacheprovider --junitxml="$outdir/pytest_gpu.xml" \
        "${gpu_tests[@]}"
elif [[ $gpu == 1 ]]; then
    skip "pytest -m gpu (${gpu_tests[*]})" "$no_pytest"
    failed=1
else
    skip "pytest -m gpu (${gpu_tests[*]})" "no usable NVIDIA GPU"
fi

if [[ $gpu == 1 ]]; then
    step "doctor --load" 90 doctor.txt \
        "$PY" -m lightning_watt.doctor --seconds "${GPU_CHECK_DOCTOR_SECONDS:-3}" --load \
        --json "$outdir/doctor.json" --trace "$outdir/doctor_load"
    if [[ -f "$outdir/doctor.json" ]] && ! "$PY" - "$outdir/doctor.json" 2>&1 << 'EOF' | tee -a "$summary"
import json, sys
load = json.load(open(sys.argv[1])).get("load") or {}
if not load.get("ran"):
    print("doctor --load: FAILED: the load did not run:", load.get("why"))
    sys.exit(1)
def num(key, fmt):
    value = load.get(key)
    return format(value, fmt) if isinstance(value, (int, float)) else f"{value!r}"
print(f"doctor --load: fused {num('fused_error_pct', '+.3f')} % vs counter over "
      f"{num('window_s', '.1f')} s; bursts median |error| {num('burst_median_abs_error_pct', '.2f')} %")
EOF
    then
        failed=1
    fi
else
    # Without a GPU the doctor still says what it finds (NVML's reason, the CPU's reader);
    # its status 1 (nothing measured, only estimated) is the expected answer here.
    STEP_OK="0 1" step "doctor (no GPU: without --load)" 60 doctor.txt \
        "$PY" -m lightning_watt.doctor --seconds 1 --json "$outdir/doctor.json"
    if [[ ! -s "$outdir/doctor.json" ]]; then  # status 1 is also a crash's: the report tells
        say "doctor: FAILED: it wrote no report (see doctor.txt)"
        failed=1
    fi
fi

repeats="${GPU_CHECK_REPEATS:-3}"
steps="${GPU_CHECK_STEPS:-200}"
if [[ $gpu == 1 ]]; then
    step "overhead 10 ms GPU steps" 150 overhead_10ms.txt \
        "$PY" benchmarks/overhead.py --no-cpu --cadences 50,1 --gpu-step-ms 10 \
        --repeats "$repeats" --timed-repeats 1 --steps "$steps" --skip 20
    step "overhead 1 ms GPU steps" 120 overhead_1ms.txt \
        "$PY" benchmarks/overhead.py --no-cpu --cadences 50,1 --gpu-step-ms 1 \
        --repeats "$repeats" --timed-repeats 1 --steps "$steps" --skip 20
else
    skip "overhead GPU arms (benchmarks/overhead.py --no-cpu)" "no usable NVIDIA GPU"
fi

say "total $(($(date +%s) - started)) s; results in $outdir/"
echo "===== summary"
cat "$summary"
if [[ $failed == 1 ]]; then
    exit 1
fi
[[ $gpu == 1 ]] || exit 2
exit 0
