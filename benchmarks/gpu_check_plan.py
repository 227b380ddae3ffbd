"""The compile plan of benchmarks/gpu_check.sh's test stage (``gpu_check.sh --dry-run``).

Without a GPU nothing compiles, so the plan is counted from the configuration lists: for each
autotuned Triton kernel on Hopper, the tiles one autotuning key compiles with full autotuning
(every tile the early prune keeps, at the GPU tests' typical shapes) and with
``AECOMP_TRITON_AUTOTUNE=off`` (the test stage: one), and the GPU test items pytest collects.

    python -m benchmarks.gpu_check_plan --out plan.json
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

# output extents (a, b) of the GEMMs the GPU tests run: the six autoencoder layers at batch
# 65536 and the 4096^3 layer (fwd: M x N, dgrad: M x K, wgrad: N x K)
_LAYERS = [(784, 128), (128, 64), (64, 32), (32, 64), (64, 128), (128, 784), (4096, 4096)]


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


def _collected(tests) -> int:
    run = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *tests],
                         capture_output=True, text=True, timeout=300)
    return sum(1 for line in run.stdout.splitlines() if "::" in line)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--no-collect", action="store_true", help="skip counting the collected GPU tests")
    args = p.parse_args(argv)
    full, pinned = _gemm_counts(False), _gemm_counts(True)
    plan = {
        "compiles_per_layer_set": {"full_autotune": full, "pinned": pinned,
                                   "total_full": sum(full.values()), "total_pinned": sum(pinned.values())},
        "note": "per dtype, for the seven layer shapes of the GPU tests; each is one Triton compile "
                "(~0.8-7 s on the device's CPUs), in parallel across pytest workers",
    }
    if not args.no_collect:
        plan["gpu_test_items"] = _collected(["tests/test_triton_ops.py", "tests/test_triton_mlp.py",
                                             "tests/test_cuda_ops.py", "tests/test_cuda_mlp.py",
                                             "tests/test_fused_step.py", "-k",
                                             "gpu or cuda_ops or cuda_mlp or fused_step"])
    with open(args.out, "w") as f:
        json.dump(plan, f, indent=1)
    print(json.dumps(plan, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
