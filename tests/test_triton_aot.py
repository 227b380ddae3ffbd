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
TENSOR_CORE_KERNELS = ("linear_act_fwd_kernel", "linear_act_dgrad_kernel", "linear_act_wgrad_kernel",
                       "wgrad_optim_kernel")
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
    if (_is_chain(job) and job["dtype"] != "float32" or job["kernel"] in TENSOR_CORE_KERNELS) and "stack_bytes" in r:
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
            if _configs.chain_max_width("hopper", esize, "ieee") < widest:
                continue  # not fused under this triton (float32 ieee below 3.9)
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
            for t in _configs.gemm_tiles("hopper", esize, kernel):
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


# ---------------------------------------------------------------- the GPU machine's triton
# The GPU machine runs triton 3.6 (this venv may have a newer one, whose compiler allocates
# registers differently: 3.6 spilled where 3.9 did not). scripts/setup.sh makes .venv-triton36
# (triton 3.6, torch and aecomp from .venv); every job above is compiled again under it, in one
# subprocess running tests/_triton_aot_jobs.py, with the same checks. AECOMP_TRITON36_PYTHON
# names another interpreter. About 3 minutes cold on two cores, seconds with Triton's cache.
DEVICE_TRITON = "3.6"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _device_triton_python():
    path = os.environ.get("AECOMP_TRITON36_PYTHON") or os.path.join(ROOT, ".venv-triton36", "bin", "python")
    return path if os.path.exists(path) else None


@pytest.fixture(scope="module")
def device_aot(tmp_path_factory):
    import subprocess

    py = _device_triton_python()
    if py is None:
        pytest.skip("no .venv-triton36 (scripts/setup.sh makes it; AECOMP_NO_TRITON36=1 skipped it)")
    out = tmp_path_factory.mktemp("aot36") / "aot.json"
    # the device venv's own triton must win: no interpreter flag, and no PYTHONPATH/PYTHONHOME that an
    # earlier test (or a library it started, e.g. Ray) left in os.environ pointing at the main venv
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "PYTHONPATH", "PYTHONHOME")}
    run = subprocess.run([py, os.path.join(ROOT, "tests", "_triton_aot_jobs.py"), "--out", str(out)], cwd=ROOT,
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=1200)
    assert run.returncode == 0, run.stdout[-4000:]
    data = json.loads(out.read_text())
    assert data["triton"].startswith(DEVICE_TRITON), data["triton"]
    return {r["label"]: r for r in data["results"]}, {j["label"]: j for j in data["jobs"]}


def test_compiles_under_the_device_triton_version(device_aot):
    results, jobs = device_aot
    assert set(results) == set(jobs)
    # the same jobs as here, less the float32 "ieee" chains that triton runs per layer
    skipped = {j["label"] for j in JOBS} - set(jobs)
    assert set(jobs) <= {j["label"] for j in JOBS}
    assert all(label.startswith("chain") and "float32 ieee" in label for label in skipped), skipped
    bad = []
    for label, r in results.items():
        job = jobs[label]
        if not r["ok"]:
            bad.append(f"{label}: does not compile:\n{r['error'][-1500:]}")
            continue
        if r["shared"] > aot.HOPPER_SMEM_BYTES:
            bad.append(f"{label}: {r['shared']} bytes of shared memory")
        if _expects_wgmma(job) and not r["wgmma"]:
            bad.append(f"{label}: no wgmma")
        if (job["kernel"] in TENSOR_CORE_KERNELS or _is_chain(job)) and r.get("stack_bytes"):
            bad.append(f"{label}: spills {r['stack_bytes']} stack bytes")
    print("\n".join(f"{k:58s} {r.get('shared')!s:>7s} {r.get('registers')!s:>4s} {r.get('stack_bytes')!s:>5s}"
                    for k, r in results.items()))
    assert not bad, f"under triton {DEVICE_TRITON}:\n" + "\n".join(bad)
