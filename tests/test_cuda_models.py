"""The default models on the cuda backend, in one fresh process, in the order that once broke:
the ``Autoencoder`` (784-128-64-32-64-128-784; its bfloat16 tensor-core chain asks for 65536 B of
dynamic shared memory) then the ``VAE`` (784-256-32; its decoder chain 32-256-784 asks the same
kernel for 98304 B, over the 48 KiB default: the opt-in attribute must be raised per kernel and
device, or that launch fails with cudaErrorInvalidValue and every later one with it), then the
``Autoencoder`` again (a smaller need after a larger one). Issue 13 fixed this and replayed it on
the CPU emulator (``csrc/cuda/harness/emulate_mlp.cpp``, ``replay_default_models``); this is the
same sequence on the GPU.

Each model: the forward output and, through autograd, a loss and every parameter gradient,
against a float64 copy of the model on the ``reference`` backend. The Autoencoder's loss is its
own (MSE); the VAE's is made deterministic (``z = mu`` instead of a sample: the noise drawn in
bfloat16 and in float64 would differ): ``mse(decode(mu), x) + mean(exp(logvar) - logvar)``.

Why a fresh process: in a test session another test may already have raised the attribute of
that kernel to 98304 B, which hides the bug. On the CPU (no GPU) the same function runs in this
process on the ``cpu`` backend, so its checks are exercised even where the GPU part is owed.

Tolerance: relative to the largest magnitude of the reference, as ``tests/test_cuda_mlp.py``
(float32 1e-4, bfloat16 4e-2: one rounding per layer of a 6-layer chain).
"""
from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import aecomp

from .conftest import requires_cpu_ext
from .test_cuda_mlp import _close, gpu

ROOT = Path(__file__).resolve().parents[1]
BATCH = 4096


def _loss(model, x):
    from aecomp.models import VAE

    if isinstance(model, VAE):
        mu, logvar = model.posterior(x)
        out = model.decode(mu)
        return out, F.mse_loss(out.double(), x.double()) + (logvar.double().exp() - logvar.double()).mean()
    out = model(x)
    return out, model.loss(x)


def default_models_in_order(device: str, backend: str, dtype: torch.dtype, batch: int = BATCH) -> list:
    """Autoencoder, VAE, Autoencoder (defaults), each checked against float64 on the reference
    backend; returns the names checked. Raises AssertionError naming the model and tensor."""
    from aecomp.models import VAE, Autoencoder

    done = []
    for name, make in (("Autoencoder", Autoencoder), ("VAE", VAE), ("Autoencoder again", Autoencoder)):
        torch.manual_seed(len(done))
        model = make().to(device=device, dtype=dtype)
        ref = copy.deepcopy(model).double()
        x = torch.rand(batch, 784, device=device).to(dtype)
        with aecomp.use_backend(backend):
            out, loss = _loss(model, x)
            loss.backward()
        with aecomp.use_backend("reference"):
            ref_out, ref_loss = _loss(ref, x.double())
            ref_loss.backward()
        _close(out.detach(), ref_out.detach(), dtype, f"{name}: output")
        _close(loss.detach(), ref_loss.detach(), dtype, f"{name}: loss")
        for (pname, p), q in zip(model.named_parameters(), ref.parameters()):
            assert p.grad is not None, f"{name}: {pname} got no gradient"
            _close(p.grad, q.grad, dtype, f"{name}: grad of {pname}")
        done.append(name)
    if device == "cuda":
        torch.cuda.synchronize()
    return done


@gpu
def test_autoencoder_then_vae_on_the_cuda_backend_in_one_process():
    code = ("import torch; from tests.test_cuda_models import default_models_in_order as f; "
            "print('CHECKED', f('cuda', 'cuda', torch.bfloat16))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-6000:]
    assert "CHECKED ['Autoencoder', 'VAE', 'Autoencoder again']" in proc.stdout, proc.stdout[-6000:]


@requires_cpu_ext
def test_the_same_sequence_on_the_cpu_backend():
    assert default_models_in_order("cpu", "cpu", torch.float32, batch=33) == ["Autoencoder", "VAE",
                                                                               "Autoencoder again"]


def test_the_check_catches_a_wrong_loss(monkeypatch):
    """The comparison can fail: a loss 1% off on the backend under test (not the float64 reference) is caught."""
    from aecomp.models import Autoencoder

    real = Autoencoder.loss
    monkeypatch.setattr(Autoencoder, "loss", lambda self, x: real(self, x) * (1.01 if x.dtype != torch.float64 else 1))
    with pytest.raises(AssertionError, match="Autoencoder: loss"):
        default_models_in_order("cpu", "reference", torch.float32, batch=9)
