"""``aecomp.nn.accelerate`` on models written the usual way.

Run: ``.venv/bin/python -m pytest tests/test_accelerate.py -q``.

The data are the sklearn digits (8x8, scaled to [0, 1]) upsampled to 28x28 = 784 features.

Tolerances (float32): outputs and gradients of one step ``rtol = atol = 1e-5`` (the reference
backend computes exactly what torch computes; the C++ kernels sum in another order, an error
of about sqrt(K) * 6e-8 relative for K <= 784 terms). The loss curve over 50 Adam steps:
``rtol = 1e-3`` -- Adam divides by sqrt(v), so a rounding difference in a small gradient is
amplified step after step, and a pre-activation within rounding of 0 can take the other ReLU
branch; 1e-3 is still two orders of magnitude below the change of the loss over the run.
"""
from __future__ import annotations

import copy
import os
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import aecomp
from aecomp._backend import get_backend
from aecomp.nn import AccelerateReport, FusedLinear, FusedMLP, FusedMSELoss, FusedSequential, accelerate

# The backends that run float32 CPU tensors here, less triton: on the CPU it runs only under the
# Triton interpreter, far too slow for 784-wide models trained for 50 steps (tests/test_nn.py
# and tests/test_models.py run it on small shapes).
BACKENDS = [name for name, (ok, _) in aecomp.available_backends().items()
            if ok and name != "triton" and get_backend(name).takes("cpu", torch.float32)]
TOL = dict(rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def digits784():
    from sklearn.datasets import load_digits

    x = torch.tensor(load_digits().data, dtype=torch.float32) / 16.0
    x = F.interpolate(x.view(-1, 1, 8, 8), size=(28, 28), mode="bilinear", align_corners=False)
    return x.reshape(-1, 784).clamp(0, 1)


class PlainAutoencoder(nn.Module):
    """The reference autoencoder, written the usual way."""

    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(),
                                     nn.Linear(64, 32))
        self.decoder = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 128), nn.ReLU(),
                                     nn.Linear(128, 784), nn.Sigmoid())
        self.criterion = nn.MSELoss()

    def forward(self, x):
        return self.decoder(self.encoder(x))

    def loss(self, x):
        return self.criterion(self(x), x)


class Classifier(nn.Module):
    def __init__(self, encoder):
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        return self.head(self.encoder(x))


def _grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters()}


def _independent(plain, **kw):
    """accelerate() shares the parameters (like torch.compile); a test that compares gradients or
    training of the two models needs a fused model of its own."""
    return accelerate(copy.deepcopy(plain), **kw)


@pytest.mark.parametrize("backend", BACKENDS)
def test_accelerate_reference_autoencoder_same_outputs_and_grads(backend, digits784):
    torch.manual_seed(0)
    plain = PlainAutoencoder()
    shared = accelerate(plain, backend=backend)
    assert all(p is q for p, q in zip(plain.parameters(), shared.parameters()))  # like torch.compile
    fast = _independent(plain, backend=backend)
    report = fast.aecomp_report
    assert isinstance(report, AccelerateReport)
    # the original is untouched (inplace=False), the copy is rewritten
    assert type(plain.encoder[0]) is nn.Linear and type(plain.criterion) is nn.MSELoss
    assert [type(m).__name__ for m in fast.encoder] == ["FusedLinear", "Identity", "FusedLinear", "Identity",
                                                        "FusedLinear"]
    assert [m.activation for m in fast.decoder if isinstance(m, FusedLinear)] == ["relu", "relu", "sigmoid"]
    assert [m.activation for m in fast.encoder if isinstance(m, FusedLinear)] == ["relu", "relu", "none"]
    assert isinstance(fast.criterion, FusedMSELoss)
    assert all(m.backend == backend for m in fast.modules() if isinstance(m, (FusedLinear, FusedMSELoss)))
    # same keys, same values, but copies
    assert list(fast.state_dict()) == list(plain.state_dict())
    for (n, p), (_, q) in zip(plain.named_parameters(), fast.named_parameters()):
        assert p is not q and torch.equal(p, q), n
    assert type(fast.encoder) is FusedSequential and type(fast.decoder) is FusedSequential
    assert len(report.replaced) == 9 and not report.left_alone
    text = str(report)
    assert "encoder.0: Linear(784->128) + ReLU -> FusedLinear(784->128, relu)" in text
    assert "decoder.4: Linear(128->784) + Sigmoid -> FusedLinear(128->784, sigmoid)" in text
    assert "criterion: MSELoss(mean) -> FusedMSELoss(mean)" in text
    assert "encoder: Sequential -> FusedSequential(layers 0-4 (3) as one mlp op)" in text

    x = digits784[:64]
    torch.testing.assert_close(fast(x), plain(x), **TOL)
    plain.loss(x).backward()
    fast.loss(x).backward()
    g1, g2 = _grads(plain), _grads(fast)
    for n in g1:
        torch.testing.assert_close(g2[n], g1[n], **TOL, msg=lambda m: f"{n}: {m}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_accelerate_same_loss_curve_over_50_adam_steps(backend, digits784):
    torch.manual_seed(1)
    plain = PlainAutoencoder()
    fast = _independent(plain, backend=backend)
    curves = []
    for model in (plain, fast):
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        gen = torch.Generator().manual_seed(2)
        curve = []
        for _ in range(50):
            idx = torch.randint(0, digits784.shape[0], (64,), generator=gen)
            loss = model.loss(digits784[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            curve.append(loss.item())
        curves.append(torch.tensor(curve))
    torch.testing.assert_close(curves[1], curves[0], rtol=1e-3, atol=0)
    assert curves[0][-5:].mean() < 0.5 * curves[0][:5].mean()  # it did learn


def test_accelerate_inplace_keeps_the_parameter_objects_and_the_optimizer():
    torch.manual_seed(2)
    model = PlainAutoencoder()
    params = list(model.parameters())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    same = accelerate(model, inplace=True)
    report = same.aecomp_report
    assert same is model and isinstance(model.encoder[0], FusedLinear)
    assert all(p is q for p, q in zip(params, model.parameters()))
    before = model.encoder[0].weight.detach().clone()
    model.loss(torch.rand(8, 784)).backward()
    opt.step()  # the optimizer built before the call trains the fused model
    assert not torch.equal(model.encoder[0].weight, before)


@pytest.mark.parametrize("opt_cls", [torch.optim.SGD, torch.optim.Adam])
def test_an_optimizer_built_before_accelerate_trains_the_returned_model(opt_cls, digits784):
    """The README's order (issue 23 item 9; before: accelerate copied the model, so 50 steps left the
    loss unchanged, silently): the optimizer built first trains the accelerated model, exactly as
    it trains the plain one."""
    torch.manual_seed(11)
    model = PlainAutoencoder()
    twin = copy.deepcopy(model)
    opt = opt_cls(model.parameters(), lr=2.0 if opt_cls is torch.optim.SGD else 3e-3)
    model = aecomp.accelerate(model)
    opt_twin = opt_cls(twin.parameters(), lr=opt.param_groups[0]["lr"])
    x = digits784[:128]
    first = model.loss(x).item()
    for m, o in ((model, opt), (twin, opt_twin)):
        for _ in range(50):
            o.zero_grad()
            m.loss(x).backward()
            o.step()
    assert model.loss(x).item() < first - 0.005  # it learned (before: exactly unchanged)
    torch.testing.assert_close(model.loss(x), twin.loss(x), rtol=1e-3, atol=0)
    # with share_parameters=False the old, independent copy
    other = aecomp.accelerate(twin, share_parameters=False)
    assert all(p is not q and torch.equal(p, q) for p, q in zip(twin.parameters(), other.parameters()))


def test_accelerate_keeps_dtype_requires_grad_and_training_flag():
    model = PlainAutoencoder().double().eval()
    model.encoder[0].weight.requires_grad_(False)
    fast = accelerate(model, backend="reference")
    assert fast.encoder[0].weight.dtype == torch.float64 and not fast.encoder[0].weight.requires_grad
    assert fast.decoder[2].bias.requires_grad
    assert not any(m.training for m in fast.modules())
    x = torch.rand(3, 784, dtype=torch.float64)
    torch.testing.assert_close(fast(x), model(x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_accelerate_classifier(backend):
    torch.manual_seed(3)
    enc = PlainAutoencoder().encoder
    clf = Classifier(enc)
    fast = _independent(clf, backend=backend)
    report = fast.aecomp_report
    assert isinstance(fast.head, FusedLinear) and fast.head.activation == "none"
    assert [r.path for r in report.replaced] == ["encoder.0", "encoder.2", "encoder.4", "encoder", "head"]
    x = torch.rand(16, 784)
    y = torch.randint(0, 10, (16,))
    torch.testing.assert_close(fast(x), clf(x), **TOL)
    F.cross_entropy(clf(x), y).backward()
    F.cross_entropy(fast(x), y).backward()
    g1, g2 = _grads(clf), _grads(fast)
    for n in g1:
        torch.testing.assert_close(g2[n], g1[n], **TOL)
    # the accelerated encoder reads back into a FusedMLP with the same keys
    mlp = FusedMLP.from_sequential(fast.encoder)
    assert mlp.activations == ("relu", "relu", "none")
    assert list(mlp.state_dict()) == list(enc.state_dict())
    torch.testing.assert_close(mlp(x), enc(x), **TOL)


def test_accelerate_is_idempotent():
    torch.manual_seed(4)
    once = accelerate(PlainAutoencoder())
    r1 = once.aecomp_report
    twice = accelerate(once)
    r2 = twice.aecomp_report
    assert r1.changed and not r2.changed and not r2.replaced
    assert all("already fused" in s.reason for s in r2.left_alone) and len(r2.left_alone) == 7
    assert repr(twice) == repr(once)
    sd1, sd2 = once.state_dict(), twice.state_dict()
    assert list(sd1) == list(sd2) and all(torch.equal(sd1[k], sd2[k]) for k in sd1)
    thrice = accelerate(twice, inplace=True)
    r3 = thrice.aecomp_report
    assert thrice is twice and not r3.replaced


class LoRALinear(nn.Linear):
    """A Linear subclass accelerate must not touch: its forward is not x @ W.T + b."""

    def __init__(self, i, o, r=2):
        super().__init__(i, o)
        self.a = nn.Parameter(torch.randn(r, i) * 0.01)
        self.b = nn.Parameter(torch.zeros(o, r))

    def forward(self, x):
        return super().forward(x) + (x @ self.a.t()) @ self.b.t()


class _Doubled(nn.Module):
    def forward(self, w):
        return 2 * w


def test_accelerate_leaves_alone_what_it_does_not_know_and_says_why():
    hooked = nn.Linear(4, 4)
    hooked.register_forward_hook(lambda m, i, o: None)
    shared = nn.Linear(4, 4)
    model = nn.Module()
    model.lora = nn.Sequential(LoRALinear(4, 4), nn.ReLU())
    model.hooked = nn.Sequential(hooked, nn.ReLU())
    model.tied = nn.Sequential(shared, nn.ReLU(), shared)  # the same Linear twice
    model.attn = nn.MultiheadAttention(4, 2)
    model.lazy = nn.LazyLinear(3)
    model.param = nn.Linear(4, 4)
    torch.nn.utils.parametrize.register_parametrization(model.param, "weight", _Doubled())
    with pytest.warns(UserWarning, match="LoRALinear"):
        fast = accelerate(model)
        report = fast.aecomp_report
    alone = {s.path: s for s in report.left_alone}
    assert "does not know" in alone["lora.0"].reason and type(fast.lora[0]) is LoRALinear
    assert type(fast.lora[1]) is nn.ReLU
    assert "hooks" in alone["hooked.0"].reason and type(fast.hooked[0]) is nn.Linear
    assert "does not know" in alone["attn.out_proj"].reason
    assert "LazyLinear" in alone["lazy"].reason
    assert type(fast.param).__name__ == "ParametrizedLinear" and "does not know" in alone["param"].reason
    # a shared Linear is replaced once (still shared) but not fused with the ReLU
    assert fast.tied[0] is fast.tied[2] and isinstance(fast.tied[0], FusedLinear)
    assert fast.tied[0].activation == "none" and type(fast.tied[1]) is nn.ReLU
    assert "shared" in alone["tied.1"].reason
    assert "left alone  lora.0: LoRALinear" in str(report)
    x = torch.randn(5, 4)
    torch.testing.assert_close(fast.tied(x), model.tied(x), **TOL)


def test_accelerate_root_linear_and_bad_arguments():
    lin = nn.Linear(3, 2)
    fused = accelerate(lin)
    report = fused.aecomp_report
    assert isinstance(fused, FusedLinear) and report.replaced[0].path == ""
    with pytest.raises(ValueError, match="unknown backend 'gpu'"):
        accelerate(lin, backend="gpu")
    with pytest.raises(TypeError, match="must be an nn.Module"):
        accelerate(lambda x: x)


def _compiled_matches(model, fast, x, backend):
    compiled = torch.compile(fast, fullgraph=True, backend=backend)
    out = compiled(x)
    torch.testing.assert_close(out, model(x), **TOL)
    F.mse_loss(out, x).backward()
    F.mse_loss(model(x), x).backward()
    g1, g2 = _grads(model), _grads(fast)
    for n in g1:
        torch.testing.assert_close(g2[n], g1[n], **TOL)


@pytest.mark.parametrize("backend", BACKENDS)
def test_accelerated_model_compiles_fullgraph_aot_eager(backend):
    torch._dynamo.reset()
    torch.manual_seed(5)
    model = PlainAutoencoder()
    fast = _independent(model, backend=backend)
    _compiled_matches(model, fast, torch.rand(8, 784), "aot_eager")


@pytest.mark.skipif(os.environ.get("AECOMP_TEST_INDUCTOR") == "0", reason="AECOMP_TEST_INDUCTOR=0")
def test_accelerated_model_compiles_fullgraph_inductor():
    """The one inductor case (about 7 s here: forward and backward graphs, C++ codegen)."""
    torch._dynamo.reset()
    torch.manual_seed(6)
    model = PlainAutoencoder()
    fast = _independent(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _compiled_matches(model, fast, torch.rand(8, 784), "inductor")


def test_accelerate_returns_the_model_with_its_report():
    plain = PlainAutoencoder()
    model = aecomp.accelerate(plain)  # the torch.compile way: the result is the model
    x = torch.rand(4, 784)
    torch.testing.assert_close(model(x), plain(x), **TOL)
    report = aecomp.accelerate_report(model)
    assert report is model.aecomp_report and isinstance(report, AccelerateReport) and report.changed
    assert "aecomp_report" not in str(list(model.state_dict()))
    with pytest.raises(TypeError, match="cannot unpack"):  # the old `model, report = ...` fails loudly
        fast, report = aecomp.accelerate(PlainAutoencoder())
    with pytest.raises(ValueError, match="did not come from aecomp.accelerate"):
        aecomp.accelerate_report(plain)


def _count_calls(monkeypatch, module, name):
    calls = []
    real = getattr(module, name)

    def wrapper(*args, **kwargs):
        calls.append(name)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapper)
    return calls


@pytest.mark.parametrize("backend", BACKENDS)
def test_each_sequential_run_is_one_chain_op(backend, monkeypatch):
    from aecomp import ops

    torch.manual_seed(7)
    plain = PlainAutoencoder()
    fast = accelerate(plain, backend=backend)
    mlp_calls = _count_calls(monkeypatch, ops, "mlp")
    layer_calls = _count_calls(monkeypatch, ops, "linear_act")
    x = torch.rand(9, 784, requires_grad=True)
    torch.testing.assert_close(fast(x), plain(x), **TOL)
    assert mlp_calls == ["mlp", "mlp"] and layer_calls == []  # encoder, decoder: one op each
    # indexing, length and the keys of the Sequential are unchanged
    assert len(fast.encoder) == 5 and isinstance(fast.encoder[2], FusedLinear) and fast.encoder[-1] is fast.encoder[4]
    assert list(fast.encoder.state_dict()) == list(plain.encoder.state_dict())


def test_runs_inside_a_mixed_sequential_keep_keys_and_results():
    torch.manual_seed(8)
    seq = nn.Sequential(nn.Flatten(), nn.Linear(12, 7), nn.ReLU(), nn.Linear(7, 5), nn.Sigmoid(), nn.Dropout(0.0),
                        nn.Linear(5, 3), nn.Tanh(), nn.Linear(3, 4), nn.Linear(4, 2))
    fast = accelerate(seq)
    assert type(fast) is FusedSequential and list(fast.state_dict()) == list(seq.state_dict())
    kinds = [("chain", len(run)) if m is None else type(m).__name__ for m, run in fast._runs()]
    assert kinds == ["Flatten", ("chain", 2), "Dropout", ("chain", 1), "Tanh", ("chain", 2)]
    x = torch.rand(6, 3, 4)
    torch.testing.assert_close(fast(x), seq(x), **TOL)
    # a hook added afterwards still fires: its layer leaves the chain
    seen = []
    fast[3].register_forward_hook(lambda m, i, o: seen.append(o.shape))
    torch.testing.assert_close(fast(x), seq(x), **TOL)
    assert seen == [torch.Size([6, 5])]
    with pytest.raises(ValueError, match="not one chain"):
        fast.chain()
