"""Every Triton kernel configuration compiled ahead of time for Hopper (sm_90), without a GPU.

For each entry of the Hopper autotuning lists (``aecomp/kernels/_configs.py``) and each
streaming kernel, ``triton.compile(ASTSource(...), target=GPUTarget("cuda", 90, 32))`` must
succeed, the kernel must fit the 227 KB of shared memory an H100/H200 block can opt into, and
the tensor-core GEMMs (bfloat16, float16, tf32) must use Hopper's ``wgmma``. The fused-chain
kernels (``aecomp/kernels/mlp.py``) are compiled for the reference autoencoder 784-128-64-32-64-
128-784 as one kernel (bfloat16 and float32), its encoder and decoder, and a chain at the 16-bit
on-chip width limit (256); their 16-bit tiles must also compile without register spills (the
cubin's stack size, from Triton's ``cuobjdump``), and (with ``AECOMP_AOT_ALL=1``, which
compiles every float32 chain tile: slow) each float32 chain kernel must have at least one
spill-free tile for autotuning to pick. The compiles run
in worker processes with ``TRITON_INTERPRET`` removed, so this works whether or not the test
process itself runs Triton's interpreter. Results: ``pytest -s`` prints the table; set
``AECOMP_AOT_REPORT=/path/file.json`` to also write it as JSON.

Cold (empty Triton cache) this takes about 100 s on two cores (the chain kernels are about
half of it; over three minutes with ``AECOMP_AOT_ALL=1``); Triton caches compiled kernels
(``~/.triton/cache``), so repeat runs take seconds.
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
CHAIN_KERNEL_PREFIXES = ("mlp_fwd_", "mlp_bwd_")


def _is_chain(job) -> bool:
    return job["kernel"].startswith(CHAIN_KERNEL_PREFIXES)


@pytest.fixture(scope="module")
def aot_results():
    workers = max(1, min(4, os.cpu_count() or 1))
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx, initializer=aot.init_worker) as pool:
        results = list(pool.map(aot.compile_job, JOBS))
    return {r["label"]: r for r in results}


def _expects_wgmma(job) -> bool:
    if job["kernel"] not in TENSOR_CORE_KERNELS and not _is_chain(job):
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
    if _is_chain(job) and job["dtype"] != "float32" and "stack_bytes" in r:
        assert r["stack_bytes"] == 0, f"{job['label']}: spills registers ({r['stack_bytes']} stack bytes)"


def test_float32_chain_kernels_have_a_spill_free_tile(aot_results):
    if not aot.ALL_CHAIN_TILES:
        pytest.skip("only the first float32 chain tile is compiled; set AECOMP_AOT_ALL=1 to compile all")
    groups = {}
    for job in JOBS:
        if _is_chain(job) and job["dtype"] == "float32" and job["constexprs"]["PRECISION"] == "ieee":
            r = aot_results[job["label"]]
            if "stack_bytes" not in r:
                pytest.skip("cuobjdump gave no resource usage")
            name = job["label"].split(" ")[2]
            groups.setdefault((job["kernel"], name), []).append(r["stack_bytes"])
    assert groups
    for key, stacks in groups.items():
        assert min(stacks) == 0, f"{key}: every float32 tile spills ({stacks} stack bytes)"


def test_every_chain_tile_is_compiled():
    """Every Hopper chain tile of the reference autoencoder's classes (bf16 "narrow", bf16
    "wide", and fp32 "narrow": the first tile, or all with AECOMP_AOT_ALL=1) is compiled,
    forward and backward."""
    from aecomp.kernels import _configs

    labels = {j["label"] for j in JOBS}
    for kind in ("fwd", "bwd"):
        for name, esize, dtype, widest in (("autoencoder", 2, "bfloat16", 128), ("autoencoder", 4, "float32", 128),
                                           ("wide256", 2, "bfloat16", 256)):
            tiles = _configs.chain_tiles("hopper", esize, widest)
            if esize == 4 and not aot.ALL_CHAIN_TILES:
                tiles = tiles[:1]
            for t in tiles:
                prefix = f"chain {kind} {name} {t.m}x{t.k}x{t.n} w{t.warps} s{t.stages} {dtype}"
                assert any(label.startswith(prefix) for label in labels), prefix


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
    lines = [f"{'kernel config':58s} {'shared B':>9s} {'wgmma':>5s} {'regs':>5s} {'stack B':>7s} {'compile s':>9s}"]
    for r in rows:
        shared = r.get("shared", "FAIL")
        lines.append(f"{r['label']:58s} {shared!s:>9s} {str(r.get('wgmma_count', '-')):>5s} "
                     f"{str(r.get('registers', '-')):>5s} {str(r.get('stack_bytes', '-')):>7s} {r['seconds']:9.1f}")
    print("\nAOT compile for sm_90 (limit %d bytes of shared memory per block)\n%s" % (
        aot.HOPPER_SMEM_BYTES, "\n".join(lines)))
    path = os.environ.get("AECOMP_AOT_REPORT")
    if path:
        with open(path, "w") as f:
            json.dump({"target": list(aot.HOPPER), "smem_limit": aot.HOPPER_SMEM_BYTES, "results": rows}, f, indent=1)
