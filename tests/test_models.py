"""The autoencoder family on real data (sklearn digits, 8x8 scaled to [0, 1]).

Run: ``.venv/bin/python -m pytest tests/test_models.py -q``.

Shapes: 64 features for Autoencoder/VAE, [1, 8, 8] for ConvAutoencoder, the 8 rows of a digit
as a sequence [8 time steps, 8 features] for RecurrentAutoencoder. Float32 tolerances as in
test_nn.py (``rtol = atol = 1e-5``); a model rebuilt from its config with the same state_dict
computes bit for bit the same thing, so that comparison is exact.
"""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import aecomp
from aecomp._backend import get_backend
from aecomp.models import VAE, Autoencoder, ConvAutoencoder, RecurrentAutoencoder, build
from aecomp.nn import FusedMLP

TOL = dict(rtol=1e-5, atol=1e-5)
BACKENDS = [name for name, (ok, _) in aecomp.available_backends().items()
            if ok and get_backend(name).takes("cpu", torch.float32)]

# (config, per-sample shape of the digits for that model)
CASES = {
    "mlp": (dict(type="mlp", dims=[64, 32, 16]), (64,)),
    "conv": (dict(type="conv", image_size=8, channels=[8, 16], latent=16), (1, 8, 8)),
    "rnn-gru": (dict(type="rnn", features=8, hidden=32, latent=16, cell="gru"), (8, 8)),
    "rnn-lstm": (dict(type="rnn", features=8, hidden=32, latent=16, cell="lstm", seq_len=8, output="sigmoid"), (8, 8)),
    "vae": (dict(type="vae", dims=[64, 32, 8], beta=1.0), (64,)),
}


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    return torch.tensor(load_digits().data, dtype=torch.float32) / 16.0  # [1797, 64] in [0, 1]


@pytest.mark.parametrize("name", list(CASES))
def test_model_trains_on_digits(name, digits):
    cfg, shape = CASES[name]
    torch.manual_seed(0)
    model = build(cfg)
    assert model.input_shape[-1] == shape[-1]
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(40):
        idx = torch.randint(0, digits.shape[0], (128,), generator=gen)
        batch = (digits[idx].view(-1, *shape), idx)  # an (x, label) batch: loss uses x only
        loss = model.loss(batch)
        assert loss.dim() == 0 and torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.6 * first, f"{name}: loss {first:.4f} -> {last:.4f}"
    x = digits[:10].view(-1, *shape)
    assert model(x).shape == x.shape
    assert model.encode(x).shape == (10, model.latent_dim)


@pytest.mark.parametrize("name", list(CASES))
def test_config_round_trip(name, digits):
    cfg, shape = CASES[name]
    torch.manual_seed(1)
    model = build(cfg)
    text = json.dumps(model.config)  # JSON-able
    again = build(json.loads(text))
    assert type(again) is type(model) and again.config == model.config
    assert again.config["type"] == cfg["type"]
    again.load_state_dict(model.state_dict())
    x = digits[:6].view(-1, *shape)
    torch.testing.assert_close(again(x), model(x), rtol=0, atol=0)
    assert type(model).from_config(model.config).config == model.config


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(CASES))
def test_every_backend_computes_the_reference_model(name, backend, digits):
    cfg, shape = CASES[name]
    torch.manual_seed(2)
    ref = build({**cfg, "backend": "reference"})
    model = build({**cfg, "backend": backend})
    model.load_state_dict(ref.state_dict())
    x = digits[:12].view(-1, *shape)
    torch.testing.assert_close(model(x), ref(x), **TOL)
    torch.manual_seed(3)  # the VAE loss samples
    ref.loss(x).backward()
    torch.manual_seed(3)
    model.loss(x).backward()
    for (n, p), (_, q) in zip(model.named_parameters(), ref.named_parameters()):
        torch.testing.assert_close(p.grad, q.grad, **TOL, msg=lambda m: f"{n}: {m}")


def test_autoencoder_layout_and_state_dict_matches_sequentials():
    model = Autoencoder(dims=(784, 128, 64, 32))
    assert isinstance(model.encoder, FusedMLP) and isinstance(model.decoder, FusedMLP)
    assert model.encoder.activations == ("relu", "relu", "none")
    assert model.decoder.activations == ("relu", "relu", "sigmoid")
    assert model.input_shape == (784,) and model.latent_dim == 32
    seq = model.encoder.to_sequential()
    assert list(seq.state_dict()) == list(model.encoder.state_dict()) == \
        ["0.weight", "0.bias", "2.weight", "2.bias", "4.weight", "4.bias"]
    assert Autoencoder(dims=(10, 3), output="none").decoder.activations == ("none",)


def test_conv_autoencoder_sizes():
    for size in (28, 8):
        model = ConvAutoencoder(image_size=size)
        x = torch.rand(2, 1, size, size)
        assert model(x).shape == x.shape and model.encode(x).shape == (2, 32)
    rgb = ConvAutoencoder(in_channels=3, image_size=32, channels=(8, 16, 32), latent=10, output="none")
    assert rgb(torch.rand(2, 3, 32, 32)).shape == (2, 3, 32, 32)
    with pytest.raises(ValueError, match=r"image_size=28 must be divisible by 2\*\*len\(channels\) = 8"):
        ConvAutoencoder(image_size=28, channels=(8, 16, 32))
    with pytest.raises(ValueError, match=r"x must have shape \[batch, 1, 8, 8\] .* got \[2, 1, 28, 28\]"):
        ConvAutoencoder(image_size=8)(torch.rand(2, 1, 28, 28))


def test_recurrent_autoencoder_lengths():
    model = RecurrentAutoencoder(features=8, hidden=16, latent=4)
    assert model.input_shape == (None, 8)
    for t in (3, 11):
        assert model(torch.rand(2, t, 8)).shape == (2, t, 8)
    with pytest.raises(ValueError, match="seq_len is needed"):
        model.decode(torch.rand(2, 4))
    assert model.decode(torch.rand(2, 4), seq_len=5).shape == (2, 5, 8)
    fixed = RecurrentAutoencoder(features=8, hidden=16, latent=4, cell="lstm", seq_len=6)
    assert fixed.decode(torch.rand(2, 4)).shape == (2, 6, 8)
    with pytest.raises(ValueError, match=r"x must have shape \[batch, 6, 8\] .* got \[2, 5, 8\]"):
        fixed(torch.rand(2, 5, 8))
    with pytest.raises(ValueError, match=r"got \[2, 8\]"):
        model(torch.rand(2, 8))


def test_vae_loss_is_the_documented_formula():
    torch.manual_seed(2)
    model = VAE(dims=(64, 32, 8), beta=0.5)
    x = torch.rand(10, 64)
    torch.manual_seed(7)
    terms = model.loss_terms(x)
    # recompute by hand with the same noise
    torch.manual_seed(7)
    mu, logvar = model.head(model.encoder(x)).chunk(2, dim=-1)
    eps = torch.randn_like(mu)
    x_hat = model.decoder(mu + torch.exp(0.5 * logvar) * eps)
    recon = ((x_hat - x) ** 2).sum(dim=1).mean()
    kl = (-0.5 * (1 + logvar - mu ** 2 - logvar.exp())).sum(dim=1).mean()
    torch.testing.assert_close(terms["recon"], recon, **TOL)
    torch.testing.assert_close(terms["kl"], kl, **TOL)
    torch.testing.assert_close(terms["loss"], recon + 0.5 * kl, **TOL)
    # forward is deterministic: decode(mu)
    torch.testing.assert_close(model(x), model.decoder(mu), rtol=0, atol=0)
    torch.testing.assert_close(model.encode(x), mu, rtol=0, atol=0)


def test_vae_sample():
    model = VAE(dims=(64, 32, 8))
    a = model.sample(5, generator=torch.Generator().manual_seed(3))
    b = model.sample(5, generator=torch.Generator().manual_seed(3))
    assert a.shape == (5, 64) and torch.equal(a, b) and not a.requires_grad
    assert float(a.min()) >= 0 and float(a.max()) <= 1  # sigmoid output
    with pytest.raises(ValueError, match="n must be a non-negative int"):
        model.sample(-1)


@pytest.mark.parametrize("cfg,match", [
    (dict(type="mlp", dims=[64]), "dims needs at least 2 entries"),
    (dict(type="mlp", dims=[64, 0]), r"dims\[1\] must be a positive int"),
    (dict(type="mlp", output="tanh"), "unknown output 'tanh'"),
    (dict(type="vae", dims=[64, 8]), "dims needs at least 3 entries"),
    (dict(type="vae", beta=-1.0), "beta must be a non-negative number"),
    (dict(type="rnn", features=8, cell="rnn"), "unknown cell 'rnn'"),
    (dict(type="rnn", features=0), "features must be a positive int"),
    (dict(type="conv", channels=[]), "channels needs at least 1 entries"),
    (dict(type="mlp", backend="gpu"), "unknown backend 'gpu'"),
    (dict(type="transformer"), "unknown model type 'transformer'"),
])
def test_bad_configurations_raise_clear_errors(cfg, match):
    with pytest.raises(ValueError, match=match):
        build(cfg)


def test_bad_config_keys_and_types():
    with pytest.raises(TypeError, match=r"unknown keys \['depth'\]"):
        build(dict(type="mlp", depth=3))
    with pytest.raises(ValueError, match="config type is 'vae' but Autoencoder is 'mlp'"):
        Autoencoder.from_config(dict(type="vae"))
    with pytest.raises(ValueError, match="'type' key"):
        build(dict(dims=[3, 2]))


def test_wrong_shapes_at_forward_time():
    model = Autoencoder(dims=(64, 16, 4))
    with pytest.raises(ValueError, match=r"Autoencoder.encode: x must have shape \[batch, 64\] .* got \[3, 65\]"):
        model(torch.rand(3, 65))
    with pytest.raises(ValueError, match=r"z must have shape \[batch, 4\] .* got \[3, 5\]"):
        model.decode(torch.rand(3, 5))
    with pytest.raises(ValueError, match=r"got \[3, 8, 8\]"):
        VAE(dims=(64, 16, 4)).loss(torch.rand(3, 8, 8))


@pytest.mark.parametrize("cls", [Autoencoder, VAE])
def test_mlp_models_compile_fullgraph_aot_eager(cls):
    torch._dynamo.reset()
    torch.manual_seed(4)
    model = cls(dims=(64, 32, 8))
    x = torch.rand(16, 64)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    out = compiled(x)
    torch.testing.assert_close(out, model(x), **TOL)
    out.square().sum().backward()
    ref = cls(dims=(64, 32, 8))
    ref.load_state_dict(model.state_dict())
    ref(x).square().sum().backward()
    for (n, p), (_, q) in zip(model.named_parameters(), ref.named_parameters()):
        torch.testing.assert_close(p.grad, q.grad, **TOL, msg=lambda m: f"{n}: {m}")
    # the training loss compiles too (for the VAE: with the sampling inside the graph)
    loss_fn = torch.compile(model.loss, fullgraph=True, backend="aot_eager")
    loss = loss_fn(x)
    loss.backward()
    assert loss.dim() == 0 and torch.isfinite(loss)


def test_models_are_plain_modules_with_fused_layers():
    model = VAE()
    assert isinstance(model, nn.Module)
    assert model.latent_dim == 32 and model.input_shape == (784,)
    names = [n for n, _ in model.named_parameters()]
    assert names[:2] == ["encoder.0.weight", "encoder.0.bias"] and "head.weight" in names
