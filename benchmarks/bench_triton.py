"""The triton backend on a GPU: a pytest-benchmark suite and the timing sweep of gpu_check.sh.

pytest-benchmark (skipped without a GPU)::

    pytest benchmarks/bench_triton.py --benchmark-json out.json

Timing sweep (``benchmarks/gpu_check.sh`` runs it; writes one JSON file)::

    python -m benchmarks.bench_triton --out results.json [--budget-s 270] [--quick]

It compares, in one process on random data: aecomp's triton ``linear_act`` (through the public
``aecomp.ops`` call, dispatch included), torch eager (``F.linear`` + activation),
``torch.compile`` of the eager function (default mode) and with
``mode="max-autotune-no-cudagraphs"`` (max-autotune's GEMM search without CUDA graphs: timed
one layer at a time, a graph would add a copy of ``x`` into its static input buffer),
at the six layers of the reference autoencoder (784-128-64-32-64-128-784), batch 4096 and
65536, bfloat16 and float32, forward and forward+backward (gradients of x, W and b); then
``mse_loss``, and a 4096^3 bfloat16 layer against ``torch.mm``; then the whole reference
autoencoder as a chain: the training step's kernel work (``mlp_mse_loss`` forward + backward:
the loss and every parameter gradient, the reconstruction loss against the input) and the
chain forward alone, for the fused chain (``ops.mlp_mse_loss`` / ``ops.mlp``: one forward
kernel, one dgrad-chain kernel + six weight-gradient GEMMs), the triton backend one layer at a
time (six ``linear_act`` + ``mse_loss``), torch eager and ``torch.compile`` of the eager chain.
Times are medians of ``triton.testing.do_bench`` (CUDA events, after warm-up; gradients reset
to None each call). Ceilings measured in the same run: an 8192^3 bfloat16 ``torch.mm`` (TFLOP/s) and a 1 GiB
device-to-device copy (GB/s of read + write). Each row has the achieved TFLOP/s and GB/s
(minimum traffic: every operand read once, every result written once) and both fractions.

The sweep works in priority order and checks ``--budget-s`` before each measurement, so it
ends in time with the most useful numbers: triton and eager everywhere first, then compile,
then max-autotune (bfloat16 at batch 65536 first). The JSON is rewritten after every row.

``--smoke`` checks the script itself on a machine without a GPU: tiny shapes on CPU tensors
(run it with ``TRITON_INTERPRET=1``), a wall-clock timer instead of ``do_bench`` and the
``aot_eager`` compile backend. Its numbers mean nothing.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import sys
import time
from typing import Callable, Dict, List, Optional

import pytest
import torch
import torch.nn.functional as F

from benchmarks._layers import REFERENCE_LAYERS, eager_linear_act

HAS_GPU = torch.cuda.is_available()
DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}
# sizes of the sweep; --smoke shrinks them and moves to the CPU
SIZES = {"device": "cuda", "batches": (65536, 4096), "layers": REFERENCE_LAYERS, "gemm": 4096, "ceiling_mm": 8192,
         "copy_bytes": 2**30, "mse": (65536, 784), "smoke": False}


def _sync():
    if SIZES["device"] == "cuda":
        torch.cuda.synchronize()


# ----------------------------------------------------------------------------------------
# implementations under test
# ----------------------------------------------------------------------------------------
def triton_linear_act(x, w, b, act):
    from aecomp import ops

    return ops.linear_act(x, w, b, act, backend="triton")


def triton_mse(a, t):
    from aecomp import ops

    return ops.mse_loss(a, t, "mean", backend="triton")


def eager_mse(a, t):
    return F.mse_loss(a, t)


def triton_chain_loss(x, ws, bs, acts):
    """The fused chain with the fused MSE entry (what FusedStep runs on the triton backend)."""
    from aecomp import ops

    return ops.mlp_mse_loss(x, ws, bs, acts, None, "mean", backend="triton")


def triton_layers_loss(x, ws, bs, acts):
    """The triton backend one layer at a time: six linear_act calls and mse_loss."""
    from aecomp import ops

    h = x
    for w, b, a in zip(ws, bs, acts):
        h = ops.linear_act(h, w, b, a, backend="triton")
    return ops.mse_loss(h, x, "mean", backend="triton")


def eager_chain_loss(x, ws, bs, acts):
    h = x
    for w, b, a in zip(ws, bs, acts):
        h = eager_linear_act(h, w, b, a)
    return F.mse_loss(h, x)


def triton_chain(x, ws, bs, acts):
    from aecomp import ops

    return ops.mlp(x, ws, bs, acts, backend="triton")


def eager_chain(x, ws, bs, acts):
    h = x
    for w, b, a in zip(ws, bs, acts):
        h = eager_linear_act(h, w, b, a)
    return h


def _compiled(fn: Callable, mode: Optional[str]) -> Callable:
    torch._dynamo.reset()  # a fresh cache per shape: the recompile limit never sends us to eager
    if SIZES["smoke"]:
        return torch.compile(fn, backend="aot_eager", fullgraph=True)
    return torch.compile(fn, mode=mode, fullgraph=True)


def _inputs(batch, k, n, dtype, grad, device="cuda"):
    x = torch.randn(batch, k, device=device, dtype=dtype).requires_grad_(grad)
    w = (torch.randn(n, k, device=device) / math.sqrt(k)).to(dtype).requires_grad_(grad)
    b = (torch.rand(n, device=device) * 0.2 - 0.1).to(dtype).requires_grad_(grad)
    g = torch.randn(batch, n, device=device, dtype=dtype)
    return x, w, b, g


# ----------------------------------------------------------------------------------------
# pytest-benchmark suite
# ----------------------------------------------------------------------------------------
gpu = pytest.mark.skipif(not HAS_GPU, reason="needs a CUDA GPU")
_LAYER_IDS = [f"{k}x{n}-{a}" for k, n, a in REFERENCE_LAYERS]


def _sync_step(fn):
    def step():
        fn()
        torch.cuda.synchronize()

    return step


@gpu
@pytest.mark.parametrize("impl", ["triton", "eager"])
@pytest.mark.parametrize("layer", REFERENCE_LAYERS, ids=_LAYER_IDS)
def test_linear_act_fwd_bwd_bf16_65536(benchmark, layer, impl):
    k, n, act = layer
    fn = triton_linear_act if impl == "triton" else eager_linear_act
    x, w, b, g = _inputs(65536, k, n, torch.bfloat16, True)

    def run():
        x.grad = w.grad = b.grad = None
        fn(x, w, b, act).backward(g)

    run()  # autotune / warm-up outside the measurement
    benchmark.pedantic(_sync_step(run), rounds=30, warmup_rounds=3)


@gpu
@pytest.mark.parametrize("impl", ["triton", "eager"])
@pytest.mark.parametrize("layer", REFERENCE_LAYERS, ids=_LAYER_IDS)
def test_linear_act_fwd_bf16_4096(benchmark, layer, impl):
    k, n, act = layer
    fn = triton_linear_act if impl == "triton" else eager_linear_act
    x, w, b, _ = _inputs(4096, k, n, torch.bfloat16, False)
    fn(x, w, b, act)
    benchmark.pedantic(_sync_step(lambda: fn(x, w, b, act)), rounds=50, warmup_rounds=5)


@gpu
@pytest.mark.parametrize("impl", ["triton", "eager"])
def test_mse_fwd_bwd_65536x784(benchmark, impl):
    fn = triton_mse if impl == "triton" else eager_mse
    a = torch.rand(65536, 784, device="cuda", requires_grad=True)
    t = torch.rand(65536, 784, device="cuda")

    def run():
        a.grad = None
        fn(a, t).backward()

    run()
    benchmark.pedantic(_sync_step(run), rounds=30, warmup_rounds=3)


@gpu
@pytest.mark.parametrize("impl", ["triton", "torch.mm"])
def test_gemm_4096_bf16(benchmark, impl):
    x = torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16)
    fn = (lambda: triton_linear_act(x, w, None, "none")) if impl == "triton" else (lambda: torch.mm(x, w.t()))
    fn()
    benchmark.pedantic(_sync_step(fn), rounds=30, warmup_rounds=3)


# ----------------------------------------------------------------------------------------
# timing sweep
# ----------------------------------------------------------------------------------------
class Sweep:
    def __init__(self, out: str, budget_s: float, quick: bool):
        self.out = out
        self.deadline = time.monotonic() + budget_s
        self.quick = quick
        self.rows: List[Dict] = []
        self.ceilings: Dict[str, float] = {}
        self.stages: Dict[str, float] = {}
        self.skipped: List[str] = []

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def bench(self, fn: Callable, grad_to_none=None) -> Dict[str, float]:
        from triton.testing import do_bench

        fn()  # compile / autotune / warm-up outside the measurement
        _sync()
        if SIZES["smoke"]:
            times = []
            for _ in range(3):
                for t in grad_to_none or ():
                    t.grad = None
                t0 = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t0) * 1e3)
            times.sort()
            return {"ms": times[1], "ms_p20": times[0], "ms_p80": times[2]}
        med, lo, hi = do_bench(fn, warmup=25, rep=100 if not self.quick else 40, grad_to_none=grad_to_none,
                               quantiles=[0.5, 0.2, 0.8])
        return {"ms": med, "ms_p20": lo, "ms_p80": hi}

    def add(self, row: Dict, fn: Callable, flops: float, nbytes: float, grad_to_none=None, need_s: float = 0.0):
        if self.left() < need_s:
            self.skipped.append(" ".join(f"{k}={v}" for k, v in row.items()))
            return
        t0 = time.monotonic()
        try:
            row.update(self.bench(fn, grad_to_none))
            s = row["ms"] * 1e-3
            row["tflops"] = flops / s / 1e12
            row["gbps"] = nbytes / s / 1e9
            if "mm_tflops" in self.ceilings:
                row["frac_mm_ceiling"] = row["tflops"] / self.ceilings["mm_tflops"]
            if "copy_gbps" in self.ceilings:
                row["frac_copy_ceiling"] = row["gbps"] / self.ceilings["copy_gbps"]
        except Exception as exc:  # one broken baseline must not lose the others
            row["error"] = f"{type(exc).__name__}: {str(exc)[:400]}"
        row["wall_s"] = round(time.monotonic() - t0, 2)
        self.rows.append(row)
        print(json.dumps(row), flush=True)
        self.save()  # a timeout kill loses nothing measured

    def save(self) -> None:
        from aecomp.kernels import linear_act as la

        tuned = {}
        for (kernel, family, esize), autotuner in la._TUNED.items():
            for key, cfg in getattr(autotuner, "cache", {}).items():
                tuned[f"{kernel}/{family}/{esize}B/{key}"] = str(cfg)
        import triton

        doc = {
            "gpu": torch.cuda.get_device_name() if HAS_GPU else "none (smoke run on CPU)",
            "capability": list(torch.cuda.get_device_capability()) if HAS_GPU else None,
            "torch": torch.__version__, "cuda": torch.version.cuda, "triton": triton.__version__,
            "python": platform.python_version(), "allow_tf32": torch.backends.cuda.matmul.allow_tf32,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "ceilings": self.ceilings, "stages_s": self.stages,
            "rows": self.rows, "skipped_for_time": self.skipped, "triton_autotune_choices": tuned,
        }
        with open(self.out, "w") as f:
            json.dump(doc, f, indent=1)

    def stage(self, name: str, fn: Callable) -> None:
        t0 = time.monotonic()
        print(f"== {name} ({self.left():.0f} s left)", flush=True)
        fn()
        self.stages[name] = round(time.monotonic() - t0, 1)
        self.save()

    # stages ------------------------------------------------------------------------------
    def measure_ceilings(self) -> None:
        dev, n = SIZES["device"], SIZES["ceiling_mm"]
        a = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
        bmat = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
        t = self.bench(lambda: torch.mm(a, bmat))["ms"] * 1e-3
        self.ceilings["mm_tflops"] = 2 * n**3 / t / 1e12
        del a, bmat
        src = torch.empty(SIZES["copy_bytes"], dtype=torch.uint8, device=dev)
        dst = torch.empty_like(src)
        t = self.bench(lambda: dst.copy_(src))["ms"] * 1e-3
        self.ceilings["copy_gbps"] = 2 * src.numel() / t / 1e9

    def layer_rows(self, impls: Dict[str, Callable], batches, dtypes, modes, need_s: float, make_fn=None) -> None:
        for dname in dtypes:
            dtype = DTYPES[dname]
            for batch in batches:
                for k, n, act in SIZES["layers"]:
                    for mode in modes:
                        grad = mode == "fwd+bwd"
                        x, w, b, g = _inputs(batch, k, n, dtype, grad, SIZES["device"])
                        esz = x.element_size()
                        fwd_bytes = (batch * k + n * k + n + batch * n) * esz
                        # backward reads g, y, x, W; writes dx, dW, db
                        bwd_bytes = (2 * batch * n + batch * k + n * k + batch * k + n * k + n) * esz
                        flops = 2 * batch * n * k * (3 if grad else 1)
                        nbytes = fwd_bytes + (bwd_bytes if grad else 0)
                        for impl, base_fn in impls.items():
                            if self.left() < need_s:
                                self.skipped.append(f"{impl} {dname} {batch} {k}x{n} {mode}")
                                continue
                            try:
                                fn = make_fn(base_fn) if make_fn else base_fn
                            except Exception as exc:
                                self.rows.append({"op": "linear_act", "impl": impl, "error": repr(exc)[:400]})
                                continue
                            if grad:
                                run = (lambda fn=fn: fn(x, w, b, act).backward(g))
                            else:
                                run = (lambda fn=fn: fn(x, w, b, act))
                            row = {"op": "linear_act", "impl": impl, "dtype": dname, "batch": batch, "in": k,
                                   "out": n, "act": act, "mode": mode}
                            self.add(row, run, flops, nbytes, [x, w, b] if grad else None, need_s)

    def mse_rows(self) -> None:
        shape = SIZES["mse"]
        for dname in DTYPES:
            dtype = DTYPES[dname]
            a = torch.rand(shape, device=SIZES["device"], dtype=dtype, requires_grad=True)
            t = torch.rand(shape, device=SIZES["device"], dtype=dtype)
            n = a.numel() * a.element_size()
            for impl, fn in (("triton", triton_mse), ("eager", eager_mse)):
                self.add({"op": "mse_loss", "impl": impl, "dtype": dname, "shape": list(shape), "mode": "fwd"},
                         lambda fn=fn: fn(a, t), 3 * a.numel(), 2 * n)
                self.add({"op": "mse_loss", "impl": impl, "dtype": dname, "shape": list(shape), "mode": "fwd+bwd"},
                         lambda fn=fn: fn(a, t).backward(), 6 * a.numel(), 5 * n, [a])

    def chain_rows(self, with_compile: bool) -> None:
        """The reference autoencoder as one chain: loss + backward ("train step") and forward.

        FLOPs: 2 M sum(k n) forward, 3x that with the backward (dgrad + wgrad; the first
        layer's dgrad is not needed and not counted). Bytes: the minimum any implementation
        must move -- x read once, the parameters read and (train step) their gradients
        written; the forward also writes the output.
        """
        layers = SIZES["layers"]
        acts = [a for _, _, a in layers]
        dev = SIZES["device"]
        n_params = sum(k * n + n for k, n, _ in layers)
        mk = sum(k * n for k, n, _ in layers)
        for dname in DTYPES:
            dtype = DTYPES[dname]
            for batch in SIZES["batches"]:
                x = torch.rand(batch, layers[0][0], device=dev, dtype=dtype)
                ws = [(torch.randn(n, k, device=dev) / math.sqrt(k)).to(dtype).requires_grad_() for k, n, _ in layers]
                bs = [(torch.rand(n, device=dev) * 0.2 - 0.1).to(dtype).requires_grad_() for _, n, _ in layers]
                params = ws + bs
                esz = x.element_size()
                impls = {"triton fused chain": (triton_chain_loss, triton_chain),
                         "triton per layer": (triton_layers_loss, None),
                         "eager": (eager_chain_loss, eager_chain)}
                if with_compile:
                    impls = {"compile": (eager_chain_loss, eager_chain)}
                for impl, (loss_fn, fwd_fn) in impls.items():
                    if with_compile:
                        loss_fn = _compiled(loss_fn, None)
                        fwd_fn = _compiled(fwd_fn, None)
                    row = {"op": "autoencoder chain", "impl": impl, "dtype": dname, "batch": batch,
                           "chain": "-".join(str(k) for k, _, _ in layers) + f"-{layers[-1][1]}"}
                    self.add(dict(row, mode="train step (loss fwd+bwd)"),
                             lambda f=loss_fn: f(x, ws, bs, acts).backward(),
                             3 * 2 * batch * mk, (batch * layers[0][0] + 2 * n_params) * esz, params,
                             need_s=40 if with_compile else 5)
                    if fwd_fn is not None:
                        with torch.no_grad():
                            self.add(dict(row, mode="fwd"), lambda f=fwd_fn: f(x, ws, bs, acts),
                                     2 * batch * mk, (batch * (layers[0][0] + layers[-1][1]) + n_params) * esz,
                                     need_s=40 if with_compile else 5)

    def gemm_rows(self) -> None:
        dev, m = SIZES["device"], SIZES["gemm"]
        x = torch.randn(m, m, device=dev, dtype=torch.bfloat16)
        w = torch.randn(m, m, device=dev, dtype=torch.bfloat16)
        b = torch.randn(m, device=dev, dtype=torch.bfloat16)
        flops, nbytes = 2 * m**3, 3 * m * m * 2
        cases = [
            ("triton", "none, no bias", lambda: triton_linear_act(x, w, None, "none")),
            ("torch.mm", "none, no bias", lambda: torch.mm(x, w.t())),
            ("triton", "relu + bias", lambda: triton_linear_act(x, w, b, "relu")),
            ("eager", "relu + bias", lambda: eager_linear_act(x, w, b, "relu")),
        ]
        for impl, what, fn in cases:
            self.add({"op": f"gemm {m}^3", "impl": impl, "dtype": "bfloat16", "what": what}, fn, flops, nbytes)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True,
                   help="JSON file to write, or a directory (then bench_triton_<GPU name>.json in it)")
    p.add_argument("--budget-s", type=float, default=270.0, help="stop starting new measurements after this")
    p.add_argument("--quick", action="store_true", help="shorter do_bench repetitions")
    p.add_argument("--smoke", action="store_true",
                   help="check the script without a GPU: tiny CPU shapes, needs TRITON_INTERPRET=1")
    args = p.parse_args(argv)
    if args.smoke:
        SIZES.update(device="cpu", batches=(33,), gemm=64, ceiling_mm=64, copy_bytes=2**16, mse=(33, 49), smoke=True,
                     layers=[(max(1, k // 16), max(1, n // 16), a) for k, n, a in REFERENCE_LAYERS])
    elif not HAS_GPU:
        print("bench_triton: no CUDA GPU; nothing to time", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    out = args.out
    if os.path.isdir(out):
        out = os.path.join(out, f"bench_triton_{gpu_tag()}.json")
    s = Sweep(out, args.budget_s, args.quick)
    both = ("fwd", "fwd+bwd")
    s.stage("ceilings", s.measure_ceilings)
    s.stage("gemm 4096^3 bf16", s.gemm_rows)
    batches = SIZES["batches"]
    s.stage("layers: triton + eager", lambda: s.layer_rows(
        {"triton": triton_linear_act, "eager": eager_linear_act}, batches, DTYPES, both, need_s=5))
    s.stage("mse", s.mse_rows)
    s.stage("autoencoder chain: fused vs per layer vs eager", lambda: s.chain_rows(False))
    s.stage("layers: torch.compile", lambda: s.layer_rows(
        {"compile": eager_linear_act}, batches, DTYPES, both, need_s=40, make_fn=lambda f: _compiled(f, None)))
    s.stage("autoencoder chain: torch.compile", lambda: s.chain_rows(True))
    s.stage("layers: torch.compile max-autotune", lambda: s.layer_rows(
        {"compile-max-autotune": eager_linear_act}, batches, ("bfloat16",), both, need_s=90,
        make_fn=lambda f: _compiled(f, "max-autotune-no-cudagraphs")))
    print(f"bench_triton: wrote {out} ({len(s.rows)} rows, {len(s.skipped)} skipped for time)")
    return 0


def gpu_tag() -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", torch.cuda.get_device_name()).strip("_") if HAS_GPU else "cpu_smoke"


if __name__ == "__main__":
    sys.exit(main())
