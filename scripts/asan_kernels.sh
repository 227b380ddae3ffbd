#!/usr/bin/env bash
# The C++ kernel test set under AddressSanitizer + UndefinedBehaviorSanitizer.
#
#   bash scripts/asan_kernels.sh            # build (incremental after the first run) and test
#   bash scripts/asan_kernels.sh -k packed  # extra arguments go to pytest
#   AECOMP_ASAN_ISA=amx bash scripts/asan_kernels.sh -k "bf16 or brgemm"   # the matrix-engine
#       paths (brgemm runs from the avx512 level up): their packing, epilogues and checks
#
# What it does:
#  1. copies this checkout's files (tracked and untracked, not ignored) to build/asan/tree, so
#     the sanitized extension never replaces the normal one in aecomp/;
#  2. builds aecomp._C there from csrc/*.cpp and csrc/cpu/*.cpp with
#     -fsanitize=address,undefined (-O1 -g, no frame-pointer omission; UBSan's vptr check off:
#     torch's classes are not instrumented), every UBSan report fatal;
#  3. runs the kernel tests there with libasan preloaded (python itself is not instrumented) and
#     AECOMP_CPU_ISA=generic: the portable loops read element by element, so an out-of-bounds
#     read at a tile edge is an ASan report, while the AVX2/AVX-512 paths use masked loads that
#     ASan does not see. Leak detection is off (the interpreter's own allocations would drown
#     the report). Any ASan or UBSan report aborts the test process and is written to
#     build/asan/tree/sanitizer.<pid> (pytest would swallow it on stderr); the script prints it
#     and fails.
# Time (2 shared vCPUs, Xeon with AVX-512): the first build ~6 min, a rebuild after a change of
# one file ~5-60 s, the tests ~2 min.
# The tests: the CPU kernels and their ops (forward, backward, chains, MSE, packed inference, the
# fused training step and its contract, second order, ReLU's NaN rule, the ISA dispatch) and
# tests/test_op_arguments.py, which calls every registered op and entry point with each kind of
# inconsistent argument. The Triton tests (their kernels are python under the interpreter, and
# slow there) are deselected by name.
#
# Needs: gcc/g++ with libasan and libubsan (gcc 12 ships both), ./.venv from scripts/setup.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PY=${PYTHON:-$ROOT/.venv/bin/python}
TREE=$ROOT/build/asan/tree
start=$(date +%s)

mkdir -p "$TREE"
# a fresh copy of the sources each run (timestamps kept, so the build below is incremental)
rm -rf "$TREE/aecomp" "$TREE/csrc" "$TREE/kernels" "$TREE/tests"
git ls-files -co --exclude-standard -z | xargs -0 cp -p --parents -t "$TREE"
ln -sfn ../kernels "$TREE/aecomp/kernels"  # aecomp.kernels resolves inside the copy, not to this checkout

LIBASAN=$(g++ -print-file-name=libasan.so)
[ -f "$LIBASAN" ] || { echo "asan_kernels.sh: libasan not found (g++ -print-file-name=libasan.so gave $LIBASAN)" >&2; exit 2; }
# libstdc++ preloaded too: python does not link it, and ASan's __cxa_throw interceptor must find
# the real one at start-up (else the first C++ exception, e.g. an argument error, aborts)
PRELOAD="$LIBASAN $(g++ -print-file-name=libstdc++.so)"

echo "== building the sanitized extension in $TREE (log: $TREE/build.log)"
(cd "$TREE" && MAX_JOBS=${MAX_JOBS:-2} "$PY" - > "$TREE/build.log" 2>&1 <<'EOF'
import glob
from setuptools import setup
from torch.utils.cpp_extension import BuildExtension, CppExtension

flags = ["-O1", "-g", "-fno-omit-frame-pointer", "-fsanitize=address,undefined", "-fno-sanitize=vptr",
         "-fno-sanitize-recover=undefined"]
ext = CppExtension("aecomp._C", sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp")),
                   extra_compile_args={"cxx": flags}, extra_link_args=["-fsanitize=address,undefined"])
setup(name="aecomp-asan", ext_modules=[ext], script_args=["-q", "build_ext", "--inplace", "--build-temp", "build/temp"],
      cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)})
EOF
) || { tail -40 "$TREE/build.log" >&2; echo "asan_kernels.sh: the sanitized build failed" >&2; exit 2; }
built=$(date +%s)
ISA=${AECOMP_ASAN_ISA:-generic}
echo "== built in $((built - start)) s; running the kernel tests under ASan + UBSan (AECOMP_CPU_ISA=$ISA)"

TESTS=(tests/test_op_arguments.py tests/test_microkernel.py tests/test_linear_act.py tests/test_mse.py
       tests/test_mlp.py tests/test_packed.py tests/test_packed_ops.py tests/test_fused_optim.py
       tests/test_fused_step.py tests/test_fused_step_contract.py tests/test_errors.py tests/test_double_backward.py
       tests/test_relu_nan.py tests/test_op_registration.py tests/test_cpu_isa.py tests/test_brgemm.py
       tests/test_mlp_bf16.py tests/test_train_bf16.py tests/test_packed_brgemm.py)
cd "$TREE"
# Reports go to files (pytest captures stderr, and a process that a report ends cannot replay it).
rm -f "$TREE"/sanitizer.*
status=0
env LD_PRELOAD="$PRELOAD" \
    ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:halt_on_error=1:detect_odr_violation=0:alloc_dealloc_mismatch=0:log_path=$TREE/sanitizer" \
    UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:log_path=$TREE/sanitizer" \
    AECOMP_CPU_ISA=$ISA PYTHONDONTWRITEBYTECODE=1 \
    "$PY" -m pytest -q -p no:cacheprovider -x -k "not triton and not fused_chain_kernel" "${TESTS[@]}" "$@" || status=$?
end=$(date +%s)
if compgen -G "$TREE/sanitizer.*" > /dev/null; then
  cat "$TREE"/sanitizer.* >&2
  [ "$status" != 0 ] || status=1
fi
if [ "$status" = 0 ]; then
  echo "== asan_kernels.sh: clean (no ASan/UBSan report); build $((built - start)) s, tests $((end - built)) s"
else
  echo "== asan_kernels.sh: FAILED (exit $status; a sanitizer report, if any, is printed above)" >&2
fi
exit "$status"
