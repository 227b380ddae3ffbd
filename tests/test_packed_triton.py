"""The Triton packed-weight kernel (aecomp/kernels/packed.py): under Triton's interpreter on CPU
tensors against dequantize-then-float-GEMM in float64 (odd shapes, int8 and codebook, pruned
codebooks, non-contiguous input, every activation), and compiled for sm_90 without a GPU.

Tolerance (float32, "ieee" dot): atol = rtol = 1e-5 * (1 + max|ref|), float32 accumulation of
K products with the scale applied after the sum.
"""
from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import sys

import pytest
import torch

pytest.importorskip("triton")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _triton_interp_runner import interpreted  # noqa: E402

ACTS = ("none", "relu", "sigmoid")


def _ref(x, w, b, act):
    y = x.double() @ w.double().T
    if b is not None:
        y = y + b.double()
    return torch.relu(y) if act == "relu" else torch.sigmoid(y) if act == "sigmoid" else y


def _close(got, want):
    tol = 1e-5 * (1 + float(want.abs().max()) if want.numel() else 1.0)
    assert got.shape == want.shape
    assert (got.double() - want).abs().max() <= tol if got.numel() else True


@interpreted
@pytest.mark.parametrize("m,n,k", [(1, 1, 1), (7, 17, 33), (33, 10, 64), (5, 40, 100)])
def test_int8_layer_matches_dequantized_gemm(m, n, k):
    from aecomp.kernels.packed import gpu_layer, packed_mlp

    for act in ACTS:
        q = torch.randint(-127, 128, (n, k), dtype=torch.int16).to(torch.int8)
        s = torch.rand(n) * 0.02 + 1e-3
        b = torch.randn(n)
        x = torch.randn(m, k)
        got = packed_mlp(x, [gpu_layer("int8", q, s, b, act)])
        _close(got, _ref(x, q.float() * s[:, None], b, act))


@interpreted
@pytest.mark.parametrize("bits,pruned", [(2, False), (4, True), (5, False), (7, True)])
def test_codebook_layer_matches_dequantized_gemm(bits, pruned):
    from aecomp.kernels.packed import gpu_layer, packed_mlp

    n, k, m = 19, 37, 6
    codes = torch.randint(0, 1 << bits, (n, k)).to(torch.uint8)
    cb = torch.randn(1 << bits) * 0.1
    mask = torch.rand(n, k) > 0.7 if pruned else None
    x = torch.randn(m, k)
    got = packed_mlp(x, [gpu_layer("codebook", codes, cb, None, "relu", mask=mask)])
    w = cb[codes.long()] * (mask if mask is not None else 1)
    _close(got, _ref(x, w, None, "relu"))


@interpreted
def test_chain_non_contiguous_and_leading_dims():
    from aecomp.kernels.packed import gpu_layer, packed_mlp

    q1 = torch.randint(-127, 128, (20, 13), dtype=torch.int16).to(torch.int8)
    s1 = torch.rand(20) * 0.05
    codes = torch.randint(0, 16, (3, 20)).to(torch.uint8)
    cb = torch.randn(16)
    layers = [gpu_layer("int8", q1, s1, torch.randn(20), "relu"), gpu_layer("codebook", codes, cb, None, "none")]
    base = torch.randn(2, 4, 13, 2)
    x = base[..., 0]
    got = packed_mlp(x, layers)
    h = _ref(x.reshape(-1, 13), q1.float() * s1[:, None], layers[0].bias, "relu")
    want = _ref(h, cb[codes.long()], None, "none").reshape(2, 4, 3)
    _close(got, want)
    with pytest.raises(ValueError, match=r"x must be \[M, 13\]"):
        packed_mlp(torch.randn(3, 12), layers)
    with pytest.raises(RuntimeError, match="inference-only"):
        packed_mlp(torch.randn(3, 13, requires_grad=True), layers)
    assert packed_mlp(torch.randn(0, 13), layers).shape == (0, 3)


def test_packed_kernels_compile_for_hopper():
    import _triton_aot_jobs as aot

    jobs = aot.packed_jobs()
    assert {j["label"] for j in jobs} <= {j["label"] for j in aot.aot_jobs()}
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(2, mp_context=ctx, initializer=aot.init_worker) as pool:
        results = list(pool.map(aot.compile_job, jobs))
    for job, r in zip(jobs, results):
        assert r["ok"], f"{r['label']}:\n{r.get('error')}"
        assert r["shared"] <= aot.HOPPER_SMEM_BYTES
        # wgmma needs 64-row tiles (a warpgroup); the batch-16 tile (inference) uses mma.sync
        if r["dtype"] == "bfloat16" and job["constexprs"]["BLOCK_M"] >= 64:
            assert r["wgmma"], f"{r['label']}: no wgmma in the PTX"
        if "stack_bytes" in r:
            assert r["stack_bytes"] == 0, f"{r['label']}: spills registers ({r['stack_bytes']} stack bytes)"
    print("\n" + "\n".join(f"{r['label']:48s} smem {r['shared']:>6} regs {r.get('registers', '-')} "
                           f"stack {r.get('stack_bytes', '-')}" for r in results))
