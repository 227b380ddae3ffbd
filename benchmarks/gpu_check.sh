#!/usr/bin/env bash
# GPU check of the triton backend, for a machine with an NVIDIA GPU and no network.
#
#   OUT=/some/dir benchmarks/gpu_check.sh        (OUT defaults to ./out)
#
# Stages (each under its own timeout; a failing stage is recorded and the next one still runs):
#   env      nvidia-smi and versions                                  -> $OUT/env.log
#   install  pip install --no-build-isolation --no-deps -e . (offline; TORCH_CUDA_ARCH_LIST=9.0a,
#            MAX_JOBS=16); if the CUDA extension fails to build, once more with AECOMP_NO_CUDA=1:
#            the triton backend needs only the Python package        -> $OUT/install*.log
#   tests    the GPU tests of tests/test_triton_ops.py (and the trace test)
#                                                     -> $OUT/tests.log, $OUT/pytest_gpu.xml
#   bench    python -m benchmarks.bench_triton: triton vs eager vs torch.compile (default and
#            max-autotune) at the reference layers, mse, 4096^3 vs torch.mm
#                                                     -> $OUT/bench_triton_<GPU>.json, bench.log
# and $OUT/gpu_check_summary.json with each stage's exit code and seconds. Exit status: 0 when
# every stage passed.
#
# Time: every stage's timeout is cut to what is left of TOTAL_BUDGET_S (default 400 s), keeping
# a reserve for the stages after it; the bench gets the rest as its own budget (it stops
# starting measurements then, and saves its JSON after every row) plus 45 s before it is
# killed. Worst case about TOTAL_BUDGET_S + 60 s: under the 8 minutes allowed.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=${OUT:-$ROOT/out}
mkdir -p "$OUT"
PY=${PYTHON:-$(command -v python || command -v python3)}
TOTAL_BUDGET_S=${TOTAL_BUDGET_S:-400}
START=$(date +%s)

export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0a}
export MAX_JOBS=${MAX_JOBS:-16}
export PYTHONUNBUFFERED=1
export PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1
export TRITON_CACHE_AUTOTUNING=1          # the bench reuses the tests' autotuning choices
export TRITON_DEFAULT_FP_FUSION=${TRITON_DEFAULT_FP_FUSION:-1}
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
  tail -n 20 "$OUT/$name.log" || true
  echo "== $name: exit $rc after ${dt}s"
  [ "$rc" -eq 0 ] || FAILED=1
  return "$rc"
}

nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true
stage env 30 "$PY" -c "import sys, torch, triton; print(sys.version); print('torch', torch.__version__, 'cuda', torch.version.cuda, 'gpu', torch.cuda.get_device_name() if torch.cuda.is_available() else None); print('triton', triton.__version__)" || true

if ! stage install "$(limit 240 210)" "$PY" -m pip install --no-build-isolation --no-deps -e .; then
  # the triton backend needs only the Python package: retry without the CUDA extension
  stage install_no_cuda "$(limit 120 180)" env AECOMP_NO_CUDA=1 \
    "$PY" -m pip install --no-build-isolation --no-deps -e . || true
fi
stage import 60 "$PY" -c "import aecomp, aecomp.kernels, aecomp.ops._triton; print(aecomp.available_backends())" || true

stage tests "$(limit 200 120)" "$PY" -m pytest -q -rs tests/test_triton_ops.py -k "gpu or trace_into" \
  --junitxml="$OUT/pytest_gpu.xml" -p no:cacheprovider || true

BUDGET=$(( TOTAL_BUDGET_S - $(elapsed) - 15 ))
if [ "$BUDGET" -ge 45 ]; then
  stage bench $(( BUDGET + 45 )) "$PY" -m benchmarks.bench_triton --out "$OUT" --budget-s "$BUDGET" || true
else
  echo "== bench skipped: only $(( BUDGET + 15 ))s of the ${TOTAL_BUDGET_S}s budget left"
  printf 'bench\tskipped\t0\n' >> "$STAGES"
  FAILED=1
fi

"$PY" - "$STAGES" "$OUT/gpu_check_summary.json" "$(elapsed)" <<'PYEOF' || true
import json, sys
rows = [line.rstrip("\n").split("\t") for line in open(sys.argv[1]) if line.strip()]
stages = [{"stage": n, "exit": (int(rc) if rc.lstrip("-").isdigit() else rc), "seconds": int(s)} for n, rc, s in rows]
json.dump({"stages": stages, "total_seconds": int(sys.argv[3])}, open(sys.argv[2], "w"), indent=1)
print(json.dumps(stages))
PYEOF
echo "gpu_check: done in $(elapsed)s; results in $OUT (failed stages: $FAILED)"
exit "$FAILED"
