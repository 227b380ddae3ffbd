"""Backend selection: argument > use_backend > AECOMP_BACKEND > automatic."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import aecomp
from aecomp import _backend, ops


def _which(monkeypatch_env=None, **kw):
    """Name of the backend that would run linear_act on a float32 CPU tensor."""
    impl = _backend.resolve("linear_act", torch.device("cpu"), torch.float32, kw.get("explicit"))
    for name, b in _backend._REGISTRY.items():
        if b.ops.get("linear_act") is impl:
            return name
    raise AssertionError("unknown impl")


def test_available_backends_lists_all_four_with_reasons():
    av = aecomp.available_backends()
    assert set(av) == {"reference", "cpu", "triton", "cuda"}
    assert av["reference"][0] is True
    for name, (ok, reason) in av.items():
        assert isinstance(ok, bool) and isinstance(reason, str) and reason


def test_precedence(monkeypatch):
    monkeypatch.delenv("AECOMP_BACKEND", raising=False)
    auto = _which()
    assert auto == ("cpu" if aecomp.available_backends()["cpu"][0] else "reference")
    monkeypatch.setenv("AECOMP_BACKEND", "reference")
    assert _which() == "reference"
    if aecomp.available_backends()["cpu"][0]:
        with aecomp.use_backend("cpu"):
            assert _which() == "cpu"  # context beats the environment
            assert _which(explicit="reference") == "reference"  # argument beats the context
            with aecomp.use_backend(None):
                assert _which() == "reference"  # None: back to env/automatic
        assert _which() == "reference"


def test_unknown_backend_name():
    with pytest.raises(ValueError, match="unknown backend 'fast'"):
        ops.linear_act(torch.randn(2, 2), torch.randn(2, 2), backend="fast")
    with pytest.raises(ValueError, match="unknown backend"):
        with aecomp.use_backend("gpu"):
            pass


def test_unavailable_backend_says_how_to_get_it():
    with pytest.raises(aecomp.BackendUnavailableError, match="cuda.*(not available|does not run)"):
        ops.linear_act(torch.randn(2, 2), torch.randn(2, 2), backend="cuda")


def test_backend_on_wrong_device(monkeypatch):
    if not torch.cuda.is_available():
        pytest.skip("needs a GPU")
    with pytest.raises(aecomp.BackendUnavailableError, match="does not run on cuda"):
        ops.linear_act(torch.randn(2, 2, device="cuda"), torch.randn(2, 2, device="cuda"), backend="cpu")


def test_env_var_is_read_per_call(monkeypatch):
    monkeypatch.setenv("AECOMP_BACKEND", "cuda")
    with pytest.raises(aecomp.BackendUnavailableError):
        ops.mse_loss(torch.randn(3), torch.randn(3))
    monkeypatch.setenv("AECOMP_BACKEND", "reference")
    ops.mse_loss(torch.randn(3), torch.randn(3))


def test_aecomp_info_command():
    out = subprocess.run([sys.executable, "-m", "aecomp", "info"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    for name in ("reference", "cpu", "triton", "cuda"):
        assert name in out.stdout
    assert "automatic selection" in out.stdout
