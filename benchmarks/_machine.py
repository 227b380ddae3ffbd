"""Who measured what, where: the machine, the versions, the commit, and the results file name.

Every row the runner writes carries :func:`describe` (so a row read on its own says where it
came from). The results file of a machine is ``benchmarks/results/<tag>.jsonl`` with
``tag = machine_tag(device)``:

* CPU runs: ``cpu_<CPU model>_<N>cpu`` (e.g. ``cpu_Intel_Xeon_Processor_2cpu``). The host name
  (``platform.node()``) is recorded in every row but is not part of the name: on the
  containers we run on it changes at every start, and the CPU model does not.
* GPU runs: ``gpu_<GPU name>`` (e.g. ``gpu_NVIDIA_H200``).

``AECOMP_BENCH_MACHINE`` or ``--machine`` overrides the tag. CPU and GPU results never share a
file.
"""
from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, Optional

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"


def slug(text: str) -> str:
    """Letters, digits and single underscores: safe in a file name."""
    text = re.sub(r"\((R|TM|C)\)", "", text, flags=re.I)
    text = re.sub(r"\bCPU\b|@.*$", "", text)
    return re.sub(r"[^A-Za-z0-9.]+", "_", text).strip("_.") or "unknown"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


MATRIX_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16",
                "amx_int8")


def cpu_flags() -> list:
    """The CPU's flags that decide the GEMM paths (``/proc/cpuinfo``; ``lscpu`` shows the same)."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.lower().startswith("flags"):
                    have = set(line.split(":", 1)[1].split())
                    return [f for f in MATRIX_FLAGS if f in have]
    except OSError:
        pass
    return []


def cpu_count() -> int:
    """CPUs this process may run on (the affinity mask), else os.cpu_count()."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def gpu_name() -> Optional[str]:
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else None


def machine_tag(device: str, override: Optional[str] = None) -> str:
    override = override or os.environ.get("AECOMP_BENCH_MACHINE")
    if override:
        return slug(override)
    if device == "cuda":
        return "gpu_" + slug(gpu_name() or "unknown_GPU")
    return f"cpu_{slug(cpu_model())}_{cpu_count()}cpu"


def git_commit() -> Dict[str, Any]:
    """``{"commit": sha or None, "dirty": bool or None}`` of the checkout the benchmarks ran from.

    ``dirty`` is True when tracked files differ from the commit (untracked files are ignored):
    the numbers then belong to the commit plus local edits.
    """
    def git(*args: str) -> Optional[str]:
        try:
            out = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    sha = git("rev-parse", "HEAD")
    if sha is None:
        return {"commit": None, "dirty": None}
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": sha, "dirty": None if status is None else bool(status)}


def load_average() -> Optional[list]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def _matrix_engine() -> Optional[str]:
    """aecomp's matrix-engine level on this CPU (``aecomp info``), or None without the extension."""
    try:
        import aecomp._C as C

        return C._brgemm_describe()
    except Exception:  # not built, or built before the matrix engine
        return None


def describe(device: str, tag: str) -> Dict[str, Any]:
    """The fields every row of a run shares."""
    import torch

    try:
        import triton

        triton_version = triton.__version__
    except Exception as exc:  # missing or broken triton must not stop a CPU run
        triton_version = f"not importable ({type(exc).__name__})"
    info = {
        "machine": tag,
        "node": platform.node(),
        "cpu": cpu_model(),
        "cpu_count": cpu_count(),
        "cpu_flags": cpu_flags(),
        "matrix_engine": _matrix_engine(),
        "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA"),
        "gpu": gpu_name() if device == "cuda" else None,
        "device": device,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton": triton_version,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **git_commit(),
    }
    if device == "cuda":
        cap = torch.cuda.get_device_capability()
        info["capability"] = f"{cap[0]}.{cap[1]}"
        info["allow_tf32"] = bool(torch.backends.cuda.matmul.allow_tf32)
    return info


def python_argv() -> str:
    return " ".join([os.path.basename(sys.executable), *sys.argv])
