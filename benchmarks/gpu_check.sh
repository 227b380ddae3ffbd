#!/usr/bin/env bash
# GPU check: build, GPU tests and the benchmark matrix, on a machine with an NVIDIA GPU and no
# network, in under 8 minutes. Prints a short results table last.
#
#   OUT=/some/dir benchmarks/gpu_check.sh        (OUT defaults to ./out)
#
# Stages (each under its own timeout; a failing stage is recorded and the next one still runs):
#   env      nvidia-smi and versions                                  -> $OUT/env.log
#   install  pip install --no-build-isolation --no-deps -e . (offline; TORCH_CUDA_ARCH_LIST=9.0a,
#            MAX_JOBS=16); if the CUDA extension fails to build, once more with AECOMP_NO_CUDA=1:
#            the triton backend needs only the Python package        -> $OUT/install*.log
#   tests    the GPU tests: tests/test_triton_ops.py, test_triton_mlp.py, test_fused_step.py -k gpu,
#            tests/test_cuda_ops.py, test_cuda_mlp.py (those that exist; GPU_TESTS overrides the list)
#                                                     -> $OUT/tests.log, $OUT/pytest_gpu.xml
#   bench    python -m benchmarks.run --device cuda: ceilings (8192^3 bf16/fp32 torch.mm, 1 GiB
#            device-to-device copy), then aecomp (triton, cuda if built) against eager,
#            torch.compile and max-autotune: train step (64/1024/65536), chain, linear_act at the
#            six reference layers, mse, CompressedNet latency, training job; bf16 and fp32; in
#            priority order under the time left       -> $OUT/gpu_<GPU>.jsonl, $OUT/bench.log
#   render   tables and plots of that file           -> $OUT/gpu_<GPU>.md, $OUT/gpu_<GPU>_speedup*.png
#   triton   (only with GPU_CHECK_TRITON_SWEEP=1) benchmarks/bench_triton.py's own sweep, which
#            also records the Triton autotuning choices; it shares the bench budget
# and $OUT/gpu_check_summary.json with each stage's exit code and seconds. Exit status: 0 when
# every stage passed. To publish: copy $OUT/gpu_*.jsonl into benchmarks/results/ (append to the
# file of the same name if there is one) and run `python -m benchmarks.render`.
#
# Time: every stage's timeout is cut to what is left of TOTAL_BUDGET_S (default 400 s), keeping
# a reserve for the stages after it; the bench gets the rest as its own budget (the runner stops
# starting measurements then and appends every row as it is measured, so a kill loses nothing)
# plus 45 s before it is killed; render and the table take under a minute. Worst case about
# TOTAL_BUDGET_S + 60 s: under the 8 minutes allowed.
#
# Knobs for checking this script on a machine without a GPU (nothing is installed or tested;
# the runner's own smoke mode on the CPU):
#   SKIP_INSTALL=1 SKIP_TESTS=1 BENCH_ARGS="--device cpu --smoke --baselines eager" benchmarks/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=${OUT:-$ROOT/out}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
PY=${PYTHON:-$(command -v python || command -v python3)}
TOTAL_BUDGET_S=${TOTAL_BUDGET_S:-400}
BENCH_ARGS=${BENCH_ARGS:---device cuda}
START=$(date +%s)

export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0a}
export MAX_JOBS=${MAX_JOBS:-16}
export PYTHONUNBUFFERED=1
export PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1
export TRITON_CACHE_AUTOTUNING=1          # the bench reuses the tests' autotuning choices
export TRITON_DEFAULT_FP_FUSION=${TRITON_DEFAULT_FP_FUSION:-1}
export MPLBACKEND=Agg
unset TRITON_INTERPRET

STAGES="$OUT/gpu_check_stages.tsv"
: > "$STAGES"
FAILED=0

elapsed() { echo $(( $(date +%s) - START )); }
# limit CAP RESERVE: CAP seconds, or what is left of the budget after keeping RESERVE (min 10)
limit() {
  local left=$(( TOTAL_BUDGET_S - $(elapsed) - $2 ))
  [ "$left" -lt "$1" ] || left=$1
  [ "$left" -ge 10 ] || left=10
  echo "$left"
}

# stage NAME LIMIT_S CMD...: run CMD under a timeout, log to $OUT/NAME.log, record exit code and time
stage() {
  local name=$1 limit=$2
  shift 2
  local t0 rc=0 dt
  t0=$(date +%s)
  echo "== $name (limit ${limit}s; $(elapsed)s elapsed)"
  timeout --kill-after=15 "$limit" "$@" > "$OUT/$name.log" 2>&1 || rc=$?
  dt=$(( $(date +%s) - t0 ))
  printf '%s\t%s\t%s\n' "$name" "$rc" "$dt" >> "$STAGES"
  tail -n 12 "$OUT/$name.log" || true
  echo "== $name: exit $rc after ${dt}s"
  [ "$rc" -eq 0 ] || FAILED=1
  return "$rc"
}
skip() {
  echo "== $1 skipped: $2"
  printf '%s\tskipped\t0\n' "$1" >> "$STAGES"
}

nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true
stage env 30 "$PY" -c "import sys, torch, triton; print(sys.version); print('torch', torch.__version__, 'cuda', torch.version.cuda, 'gpu', torch.cuda.get_device_name() if torch.cuda.is_available() else None); print('triton', triton.__version__)" || true

if [ "${SKIP_INSTALL:-0}" = 1 ]; then
  skip install "SKIP_INSTALL=1"
elif ! stage install "$(limit 240 210)" "$PY" -m pip install --no-build-isolation --no-deps -e .; then
  # the triton backend needs only the Python package: retry without the CUDA extension
  stage install_no_cuda "$(limit 120 180)" env AECOMP_NO_CUDA=1 \
    "$PY" -m pip install --no-build-isolation --no-deps -e . || true
fi
stage import 60 "$PY" -c "import aecomp, aecomp.kernels, aecomp.ops._triton; print(aecomp.available_backends())" || true

if [ "${SKIP_TESTS:-0}" = 1 ]; then
  skip tests "SKIP_TESTS=1"
else
  if [ -n "${GPU_TESTS:-}" ]; then
    read -r -a TESTS <<< "$GPU_TESTS"
  else
    TESTS=()
    [ -f tests/test_triton_ops.py ] && TESTS+=(tests/test_triton_ops.py)
    [ -f tests/test_cuda_ops.py ] && TESTS+=(tests/test_cuda_ops.py)
    [ -f tests/test_fused_step.py ] && TESTS+=(tests/test_fused_step.py)
    [ -f tests/test_triton_mlp.py ] && TESTS+=(tests/test_triton_mlp.py)
    [ -f tests/test_cuda_mlp.py ] && TESTS+=(tests/test_cuda_mlp.py)
    # the GPU tests of the triton files and the fused step; the whole CUDA files (they skip without a GPU)
    TESTS+=(-k "gpu or trace_into or traces_into or cuda_ops or cuda_mlp")
  fi
  stage tests "$(limit 200 150)" "$PY" -m pytest -q -rs "${TESTS[@]}" \
    --junitxml="$OUT/pytest_gpu.xml" -p no:cacheprovider || true
fi

# the bench gets what is left, keeping ~50 s for render + the table
BUDGET=$(( TOTAL_BUDGET_S - $(elapsed) - 50 ))
if [ "$BUDGET" -ge 45 ]; then
  read -r -a BARGS <<< "$BENCH_ARGS"
  if [ "${GPU_CHECK_TRITON_SWEEP:-0}" = 1 ]; then
    HALF=$(( BUDGET / 2 ))
    stage triton $(( HALF + 30 )) "$PY" -m benchmarks.bench_triton --out "$OUT" --budget-s "$HALF" || true
    BUDGET=$(( TOTAL_BUDGET_S - $(elapsed) - 50 ))
    [ "$BUDGET" -ge 30 ] || BUDGET=30
  fi
  stage bench $(( BUDGET + 45 )) "$PY" -m benchmarks.run "${BARGS[@]}" --results-dir "$OUT" \
    --budget-s "$BUDGET" || true
else
  skip bench "only $(( BUDGET + 50 ))s of the ${TOTAL_BUDGET_S}s budget left"
  FAILED=1
fi

shopt -s nullglob
RESULTS=("$OUT"/*.jsonl)
if [ "${#RESULTS[@]}" -gt 0 ]; then
  stage render 40 "$PY" -m benchmarks.render "${RESULTS[@]}" --results-dir "$OUT" --no-readme \
    $( [ "${BENCH_ARGS/--smoke/}" != "$BENCH_ARGS" ] && echo --include-smoke ) || true
fi

"$PY" - "$STAGES" "$OUT/gpu_check_summary.json" "$(elapsed)" <<'PYEOF' || true
import json, sys
rows = [line.rstrip("\n").split("\t") for line in open(sys.argv[1]) if line.strip()]
stages = [{"stage": n, "exit": (int(rc) if rc.lstrip("-").isdigit() else rc), "seconds": int(s)} for n, rc, s in rows]
json.dump({"stages": stages, "total_seconds": int(sys.argv[3])}, open(sys.argv[2], "w"), indent=1)
print(json.dumps(stages))
PYEOF
echo "gpu_check: done in $(elapsed)s; results in $OUT (failed stages: $FAILED)"

# the short table, last
if [ "${#RESULTS[@]}" -gt 0 ]; then
  timeout 30 "$PY" -m benchmarks.render --summary "${RESULTS[@]}" \
    $( [ "${BENCH_ARGS/--smoke/}" != "$BENCH_ARGS" ] && echo --include-smoke ) || true
else
  echo "gpu_check: no benchmark results were written"
fi
exit "$FAILED"
