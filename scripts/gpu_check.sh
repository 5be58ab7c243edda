#!/usr/bin/env bash
# make gpu-check: a few minutes' check of a GPU machine (docs/benchmark.md, "The GPU check").
#
#   scripts/gpu_check.sh [FOLDER]        # FOLDER: default reports/gpu-check
#
# 1. machine: nvidia-smi and each framework's view of CUDA; one python probe builds every
#    backend on cuda and keeps the frameworks that can (exit 2 when none can)
# 2. tests: `pytest -m gpu` over the modules holding GPU tests, then the tests that run
#    anywhere and take their cuda path on a GPU (CUDA_TESTS below)
# 3. study: a short study (2 epochs, 2 seeds) on cuda of those frameworks, then compare
# 4. bench: their cuda cells, batch 256, 2 rounds on synthetic data
#
# FOLDER gets few files (the summary, the log, the junit xml, the comparison, the bench);
# the runs, mlflow.db, the data and compare's full report go to a work folder.
# Environment:
#   BB_PYTHON            the python to run (default python3); PYTHONPATH=src is enough, no install
#   BB_GPU_CHECK_WORK    the work folder (default FOLDER/work)
#   BB_GPU_CHECK_BUDGET  seconds for everything (default 480); each step is also capped below
#   BB_GPU_CHECK_DEVICE  cuda (default); cpu rehearses every step on a machine without a GPU
# Exit: 0 all passed, 1 a step failed (the summary names it), 2 no framework here sees a GPU.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${BB_PYTHON:-python3}
DEVICE=${BB_GPU_CHECK_DEVICE:-cuda}
BUDGET=${BB_GPU_CHECK_BUDGET:-480}
mkdir -p "${1:-reports/gpu-check}"
OUT=$(cd "${1:-reports/gpu-check}" && pwd)
WORK=${BB_GPU_CHECK_WORK:-$OUT/work}
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)
LOG=$OUT/gpu-check.log
SUMMARY=$OUT/summary.md
rm -f "$OUT"/{gpu-check.log,summary.md,junit-gpu.xml,junit-cuda.xml,comparison.md,bench.json,bench.md}

export PYTHONPATH="$REPO/src${PYTHONPATH:+:$PYTHONPATH}"  # absolute: the study runs from $WORK
export MLFLOW_TRACKING_URI="sqlite:///$WORK/mlflow.db"
export XLA_PYTHON_CLIENT_PREALLOCATE=false  # JAX would take 75 % of the GPU up front; torch and CuPy share it
export TF_FORCE_GPU_ALLOW_GROWTH=true       # the same for TensorFlow

case "$DEVICE" in cuda | cpu) ;; *)
    echo "gpu-check: BB_GPU_CHECK_DEVICE=$DEVICE: expected cuda or cpu" >&2
    exit 2
    ;;
esac

# Tests that run on any machine and take their cuda path (or say why not) where a GPU is
# present: device=auto, the cuda-without-a-GPU errors, the bench's cpu,cuda grid.
CUDA_TESTS=(
    tests/test_torch_backend.py::test_auto_takes_cuda_only_when_present
    tests/test_torch_backend.py::test_cuda_without_gpu_raises_device_unavailable
    tests/test_jax_backend.py::test_cuda_without_a_cuda_jaxlib_raises_device_unavailable
    tests/test_numpy_backend.py::test_cuda_without_cupy_raises
    tests/test_numpy_backend.py::test_cuda_with_cupy_but_no_gpu_raises
    tests/test_tf_common.py::test_auto_and_cpu_resolve
    tests/test_tf_common.py::test_cuda_without_gpu_raises_naming_device_and_findings
    tests/test_tensorflow_backend.py::test_cuda_without_gpu_raises
    tests/test_keras_backend.py::test_cuda_without_gpu_raises
    tests/test_bench_main.py::test_a_mode_that_cannot_run_is_a_row_with_its_reason
)

FAILED=()  # "step: why", one per failed step or check
ROWS=()    # the summary's step table

say() { echo "gpu-check: $*" | tee -a "$LOG"; }

# step NAME CAP_S CMD...: CMD from $REPO (or $STEP_DIR) under timeout, at most CAP_S seconds and
# never into the last $RESERVE seconds of the budget (kept for the steps after it); its output
# goes to the log. Returns CMD's status.
step() {
    local name=$1 cap=$2 left limit rc=0 start=$SECONDS
    shift 2
    left=$((BUDGET - ${RESERVE:-0} - SECONDS))
    limit=$((cap < left ? cap : left))
    if ((limit < 10)); then
        FAILED+=("$name: not run, no time left in the ${BUDGET} s budget")
        ROWS+=("| $name | not run (no time left) | 0 |")
        say "$name: not run, no time left in the ${BUDGET} s budget"
        return 1
    fi
    echo "===== $name (limit ${limit} s): $*" >>"$LOG"
    (cd "${STEP_DIR:-$REPO}" && timeout -k 10 "$limit" "$@") >>"$LOG" 2>&1 || rc=$?
    local took=$((SECONDS - start)) status=ok
    if ((rc == 124 || rc == 137)); then
        status="timed out after ${limit} s"
    elif ((rc != 0)); then
        status="failed (exit $rc)"
    fi
    ROWS+=("| $name | $status | $took |")
    say "$name: $status ($took s)"
    [[ $status == ok ]] || FAILED+=("$name: $status")
    return "$rc"
}

write_summary() {
    {
        echo "# GPU check: $(date -u '+%Y-%m-%d %H:%M UTC'), device=$DEVICE"
        echo
        echo "## Machine"
        echo
        echo '```'
        cat "$WORK/machine.txt" 2>/dev/null || echo "(not probed)"
        echo '```'
        echo
        echo "## Steps"
        echo
        echo "| step | status | seconds |"
        echo "| --- | --- | --- |"
        printf '%s\n' "${ROWS[@]}"
        echo
        if ((${#FAILED[@]})); then
            echo "## Failed"
            echo
            printf -- '- %s\n' "${FAILED[@]}"
        else
            echo "All steps passed in $SECONDS s."
        fi
        echo
        echo "Files: gpu-check.log (every step's output), junit-gpu.xml, junit-cuda.xml, comparison.md, bench.md, bench.json."
    } >"$SUMMARY"
}

# ---- 1. the machine ----------------------------------------------------------------------
: >"$LOG"
say "folder $OUT, work folder $WORK, python $PY, device $DEVICE, budget $BUDGET s"
{
    if command -v nvidia-smi >/dev/null; then
        nvidia-smi -L || true
        nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
    else
        echo "nvidia-smi: not found"
    fi
} >"$WORK/machine.txt" 2>&1

# One python process (scripts/gpu_check_probe.py): every backend built on $DEVICE the way a
# run builds it, and each framework's own view of CUDA. Last line: FRAMEWORKS <those that can>.
probe_rc=0
rm -f "$WORK/probe.txt"
step probe 180 bash -c "'$PY' '$REPO/scripts/gpu_check_probe.py' '$DEVICE' >'$WORK/probe.txt'" || probe_rc=$?
touch "$WORK/probe.txt"
grep -v "^FRAMEWORKS" "$WORK/probe.txt" >>"$WORK/machine.txt" || true
read -r -a CAN <<<"$(sed -n 's/^FRAMEWORKS *//p' "$WORK/probe.txt")"
tee -a "$LOG" <"$WORK/machine.txt"
if ((${#CAN[@]} == 0)); then
    if ((probe_rc == 0)); then
        FAILED+=("probe: no framework here sees a CUDA GPU")
        write_summary
        say "no framework here sees a CUDA GPU (nothing else run; see $SUMMARY)"
        exit 2
    fi
    write_summary
    say "FAILED: the probe could not run (see $LOG)"
    exit 1
fi
say "frameworks on $DEVICE: ${CAN[*]}"
FRAMEWORK_LIST=$(IFS=,; echo "${CAN[*]}")

# ---- 2. the tests --------------------------------------------------------------------------
# Only the modules holding GPU tests: the others may import what this machine lacks.
mapfile -t GPU_MODULES < <(cd "$REPO" && grep -lx "@pytest.mark.gpu" tests/test_*.py)
PYTEST=("$PY" -m pytest -rs -p no:cacheprovider -q)
RESERVE=240 step tests-gpu 180 "${PYTEST[@]}" -m gpu --junitxml="$OUT/junit-gpu.xml" "${GPU_MODULES[@]}" || true
# by module and name (-k): a node id in a module that skips whole (TensorFlow absent) is an error
mapfile -t cuda_modules < <(printf '%s\n' "${CUDA_TESTS[@]%%::*}" | sort -u)
cuda_names=$(printf ' or %s' "${CUDA_TESTS[@]##*::}")
RESERVE=240 step tests-cuda 90 "${PYTEST[@]}" --junitxml="$OUT/junit-cuda.xml" -k "${cuda_names# or }" "${cuda_modules[@]}" || true

# ---- 3. a short study on the device, then compare -------------------------------------------
data_ok=1
if [[ -f $REPO/data/processed/mnist.npz ]]; then
    mkdir -p "$WORK/data/processed"
    ln -sf "$REPO/data/processed/mnist.npz" "$WORK/data/processed/mnist.npz"
elif [[ ! -f $WORK/data/processed/mnist.npz ]]; then
    STEP_DIR=$WORK step data 120 bash -c "'$PY' -m backprop_bench.data.download --params '$REPO/params.yaml' --no-progress \
        && '$PY' -m backprop_bench.data.preprocess --params '$REPO/params.yaml'" || data_ok=0
fi
# params.yaml with the study cut short: 2 epochs, 2 seeds, these frameworks on this device
"$PY" - "$REPO/params.yaml" "$WORK/params.yaml" "$FRAMEWORK_LIST" "$DEVICE" <<'EOF' || { FAILED+=("params: no $WORK/params.yaml"); data_ok=0; }
import sys

import yaml

source, target, frameworks, device = sys.argv[1:]
p = yaml.safe_load(open(source))
p["train"]["epochs"] = 2
names = frameworks.split(",")
plain, keras_on = [f for f in names if not f.startswith("keras-")], [f[6:] for f in names if f.startswith("keras-")]
p["study"].update(frameworks=plain or ["numpy"], keras_on=keras_on, devices=[device], seeds=2, threads=0)
yaml.safe_dump(p, open(target, "w"), sort_keys=False)
EOF
if ((data_ok)); then
    rm -rf "$WORK/runs" "$WORK/reports"
    for f in "${CAN[@]}"; do
        RESERVE=150 STEP_DIR=$WORK step "study-$f" 120 "$PY" -m backprop_bench.study --framework "$f" --device "$DEVICE" \
            --params params.yaml || true
    done
    if RESERVE=120 step compare 60 "$PY" -m backprop_bench.compare --runs-dir "$WORK/runs" --reports-dir "$WORK/reports" \
        --data "$WORK/data/processed/mnist.npz" --params "$WORK/params.yaml"; then
        cp "$WORK/reports/comparison.md" "$OUT/comparison.md"
    fi
fi

# ---- 4. the bench's cells on the device ------------------------------------------------------
step bench 180 "$PY" -m backprop_bench.bench --devices "$DEVICE" --frameworks "$FRAMEWORK_LIST" --rounds 2 \
    --batches 256 --samples 16384 --data synthetic --peak-size 1024 --peak-repeats 3 --out-dir "$OUT" || true

# ---- the results' own checks: every study row finished, every bench cell ran, no test failed --
checks=$("$PY" "$REPO/scripts/gpu_check_results.py" "$OUT" "$WORK" "$DEVICE" 2>&1) || FAILED+=("checks: could not read the results: $checks")
echo "$checks" >>"$LOG"
while IFS= read -r line; do
    case "$line" in
    "FAIL "*) FAILED+=("${line#FAIL }") ;;
    "INFO "*) ROWS+=("| ${line#INFO } | | |") ;;
    esac
done <<<"$checks"

write_summary
cat "$SUMMARY"
if ((${#FAILED[@]})); then
    # one name per failed step or kind of check, with a count: "tests-gpu, study x3, bench x2"
    what=$(printf '%s\n' "${FAILED[@]}" | awk '{ sub(/:$/, "", $1); if (!n[$1]++) order[++k] = $1 }
        END { for (i = 1; i <= k; i++) printf "%s%s%s", (i > 1 ? ", " : ""), order[i], (n[order[i]] > 1 ? " x" n[order[i]] : "") }')
    say "FAILED: $what (each one in $SUMMARY, the output in $LOG)"
    exit 1
fi
say "all passed in $SECONDS s ($SUMMARY)"
