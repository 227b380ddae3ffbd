"""The CUDA C++ fused chains (``csrc/cuda/mlp.cu`` + ``csrc/cuda/ops_cuda_mlp.cpp``).

Without a GPU (each part skipped, with the reason, when its tool is missing):

* ``mlp.cu`` compiles with the bare ``nvcc`` for ``sm_90a`` and ``sm_80`` with the real build's
  flags (those of tests/test_cuda_compile.py); ``ptxas -v`` registers, spills, stack and shared
  memory are printed and recorded, and no kernel of mlp.cu may spill.
* The kernel source runs on the CPU emulator (``csrc/cuda/harness/emulate_mlp.cpp``): the fused
  chain forward, SIMT on odd chains (batch 1, 7, 33; widths 5-17-3, 20-9-20, 50-16-8-16-50,
  3-256-200-7, 300-16-270; relu / none / sigmoid; with and without biases; contiguous, padded
  and column-major x) and tensor-core (bf16/fp16, widths % 8 == 0: 24-16-8-40, 40-136-8-24,
  264-256-8 and the scaled autoencoder 200-128-64-32-64-128-200, batch 1 to 70; the path taken
  is checked), and the fused loss entry (mean / sum / none, with and without the bias
  gradient, batch split into partial sums) against a float64 reference, float32 / bfloat16 /
  float16, with cp.async copies landing late and early.
* The torch glue ``ops_cuda_mlp.cpp`` type-checks against the installed torch's CUDA headers,
  and runs on CPU tensors over the emulated kernels (``glue_mlp_on_cpu.cpp`` +
  ``glue_mlp_on_cpu_checks.py``): torch.ops.aecomp.mlp / mlp_mse_loss forward and every
  gradient through autograd against float64 torch, fused and per-layer paths, empty batch.

With a GPU and the cuda backend built: ``ops.mlp`` / ``ops.mlp_mse_loss`` with backend="cuda"
on the reference autoencoder 784-128-64-32-64-128-784 at batch 65536 against the float64
reference and against the triton backend, fused and per-layer (AECOMP_CUDA_MLP=layers) paths.

About 30-40 s of CPU here (the compiles run two at a time).
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import aecomp
from aecomp import ops

from .test_cuda_compile import (ARCH_MODE, ARCHS, GXX, NVCC, NVCC_FLAGS, _cuda_include, _glue_check_command,
                                _run, _short, parse_ptxas)

ROOT = Path(__file__).resolve().parents[1]
CUDA_DIR = ROOT / "csrc" / "cuda"
HARNESS = CUDA_DIR / "harness"
MLP_KERNELS = ("mlp_chain_kernel", "mlp_chain_tc_kernel", "mlp_loss_entry_kernel", "mlp_bias_finalize_kernel")


def _torch_link_flags():
    from torch.utils import cpp_extension

    torch_lib = Path(torch.__file__).resolve().parent / "lib"
    abi = int(getattr(torch._C, "_GLIBCXX_USE_CXX11_ABI", 1))
    includes = [f"-I{p}" for p in cpp_extension.include_paths()]
    return includes + [f"-D_GLIBCXX_USE_CXX11_ABI={abi}"], [f"-L{torch_lib}", "-ltorch", "-ltorch_cpu", "-lc10",
                                                              f"-Wl,-rpath,{torch_lib}"]


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    """Every compile of this file, two at a time: {job: (returncode, log)}."""
    out = tmp_path_factory.mktemp("cuda_mlp_build")
    jobs = {}
    if NVCC:
        for arch, gencode in ARCHS.items():
            jobs[arch] = [NVCC, *NVCC_FLAGS, f"-gencode={gencode}", *ARCH_MODE[arch], str(CUDA_DIR / "mlp.cu"), "-o",
                          str(out / f"mlp_{arch}.o")]
    if GXX:
        jobs["emulator"] = [GXX, "-std=c++17", "-O1", "-DAECOMP_EMULATE", f"-I{_cuda_include()}", "-Wall",
                            "-Wno-unknown-pragmas", str(HARNESS / "emulate_mlp.cpp"), "-o", str(out / "emulate_mlp")]
        if NVCC and aecomp.available_backends()["cpu"][0]:
            glue = _glue_check_command(out)
            if glue is not None:
                glue[-1] = str(CUDA_DIR / "ops_cuda_mlp.cpp")
                jobs["glue_syntax"] = glue
            flags, libs = _torch_link_flags()
            jobs["glue_emu"] = [GXX, "-std=c++20", "-O1", "-fPIC", "-shared", "-w", f"-I{HARNESS / 'fake_cuda_torch'}",
                                *flags, f"-I{_cuda_include()}", str(HARNESS / "glue_mlp_on_cpu.cpp"), *libs, "-o",
                                str(out / "glue_mlp_emu.so")]
    rank = {"glue_emu": 0, "glue_syntax": 1}  # the two longest first, so both workers finish together
    order = sorted(jobs, key=lambda j: rank.get(j, 2))
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {job: pool.submit(_run, ["nice", "-n", "5", *jobs[job]]) for job in order}
        results = {job: f.result() for job, f in futures.items()}
    return {"dir": out, "results": results}


requires_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc not found in PATH or /usr/local/cuda/bin")
requires_gxx = pytest.mark.skipif(GXX is None, reason="g++ not found")


@requires_nvcc
@pytest.mark.parametrize("arch", list(ARCHS))
def test_mlp_cu_compiles_without_spills(builds, arch, record_property):
    rc, log = builds["results"][arch]
    assert rc == 0, f"nvcc failed on mlp.cu for {arch}:\n{log[-6000:]}"
    kernels = [k for k in parse_ptxas(log) if any(n in k["name"] for n in MLP_KERNELS)]
    # SIMT chain, loss entry, finalize x 3 dtypes; tensor-core chain x 2 (bf16, fp16)
    assert len(kernels) == 11, [k["name"] for k in kernels]
    print(f"\nptxas {arch} (mlp.cu):")
    for k in sorted(kernels, key=lambda k: k["name"]):
        print(f"  {k['registers']:>4} regs {k['spill_stores']:>4}/{k['spill_loads']:<4} spill "
              f"{k['stack']:>4} stack {k['static_smem']:>6} smem  {_short(k['name'])[:120]}")
    record_property(f"ptxas_mlp_{arch}", json.dumps(
        [{key: k[key] for key in ("name", "registers", "spill_stores", "spill_loads", "stack", "static_smem")}
         for k in kernels]))
    spilling = [_short(k["name"]) for k in kernels if k["spill_stores"] or k["spill_loads"] or k["stack"]]
    assert not spilling, f"mlp.cu kernels spill on {arch}: {spilling}"
    # launch bounds of 256 threads: at most 255 registers; the chain kernel should leave room
    # for two blocks per SM (<= 128 registers)
    chain = [k for k in kernels if "mlp_chain" in k["name"]]
    assert all(k["registers"] <= 128 for k in chain), [(k["name"], k["registers"]) for k in chain]


@requires_gxx
@pytest.mark.parametrize("mode", ["late-copies", "early-copies"])
def test_mlp_kernels_on_cpu_emulator(builds, mode, _fresh_seed):
    rc, log = builds["results"]["emulator"]
    assert rc == 0, f"the emulator harness did not compile:\n{log[-6000:]}"
    args = ["--seed", str(_fresh_seed)] + (["--early"] if mode == "early-copies" else [])
    rc, out = _run([str(builds["dir"] / "emulate_mlp"), *args], timeout=300)
    print(out[-2000:])
    failures = [line for line in out.splitlines() if line.startswith(("FAIL", "EMULATOR FAULT"))]
    assert rc == 0 and not failures, (f"emulated mlp kernels failed (rc={rc}):\n" + "\n".join(failures[:20])
                                      + out[-2000:])
    assert "checks, 0 failures" in out and int(out.split(" checks")[0].split()[-1]) > 300, out[-2000:]


@requires_gxx
@requires_nvcc
def test_mlp_glue_type_checks(builds):
    if "glue_syntax" not in builds["results"]:
        pytest.skip("torch or aecomp._C is not available")
    rc, log = builds["results"]["glue_syntax"]
    ours = [line for line in log.splitlines() if "csrc/cuda" in line and ("error" in line or "warning" in line)]
    assert rc == 0 and not ours, log[-6000:]


@requires_gxx
@requires_nvcc
def test_mlp_glue_on_cpu_emulator(builds, _fresh_seed):
    if "glue_emu" not in builds["results"]:
        pytest.skip("aecomp._C is not built: pip install --no-build-isolation -e .")
    rc, log = builds["results"]["glue_emu"]
    assert rc == 0, log[-6000:]
    env = dict(os.environ, AECOMP_TEST_SEED=str(_fresh_seed),
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("AECOMP_CUDA_GEMM", None)
    env.pop("AECOMP_CUDA_MLP", None)
    run = subprocess.run([sys.executable, str(HARNESS / "glue_mlp_on_cpu_checks.py"),
                          str(builds["dir"] / "glue_mlp_emu.so")], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, timeout=300)
    assert run.returncode == 0 and "ALL MLP GLUE CHECKS PASSED" in run.stdout, run.stdout[-6000:]


# ------------------------------------------------------------------------ GPU
HAS_GPU = torch.cuda.is_available()
CUDA_OK, CUDA_WHY = aecomp.available_backends()["cuda"] if HAS_GPU else (False, "no GPU")
TRITON_OK = HAS_GPU and aecomp.available_backends().get("triton", (False, ""))[0]
AE_DIMS = (784, 128, 64, 32, 64, 128, 784)
AE_ACTS = ("relu", "relu", "none", "relu", "relu", "sigmoid")
# Relative to the largest magnitude of the reference (as test_triton_mlp.py): float32 is
# exact-fp32 SIMT (1e-4 over a 6-layer chain), the half types compound one rounding per layer.
TOL = {torch.float32: 1e-4, torch.bfloat16: 4e-2, torch.float16: 8e-3}


def gpu(fn):
    fn = pytest.mark.skipif(HAS_GPU and not CUDA_OK, reason=f"the cuda backend is not available: {CUDA_WHY}")(fn)
    return pytest.mark.skipif(not HAS_GPU, reason="needs a CUDA GPU (torch.cuda.is_available() is False)")(fn)


def _ae(dtype, batch=65536):
    x = torch.rand(batch, AE_DIMS[0], device="cuda").to(dtype)
    ws = [(torch.randn(n, k, device="cuda") / math.sqrt(k)).to(dtype) for k, n in zip(AE_DIMS[:-1], AE_DIMS[1:])]
    bs = [(0.1 * torch.randn(n, device="cuda")).to(dtype) for n in AE_DIMS[1:]]
    return x, ws, bs


def _ref64(x, ws, bs):
    h = x.double()
    for w, b, a in zip(ws, bs, AE_ACTS):
        h = {"none": lambda t: t, "relu": torch.relu, "sigmoid": torch.sigmoid}[a](F.linear(h, w.double(), b.double()))
    return h


def _close(got, want, dtype, what):
    scale = want.abs().max().item() + 1e-30
    torch.testing.assert_close(got.double() / scale, want.double() / scale, rtol=TOL[dtype], atol=TOL[dtype],
                               msg=lambda m: f"{what}: {m}")


@gpu
@pytest.mark.parametrize("path", ["fused", "layers"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["f32", "bf16", "f16"])
def test_autoencoder_matches_reference_and_triton(dtype, path, monkeypatch):
    if path == "layers":
        monkeypatch.setenv("AECOMP_CUDA_MLP", "layers")
    else:
        monkeypatch.delenv("AECOMP_CUDA_MLP", raising=False)
    torch.manual_seed(0)
    x, ws, bs = _ae(dtype)
    with torch.inference_mode():
        y = ops.mlp(x, ws, bs, AE_ACTS, backend="cuda")
        _close(y, _ref64(x, ws, bs), dtype, f"mlp forward {dtype} {path}")
        if TRITON_OK:
            _close(y, ops.mlp(x, ws, bs, AE_ACTS, backend="triton"), dtype, f"cuda vs triton {dtype} {path}")
    # the loss and every gradient, through autograd and the fused loss entry
    wl = [w.detach().clone().requires_grad_(True) for w in ws]
    bl = [b.detach().clone().requires_grad_(True) for b in bs]
    loss = ops.mlp_mse_loss(x, wl, bl, AE_ACTS, None, "mean", backend="cuda")
    loss.backward()
    w64 = [w.detach().double().requires_grad_(True) for w in ws]
    b64 = [b.detach().double().requires_grad_(True) for b in bs]
    ref = F.mse_loss(_ref64(x, w64, b64), x.double())
    ref.backward()
    _close(loss.detach(), ref.detach(), dtype, f"mlp_mse_loss {dtype} {path}")
    for i in range(len(ws)):
        _close(wl[i].grad, w64[i].grad, dtype, f"dW{i} {dtype} {path}")
        _close(bl[i].grad, b64[i].grad, dtype, f"db{i} {dtype} {path}")
    if TRITON_OK:
        wt = [w.detach().clone().requires_grad_(True) for w in ws]
        bt = [b.detach().clone().requires_grad_(True) for b in bs]
        lt = ops.mlp_mse_loss(x, wt, bt, AE_ACTS, None, "mean", backend="triton")
        lt.backward()
        _close(loss.detach(), lt.detach(), dtype, f"cuda vs triton loss {dtype} {path}")
        for i in range(len(ws)):
            _close(wl[i].grad, wt[i].grad, dtype, f"cuda vs triton dW{i} {dtype} {path}")


@gpu
def test_fused_and_per_layer_forward_agree_and_are_deterministic(monkeypatch):
    torch.manual_seed(1)
    x, ws, bs = _ae(torch.bfloat16, batch=4099)
    monkeypatch.delenv("AECOMP_CUDA_MLP", raising=False)
    a = ops.mlp(x, ws, bs, AE_ACTS, backend="cuda")
    assert torch.equal(a, ops.mlp(x, ws, bs, AE_ACTS, backend="cuda"))
    monkeypatch.setenv("AECOMP_CUDA_MLP", "layers")
    b = ops.mlp(x, ws, bs, AE_ACTS, backend="cuda")
    _close(a, b, torch.bfloat16, "fused vs per-layer")
