"""Ahead-of-time compile jobs for every Triton kernel configuration (used by test_triton_aot.py
and benchmarks/gpu_check.sh).

A job is a plain dict (picklable, built without importing triton); :func:`compile_job` runs
one in a worker process: it compiles the kernel with
``triton.compile(ASTSource(fn, signature, constexprs, attrs), target=GPUTarget("cuda", 90, 32))``,
which needs no GPU, and reports the shared memory the kernel needs and whether its PTX uses
Hopper's ``wgmma`` instructions.

Specialisation mirrors what the JIT does for the common case, contiguous operands whose sizes
are multiples of 16 (every layer of the reference autoencoder and 4096^3): unit strides are
the constant 1, and pointers and the other integers carry ``tt.divisibility = 16``.
"""
from __future__ import annotations

import os
import time
import traceback
from typing import Dict, List

HOPPER = ("cuda", 90, 32)
HOPPER_SMEM_BYTES = 232448  # 227 KB per block (opt-in) on H100/H200

# kernel -> (module, pointer args that hold float32 scratch rather than the data dtype,
#            stride args that are 1 for contiguous operands)
_GEMM = {
    "fwd": ("linear_act", "linear_act_fwd_kernel", (), ("stride_xk", "stride_wk", "stride_b", "stride_yn")),
    "dgrad": ("linear_act", "linear_act_dgrad_kernel", (), ("stride_gn", "stride_yn", "stride_wk", "stride_dxk")),
    # the split-M variant: float32 partials of dW and db (tall batches, the usual case)
    "wgrad": ("linear_act", "linear_act_wgrad_kernel", ("dw_ptr", "db_ptr"),
              ("stride_gn", "stride_yn", "stride_xk", "stride_dwk", "stride_dbn")),
}
_GEMM_FLAGS = {
    "fwd": {"HAS_BIAS": True, "ACT": 2},
    "dgrad": {"ACT": 2},
    "wgrad": {"COMPUTE_DW": True, "COMPUTE_DB": True, "ACT": 2},
}
_TL = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


def _job(module, kernel, dtype, constexprs, fp32_ptrs=(), unit_strides=(), float_args=(), warps=4, stages=1, label=""):
    return {
        "module": module, "kernel": kernel, "dtype": dtype, "constexprs": dict(constexprs),
        "fp32_ptrs": list(fp32_ptrs), "unit_strides": list(unit_strides), "float_args": list(float_args),
        "num_warps": warps, "num_stages": stages, "label": label,
    }


def aot_jobs() -> List[Dict]:
    """Every Hopper configuration of every kernel, each compiled at least once: every 16-bit
    GEMM tile in bfloat16, every 32-bit tile in float32 with ``ieee`` precision (what runs by
    default: torch's ``allow_tf32`` is off), the forward's first tiles also in float16 and in
    float32 with ``tf32``; every streaming kernel in bfloat16 and float32."""
    from aecomp.kernels import _configs

    jobs = []
    for kernel, (module, fn, fp32_ptrs, unit) in _GEMM.items():
        roles = _configs.GEMM_ROLES[kernel]
        for esize, base in ((2, ("bfloat16", "ieee")), (4, ("float32", "ieee"))):
            for i, t in enumerate(_configs.gemm_tiles("hopper", esize)):
                variants = [base]
                if kernel == "fwd" and i == 0:
                    variants.append(("float16", "ieee") if esize == 2 else ("float32", "tf32"))
                for dtype, prec in variants:
                    ce = {roles[0]: t.a, roles[1]: t.b, roles[2]: t.r, "GROUP_M": _configs.GROUP_M,
                          "PRECISION": prec, **_GEMM_FLAGS[kernel]}
                    label = f"{kernel} {t.a}x{t.b}x{t.r} w{t.warps} s{t.stages} {dtype}" + (
                        f" {prec}" if esize == 4 else "")
                    jobs.append(_job(module, fn, dtype, ce, fp32_ptrs, unit, (), t.warps, t.stages, label))
    stream = _configs.STREAM["hopper"]
    for dtype in ("bfloat16", "float32"):
        b, w = stream["BLOCK"], stream["warps"]
        rb, rw = stream["REDUCE_BLOCK"], stream["reduce_warps"]
        jobs += [
            _job("mse", "mse_fwd_kernel", dtype, {"REDUCE": True, "CONTIG": True, "BLOCK": b}, ("out_ptr",),
                 ("stride_a1", "stride_b1"), (), w, 1, f"mse_fwd sum {b} w{w} {dtype}"),
            _job("mse", "mse_fwd_kernel", dtype, {"REDUCE": False, "CONTIG": False, "BLOCK": b}, (),
                 ("stride_a1", "stride_b1"), (), w, 1, f"mse_fwd none strided {b} w{w} {dtype}"),
            _job("mse", "mse_sum_kernel", dtype, {"BLOCK": rb}, ("partial_ptr",), (), ("scale",), rw, 1,
                 f"mse_sum {rb} w{rw} {dtype}"),
            _job("mse", "mse_bwd_kernel", dtype,
                 {"G_SCALAR": True, "NEED_A": True, "NEED_B": True, "CONTIG": True, "BLOCK": b}, (),
                 ("stride_a1", "stride_b1"), ("scale",), w, 1, f"mse_bwd {b} w{w} {dtype}"),
            _job("linear_act", "sum_splits_kernel", dtype, {"BLOCK": rb}, ("src_ptr",), (), (), rw, 1,
                 f"sum_splits {rb} w{rw} {dtype}"),
        ]
    return jobs


def init_worker() -> None:
    """Pool initializer: compiled (not interpreted) kernels whatever the parent runs with."""
    os.environ.pop("TRITON_INTERPRET", None)
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # triton 3.9 warns when unset; 1 = its default


def compile_job(job: Dict) -> Dict:
    """Compile one job for sm_90; never raises (the error comes back in the result)."""
    t0 = time.time()
    out = {"label": job["label"], "kernel": job["kernel"], "dtype": job["dtype"],
           "num_warps": job["num_warps"], "num_stages": job["num_stages"]}
    try:
        import importlib

        import triton
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource

        mod = importlib.import_module(f"aecomp.kernels.{job['module']}")
        if mod.INTERPRETED:
            raise RuntimeError("kernels were defined under TRITON_INTERPRET=1; AOT needs compiled kernels")
        fn = getattr(mod, job["kernel"])
        data = _TL[job["dtype"]]
        constexprs = dict(job["constexprs"])
        signature, attrs = {}, {}
        for i, name in enumerate(fn.arg_names):
            param = fn.params[i]
            if param.is_constexpr:
                signature[name] = "constexpr"
            elif name in job["unit_strides"]:
                signature[name] = "constexpr"
                constexprs[name] = 1
            elif name.endswith("_ptr"):
                signature[name] = "*fp32" if name in job["fp32_ptrs"] else f"*{data}"
                attrs[(i,)] = [["tt.divisibility", 16]]
            elif name in job["float_args"]:
                signature[name] = "fp32"
            else:
                signature[name] = "i32"
                attrs[(i,)] = [["tt.divisibility", 16]]
        missing = [n for n, t in signature.items() if t == "constexpr" and n not in constexprs]
        if missing:
            raise RuntimeError(f"no value for constexpr args {missing}")
        src = ASTSource(fn, signature, constexprs=constexprs, attrs=attrs)
        kernel = triton.compile(src, target=GPUTarget(*HOPPER),
                                options={"num_warps": job["num_warps"], "num_stages": job["num_stages"]})
        ptx = kernel.asm["ptx"]
        out.update(ok=True, shared=int(kernel.metadata.shared), wgmma="wgmma" in ptx)
    except Exception:
        out.update(ok=False, error=traceback.format_exc())
    out["seconds"] = round(time.time() - t0, 2)
    return out

