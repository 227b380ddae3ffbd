"""Bad input raises an error that names the op, the argument and the shapes, on every backend."""
from __future__ import annotations

import re

import pytest
import torch

import aecomp
from aecomp import ops

BACKENDS = [b for b in ("reference", "cpu") if aecomp.available_backends()[b][0]]


def raises(exc, *patterns):
    """pytest.raises whose message must contain every regex in patterns."""
    ctx = pytest.raises(exc)

    class _Check:
        def __enter__(self):
            self.info = ctx.__enter__()
            return self.info

        def __exit__(self, *a):
            handled = ctx.__exit__(*a)
            msg = str(self.info.value)
            for p in patterns:
                assert re.search(p, msg), f"{p!r} not in error message: {msg}"
            return handled

    return _Check()


@pytest.mark.parametrize("backend", BACKENDS)
def test_linear_act_bad_shapes(backend):
    x, w, b = torch.randn(4, 7), torch.randn(5, 7), torch.randn(5)
    with raises(ValueError, "linear_act", r"x\.shape\[-1\] = 6", r"weight\.shape\[1\] = 7", r"\[4, 6\]", r"\[5, 7\]"):
        ops.linear_act(torch.randn(4, 6), w, b, backend=backend)
    with raises(ValueError, "linear_act", "weight", r"\[5, 7, 1\]"):
        ops.linear_act(x, torch.randn(5, 7, 1), b, backend=backend)
    with raises(ValueError, "linear_act", "bias", r"\[5\]", r"\[4\]"):
        ops.linear_act(x, w, torch.randn(4), backend=backend)
    with raises(ValueError, "linear_act", "x", r"\[\]"):
        ops.linear_act(torch.tensor(1.0), w, b, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_linear_act_bad_dtypes_and_names(backend):
    x, w, b = torch.randn(4, 7), torch.randn(5, 7), torch.randn(5)
    with raises(TypeError, "linear_act", "weight", "float64", "float32"):
        ops.linear_act(x, w.double(), b, backend=backend)
    with raises(TypeError, "linear_act", "bias", "float64"):
        ops.linear_act(x, w, b.double(), backend=backend)
    with raises(ValueError, "linear_act", "activation", "'tanh'"):
        ops.linear_act(x, w, b, "tanh", backend=backend)
    with raises(TypeError, "linear_act", "x", "int64"):
        ops.linear_act(torch.ones(4, 7, dtype=torch.long), w.long(), None, backend=backend)


def test_cpu_backend_names_unsupported_half_dtype():
    if "cpu" not in BACKENDS:
        pytest.skip("aecomp._C not built")
    with raises(TypeError, "linear_act", "x", "BFloat16|bfloat16", "reference"):
        ops.linear_act(torch.randn(2, 3).bfloat16(), torch.randn(4, 3).bfloat16(), backend="cpu")
    # automatic selection sends bfloat16 CPU tensors to the reference backend instead
    y = ops.linear_act(torch.randn(2, 3).bfloat16(), torch.randn(4, 3).bfloat16())
    assert y.dtype == torch.bfloat16


@pytest.mark.parametrize("backend", BACKENDS)
def test_mse_bad_input(backend):
    a = torch.randn(4, 3)
    with raises(ValueError, "mse_loss", "target", r"\[4, 3\]", r"\[4, 1\]"):
        ops.mse_loss(a, torch.randn(4, 1), backend=backend)
    with raises(TypeError, "mse_loss", "target", "float64"):
        ops.mse_loss(a, a.double(), backend=backend)
    with raises(ValueError, "mse_loss", "reduction", "'avg'"):
        ops.mse_loss(a, a, "avg", backend=backend)


def test_not_a_tensor():
    with raises(TypeError, "linear_act", "x", "list"):
        ops.linear_act([[1.0]], torch.randn(1, 1))
    with raises(TypeError, "mse_loss", "input", "ndarray"):
        import numpy as np

        ops.mse_loss(np.zeros(3), torch.zeros(3))


def test_mixed_devices_are_named():
    meta_w = torch.empty(5, 7, device="meta")
    with raises(ValueError, "linear_act", "weight", "meta", "cpu"):
        ops.linear_act(torch.randn(4, 7), meta_w, backend="reference")
