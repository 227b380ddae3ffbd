"""The CUDA kernels, checked without a GPU.

* Every ``csrc/cuda/*.cu`` compiles with the bare ``nvcc`` (torch-free) for ``sm_90a`` and
  ``sm_80``; ``ptxas -v`` gives registers, spills, stack and static shared memory per kernel,
  which are printed and recorded (``record_property``), and a GEMM kernel that spills fails.
* The kernel source runs on the CPU emulator (``csrc/cuda/harness/emulator.h``): the harness
  ``emulate_kernels.cpp`` compiles ``linear_act.cu`` and ``mse.cu`` as plain C++ and checks
  forward, dgrad, wgrad + bias grad and MSE against a float64 reference, bit for bit on data
  chosen so that fp32 sums are exact, with shared memory poisoned and operands ending at
  guard pages. It runs twice: cp.async copies landing at the wait (catches reading a stage too
  early) and at issue (catches overwriting a stage still being read).
* The torch glue ``csrc/cuda/ops_cuda.cpp`` is type-checked (``g++ -fsyntax-only``) against the
  installed torch headers, with stand-ins for the cuBLAS / cuSPARSE / cuSOLVER headers that a
  CPU wheel's ``ATen/cuda/CUDAContext.h`` includes but does not ship.
* The emulator itself (``harness/emulator_rules.cpp``): for each hardware / runtime rule it
  models (dynamic shared memory opt-in per kernel and device, the 227 KiB maximum, static shared
  memory, grid and block limits, the runtime's last error, cp.async and ldmatrix alignment,
  barriers and warp collectives, uninitialised shared memory) a correct use passes and a
  planted bug is caught; the real ``device_info.cu`` runs there.

Skipped, with the reason, when nvcc (PATH or /usr/local/cuda/bin) or g++ is missing. About a
minute of CPU on two cores; the compiles run two at a time.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CUDA_DIR = ROOT / "csrc" / "cuda"
HARNESS = CUDA_DIR / "harness" / "emulate_kernels.cpp"
RULES = CUDA_DIR / "harness" / "emulator_rules.cpp"
ARCHS = {"sm_90a": "arch=compute_90a,code=sm_90a", "sm_80": "arch=compute_80,code=sm_80"}
# The flags of the real build: setup.py's plus what torch's CUDAExtension adds (no implicit
# half/bfloat16 conversions or operators; -std=c++20 there). sm_90a compiles the whole file
# (-c) in C++20; sm_80 only the device code (-cubin: the host code is the same) in C++17.
NVCC_FLAGS = ["-O3", "--expt-relaxed-constexpr", "-lineinfo", "-Xptxas", "-v",
              "-D__CUDA_NO_HALF_OPERATORS__", "-D__CUDA_NO_HALF_CONVERSIONS__",
              "-D__CUDA_NO_BFLOAT16_CONVERSIONS__", "-D__CUDA_NO_HALF2_OPERATORS__"]
ARCH_MODE = {"sm_90a": ["-std=c++20", "-c"], "sm_80": ["-std=c++17", "-cubin"]}
GEMM_KERNELS = ("tc_gemm_kernel", "simt_gemm_kernel")
# Instances the launchers use: tensor cores 2 dtypes x 2 tile configs x (forward, dgrad and
# wgrad each plain or gated: 5); SIMT 3 dtypes x 2 configs; finalize and column sums x 3.
EXPECTED_KERNELS = {"tc_gemm_kernel": 20, "simt_gemm_kernel": 6, "splitk_finalize_kernel": 3,
                    "column_sums_kernel": 3, "mse_partial_kernel": 3, "mse_final_kernel": 3,
                    "mse_none_kernel": 3, "mse_backward_kernel": 3}


def _find_nvcc():
    found = shutil.which("nvcc")
    if found:
        return found
    candidate = Path("/usr/local/cuda/bin/nvcc")
    return str(candidate) if candidate.exists() else None


NVCC = _find_nvcc()
GXX = shutil.which("g++")
requires_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc not found in PATH or /usr/local/cuda/bin")
requires_gxx = pytest.mark.skipif(GXX is None, reason="g++ not found")


def _cuda_include():
    """The CUDA toolkit's include directory (the one with cuda_runtime_api.h)."""
    roots = [Path(NVCC).parent.parent, Path(NVCC).resolve().parent.parent] if NVCC else []
    roots.append(Path("/usr/local/cuda"))
    for root in roots:
        for inc in (root / "include", root / "targets" / "x86_64-linux" / "include"):
            if (inc / "cuda_runtime_api.h").exists():
                return str(inc)
    return "/usr/local/cuda/include"


def _run(cmd, cwd=None, timeout=600):
    proc = subprocess.run(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=timeout)
    return proc.returncode, proc.stdout


def _demangle(names):
    cxxfilt = shutil.which("c++filt")
    if not cxxfilt or not names:
        return list(names)
    out = subprocess.run([cxxfilt], input="\n".join(names), stdout=subprocess.PIPE, text=True).stdout
    lines = out.splitlines()
    return lines if len(lines) == len(names) else list(names)


_ENTRY = re.compile(r"Compiling entry function '(\S+)' for '(\S+)'")
_PROPS = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"Used (\d+) registers(?:.*?(\d+) bytes smem)?")


def parse_ptxas(log: str) -> list[dict]:
    """One record per kernel: name, arch, registers, spill stores/loads, stack, static smem."""
    kernels, cur = [], None
    for line in log.splitlines():
        m = _ENTRY.search(line)
        if m:
            cur = {"mangled": m.group(1), "arch": m.group(2), "registers": None, "spill_stores": 0,
                   "spill_loads": 0, "stack": 0, "static_smem": 0}
            kernels.append(cur)
            continue
        if cur is None:
            continue
        m = _PROPS.search(line)
        if m:
            cur["stack"], cur["spill_stores"], cur["spill_loads"] = (int(g) for g in m.groups())
            continue
        m = _USED.search(line)
        if m and cur["registers"] is None:
            cur["registers"] = int(m.group(1))
            cur["static_smem"] = int(m.group(2) or 0)
    for k, name in zip(kernels, _demangle([k["mangled"] for k in kernels])):
        k["name"] = name
    return kernels


def _short(name: str) -> str:
    return (name.replace("(aecomp_cuda::Major)0", "Red").replace("(aecomp_cuda::Major)1", "Out")
            .replace("aecomp_cuda::", "").replace("__nv_bfloat16", "bf16").replace("__half", "f16"))


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    """Runs every compile of this file, two at a time; returns {job: (returncode, log)}."""
    out = tmp_path_factory.mktemp("cuda_build")
    jobs = {}
    if NVCC:
        for arch, gencode in ARCHS.items():
            for cu in sorted(CUDA_DIR.glob("*.cu")):
                jobs[(arch, cu.name)] = [NVCC, *NVCC_FLAGS, f"-gencode={gencode}", *ARCH_MODE[arch], str(cu),
                                         "-o", str(out / f"{cu.stem}_{arch}.o")]
    if GXX:
        jobs[("emulator", HARNESS.name)] = [GXX, "-std=c++17", "-O1", "-DAECOMP_EMULATE", f"-I{_cuda_include()}",
                                            "-Wall", "-Wno-unknown-pragmas", str(HARNESS), "-o", str(out / "emulate")]
        jobs[("emulator", RULES.name)] = [GXX, "-std=c++17", "-O1", f"-I{_cuda_include()}", "-Wall",
                                          "-Wno-unknown-pragmas", str(RULES), "-o", str(out / "emulator_rules")]
        glue = _glue_check_command(out)
        if glue is not None:
            jobs[("glue", "ops_cuda.cpp")] = glue
    # longest first, so the two workers finish together
    order = sorted(jobs, key=lambda j: (j[1] != "linear_act.cu", j[0] != "emulator"))
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {job: pool.submit(_run, ["nice", "-n", "5", *jobs[job]]) for job in order}
        results = {job: f.result() for job, f in futures.items()}
    return {"dir": out, "results": results}


@requires_nvcc
@pytest.mark.parametrize("arch", list(ARCHS))
def test_every_cu_file_compiles(builds, arch, record_property):
    files = sorted(p.name for p in CUDA_DIR.glob("*.cu"))
    assert files, "no .cu files under csrc/cuda"
    logs = []
    for name in files:
        rc, log = builds["results"][(arch, name)]
        assert rc == 0, f"nvcc failed on {name} for {arch}:\n{log[-6000:]}"
        logs.append(log)
    kernels = parse_ptxas("\n".join(logs))
    assert kernels, "ptxas -v reported no kernels"
    print(f"\nptxas {arch}: {len(kernels)} kernels")
    print(f"  {'regs':>4} {'spill st/ld':>11} {'stack':>5} {'smem':>6}  kernel")
    for k in sorted(kernels, key=lambda k: k["name"]):
        print(f"  {k['registers']:>4} {k['spill_stores']:>5}/{k['spill_loads']:<5} {k['stack']:>5} "
              f"{k['static_smem']:>6}  {_short(k['name'])[:150]}")
    record_property(f"ptxas_{arch}", json.dumps(
        [{key: k[key] for key in ("name", "registers", "spill_stores", "spill_loads", "stack", "static_smem")}
         for k in kernels]))


@requires_nvcc
@pytest.mark.parametrize("arch", list(ARCHS))
def test_gemm_kernels_do_not_spill(builds, arch):
    logs = "\n".join(log for (a, _), (rc, log) in builds["results"].items() if a == arch and rc == 0)
    kernels = parse_ptxas(logs)
    gemms = [k for k in kernels if any(g in k["name"] for g in GEMM_KERNELS)]
    assert gemms, "no GEMM kernels found in the ptxas output"
    spilling = [f"{_short(k['name'])}: {k['spill_stores']} B stored, {k['spill_loads']} B loaded"
                for k in gemms if k["spill_stores"] or k["spill_loads"]]
    assert not spilling, f"GEMM kernels spill registers on {arch}:\n" + "\n".join(spilling)


@requires_nvcc
@pytest.mark.skipif(shutil.which("c++filt") is None, reason="c++filt (binutils) not found")
def test_every_kernel_instance_is_built(builds):
    logs = "\n".join(log for (a, _), (rc, log) in builds["results"].items() if a == "sm_90a" and rc == 0)
    kernels = parse_ptxas(logs)
    counts = {name: sum(1 for k in kernels if f"{name}<" in k["name"]) for name in EXPECTED_KERNELS}
    assert counts == EXPECTED_KERNELS


@requires_gxx
@pytest.mark.parametrize("mode", ["late-copies", "early-copies"])
def test_kernels_on_cpu_emulator(builds, mode, _fresh_seed):
    rc, log = builds["results"][("emulator", HARNESS.name)]
    assert rc == 0, f"the emulator harness did not compile:\n{log[-6000:]}"
    args = ["--quick", "--seed", str(_fresh_seed)] + (["--early"] if mode == "early-copies" else [])
    rc, out = _run([str(builds["dir"] / "emulate"), *args], timeout=300)
    print(out[-3000:])
    failures = [line for line in out.splitlines() if line.startswith(("FAIL", "EMULATOR FAULT"))]
    assert rc == 0 and not failures, f"emulated kernels failed (rc={rc}):\n" + "\n".join(failures[:20]) + out[-2000:]
    m = re.search(r"(\d+) checks, 0 failures", out)
    assert m and int(m.group(1)) > 300, out[-2000:]


@requires_gxx
def test_emulator_catches_a_planted_bug_for_every_rule(builds):
    rc, log = builds["results"][("emulator", RULES.name)]
    assert rc == 0, f"emulator_rules.cpp did not compile:\n{log[-6000:]}"
    rc, out = _run([str(builds["dir"] / "emulator_rules")], timeout=120)
    print(out)
    lines = [line for line in out.splitlines() if line.startswith(("ok ", "FAIL "))]
    assert rc == 0 and lines and all(line.startswith("ok ") for line in lines), out
    rules = {line.split()[1] for line in lines if "PLANTED" in line}
    assert rules == {f"R{i}" for i in range(1, 9)}, f"rules without a planted bug: {rules}"


# Declarations that ATen/cuda/CUDAContextLight.h needs from the CUDA math libraries, which a
# CPU-only torch and a compiler-only CUDA toolkit do not ship. Only types and names.
_STUB_HEADERS = {
    "cusparse.h": "typedef struct cusparseContext* cusparseHandle_t; typedef int cusparseStatus_t;\n",
    "cublas_v2.h": "typedef struct cublasContext* cublasHandle_t; typedef int cublasStatus_t;\n",
    "cublasLt.h": "typedef struct cublasLtContext* cublasLtHandle_t;\n",
    "cusolver_common.h": "typedef int cusolverStatus_t;\n",
    "cusolverDn.h": '#include "cusolver_common.h"\ntypedef struct cusolverDnContext* cusolverDnHandle_t;\n',
}


def _glue_check_command(out: Path):
    """g++ -fsyntax-only of ops_cuda.cpp against the installed torch (None without torch)."""
    try:
        import sysconfig

        from torch.utils import cpp_extension
    except ImportError:
        return None
    stubs = out / "stubs"
    stubs.mkdir(exist_ok=True)
    cuda_inc = Path(_cuda_include())
    for name, text in _STUB_HEADERS.items():
        if not (cuda_inc / name).exists():
            (stubs / name).write_text("#pragma once\n" + text)
    includes = [f"-I{p}" for p in cpp_extension.include_paths()] + [f"-I{cuda_inc}", f"-I{stubs}",
                                                                     f"-I{sysconfig.get_paths()['include']}"]
    return [GXX, "-std=c++20", "-fsyntax-only", "-Wall", "-Wextra", "-DC10_CUDA_NO_CMAKE_CONFIGURE_FILE", *includes,
            str(CUDA_DIR / "ops_cuda.cpp")]


@requires_gxx
@requires_nvcc
def test_torch_glue_type_checks(builds):
    if ("glue", "ops_cuda.cpp") not in builds["results"]:
        pytest.skip("torch is not importable")
    rc, log = builds["results"][("glue", "ops_cuda.cpp")]
    ours = [line for line in log.splitlines() if "csrc/cuda" in line and ("error" in line or "warning" in line)]
    assert rc == 0 and not ours, log[-6000:]
