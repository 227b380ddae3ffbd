"""Every Triton kernel configuration compiled ahead of time for Hopper (sm_90), without a GPU.

For each entry of the Hopper autotuning lists (``aecomp/kernels/_configs.py``) and each
streaming kernel, ``triton.compile(ASTSource(...), target=GPUTarget("cuda", 90, 32))`` must
succeed, the kernel must fit the 227 KB of shared memory an H100/H200 block can opt into, and
the tensor-core GEMMs (bfloat16, float16, tf32) must use Hopper's ``wgmma``. The compiles run
in worker processes with ``TRITON_INTERPRET`` removed, so this works whether or not the test
process itself runs Triton's interpreter. Results: ``pytest -s`` prints the table; set
``AECOMP_AOT_REPORT=/path/file.json`` to also write it as JSON.

Cold (empty Triton cache) this takes about a minute on two cores; Triton caches compiled
kernels (``~/.triton/cache``), so repeat runs take seconds.
"""
from __future__ import annotations

import concurrent.futures
import json
import multiprocessing
import os
import sys

import pytest

pytest.importorskip("triton")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _triton_aot_jobs as aot  # noqa: E402

JOBS = aot.aot_jobs()
TENSOR_CORE_KERNELS = ("linear_act_fwd_kernel", "linear_act_dgrad_kernel", "linear_act_wgrad_kernel")


@pytest.fixture(scope="module")
def aot_results():
    workers = max(1, min(4, os.cpu_count() or 1))
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx, initializer=aot.init_worker) as pool:
        results = list(pool.map(aot.compile_job, JOBS))
    return {r["label"]: r for r in results}


def _expects_wgmma(job) -> bool:
    if job["kernel"] not in TENSOR_CORE_KERNELS:
        return False
    return job["dtype"] != "float32" or job["constexprs"]["PRECISION"] == "tf32"


@pytest.mark.parametrize("job", JOBS, ids=[j["label"].replace(" ", "-") for j in JOBS])
def test_compiles_for_hopper(aot_results, job):
    r = aot_results[job["label"]]
    assert r["ok"], f"{job['label']} failed to compile for sm_90:\n{r['error']}"
    assert r["shared"] <= aot.HOPPER_SMEM_BYTES, (
        f"{job['label']} needs {r['shared']} bytes of shared memory; an H100/H200 block has {aot.HOPPER_SMEM_BYTES}")
    if _expects_wgmma(job):
        assert r["wgmma"], f"{job['label']}: the PTX has no wgmma (Hopper tensor-core GEMM expected)"


def test_every_config_is_compiled():
    """Each tile of the Hopper lists appears in the job list for each GEMM kernel, bf16 for all 16-bit tiles."""
    from aecomp.kernels import _configs

    labels = {j["label"] for j in JOBS}
    for kernel in ("fwd", "dgrad", "wgrad"):
        for esize, dtype in ((2, "bfloat16"), (4, "float32")):
            for t in _configs.gemm_tiles("hopper", esize):
                prefix = f"{kernel} {t.a}x{t.b}x{t.r} w{t.warps} s{t.stages} {dtype}"
                assert any(label.startswith(prefix) for label in labels), prefix


def test_report(aot_results, record_property):
    rows = [aot_results[j["label"]] for j in JOBS]
    record_property("aot_sm90", rows)
    lines = [f"{'kernel config':44s} {'shared B':>9s} {'wgmma':>5s} {'compile s':>9s}"]
    for r in rows:
        shared = r.get("shared", "FAIL")
        lines.append(f"{r['label']:44s} {shared!s:>9s} {str(r.get('wgmma', '-')):>5s} {r['seconds']:9.1f}")
    print("\nAOT compile for sm_90 (limit %d bytes of shared memory per block)\n%s" % (
        aot.HOPPER_SMEM_BYTES, "\n".join(lines)))
    path = os.environ.get("AECOMP_AOT_REPORT")
    if path:
        with open(path, "w") as f:
            json.dump({"target": list(aot.HOPPER), "smem_limit": aot.HOPPER_SMEM_BYTES, "results": rows}, f, indent=1)
