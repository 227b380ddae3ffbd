"""Ahead-of-time compile jobs for every Triton kernel configuration (used by test_triton_aot.py
and benchmarks/gpu_check.sh).

A job is a plain dict (picklable, built without importing triton); :func:`compile_job` runs
one in a worker process: it compiles the kernel with
``triton.compile(ASTSource(fn, signature, constexprs, attrs), target=GPUTarget("cuda", 90, 32))``,
which needs no GPU, and reports the shared memory the kernel needs, whether its PTX uses
Hopper's ``wgmma`` instructions (and how many), and -- from the ``cuobjdump`` that ships with
Triton -- the registers a thread and the stack bytes (register spills) of the cubin.

The generated fused-chain kernels (``aecomp.kernels.mlp``) are jobs with a ``factory``: the
worker calls ``mlp.fwd_kernel(L)`` / ``mlp.bwd_kernel(L)`` to build the ``L``-layer kernel.

Specialisation mirrors what the JIT does for the common case, contiguous operands whose sizes
are multiples of 16 (every layer of the reference autoencoder and 4096^3): unit strides are
the constant 1, and pointers and the other integers carry ``tt.divisibility = 16``, except the
arguments the kernels mark ``do_not_specialize`` (the batch size ``M``).
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


def _job(module, kernel, dtype, constexprs, fp32_ptrs=(), unit_strides=(), float_args=(), warps=4, stages=1, label="",
         factory=None):
    return {
        "module": module, "kernel": kernel, "dtype": dtype, "constexprs": dict(constexprs),
        "fp32_ptrs": list(fp32_ptrs), "unit_strides": list(unit_strides), "float_args": list(float_args),
        "num_warps": warps, "num_stages": stages, "label": label, "factory": factory,
    }


# The fused chains compiled ahead of time: (name, widths, activations, [(dtype, precision,
# which Hopper chain tiles)]). The reference autoencoder as ONE kernel in bfloat16 and float32
# (every tile; tf32 for the first), its encoder and decoder alone (the first tile), and a chain
# at the 16-bit on-chip limit (P = 256, the "wide" tiles) for shared memory.
#
# float32 "ieee" chain kernels (FMA dot products) take 15-40 s each to compile on two cores, so by
# default only the first float32 tile is compiled; AECOMP_AOT_ALL=1 compiles every tile (and lets
# test_triton_aot.py check that each float32 chain kernel has a spill-free tile).
ALL_CHAIN_TILES = os.environ.get("AECOMP_AOT_ALL", "0") not in ("", "0")
CHAINS = (
    ("autoencoder", (784, 128, 64, 32, 64, 128, 784), ("relu", "relu", "none", "relu", "relu", "sigmoid"),
     (("bfloat16", "ieee", "all"), ("float32", "ieee", "all" if ALL_CHAIN_TILES else "first"),
      ("float32", "tf32", "first"))),
    ("encoder", (784, 128, 64, 32), ("relu", "relu", "none"), (("bfloat16", "ieee", "first"),)),
    ("decoder", (32, 64, 128, 784), ("relu", "relu", "sigmoid"), (("bfloat16", "ieee", "first"),)),
    ("wide256", (784, 256, 256, 784), ("relu", "relu", "sigmoid"), (("bfloat16", "ieee", "all"),)),
)
_ACT_CODE = {"none": 0, "relu": 1, "sigmoid": 2}


def chain_jobs() -> List[Dict]:
    """The chain kernels of :data:`CHAINS`: the forward with the fused MSE (per-row partial
    sums) and the dgrad chain with the fused MSE entry (mean/sum), per chosen Hopper tile."""
    from aecomp.kernels import _configs
    from aecomp.kernels.mlp import pad

    jobs = []
    for name, widths, acts, variants in CHAINS:
        L = len(widths) - 1
        widest = max(pad(w) for w in widths[1:-1])
        pads = {f"P{i}": pad(widths[i]) for i in range(1, L)}
        for dtype, prec, which in variants:
            if _configs.chain_max_width("hopper", 4 if dtype == "float32" else 2, prec) < widest:
                continue  # this triton runs such chains per layer (float32 ieee under triton < 3.9)
            tiles = _configs.chain_tiles("hopper", 4 if dtype == "float32" else 2, widest)
            for t in tiles[:1] if which == "first" else tiles:
                blocks = {"BLOCK_M": t.m, "BLOCK_K": t.k, "BLOCK_N": t.n}
                fwd = {**blocks, **pads, "LOSS": 1, "PRECISION": prec}
                bwd = {**blocks, **pads, "ENTRY": 1, "NEED_X": False, "PRECISION": prec}
                for i, a in enumerate(acts):
                    fwd[f"ACT{i}"] = bwd[f"ACT{i}"] = _ACT_CODE[a]
                    fwd[f"HAS_BIAS{i}"] = True
                tag = f"{t.m}x{t.k}x{t.n} w{t.warps} s{t.stages} {dtype}" + (f" {prec}" if dtype == "float32" else "")
                jobs.append(_job(
                    "mlp", f"mlp_fwd_{L}", dtype, fwd, ("l_ptr",),
                    ("sxk", "stn", *(f"swk{i}" for i in range(L)), *(f"sb{i}" for i in range(L))),
                    (), t.warps, t.stages, f"chain fwd {name} {tag}", factory=("fwd_kernel", L)))
                jobs.append(_job(
                    "mlp", f"mlp_bwd_{L}", dtype, bwd, (),
                    ("sgn", "stn", *(f"swk{i}" for i in range(L)), *(f"son{i}" for i in range(L))),
                    ("scale",), t.warps, t.stages, f"chain bwd {name} {tag}", factory=("bwd_kernel", L)))
    return jobs


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
            for i, t in enumerate(_configs.gemm_tiles("hopper", esize, kernel)):
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
    return jobs + chain_jobs() + packed_jobs() + optim_jobs()


# The optimizer fused into the chain backward (aecomp/kernels/optim.py): the weight-gradient GEMM
# with the Adam/AdamW update in its epilogue (one row split) for every Hopper tile of it, bfloat16
# and float32 ieee (the first tile also tf32); the first tile also as SGD with nesterov momentum and
# as the split variant (float32 partials, no update); the split-sum pass with the update.
_OPTIM_FLOATS = ("lr", "beta1", "beta2", "eps", "wd", "decay", "bc1", "sbc2", "momentum", "dampening")
_OPTIM_UNIT = ("stride_gn", "stride_yn", "stride_xk")


def optim_jobs() -> List[Dict]:
    from aecomp.kernels import _configs
    from aecomp.kernels.optim import epilogue_tiles

    jobs = []
    roles = _configs.GEMM_ROLES["wgrad"]
    adam = {"KIND": 1, "MOM": 0, "NESTEROV": False}
    sgd = {"KIND": 2, "MOM": 2, "NESTEROV": True}
    for esize, base in ((2, ("bfloat16", "ieee")), (4, ("float32", "ieee"))):
        for i, t in enumerate(epilogue_tiles("hopper", esize)):
            variants = [(base, adam, False, "adamw")]
            if i == 0:
                variants += [(base, sgd, False, "sgd-nesterov"), (base, adam, True, "split")]
                if esize == 4:
                    variants.append((("float32", "tf32"), adam, False, "adamw"))
            for (dtype, prec), opt, split, name in variants:
                ce = {roles[0]: t.a, roles[1]: t.b, roles[2]: t.r, "GROUP_M": _configs.GROUP_M, "PRECISION": prec,
                      "HAS_BIAS": True, "ACT": 0, "SPLIT": split, **opt}
                label = f"wgrad_optim {name} {t.a}x{t.b}x{t.r} w{t.warps} s{t.stages} {dtype}" + (
                    f" {prec}" if esize == 4 else "")
                jobs.append(_job("optim", "wgrad_optim_kernel", dtype, ce, ("dwp_ptr", "dbp_ptr"), _OPTIM_UNIT,
                                 _OPTIM_FLOATS, t.warps, t.stages, label))
    rb, rw = _configs.STREAM["hopper"]["REDUCE_BLOCK"], _configs.STREAM["hopper"]["reduce_warps"]
    for dtype in ("bfloat16", "float32"):
        jobs.append(_job("optim", "sum_splits_optim_kernel", dtype, {"BLOCK": rb, **adam}, ("src_ptr",), (),
                         _OPTIM_FLOATS, rw, 1, f"sum_splits_optim adamw {rb} w{rw} {dtype}"))
    return jobs


# Packed-weight inference (aecomp/kernels/packed.py): each Hopper tile of packed_linear_kernel,
# int8 and codebook weights, bfloat16 activations; the first tile also with float32 ("ieee").
def packed_jobs() -> List[Dict]:
    from aecomp.kernels.packed import CONFIGS, FLOAT32_BLOCK_K

    jobs = []
    for kind, code, wtype in (("int8", 0, "*i8"), ("codebook", 1, "*u8")):
        for i, (bm, bn, bk, warps, stages) in enumerate(CONFIGS):
            for dtype in ("bfloat16", "float32") if i == 0 else ("bfloat16",):
                prec = "ieee" if dtype == "float32" else "tf32"
                kb = FLOAT32_BLOCK_K if dtype == "float32" else bk
                ce = {"KIND": code, "HAS_BIAS": True, "ACT": 1, "PRECISION": prec, "BLOCK_M": bm, "BLOCK_N": bn,
                      "BLOCK_K": kb}
                job = _job("packed", "packed_linear_kernel", dtype, ce, ("s_ptr", "b_ptr"), ("stride_xk",), (),
                           warps, stages, f"packed {kind} {bm}x{bn}x{kb} w{warps} s{stages} {dtype}")
                job["ptr_types"] = {"w_ptr": wtype}
                jobs.append(job)
    return jobs + packed_chain_jobs()


def packed_chain_jobs() -> List[Dict]:
    """The one-launch packed chain (4 layers, relu relu none none like the reference CompressedNet),
    at the inference tile: all int8 in bfloat16 and float32, and codebook/int8 mixed in bfloat16;
    all int8 bfloat16 at the 64-row tile too (batches 17..FUSED_MAX_M; float32 keeps the 16-row tile:
    64x64x32 float32 spills, 656 stack bytes)."""
    from aecomp.kernels.packed import CONFIGS, FLOAT32_BLOCK_K

    jobs = []
    for cfg, dtype, kinds in ((0, "bfloat16", (0, 0, 0, 0)), (0, "float32", (0, 0, 0, 0)),
                              (0, "bfloat16", (1, 0, 1, 0)), (1, "bfloat16", (0, 0, 0, 0))):
        bm, bn, bk, warps, stages = CONFIGS[cfg]
        prec = "ieee" if dtype == "float32" else "tf32"
        kb = FLOAT32_BLOCK_K if dtype == "float32" else bk
        ce = {"NL": 4, "PRECISION": prec, "BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": kb}
        ptr_types = {}
        for i, (kind, act) in enumerate(zip(kinds, (1, 1, 0, 0))):
            ce.update({f"KIND{i}": kind, f"HAS_BIAS{i}": True, f"ACT{i}": act})
            ptr_types.update({f"w{i}": "*u8" if kind else "*i8", f"s{i}": "*fp32", f"b{i}": "*fp32"})
        name = "int8" if not any(kinds) else "mixed"
        job = _job("packed", "packed_chain_kernel", dtype, ce, (), ("stride_xk",), (), warps, stages,
                   f"packed chain x4 {name} {bm}x{bn}x{kb} w{warps} s{stages} {dtype}")
        job["ptr_types"] = ptr_types
        jobs.append(job)
    return jobs


def init_worker() -> None:
    """Pool initializer: compiled (not interpreted) kernels whatever the parent runs with."""
    os.environ.pop("TRITON_INTERPRET", None)
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # triton 3.9 warns when unset; 1 = its default


def _resource_usage(kernel) -> Dict:
    """Registers a thread and local memory (spills, stack) of the compiled cubin, from the
    ``cuobjdump`` Triton ships (``{}`` where it is missing or its output is not understood)."""
    import re
    import subprocess
    import tempfile

    try:
        from triton import knobs

        tool = knobs.nvidia.cuobjdump.path
        with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
            f.write(kernel.asm["cubin"])
            f.flush()
            text = subprocess.run([tool, "--dump-resource-usage", f.name], capture_output=True, text=True,
                                  timeout=60).stdout
    except Exception:
        return {}
    out = {}
    for key, name in (("REG", "registers"), ("STACK", "stack_bytes"), ("LOCAL", "local_bytes")):
        m = re.search(rf"\b{key}:(\d+)", text)
        if m:
            out[name] = int(m.group(1))
    return out


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
        factory = job.get("factory")
        fn = getattr(mod, factory[0])(*factory[1:]) if factory else getattr(mod, job["kernel"])
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
            elif name in job.get("ptr_types", {}):
                signature[name] = job["ptr_types"][name]
                attrs[(i,)] = [["tt.divisibility", 16]]
            elif name.endswith("_ptr"):
                signature[name] = "*fp32" if name in job["fp32_ptrs"] else f"*{data}"
                attrs[(i,)] = [["tt.divisibility", 16]]
            elif name in job["float_args"]:
                signature[name] = "fp32"
            elif getattr(param, "do_not_specialize", False):  # the batch size M: no divisibility
                signature[name] = "i32"
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
        out.update(ok=True, shared=int(kernel.metadata.shared), wgmma="wgmma" in ptx,
                   wgmma_count=ptx.count("wgmma.mma_async"), **_resource_usage(kernel))
    except Exception:
        out.update(ok=False, error=traceback.format_exc())
    out["seconds"] = round(time.time() - t0, 2)
    return out



def run_all(jobs: List[Dict], workers: int) -> List[Dict]:
    """Compiles ``jobs`` in ``workers`` spawned processes (order kept)."""
    import concurrent.futures
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx, initializer=init_worker) as pool:
        return list(pool.map(compile_job, jobs))


def main(argv=None) -> int:
    """``python tests/_triton_aot_jobs.py --out FILE [--only gemm|chain]``: every job under THIS
    interpreter's triton (test_triton_aot.py runs it under the device's triton version this way)."""
    import argparse
    import json

    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--only", choices=("gemm", "chain", "optim"), default=None)
    p.add_argument("--workers", type=int, default=max(1, min(4, os.cpu_count() or 1)))
    args = p.parse_args(argv)
    import triton

    jobs = aot_jobs()
    if args.only == "gemm":
        jobs = [j for j in jobs if j["module"] == "linear_act" and j["kernel"] != "sum_splits_kernel"]
    elif args.only == "chain":
        jobs = [j for j in jobs if j["module"] == "mlp"]
    elif args.only == "optim":
        jobs = [j for j in jobs if j["module"] == "optim"]
    results = run_all(jobs, args.workers)
    with open(args.out, "w") as f:
        json.dump({"triton": triton.__version__, "jobs": jobs, "results": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    import sys as _sys

    _sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    raise SystemExit(main())
