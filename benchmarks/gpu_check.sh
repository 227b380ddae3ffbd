#!/usr/bin/env bash
# GPU check: ONE command on a fresh GPU machine (no network; python3 with torch, triton, nvcc,
# pybind11 preinstalled) builds the CUDA extension, runs every GPU test and the benchmark matrix
# in under 8 minutes, and leaves each stage's results under $OUT even when a stage fails.
#
#   OUT=/some/dir benchmarks/gpu_check.sh            (OUT defaults to ./out)
#   benchmarks/gpu_check.sh --dry-run                the plan only: nothing is built, run or timed;
#       a fake clock advances by each stage's planned seconds (GPU_CHECK_FAKE_S="stage=seconds,..."
#       overrides them, GPU_CHECK_FAKE_FAIL="stage,..." makes stages fail) so the budget cuts of
#       the real run are rehearsed; $OUT/plan.json also counts the Triton compiles of each stage.
#
# Stages, in order; each writes $OUT/<stage>/log (and its own results) and a row of
# $OUT/summary.json (exit code, seconds, limit), written after every stage:
#   env      nvidia-smi, python3 / torch / triton / nvcc versions
#   build    pip install --no-build-isolation --no-deps -e . with TORCH_CUDA_ARCH_LIST=9.0a (plus
#            the compute_80 PTX setup.py adds) and MAX_JOBS=16: the C++/CUDA extension, ninja in
#            parallel. If it fails, build_cpu does the same with AECOMP_NO_CUDA=1 (the triton
#            backend needs only the package).
#   tests    every GPU test (tests/test_triton_ops.py, test_triton_mlp.py, test_cuda_ops.py,
#            test_cuda_mlp.py, test_fused_step.py; GPU_TESTS overrides), in parallel
#            (pytest -n GPU_CHECK_WORKERS, default 8, one GPU) with AECOMP_TRITON_AUTOTUNE=off: one
#            Triton tile per kernel and shape instead of every tile (the compile count that made
#            the old check miss its time). pytest is sent SIGINT at its limit, so it still writes
#            $OUT/tests/junit.xml and its summary.
#   bench    python -m benchmarks.run --device cuda --results-dir $OUT/bench (an explicit folder:
#            the runner's default location may change), full autotuning, its own --budget-s from
#            the time left; rows are appended as measured, so a kill loses nothing.
#   render   benchmarks.render of $OUT/bench/*.jsonl -> tables and plots in $OUT/bench
# To publish: copy $OUT/bench/gpu_*.jsonl into benchmarks/results/ and run python -m benchmarks.render.
#
# Time (TOTAL_BUDGET_S, default 470 s of the 480 allowed): build <= 200 s (measured elsewhere:
# 130-180 s), tests <= 170 s, bench gets what is left minus 55 s (its 30 s grace, render and the
# summary), at least 30 s. A stage's limit is cut to the time left keeping a reserve for the
# stages after it; the worst case (every stage at its limit, the build failing and retried) is
# rehearsed by tests/test_gpu_check.py with the --dry-run fake clock.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DRY=0
[ "${1:-}" = "--dry-run" ] && DRY=1
OUT=${OUT:-$ROOT/out}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
PY=${PYTHON:-$(command -v python3 || command -v python)}   # the device image's torch is python3's
TOTAL_BUDGET_S=${TOTAL_BUDGET_S:-470}
WORKERS=${GPU_CHECK_WORKERS:-8}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0a}
export MAX_JOBS=${MAX_JOBS:-16}
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg
export PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1
export TRITON_DEFAULT_FP_FUSION=${TRITON_DEFAULT_FP_FUSION:-1}
unset TRITON_INTERPRET

CLOCK=0        # the fake clock of --dry-run (seconds)
START=$(date +%s)
FAILED=0
ROWS=()
now() { if [ "$DRY" = 1 ]; then echo "$CLOCK"; else echo $(( $(date +%s) - START )); fi; }
# limit CAP RESERVE: CAP seconds, or what is left of the budget after keeping RESERVE (min 10)
limit() {
  local left=$(( TOTAL_BUDGET_S - $(now) - $2 ))
  [ "$left" -lt "$1" ] || left=$1
  [ "$left" -ge 10 ] || left=10
  echo "$left"
}
fake_value() {  # fake_value LIST NAME: the value of NAME=... in "a=1,b=2"
  local item
  IFS=',' read -r -a items <<< "$1"
  for item in "${items[@]}"; do [ "${item%%=*}" = "$2" ] && { echo "${item#*=}"; return; }; done
}
write_summary() {
  local IFS=,
  printf '{"dry_run": %s, "budget_s": %s, "elapsed_s": %s, "stages": [%s]}\n' \
    "$([ "$DRY" = 1 ] && echo true || echo false)" "$TOTAL_BUDGET_S" "$(now)" "${ROWS[*]:-}" > "$OUT/summary.json"
}
# stage NAME LIMIT SIGNAL CMD...: CMD under a timeout (SIGNAL first, KILL 10 s later), output to
# $OUT/NAME/log; records exit code, seconds and limit; returns the exit code.
stage() {
  local name=$1 lim=$2 sig=$3
  shift 3
  mkdir -p "$OUT/$name"
  printf '%q ' "$@" > "$OUT/$name/cmd"
  echo "== $name (limit ${lim}s, at $(now)s)"
  local t0 rc=0 dt
  t0=$(now)
  if [ "$DRY" = 1 ]; then
    dt=$(fake_value "${GPU_CHECK_FAKE_S:-}" "$name")
    dt=${dt:-$lim}
    [ "$dt" -le "$lim" ] || { dt=$lim; rc=124; }
    case ",${GPU_CHECK_FAKE_FAIL:-}," in *",$name,"*) rc=1 ;; esac
    echo "dry run: $(cat "$OUT/$name/cmd")" > "$OUT/$name/log"
    CLOCK=$(( CLOCK + dt ))
  else
    timeout --signal="$sig" --kill-after=10 "$lim" "$@" > "$OUT/$name/log" 2>&1 || rc=$?
    dt=$(( $(now) - t0 ))
    tail -n 8 "$OUT/$name/log"
  fi
  ROWS+=("{\"stage\": \"$name\", \"exit\": $rc, \"seconds\": $dt, \"limit_s\": $lim}")
  write_summary
  echo "== $name: exit $rc after ${dt}s"
  [ "$rc" -eq 0 ] || FAILED=1
  return "$rc"
}

# ---------------------------------------------------------------- env
mkdir -p "$OUT/env"
[ "$DRY" = 1 ] || nvidia-smi > "$OUT/env/nvidia-smi.txt" 2>&1
stage env 30 TERM "$PY" -c "import sys, torch, triton, shutil; print(sys.version); \
print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name() if torch.cuda.is_available() else None); \
print('triton', triton.__version__); print('nvcc', shutil.which('nvcc'))"

# ---------------------------------------------------------------- build
if ! stage build "$(limit 200 200)" TERM "$PY" -m pip install --no-build-isolation --no-deps -e .; then
  stage build_cpu "$(limit 90 170)" TERM env AECOMP_NO_CUDA=1 "$PY" -m pip install --no-build-isolation --no-deps -e .
fi

# ---------------------------------------------------------------- tests
if [ -n "${GPU_TESTS:-}" ]; then
  read -r -a TESTS <<< "$GPU_TESTS"
else
  # the GPU tests of these files (the CPU ones -- interpreter, nvcc, emulator -- ran in CI)
  TESTS=(tests/test_triton_ops.py tests/test_triton_mlp.py tests/test_cuda_ops.py tests/test_cuda_mlp.py
         tests/test_fused_step.py
         -k "gpu or ((cuda_ops or cuda_mlp) and not emulator and not glue and not compiles and not kernel_image)")
fi
XDIST=()
"$PY" -c "import xdist" 2>/dev/null && XDIST=(-n "$WORKERS" --dist load)
[ "$DRY" = 1 ] && XDIST=(-n "$WORKERS" --dist load)
# --dry-run: the compiles the tests stage would do, counted from the configuration lists
if [ "$DRY" = 1 ]; then
  read -r -a PLAN_ARGS <<< "${GPU_CHECK_PLAN_ARGS:-}"
  "$PY" -m benchmarks.gpu_check_plan --out "$OUT/plan.json" "${PLAN_ARGS[@]}" > "$OUT/plan.txt" 2>&1 \
    || echo "plan: see $OUT/plan.txt"
fi
stage tests "$(limit 170 90)" INT env AECOMP_TRITON_AUTOTUNE=off "$PY" -m pytest -q -rs "${XDIST[@]}" \
  -p no:cacheprovider --junitxml="$OUT/tests/junit.xml" "${TESTS[@]}"

# ---------------------------------------------------------------- bench
BUDGET=$(( TOTAL_BUDGET_S - $(now) - 25 - 30 ))
[ "$BUDGET" -ge 30 ] || BUDGET=30
read -r -a BARGS <<< "${BENCH_ARGS:---device cuda}"
stage bench $(( BUDGET + 30 )) INT "$PY" -m benchmarks.run "${BARGS[@]}" --results-dir "$OUT/bench" --budget-s "$BUDGET"

# ---------------------------------------------------------------- render
shopt -s nullglob
RESULTS=("$OUT"/bench/*.jsonl)
if [ "${#RESULTS[@]}" -gt 0 ] || [ "$DRY" = 1 ]; then
  stage render 20 TERM "$PY" -m benchmarks.render "${RESULTS[@]:-$OUT/bench/gpu.jsonl}" --results-dir "$OUT/bench" \
    --no-readme
fi
write_summary
echo "gpu_check: $( [ "$DRY" = 1 ] && echo 'dry run, fake clock at' || echo 'done in') $(now)s of ${TOTAL_BUDGET_S}s; results in $OUT; failed: $FAILED"
[ "$DRY" = 1 ] || [ "${#RESULTS[@]}" -eq 0 ] || timeout 20 "$PY" -m benchmarks.render --summary "${RESULTS[@]}"
exit "$FAILED"
