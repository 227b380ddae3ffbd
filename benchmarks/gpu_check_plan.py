"""What ``benchmarks/gpu_check.sh`` runs, in one place: its GPU test lists, its bench arguments,
and the compile plan its ``--dry-run`` reports.

GPU tests are found, not listed by hand: every ``test_*`` function under ``tests/`` that skips
without a GPU -- decorated with a ``gpu`` marker or a ``skipif(not torch.cuda.is_available())`` /
``skipif(not HAS_GPU)``, or starting with ``if not torch.cuda.is_available(): pytest.skip(...)``
-- found by reading the files (``ast``, no import), so a new GPU test is in the check without an
edit here. They run in two groups:

* ``triton``: the files ``tests/test_triton_*.py``; they need only the package (Triton kernels, no
  ``aecomp._C``), so they run while the C++/CUDA extension builds;
* ``cuda``: every other GPU test (the cuda backend, the packed op, the default models, the CUDA
  graph step, backend selection), after the build.

    python -m benchmarks.gpu_check_plan --tests triton     # node ids, one a line
    python -m benchmarks.gpu_check_plan --bench-args       # the bench stage's runner arguments
    python -m benchmarks.gpu_check_plan --out plan.json    # the --dry-run plan (compiles, tests)

The bench stage runs ``benchmarks.run`` with BENCH_ARGS: the training step (batch 64, 4096,
65536) and the packed inference (batch 1, 256, 65536), bfloat16 and float32, aecomp's backends
against eager and ``torch.compile``, plus the matmul and copy ceilings (the GEMM fraction). Not
``mode="max-autotune"``: the runner estimates it at 3x a default compile (120 s per training-step
case, a guess: it benchmarks every GEMM's candidate kernels), and six such cases do not fit the
one-call budget beside the build, the tests and the default compiles; measure it with
``python -m benchmarks.run --device cuda --only train_step --baselines compile-max-autotune`` on a
call of its own (the build carried). Triton tiles are pinned (``AECOMP_TRITON_AUTOTUNE=off``: one compile per kernel
and shape instead of every tile), and the run row records it.
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

ROOT = Path(__file__).resolve().parents[1]
TESTS_DIR = ROOT / "tests"
GROUPS = ("triton", "cuda")

BENCH_ARGS = ["--device", "cuda", "--only", "train_step,inference", "--baselines", "eager,compile",
              "--dtypes", "bfloat16,float32", "--quick"]

# output extents (a, b) of the GEMMs the GPU tests run: the six autoencoder layers at batch
# 65536 and the 4096^3 layer (fwd: M x N, dgrad: M x K, wgrad: N x K)
_LAYERS = [(784, 128), (128, 64), (64, 32), (32, 64), (64, 128), (128, 784), (4096, 4096)]


# ------------------------------------------------------------------------------------------------
# the GPU tests
# ------------------------------------------------------------------------------------------------
def _skips_without_gpu(text: str) -> bool:
    return "not torch.cuda.is_available()" in text or "not HAS_GPU" in text


def _is_gpu_test(node: ast.FunctionDef, src: str) -> bool:
    for dec in node.decorator_list:
        text = ast.get_source_segment(src, dec) or ""
        if text == "gpu" or (_skips_without_gpu(text) and "skipif" in text):
            return True
    first = node.body[0] if node.body else None
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and len(node.body) > 1:
        first = node.body[1]  # after the docstring
    if isinstance(first, ast.If) and _skips_without_gpu(ast.get_source_segment(src, first.test) or ""):
        return any("pytest.skip" in (ast.get_source_segment(src, st) or "") for st in first.body)
    return False


def gpu_tests(tests_dir: Path = TESTS_DIR) -> Dict[str, List[str]]:
    """``{"triton": [node ids], "cuda": [node ids]}`` of every GPU test under ``tests_dir``; in each
    group the tests that start a subprocess (a fresh Python, CUDA set up again: the slowest) first,
    so parallel workers start them early."""
    found: Dict[str, List[tuple]] = {g: [] for g in GROUPS}
    for path in sorted(tests_dir.glob("test_*.py")):
        src = path.read_text()
        rel = path.relative_to(tests_dir.parent).as_posix()
        group = "triton" if path.name.startswith("test_triton_") else "cuda"
        for node in ast.parse(src).body:
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test") and _is_gpu_test(node, src):
                slow = "subprocess." in (ast.get_source_segment(src, node) or "")
                found[group].append((not slow, f"{rel}::{node.name}"))
    return {g: [nid for _, nid in sorted(items, key=lambda t: t[0])] for g, items in found.items()}


# ------------------------------------------------------------------------------------------------
# compiles of the test stage
# ------------------------------------------------------------------------------------------------
def _gemm_counts(pinned: bool) -> dict:
    from aecomp.kernels import _configs

    old = os.environ.get("AECOMP_TRITON_AUTOTUNE")
    os.environ["AECOMP_TRITON_AUTOTUNE"] = "off" if pinned else "on"
    try:
        out = {}
        for kernel, dims in (("fwd", ("M", "N")), ("dgrad", ("M", "K")), ("wgrad", ("N", "K"))):
            prune = _configs.make_prune(kernel, dims)
            for esize, dtype in ((2, "bf16"), (4, "fp32")):
                configs = _configs.gemm_configs(kernel, "hopper", esize)
                n = 0
                for k, nn in _LAYERS:
                    m = 4096 if k == 4096 else 65536
                    sizes = {"M": m, "N": nn, "K": k}
                    n += len(prune(configs, sizes))
                out[f"{kernel} {dtype}"] = n
        for esize, dtype in ((2, "bf16"), (4, "fp32")):
            out[f"chain fwd+bwd {dtype}"] = 2 * len(_configs.chain_configs("hopper", esize, 128))
        return out
    finally:
        if old is None:
            os.environ.pop("AECOMP_TRITON_AUTOTUNE", None)
        else:
            os.environ["AECOMP_TRITON_AUTOTUNE"] = old


def _collected(node_ids: List[str]) -> int:
    """How many test items pytest collects from ``node_ids`` (a missing id fails the count)."""
    run = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                          *node_ids], cwd=ROOT, capture_output=True, text=True, timeout=300)
    if run.returncode != 0:
        raise RuntimeError(f"pytest --collect-only failed:\n{run.stdout[-3000:]}{run.stderr[-2000:]}")
    return sum(1 for line in run.stdout.splitlines() if "::" in line)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tests", choices=GROUPS, help="print that group's GPU test node ids, one a line")
    p.add_argument("--bench-args", action="store_true", help="print the bench stage's runner arguments")
    p.add_argument("--out", help="write the --dry-run plan (compile counts, GPU tests) as JSON here")
    p.add_argument("--no-collect", action="store_true", help="skip counting the collected test items")
    args = p.parse_args(argv)
    if args.tests:
        print("\n".join(gpu_tests()[args.tests]))
        return 0
    if args.bench_args:
        print(" ".join(BENCH_ARGS))
        return 0
    if not args.out:
        p.error("give --tests GROUP, --bench-args or --out FILE")
    full, pinned = _gemm_counts(False), _gemm_counts(True)
    tests = gpu_tests()
    plan = {
        "compiles_per_layer_set": {"full_autotune": full, "pinned": pinned,
                                   "total_full": sum(full.values()), "total_pinned": sum(pinned.values())},
        "note": "per dtype, for the seven layer shapes of the GPU tests; each is one Triton compile "
                "(~0.8-7 s on the device's CPUs), in parallel across pytest workers",
        "gpu_tests": tests,
        "bench_args": BENCH_ARGS,
    }
    if not args.no_collect:
        plan["gpu_test_items"] = {g: _collected(ids) for g, ids in tests.items()}
    with open(args.out, "w") as f:
        json.dump(plan, f, indent=1)
    print(json.dumps(plan, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
