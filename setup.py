"""Build of aecomp: the Python package, the Triton kernels (``kernels/`` shipped as
``aecomp.kernels``) and the C++/CUDA extension ``aecomp._C``.

The extension always gets the C++ CPU kernels (``csrc/*.cpp``, ``csrc/cpu/*.cpp``). The CUDA
sources (``csrc/cuda/*.cu`` and their glue ``csrc/cuda/*.cpp``) are added only when both an
``nvcc`` and a CUDA build of torch are present; otherwise the build says why and goes on
CPU-only. Architectures come from ``TORCH_CUDA_ARCH_LIST`` (default: the local GPU, else
``9.0a``); ``MAX_JOBS`` sets the parallel compile jobs (ninja). Unless the list names a
``+PTX`` entry itself, ``compute_80`` PTX is embedded as well, which the driver compiles for
any GPU of compute capability 8.0 or newer that the list's SASS does not cover (the kernels
need sm_80: mma.sync, ldmatrix, cp.async); a GPU with neither gets the triton backend (the cuda
backend's probe asks the runtime for a kernel image, see aecomp/ops/_cpp.py).

torch must be installed before building (``pip install --no-build-isolation ...``): an
isolated build environment would download a second, multi-GB torch.
"""
from __future__ import annotations

import glob
import os
import shutil
import sys
from typing import Dict, List, Optional, Sequence

ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_ARCH = "9.0a"
PORTABLE_PTX = "8.0"  # the oldest architecture the CUDA kernels run on

# ------------------------------------------------------------------ build-configuration logic
# Pure functions (no torch import) so tests/test_build_config.py can check them directly.


def find_nvcc(env: Dict[str, str]) -> Optional[str]:
    """Path of nvcc: $CUDA_HOME/bin, $CUDA_PATH/bin, PATH, then /usr/local/cuda/bin."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        home = env.get(var)
        if home and os.path.isfile(os.path.join(home, "bin", "nvcc")):
            return os.path.join(home, "bin", "nvcc")
    found = shutil.which("nvcc", path=env.get("PATH"))
    if found:
        return found
    fallback = "/usr/local/cuda/bin/nvcc"
    return fallback if os.path.isfile(fallback) else None


def parse_arch_list(text: str) -> List[str]:
    """``"8.0;9.0a"`` / ``"8.0 9.0+PTX"`` -> ``["8.0", "9.0+PTX"]``; rejects junk with a clear error."""
    archs = []
    for item in text.replace(",", ";").replace(" ", ";").split(";"):
        item = item.strip()
        if not item:
            continue
        base = item[:-4] if item.endswith("+PTX") else item
        num = base[:-1] if base.endswith("a") else base
        parts = num.split(".")
        if len(parts) != 2 or not all(p.isdigit() for p in parts):
            raise ValueError(f"TORCH_CUDA_ARCH_LIST: cannot parse {item!r} (expected e.g. '8.0', '9.0a', '9.0+PTX')")
        archs.append(item)
    if not archs:
        raise ValueError(f"TORCH_CUDA_ARCH_LIST: no architecture in {text!r}")
    return archs


def default_archs(local_capability: Optional[Sequence[int]]) -> List[str]:
    """The local GPU's architecture (with 'a' on Hopper for wgmma), else 9.0a."""
    if local_capability is None:
        return [DEFAULT_ARCH]
    major, minor = local_capability
    return [f"{major}.{minor}{'a' if (major, minor) == (9, 0) else ''}"]


def gencode_flags(archs: Sequence[str]) -> List[str]:
    flags = []
    for item in archs:
        ptx = item.endswith("+PTX")
        base = item[:-4] if ptx else item
        suffix = "a" if base.endswith("a") else ""
        num = base.rstrip("a").replace(".", "")
        flags.append(f"-gencode=arch=compute_{num}{suffix},code=sm_{num}{suffix}")
        if ptx:
            flags.append(f"-gencode=arch=compute_{num}{suffix},code=compute_{num}{suffix}")
    return flags


def portable_ptx(archs: Sequence[str]) -> Optional[str]:
    """The PTX target to embed besides ``archs``' SASS: ``PORTABLE_PTX`` unless the list has a
    ``+PTX`` entry (the user chose the PTX then)."""
    return None if any(a.endswith("+PTX") for a in archs) else PORTABLE_PTX


def plan_build(
    env: Dict[str, str],
    nvcc: Optional[str],
    torch_cuda_version: Optional[str],
    cuda_sources: Sequence[str],
    local_capability: Optional[Sequence[int]] = None,
) -> dict:
    """Decide what to build. Returns a dict with ``cuda`` (bool), ``reason``, ``archs``, ``ptx`` (the
    portable PTX target added, or None), ``nvcc_flags``.

    CUDA is built only when there are CUDA sources, an nvcc, and a CUDA build of torch, and
    ``AECOMP_NO_CUDA`` is not set; ``AECOMP_FORCE_CUDA=1`` turns a missing piece into an error.
    """
    plan = {"cuda": False, "reason": "", "archs": [], "ptx": None, "nvcc_flags": []}
    missing = []
    if env.get("AECOMP_NO_CUDA", "") not in ("", "0"):
        missing.append("AECOMP_NO_CUDA is set")
    if not cuda_sources:
        missing.append("no CUDA sources in csrc/cuda/")
    if nvcc is None:
        missing.append("nvcc not found (set CUDA_HOME)")
    if not torch_cuda_version:
        missing.append("torch is a CPU-only build (torch.version.cuda is None)")
    if missing:
        plan["reason"] = "; ".join(missing)
        if env.get("AECOMP_FORCE_CUDA", "") not in ("", "0"):
            raise RuntimeError("AECOMP_FORCE_CUDA is set but the CUDA kernels cannot be built: " + plan["reason"])
        return plan
    text = env.get("TORCH_CUDA_ARCH_LIST", "").strip()
    archs = parse_arch_list(text) if text else default_archs(local_capability)
    ptx = portable_ptx(archs)
    ptx_flags = [f"-gencode=arch=compute_{ptx.replace('.', '')},code=compute_{ptx.replace('.', '')}"] if ptx else []
    plan.update(
        cuda=True,
        reason=f"nvcc {nvcc}, torch CUDA {torch_cuda_version}",
        archs=archs,
        ptx=ptx,
        nvcc_flags=["-O3", "--expt-relaxed-constexpr", "-lineinfo", *gencode_flags(archs), *ptx_flags],
    )
    return plan


# ------------------------------------------------------------------ the build itself


def _sources(pattern: str) -> List[str]:
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))


def _read_version() -> str:
    with open(os.path.join(ROOT, "aecomp", "__init__.py")) as f:
        for line in f:
            if line.startswith("__version__"):
                return line.split("=")[1].strip().strip("\"'")
    raise RuntimeError("no __version__ in aecomp/__init__.py")


def main() -> None:
    from setuptools import setup

    try:
        import torch
        from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension
    except ImportError:
        sys.exit(
            "aecomp's build needs torch installed first (pip install torch==2.13.0 for the CPU build), "
            "then: pip install --no-build-isolation -e ."
        )

    cpu_sources = _sources("csrc/*.cpp") + _sources("csrc/cpu/*.cpp")
    cuda_sources = _sources("csrc/cuda/*.cu")
    local_cap = None
    try:
        if torch.cuda.is_available():
            local_cap = torch.cuda.get_device_capability()
    except Exception:
        local_cap = None
    plan = plan_build(dict(os.environ), find_nvcc(dict(os.environ)), torch.version.cuda, cuda_sources, local_cap)
    cxx_flags = ["-O3", "-fno-math-errno"]
    if plan["cuda"]:
        targets = plan["archs"] + ([f"{plan['ptx']} PTX"] if plan["ptx"] else [])
        print(f"aecomp: building CUDA kernels for {', '.join(targets)} ({plan['reason']})")
        archs = ";".join(targets)
        defines = [("AECOMP_WITH_CUDA", None), ("AECOMP_CUDA_ARCHS", f'"{archs}"')]
        ext = CUDAExtension(
            "aecomp._C",
            cpu_sources + cuda_sources + _sources("csrc/cuda/*.cpp"),
            define_macros=defines,
            extra_compile_args={"cxx": cxx_flags, "nvcc": plan["nvcc_flags"]},
        )
    else:
        print(f"aecomp: building the CPU kernels only ({plan['reason']})")
        ext = CppExtension("aecomp._C", cpu_sources, extra_compile_args={"cxx": cxx_flags})

    subpackages = [p for p in ("ops", "nn", "models", "train", "compress", "fl") if os.path.isdir(os.path.join(ROOT, "aecomp", p))]
    has_kernels = os.path.isfile(os.path.join(ROOT, "kernels", "__init__.py"))
    setup(
        name="aecomp",
        version=_read_version(),
        description="Fused Triton/CUDA/C++ kernels for autoencoders and network compression",
        packages=["aecomp"] + [f"aecomp.{p}" for p in subpackages] + (["aecomp.kernels"] if has_kernels else []),
        package_dir={"aecomp": "aecomp", **({"aecomp.kernels": "kernels"} if has_kernels else {})},
        ext_modules=[ext],
        cmdclass={"build_ext": BuildExtension.with_options(use_ninja=shutil.which("ninja") is not None)},
        python_requires=">=3.10",
        install_requires=[
            "torch>=2.4",
            "numpy",
            "triton>=3.2; platform_system == 'Linux'",
            "scikit-learn",
            "safetensors",
            "tqdm",
            "matplotlib",
        ],
        extras_require={
            "test": ["pytest", "pytest-benchmark", "hypothesis"],
            "export": ["onnx", "onnxruntime", "onnxscript"],
            # federated learning (aecomp.fl): Flower and its Ray simulation engine
            "fl": ["flwr[simulation]>=1.42,<1.43"],
        },
        entry_points={"console_scripts": ["aecomp=aecomp.cli:main"]},
        zip_safe=False,
    )


if __name__ == "__main__":
    main()
