#!/usr/bin/env bash
# GPU check: ONE command on a fresh GPU machine (no network; python3 with torch, triton, nvcc,
# pybind11, pytest-xdist preinstalled) builds the C++/CUDA extension, runs every GPU test and the
# benchmark matrix within TOTAL_BUDGET_S (default 480 s), and leaves few files in $OUT (a device
# call brings back 8 at most, 16 MiB each): summary.json, tests_summary.txt, the bench rows
# (gpu_<card>.jsonl), gpu_check_logs.tar.gz (every stage's log and command, junit XML, the plan,
# rendered tables and plots) and build_C.tar.gz.part-aa, -ab, ... (the built extension in 15 MiB
# parts, for a rerun: copy them into build/carried/ of the checkout and carry build/carried).
#
#   OUT=/some/dir benchmarks/gpu_check.sh            (OUT defaults to ./out; the working files go to
#                                                     GPU_CHECK_WORK, default a fresh /tmp folder)
#   benchmarks/gpu_check.sh --dry-run                the plan: nothing is built, run or timed; a fake
#       clock advances by each stage's planned seconds (its limit, or GPU_CHECK_FAKE_S="stage=s,...";
#       GPU_CHECK_FAKE_FAIL="stage,..." makes stages fail), so the budget cuts of the real run are
#       rehearsed. The bench stage is planned by the runner itself (benchmarks.run --plan: its own
#       selection within its budget, by its cost estimates) and the test lists are the real ones.
#
# Stages; each writes $WORK/<stage>/log and cmd, and a row of summary.json (exit, seconds, limit):
#   env           nvidia-smi; python3 / torch / triton / nvcc / xdist / compute-sanitizer
#   build         python setup.py build_ext --inplace, TORCH_CUDA_ARCH_LIST=9.0a+PTX (this card's
#                 SASS and PTX; the shipped default also embeds compute_80 PTX: one more compile
#                 pass per .cu, not needed on the H100/H200), MAX_JOBS=10; in the BACKGROUND,
#                 while tests_triton runs. Skipped when the parts of an earlier run's build are in
#                 build/carried/ and its stamp matches the sources, torch and the arch list: a rerun
#                 saves the build.
#   tests_triton  the GPU tests of tests/test_triton_*.py (Triton only, no aecomp._C needed), pytest
#                 -n 6, while the build runs
#   tests_cuda    every other GPU test (the cuda backend ops and chains, Triton-vs-CUDA-vs-reference
#                 on the device, compute-sanitizer, Autoencoder then VAE in one process, the packed
#                 op, the CUDA graph step), pytest -n 8, after the build
#   bench         python -m benchmarks.run with gpu_check_plan.BENCH_ARGS (training step at batch
#                 64/4096/65536 and packed inference at 1/256/65536, bf16 and fp32, against eager
#                 and torch.compile; the matmul and copy ceilings), --budget-s from the time left;
#                 rows are appended as measured, so a kill loses nothing. max-autotune is left out
#                 (see benchmarks/gpu_check_plan.py for why and how to run it).
#   render        benchmarks.render of the bench rows -> tables and plots
# The GPU tests are found by benchmarks/gpu_check_plan.py (every test that skips without a GPU);
# GPU_TESTS_TRITON / GPU_TESTS_CUDA (node ids) override them, GPU_CHECK_STAGES="build,tests_cuda"
# runs some stages only (env always runs), BENCH_ARGS overrides the bench's runner arguments,
# GPU_CHECK_WORKERS the pytest workers (6 beside the build, then 8).
# Both test stages pin one Triton tile per kernel and shape (AECOMP_TRITON_AUTOTUNE=off: one
# compile each instead of every tile); so does the bench (BENCH_AUTOTUNE=on to autotune), and its
# run row records it.
#
# Time (TOTAL_BUDGET_S=480): env <= 20 s; build <= 190 s with tests_triton (<= 170 s) beside it;
# tests_cuda <= 110 s; bench gets what is left minus 50 s (its 30 s grace, render, packing), at
# least 30 s (about 200 s if the build takes 150 s and tests_cuda 70 s: guesses); render <= 15 s.
# A stage's limit is cut to the time left keeping a reserve for the stages after it: every stage at
# its limit still ends within the budget (tests/test_gpu_check.py). On the device (15 min in all,
# start-up included; 10 min a call): call it with timeout_s = TOTAL_BUDGET_S + 60 (the kill
# graces); one call (~1.5 min start + 8 min + transfers) leaves ~5 min: a fresh machine and a
# rerun of ~3.5 min, with the build carried (build/carried, above) and GPU_CHECK_STAGES /
# GPU_TESTS_* narrowed.
# To publish: copy $OUT/gpu_*.jsonl into benchmarks/results/ and run python -m benchmarks.render.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DRY=0
[ "${1:-}" = "--dry-run" ] && DRY=1
OUT=${OUT:-$ROOT/out}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK=${GPU_CHECK_WORK:-$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")}
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)
PY=${PYTHON:-$(command -v python3 || command -v python)}   # the device image's torch is python3's
TOTAL_BUDGET_S=${TOTAL_BUDGET_S:-480}
STAGES=",env,${GPU_CHECK_STAGES:-build,tests_triton,tests_cuda,bench,render},"
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0a+PTX}
export MAX_JOBS=${MAX_JOBS:-10}
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg
export PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1
export TRITON_DEFAULT_FP_FUSION=${TRITON_DEFAULT_FP_FUSION:-1}
unset TRITON_INTERPRET

CLOCK=0        # the fake clock of --dry-run (seconds)
START=$(date +%s)
FAILED=0
ROWS=()
declare -A BG_PID BG_T0 BG_LIM BG_DT BG_RC
now() { if [ "$DRY" = 1 ]; then echo "$CLOCK"; else echo $(( $(date +%s) - START )); fi; }
wanted() { case "$STAGES" in *",$1,"*) return 0 ;; *) return 1 ;; esac; }
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
fake_run() {  # fake_run NAME LIMIT [PLANNED]: sets FAKE_DT and FAKE_RC for --dry-run
  local planned
  planned=$(fake_value "${GPU_CHECK_FAKE_S:-}" "$1")
  FAKE_DT=${planned:-${3:-$2}}
  FAKE_RC=0
  [ "$FAKE_DT" -le "$2" ] || { FAKE_DT=$2; FAKE_RC=124; }
  case ",${GPU_CHECK_FAKE_FAIL:-}," in *",$1,"*) FAKE_RC=1 ;; esac
  echo "dry run: $(cat "$WORK/$1/cmd")" > "$WORK/$1/log"
}
write_summary() {
  local IFS=,
  printf '{"dry_run": %s, "budget_s": %s, "elapsed_s": %s, "commit": "%s", "stages": [%s]}\n' \
    "$([ "$DRY" = 1 ] && echo true || echo false)" "$TOTAL_BUDGET_S" "$(now)" "$COMMIT" "${ROWS[*]:-}" \
    > "$OUT/summary.json"
}
record() {  # record NAME RC SECONDS LIMIT
  ROWS+=("{\"stage\": \"$1\", \"exit\": $2, \"seconds\": $3, \"limit_s\": $4}")
  write_summary
  echo "== $1: exit $2 after ${3}s"
  [ "$2" -eq 0 ] || FAILED=1
}
prepare() {  # prepare NAME LIMIT CMD...
  local name=$1 lim=$2
  shift 2
  mkdir -p "$WORK/$name"
  printf '%q ' "$@" > "$WORK/$name/cmd"
  echo "== $name (limit ${lim}s, at $(now)s)"
}
# stage NAME LIMIT SIGNAL CMD...: CMD under a timeout (SIGNAL first, KILL 10 s later), output to
# $WORK/NAME/log; records exit code, seconds and limit; returns the exit code. FAKE_PLANNED, if
# set, is the --dry-run's planned seconds (else the limit).
stage() {
  local name=$1 lim=$2 sig=$3 t0 rc=0 dt
  shift 3
  prepare "$name" "$lim" "$@"
  t0=$(now)
  if [ "$DRY" = 1 ]; then
    fake_run "$name" "$lim" "${FAKE_PLANNED:-}"
    dt=$FAKE_DT rc=$FAKE_RC
    CLOCK=$(( CLOCK + dt ))
  else
    timeout --signal="$sig" --kill-after=10 "$lim" "$@" > "$WORK/$name/log" 2>&1 || rc=$?
    dt=$(( $(now) - t0 ))
    tail -n 8 "$WORK/$name/log"
  fi
  record "$name" "$rc" "$dt" "$lim"
  return "$rc"
}
# bg_stage NAME LIMIT SIGNAL CMD...: the same, in the background; bg_wait NAME collects it (the
# fake clock then stands at the later of now and the stage's end)
bg_stage() {
  local name=$1 lim=$2 sig=$3
  shift 3
  prepare "$name" "$lim" "$@"
  BG_T0[$name]=$(now)
  BG_LIM[$name]=$lim
  if [ "$DRY" = 1 ]; then
    fake_run "$name" "$lim"
    BG_DT[$name]=$FAKE_DT BG_RC[$name]=$FAKE_RC
  else
    timeout --signal="$sig" --kill-after=10 "$lim" "$@" > "$WORK/$name/log" 2>&1 &
    BG_PID[$name]=$!
  fi
}
bg_wait() {
  local name=$1 rc=0 dt
  if [ "$DRY" = 1 ]; then
    dt=${BG_DT[$name]} rc=${BG_RC[$name]}
    [ "$CLOCK" -ge $(( BG_T0[$name] + dt )) ] || CLOCK=$(( BG_T0[$name] + dt ))
  else
    wait "${BG_PID[$name]}" || rc=$?
    dt=$(( $(now) - BG_T0[$name] ))
    tail -n 8 "$WORK/$name/log"
  fi
  record "$name" "$rc" "$dt" "${BG_LIM[$name]}"
  return "$rc"
}
tests_stage() {  # tests_stage NAME LIMIT WORKERS NODE_ID...
  local name=$1 lim=$2 workers=$3 rc=0
  shift 3
  local xdist=()
  if [ "$DRY" = 1 ] || "$PY" -c "import xdist" 2>/dev/null; then xdist=(-n "$workers" --dist load); fi
  if [ "$#" -eq 0 ]; then echo "== $name: no GPU tests found"; record "$name" 1 0 "$lim"; return 1; fi
  # SIGINT at the limit: pytest still writes its junit XML and summary
  stage "$name" "$lim" INT env AECOMP_TRITON_AUTOTUNE=off "$PY" -m pytest -q -rfEs "${xdist[@]}" \
    -p no:cacheprovider --junitxml="$WORK/$name/junit.xml" "$@" || rc=$?
  { echo "== $name: exit $rc"
    grep -E "^(FAILED|ERROR|SKIPPED) |[0-9]+ (passed|failed|skipped|errors?)\b" "$WORK/$name/log" | tail -n 40
  } >> "$WORK/tests_summary.txt"
  return "$rc"
}
build_stamp() {  # what the built extension depends on: the sources, setup.py, torch, the arch list
  { find csrc setup.py -type f | LC_ALL=C sort | xargs cat
    echo "$TORCH_CUDA_ARCH_LIST"
    "$PY" -c "import torch; print(torch.__version__, torch.version.cuda)" 2>&1; } | sha256sum | cut -c1-32
}
COMMIT=$(git rev-parse HEAD 2>/dev/null || echo "unknown (no .git here: record the commit of the call)")
: > "$WORK/tests_summary.txt"

# ---------------------------------------------------------------- env
mkdir -p "$WORK/env"
[ "$DRY" = 1 ] || nvidia-smi > "$WORK/env/nvidia-smi.txt" 2>&1
stage env "$(limit 20 400)" TERM "$PY" -c "import sys, shutil, importlib.util as u, torch, triton
print(sys.version); print('torch', torch.__version__, 'cuda', torch.version.cuda)
print('gpu', torch.cuda.get_device_name() if torch.cuda.is_available() else None)
print('triton', triton.__version__, 'xdist', u.find_spec('xdist') is not None)
print('nvcc', shutil.which('nvcc'), 'compute-sanitizer', shutil.which('compute-sanitizer'))"

# ---------------------------------------------------------------- build || tests_triton
STAMP_FILE=build/gpu_check_build_stamp
CARRIED=build/carried  # build_C.tar.gz.part-* of an earlier run, for a rerun
BUILD_BG=0
if wanted build; then
  if [ "$DRY" = 0 ] && compgen -G "$CARRIED/build_C.tar.gz.part-*" > /dev/null; then
    cat "$CARRIED"/build_C.tar.gz.part-* | tar xzf - || echo "== build: the carried parts did not unpack"
  fi
  shopt -s nullglob
  SO=(aecomp/_C*.so)
  shopt -u nullglob
  if [ "$DRY" = 0 ] && [ "${#SO[@]}" -gt 0 ] && [ -f "$STAMP_FILE" ] \
     && [ "$(cat "$STAMP_FILE")" = "$(build_stamp)" ]; then
    echo "== build: reusing ${SO[*]} (its stamp matches the sources)"
    record build 0 0 0
  else
    bg_stage build "$(limit 190 190)" TERM "$PY" setup.py build_ext --inplace
    BUILD_BG=1
  fi
fi
if wanted tests_triton; then
  if [ -n "${GPU_TESTS_TRITON:-}" ]; then read -r -a T_TESTS <<< "$GPU_TESTS_TRITON"
  else mapfile -t T_TESTS < <("$PY" -m benchmarks.gpu_check_plan --tests triton); fi
  tests_stage tests_triton "$(limit 170 210)" "${GPU_CHECK_WORKERS:-6}" "${T_TESTS[@]}"
fi
if [ "$BUILD_BG" = 1 ]; then
  if bg_wait build && [ "$DRY" = 0 ]; then
    mkdir -p build && build_stamp > "$STAMP_FILE"
    tar czf - aecomp/_C*.so "$STAMP_FILE" | split -b 15M - "$OUT/build_C.tar.gz.part-"
  fi
fi
# --dry-run: the compiles the test stages would do and the GPU tests found
if [ "$DRY" = 1 ] && { wanted tests_triton || wanted tests_cuda; }; then
  read -r -a PLAN_ARGS <<< "${GPU_CHECK_PLAN_ARGS:-}"
  "$PY" -m benchmarks.gpu_check_plan --out "$WORK/plan.json" "${PLAN_ARGS[@]}" > "$WORK/plan.txt" 2>&1 \
    || echo "plan: see $WORK/plan.txt"
fi

# ---------------------------------------------------------------- tests_cuda
if wanted tests_cuda; then
  if [ -n "${GPU_TESTS_CUDA:-}" ]; then read -r -a C_TESTS <<< "$GPU_TESTS_CUDA"
  else mapfile -t C_TESTS < <("$PY" -m benchmarks.gpu_check_plan --tests cuda); fi
  tests_stage tests_cuda "$(limit 110 80)" "${GPU_CHECK_WORKERS:-8}" "${C_TESTS[@]}"
fi

# ---------------------------------------------------------------- bench
if wanted bench; then
  BUDGET=$(( TOTAL_BUDGET_S - $(now) - 30 - 20 ))
  [ "$BUDGET" -ge 30 ] || BUDGET=30
  read -r -a BARGS <<< "${BENCH_ARGS:-$("$PY" -m benchmarks.gpu_check_plan --bench-args)}"
  FAKE_PLANNED=
  if [ "$DRY" = 1 ] && [ -z "$(fake_value "${GPU_CHECK_FAKE_S:-}" bench)" ]; then
    # the runner plans its own budget; +10 s for its start (imports, CUDA)
    mkdir -p "$WORK/bench"
    "$PY" -m benchmarks.run "${BARGS[@]}" --budget-s "$BUDGET" --plan "$WORK/bench/plan.json" \
      > "$WORK/bench/plan.txt" 2>&1 || echo "bench plan: see $WORK/bench/plan.txt"
    FAKE_PLANNED=$("$PY" -c "import json, sys, math; print(math.ceil(json.load(open(sys.argv[1]))['planned_s']) + 10)" \
      "$WORK/bench/plan.json" 2>/dev/null)
  fi
  stage bench $(( BUDGET + 30 )) INT env AECOMP_TRITON_AUTOTUNE="${BENCH_AUTOTUNE:-off}" \
    "$PY" -m benchmarks.run "${BARGS[@]}" --results-dir "$WORK/bench" --budget-s "$BUDGET"
  FAKE_PLANNED=
fi

# ---------------------------------------------------------------- render
shopt -s nullglob
RESULTS=("$WORK"/bench/*.jsonl)
shopt -u nullglob
if wanted render && { [ "${#RESULTS[@]}" -gt 0 ] || [ "$DRY" = 1 ]; }; then
  stage render "$(limit 15 5)" TERM "$PY" -m benchmarks.render "${RESULTS[@]:-$WORK/bench/gpu.jsonl}" \
    --results-dir "$WORK/bench" --no-readme
fi

# ---------------------------------------------------------------- what comes back
write_summary
cp "$WORK/tests_summary.txt" "$OUT/tests_summary.txt"
[ "${#RESULTS[@]}" -eq 0 ] || cp "${RESULTS[@]}" "$OUT/"
cp "$OUT/summary.json" "$WORK/summary.json"
tar czf "$OUT/gpu_check_logs.tar.gz" -C "$WORK" .
echo
echo "stage         exit  seconds  limit"
"$PY" -c "import json, sys
for s in json.load(open(sys.argv[1]))['stages']:
    print(f\"{s['stage']:12s} {s['exit']:5d} {s['seconds']:8d} {s['limit_s']:6d}\")" "$OUT/summary.json"
cat "$WORK/tests_summary.txt"
[ "$DRY" = 1 ] || [ "${#RESULTS[@]}" -eq 0 ] || timeout 20 "$PY" -m benchmarks.render --summary "${RESULTS[@]}"
echo "gpu_check: $( [ "$DRY" = 1 ] && echo 'dry run, fake clock at' || echo 'done in') $(now)s of" \
  "${TOTAL_BUDGET_S}s; $(ls "$OUT" | wc -l) files in $OUT; working files in $WORK; failed: $FAILED"
exit "$FAILED"
