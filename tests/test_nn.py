"""FusedLinear, FusedMLP and FusedMSELoss against the plain torch modules they replace.

Run: ``.venv/bin/python -m pytest tests/test_nn.py -q``.

Every test is parametrized over the backends that run float32 on the CPU here
(``reference`` always; ``cpu`` once ``aecomp._C`` is built; ``triton`` under
``TRITON_INTERPRET=1``). Tolerances (float32): the reference backend computes exactly what
``nn.Linear`` computes, the others sum in a different order, so ``rtol = atol = 1e-5`` for
values of order 1 and reductions over at most a few hundred terms (float32 eps is 6e-8; a
sum of K terms in another order moves by about sqrt(K) eps relative to the sum of |terms|).
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

import aecomp
from aecomp._backend import get_backend
from aecomp.nn import FusedLinear, FusedMLP, FusedMSELoss

BACKENDS = [name for name, (ok, _) in aecomp.available_backends().items()
            if ok and get_backend(name).takes("cpu", torch.float32)]
TOL = dict(rtol=1e-5, atol=1e-5)
ACTS = {"none": lambda y: y, "relu": torch.relu, "sigmoid": torch.sigmoid}


def _close(a, b, **kw):
    torch.testing.assert_close(a, b, **(kw or TOL))


# ---------------------------------------------------------------------------- FusedLinear
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("activation", ["none", "relu", "sigmoid"])
@pytest.mark.parametrize("shape,bias", [((1, 7), True), ((33, 7), False), ((5, 3, 20), True)])
def test_fused_linear_matches_linear(backend, activation, shape, bias):
    out_features = 13
    lin = nn.Linear(shape[-1], out_features, bias=bias)
    fused = FusedLinear(shape[-1], out_features, bias=bias, activation=activation, backend=backend)
    fused.load_state_dict(lin.state_dict())
    x = torch.randn(*shape, requires_grad=True)
    x2 = x.detach().clone().requires_grad_()
    want = ACTS[activation](lin(x))
    got = fused(x2)
    _close(got, want)
    g = torch.randn_like(want)
    want.backward(g)
    got.backward(g)
    _close(x2.grad, x.grad)
    _close(fused.weight.grad, lin.weight.grad)
    if bias:
        _close(fused.bias.grad, lin.bias.grad)


@pytest.mark.parametrize("backend", BACKENDS)
def test_fused_linear_non_contiguous_input(backend):
    fused = FusedLinear(9, 4, activation="relu", backend=backend)
    base = torch.randn(9, 6)
    x = base.t()  # [6, 9], not contiguous
    assert not x.is_contiguous()
    _close(fused(x), torch.relu(nn.functional.linear(x.contiguous(), fused.weight, fused.bias)))


def test_fused_linear_is_a_linear_with_the_same_init_and_state_dict():
    torch.manual_seed(3)
    lin = nn.Linear(10, 6)
    torch.manual_seed(3)
    fused = FusedLinear(10, 6, activation="relu")
    assert isinstance(fused, nn.Linear)
    assert fused.state_dict().keys() == lin.state_dict().keys()
    # same init (nn.Linear.reset_parameters), same parameter shapes
    torch.testing.assert_close(fused.weight, lin.weight, rtol=0, atol=0)
    torch.testing.assert_close(fused.bias, lin.bias, rtol=0, atol=0)
    # both directions
    other = nn.Linear(10, 6)
    other.load_state_dict(fused.state_dict())
    fused2 = FusedLinear(10, 6)
    fused2.load_state_dict(other.state_dict())
    torch.testing.assert_close(fused2.weight, lin.weight, rtol=0, atol=0)
    fused.reset_parameters()  # inherited, still works
    assert not torch.equal(fused.weight, lin.weight)


def test_fused_linear_repr_and_bad_arguments():
    r = repr(FusedLinear(4, 3, activation="sigmoid", backend="reference"))
    assert "activation=sigmoid" in r and "backend=reference" in r and "in_features=4" in r
    with pytest.raises(ValueError, match="unknown activation 'tanh'"):
        FusedLinear(4, 3, activation="tanh")
    with pytest.raises(ValueError, match="unknown backend 'gpu'"):
        FusedLinear(4, 3, backend="gpu")
    with pytest.raises(ValueError, match=r"x.shape\[-1\] = 5 does not match weight.shape\[1\] = 4"):
        FusedLinear(4, 3, backend="reference")(torch.randn(2, 5))


def test_fused_linear_pinned_to_a_backend_that_cannot_run_raises():
    # a backend named explicitly is never silently replaced (CUDA backend on CPU tensors)
    layer = FusedLinear(4, 3, backend="cuda")
    with pytest.raises(aecomp.BackendUnavailableError, match="cuda"):
        layer(torch.randn(2, 4))


def test_from_linear_shares_or_copies_and_keeps_flags():
    lin = nn.Linear(5, 4, dtype=torch.float64)
    lin.bias.requires_grad_(False)
    lin.eval()
    shared = FusedLinear.from_linear(lin, activation="relu")
    assert shared.weight is lin.weight and shared.bias is lin.bias
    assert shared.weight.dtype == torch.float64 and not shared.bias.requires_grad and not shared.training
    copied = FusedLinear.from_linear(lin, share=False)
    assert copied.weight is not lin.weight and torch.equal(copied.weight, lin.weight)
    assert not copied.bias.requires_grad
    back = shared.to_linear()
    assert type(back) is nn.Linear and torch.equal(back.weight, lin.weight) and back.weight is not lin.weight
    with pytest.raises(TypeError, match="expected an nn.Linear"):
        FusedLinear.from_linear(nn.ReLU())


# ---------------------------------------------------------------------------- FusedMLP
def _plain_sequential(dims, acts, bias=True):
    mods = []
    for i, a in enumerate(acts):
        mods.append(nn.Linear(dims[i], dims[i + 1], bias=bias))
        if a == "relu":
            mods.append(nn.ReLU())
        elif a == "sigmoid":
            mods.append(nn.Sigmoid())
    return nn.Sequential(*mods)


MLP_CASES = [
    ((784, 128, 64, 32), ("relu", "relu", "none")),     # an encoder
    ((32, 64, 128, 784), ("relu", "relu", "sigmoid")),  # a decoder
    ((7, 5, 9, 3, 2), ("none", "sigmoid", "none", "relu")),  # 'none' in the middle shifts the indices
    ((6, 1), ("sigmoid",)),
]


@pytest.mark.parametrize("dims,acts", MLP_CASES)
def test_fused_mlp_state_dict_keys_equal_the_sequentials(dims, acts):
    seq = _plain_sequential(dims, acts)
    fused = FusedMLP(dims, acts)
    assert list(fused.state_dict().keys()) == list(seq.state_dict().keys())
    assert [n for n, _ in fused.named_parameters()] == [n for n, _ in seq.named_parameters()]
    assert fused.dims == tuple(dims) and fused.activations == tuple(acts) and len(fused) == len(acts)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dims,acts", MLP_CASES)
def test_fused_mlp_matches_sequential_both_ways(backend, dims, acts):
    seq = _plain_sequential(dims, acts)
    fused = FusedMLP(dims, acts, backend=backend)
    fused.load_state_dict(seq.state_dict())  # Sequential -> FusedMLP
    x = torch.randn(7, dims[0], requires_grad=True)
    x2 = x.detach().clone().requires_grad_()
    want, got = seq(x), fused(x2)
    _close(got, want)
    want.sum().backward()
    got.sum().backward()
    _close(x2.grad, x.grad)
    for (n1, p1), (n2, p2) in zip(seq.named_parameters(), fused.named_parameters()):
        assert n1 == n2
        _close(p2.grad, p1.grad)
    seq2 = _plain_sequential(dims, acts)
    seq2.load_state_dict(fused.state_dict())  # FusedMLP -> Sequential
    _close(seq2(x.detach()), want.detach())


@pytest.mark.parametrize("backend", BACKENDS)
def test_fused_mlp_from_and_to_sequential(backend):
    seq = _plain_sequential((20, 16, 8, 20), ("relu", "none", "sigmoid"), bias=False)
    fused = FusedMLP.from_sequential(seq, backend=backend)
    assert fused.activations == ("relu", "none", "sigmoid") and fused.backend == backend
    assert all(layer.backend == backend for layer in fused.layers)
    assert fused.layers[0].bias is None
    assert fused.layers[0].weight is not seq[0].weight  # copies by default
    assert FusedMLP.from_sequential(seq, share=True).layers[0].weight is seq[0].weight
    x = torch.randn(4, 3, 20)  # leading batch dims
    _close(fused(x), seq(x))
    back = fused.to_sequential()
    assert [type(m) for m in back] == [type(m) for m in seq]
    assert back.state_dict().keys() == seq.state_dict().keys()
    _close(back(x), seq(x))


def test_fused_mlp_from_sequential_rejects_what_it_cannot_fuse():
    with pytest.raises(ValueError, match=r"seq\[1\] is Tanh"):
        FusedMLP.from_sequential(nn.Sequential(nn.Linear(3, 4), nn.Tanh()))
    with pytest.raises(ValueError, match="layer 1 takes 5 features but layer 0 gives 4"):
        FusedMLP.from_sequential(nn.Sequential(nn.Linear(3, 4), nn.Linear(5, 2)))
    with pytest.raises(TypeError, match="expected an nn.Sequential"):
        FusedMLP.from_sequential(nn.Linear(3, 4))


def test_fused_mlp_bad_arguments():
    with pytest.raises(ValueError, match=r"activations has 2 entries .* make 3 layers"):
        FusedMLP((8, 4, 2, 1), ["relu", "relu"])
    with pytest.raises(ValueError, match=r"activations\[1\] 'gelu'"):
        FusedMLP((8, 4, 2), ["relu", "gelu"])
    with pytest.raises(ValueError, match="dims needs at least 2 entries"):
        FusedMLP((8,), "relu")
    with pytest.raises(ValueError, match="dims must all be positive"):
        FusedMLP((8, 0), "relu")
    with pytest.raises(ValueError, match=r"weights\[0\].shape\[1\] = 8 does not match x.shape\[-1\] = 9"):
        FusedMLP((8, 4), "relu", backend="reference")(torch.randn(2, 9))


def test_fused_mlp_backend_setter_reaches_every_layer():
    fused = FusedMLP((4, 3, 2), "relu")
    fused.backend = "reference"
    assert fused.backend == "reference" and all(layer.backend == "reference" for layer in fused.layers)
    assert "backend=reference" in repr(fused)


# ---------------------------------------------------------------------------- FusedMSELoss
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_fused_mse_loss_matches_mseloss(backend, reduction):
    crit = FusedMSELoss(reduction, backend=backend)
    assert isinstance(crit, nn.MSELoss)
    a = torch.randn(9, 31, requires_grad=True)
    t = torch.randn(9, 31)
    a2 = a.detach().clone().requires_grad_()
    want = nn.MSELoss(reduction=reduction)(a, t)
    got = crit(a2, t)
    _close(got, want)
    g = torch.randn_like(want)
    want.backward(g)
    got.backward(g)
    _close(a2.grad, a.grad)


def test_fused_mse_loss_refuses_to_broadcast_and_bad_reduction():
    with pytest.raises(ValueError, match=r"same shape, got input \[4, 3\] and target \[4, 1\]"):
        FusedMSELoss(backend="reference")(torch.randn(4, 3), torch.randn(4, 1))
    with pytest.raises(ValueError, match="unknown reduction 'avg'"):
        FusedMSELoss("avg")
    assert "reduction=sum" in repr(FusedMSELoss("sum"))


def test_fused_mlp_from_sequential_needs_the_placeholder_after_a_fused_activation():
    # FusedLinear(relu) must be followed by the Identity that keeps the Sequential's indices
    seq = nn.Sequential(FusedLinear(3, 4, activation="relu"), FusedLinear(4, 2))
    with pytest.raises(ValueError, match=r"seq\[1\] is FusedLinear; expected the nn.Identity placeholder"):
        FusedMLP.from_sequential(seq)
    ok = FusedMLP.from_sequential(nn.Sequential(FusedLinear(3, 4, activation="relu"), nn.Identity(), FusedLinear(4, 2)))
    assert list(ok.state_dict()) == ["0.weight", "0.bias", "2.weight", "2.bias"]


@pytest.mark.parametrize("target_dtype", [torch.float64, torch.int64], ids=["float64", "int64"])
def test_fused_mse_loss_promotes_types_like_nn_mse_loss(target_dtype):
    x = torch.rand(4, 5, requires_grad=True)
    t = (torch.rand(4, 5) * 3).to(target_dtype)
    want = nn.MSELoss()(x, t)
    got = FusedMSELoss()(x, t)
    assert got.dtype == want.dtype
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    (gw,) = torch.autograd.grad(want, x)
    (gg,) = torch.autograd.grad(got, x)
    torch.testing.assert_close(gg, gw, rtol=1e-6, atol=1e-6)
