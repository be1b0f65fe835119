#!/usr/bin/env bash
# GPU validation of lightning-watt on a machine with one NVIDIA GPU, from a fresh checkout, in
# under 8 minutes (install included). Writes everything into one folder:
#
#   env.txt              GPU, driver, versions, git commit
#   pytest_gpu.txt/.xml  `pytest -m gpu` (tests/test_gpu.py and any other gpu-marked test)
#   doctor.txt/.json     `lightning-watt doctor --load --json` (+ doctor_load.* watt-trace)
#   overhead_10ms.txt    benchmarks/overhead.py, GPU steps of ~10 ms
#   overhead_1ms.txt     benchmarks/overhead.py, GPU steps of ~1 ms
#   summary.txt          each step's exit status and duration
#
# Usage:
#   bash benchmarks/gpu_check.sh [--no-install] [OUTDIR]
#
# OUTDIR defaults to $OUT when set, else gpu_check_out/. Without --no-install it makes a venv
# (.venv-gpu, with the system's packages visible so an installed CUDA torch is kept) and
# `pip install -e ".[test]"` into it. With --no-install (or LW_NO_INSTALL=1) nothing is
# installed: the checkout runs from PYTHONPATH=. with the Python found (PYTHON, else python3),
# which must already have torch (CUDA), lightning, torchmetrics, nvidia-ml-py and tensorboard;
# pytest and hypothesis are taken from ./.gpu_deps when that folder exists
# (`pip install --target .gpu_deps pytest hypothesis` on a machine with network).
#
# Knobs: GPU_CHECK_REPEATS (overhead fits per arm, default 5), GPU_CHECK_STEPS (default 250),
# GPU_CHECK_DOCTOR_SECONDS (default 3).
#
# Exit status: 0 all steps passed; 1 a step failed (see summary.txt); 2 no usable NVIDIA GPU.
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2

install=1
[[ "${LW_NO_INSTALL:-0}" == 1 ]] && install=0
outdir=""
for arg in "$@"; do
    case "$arg" in
        --no-install) install=0 ;;
        -h | --help) sed -n '2,28p' "$0"; exit 0 ;;
        -*) echo "gpu_check: unknown option $arg" >&2; exit 2 ;;
        *) outdir="$arg" ;;
    esac
done
outdir="${outdir:-${OUT:-gpu_check_out}}"
mkdir -p "$outdir" || exit 2
summary="$outdir/summary.txt"
: > "$summary"
started=$(date +%s)
failed=0

say() { echo "[gpu_check $(date -u +%H:%M:%S)] $*" | tee -a "$summary"; }

PY="${PYTHON:-python3}"

# ---------------------------------------------------------------- a GPU, or a clear failure
if ! command -v nvidia-smi > /dev/null 2>&1; then
    say "FAIL: no nvidia-smi on PATH: this machine has no NVIDIA driver, so there is no GPU to check"
    say "(on a CPU machine, run \`lightning-watt doctor\` to see what it can measure)"
    exit 2
fi
if ! nvidia-smi -L > "$outdir/nvidia-smi-L.txt" 2>&1 || ! grep -q "^GPU " "$outdir/nvidia-smi-L.txt"; then
    say "FAIL: nvidia-smi sees no GPU: $(head -c 300 "$outdir/nvidia-smi-L.txt")"
    exit 2
fi

# ---------------------------------------------------------------- install (or not)
if [[ $install == 1 ]]; then
    t0=$(date +%s)
    if [[ ! -x .venv-gpu/bin/python ]]; then
        "$PY" -m venv --system-site-packages .venv-gpu || { say "FAIL: could not make .venv-gpu"; exit 1; }
    fi
    PY="$PWD/.venv-gpu/bin/python"
    if ! "$PY" -m pip install -q -e ".[test]" > "$outdir/install.txt" 2>&1; then
        say "FAIL: pip install -e .[test] (see install.txt)"
        exit 1
    fi
    say "install: ok ($(($(date +%s) - t0)) s)"
else
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
    [[ -d .gpu_deps ]] && export PYTHONPATH="$PYTHONPATH:$PWD/.gpu_deps"
    say "install: skipped (PYTHONPATH=$PYTHONPATH, python $PY)"
fi

if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2> "$outdir/torch_cuda.txt"; then
    say "FAIL: torch sees no CUDA device (CPU-only torch build, or CUDA_VISIBLE_DEVICES hides the GPU):"
    "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" 2>&1 | tee -a "$summary"
    exit 2
fi

{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "commit: $(git rev-parse HEAD 2> /dev/null || echo unknown) $(git status --porcelain 2> /dev/null | wc -l) changed files"
    nvidia-smi --query-gpu=index,name,uuid,driver_version,mig.mode.current,power.limit --format=csv 2>&1
    "$PY" - << 'EOF'
import platform, torch, lightning, pynvml
print("python", platform.python_version(), "| torch", torch.__version__, "cuda", torch.version.cuda,
      "| lightning", lightning.__version__, "| nvidia-ml-py", getattr(pynvml, "__version__", "?"))
print("cuda device 0:", torch.cuda.get_device_name(0))
EOF
} > "$outdir/env.txt" 2>&1
say "GPU: $(head -n 1 "$outdir/nvidia-smi-L.txt")"

# ---------------------------------------------------------------- the steps
step() {  # step NAME TIMEOUT_S OUTFILE CMD...
    local name=$1 limit=$2 file=$3
    shift 3
    local t0 rc
    t0=$(date +%s)
    timeout --kill-after=10 "$limit" "$@" > "$outdir/$file" 2>&1
    rc=$?
    if [[ $rc == 0 ]]; then
        say "$name: ok ($(($(date +%s) - t0)) s) -> $file"
    else
        [[ $rc == 124 || $rc == 137 ]] && rc="$rc (timed out after $limit s)"
        say "$name: FAILED rc=$rc ($(($(date +%s) - t0)) s) -> $file"
        failed=1
    fi
}

# Only the files with gpu-marked tests: collecting the others would need every test extra
# (scikit-learn, matplotlib, jsonargparse) on the GPU machine.
mapfile -t gpu_tests < <(grep -l "pytest.mark.gpu" tests/test_*.py)
if "$PY" -c "import pytest, hypothesis" 2> /dev/null; then
    step "pytest -m gpu (${gpu_tests[*]})" 150 pytest_gpu.txt \
        "$PY" -m pytest -m gpu -s -q -p no:cacheprovider --junitxml="$outdir/pytest_gpu.xml" \
        "${gpu_tests[@]}"
else
    say "pytest -m gpu: FAILED: pytest/hypothesis not importable (install them, or put them in .gpu_deps)"
    failed=1
fi

step "doctor --load" 90 doctor.txt \
    "$PY" -m lightning_watt.doctor --seconds "${GPU_CHECK_DOCTOR_SECONDS:-3}" --load \
    --json "$outdir/doctor.json" --trace "$outdir/doctor_load"

if [[ -f "$outdir/doctor.json" ]] && ! "$PY" - "$outdir/doctor.json" >> "$summary" 2>&1 << 'EOF'
import json, sys
load = json.load(open(sys.argv[1])).get("load") or {}
if not load.get("ran"):
    print("doctor --load: FAILED: the load did not run:", load.get("why"))
    sys.exit(1)
print(f"doctor --load: fused {load['fused_error_pct']:+.3f} % vs counter over {load['window_s']:.1f} s; "
      f"bursts median |error| {load['burst_median_abs_error_pct']:.2f} %")
EOF
then
    failed=1
fi

repeats="${GPU_CHECK_REPEATS:-5}"
steps="${GPU_CHECK_STEPS:-250}"
step "overhead 10 ms GPU steps" 150 overhead_10ms.txt \
    "$PY" benchmarks/overhead.py --gpu-step-ms 10 --repeats "$repeats" --steps "$steps"
step "overhead 1 ms GPU steps" 150 overhead_1ms.txt \
    "$PY" benchmarks/overhead.py --gpu-step-ms 1 --repeats "$repeats" --steps "$steps"

say "total $(($(date +%s) - started)) s; results in $outdir/"
exit $failed
