"""The float64 reference helpers and per-dtype tolerances shared by the Triton test files.

Tolerances (relative; ``atol = tol * max|ref|``): float32 1e-5 (fp32 accumulation, no tf32
here); bfloat16 1.6e-2 (8-bit mantissa, two roundings); float16 2e-3 (11-bit mantissa).
"""
from __future__ import annotations

import torch

F32, BF16, F16 = torch.float32, torch.bfloat16, torch.float16
TOL = {F32: 1e-5, BF16: 1.6e-2, F16: 2e-3}


def _act64(z, activation):
    return {"none": lambda t: t, "relu": torch.relu, "sigmoid": torch.sigmoid}[activation](z)


def _act_grad64(y, activation):
    if activation == "relu":
        return (y > 0).double()
    if activation == "sigmoid":
        return y * (1 - y)
    return torch.ones_like(y)


def _close(actual, expected, dtype, what, tol=None):
    tol = TOL[dtype] if tol is None else tol
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert actual.dtype == dtype, f"{what}: dtype {actual.dtype} != {dtype}"
    finite = expected[expected.isfinite()] if expected.numel() else expected
    scale = finite.abs().max().item() if finite.numel() else 0.0
    scale = scale or 1.0  # an all-zero (or empty) reference: absolute tolerance
    torch.testing.assert_close(actual.double(), expected, rtol=tol, atol=tol * scale, equal_nan=True,
                               msg=lambda m: f"{what} ({dtype}): {m}")
