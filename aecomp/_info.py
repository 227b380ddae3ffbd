"""``aecomp info``: versions, the backends available here, and why any is missing."""
from __future__ import annotations

import argparse
import json
import platform


def collect() -> dict:
    import torch

    from . import __version__, _ext
    from ._backend import auto_backend_name, available_backends

    try:
        import triton

        triton_version = triton.__version__
    except Exception as exc:  # triton missing or broken
        triton_version = f"not importable ({type(exc).__name__})"
    backends = {name: {"available": ok, "reason": reason} for name, (ok, reason) in available_backends().items()}
    info = {
        "aecomp": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "triton": triton_version,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "extension": _ext.build_info(),
        "backends": backends,
        "automatic": {"cpu": auto_backend_name("cpu")},
    }
    if torch.cuda.is_available():
        info["automatic"]["cuda"] = auto_backend_name("cuda", torch.bfloat16)
    try:
        from .ops import mlp_fusion_info  # added with the fused chain op

        info["mlp_fusion"] = mlp_fusion_info()
    except ImportError:
        pass
    info["cpu_isa"] = _cpu_isa()
    mod = _ext.load()[0]
    if mod is not None and hasattr(mod, "_brgemm_describe"):  # the CPU's matrix engine (csrc/cpu/brgemm.h)
        try:
            info["matrix_engine"] = mod._brgemm_describe()
        except ValueError as exc:  # a refused AECOMP_CPU_ISA (shown on the CPU kernels' line)
            info["matrix_engine"] = f"none: {str(exc).splitlines()[0]}"
    # packed-weight inference (aecomp.ops.packed_mlp): which backend runs a packed chain
    info["packed_mlp"] = {"cpu": auto_backend_name("cpu", torch.float32, "packed_mlp")}
    if torch.cuda.is_available():
        info["packed_mlp"]["cuda"] = auto_backend_name("cuda", torch.float32, "packed_mlp")
    return info


def _cpu_isa() -> dict:
    """The CPU kernels' instruction-set level (csrc/cpu/isa.h), what capped it, and the CPU's own."""
    import os

    from . import _ext

    mod = _ext.load()[0]
    if mod is None or not hasattr(mod, "_cpu_isa_info"):
        return {"level": None, "error": "the C++ extension is not built"}
    cap = os.environ.get("AECOMP_CPU_ISA")
    try:
        info = dict(mod._cpu_isa_info())
    except ValueError as exc:  # a refused AECOMP_CPU_ISA: every CPU kernel call raises the same
        return {"level": None, "error": str(exc).splitlines()[0], "capped_by": f"AECOMP_CPU_ISA={cap}"}
    info["capped_by"] = f"AECOMP_CPU_ISA={cap}" if cap is not None else None
    return info


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the same as JSON")


def run(args: argparse.Namespace) -> int:
    info = collect()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"aecomp {info['aecomp']}  (python {info['python']}, torch {info['torch']}, triton {info['triton']})")
    print(f"GPU: {info['gpu'] or 'none visible'}")
    ext = info["extension"]
    if ext["built"]:
        cuda = f"CUDA kernels for {ext['cuda_archs']}" if ext["cuda"] else "no CUDA kernels"
        print(f"extension aecomp._C: built ({cuda})")
    else:
        print(f"extension aecomp._C: not built ({ext['error']})")
    print("backends:")
    for name, b in info["backends"].items():
        mark = "yes" if b["available"] else "no "
        print(f"  {name:<10} {mark}  {b['reason']}")
    auto = ", ".join(f"{dev} tensors -> {name}" for dev, name in info["automatic"].items())
    print(f"automatic selection: {auto}")
    if "mlp_fusion" in info:
        print(f"fused chains: {info['mlp_fusion']}")
    isa = info["cpu_isa"]
    if isa.get("level") is None:
        print(f"CPU kernels: {isa['error']}")
    else:
        feats = [name for name, ok in isa["hardware_features"].items() if ok]
        cap = f"{isa['capped_by']}; " if isa["capped_by"] else ""
        print(f"CPU kernels: {isa['level']} ({cap}this CPU: {isa['hardware']}"
              f"{', ' + ' '.join(feats) if feats else ''})")
    if "matrix_engine" in info:
        print(f"CPU matrix engine (bf16 training, int8 inference at batch): {info['matrix_engine']}")
    if "packed_mlp" in info:
        print("packed chains (packed_mlp): " + ", ".join(f"{d} tensors -> {n}" for d, n in info["packed_mlp"].items()))
    return 0
