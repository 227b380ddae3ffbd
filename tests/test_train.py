"""aecomp.train.Trainer: learning, determinism, metrics, early stopping, NaN stop, the step seam."""
from __future__ import annotations

import json
import math

import pytest
import torch

import aecomp.train as train_pkg
from aecomp import data
from aecomp.models import VAE, Autoencoder, ConvAutoencoder, RecurrentAutoencoder
from aecomp.train import NonFiniteLossError, Trainer, checkpoint as ck

QUIET = dict(progress=False, log=lambda m: None)


@pytest.fixture(scope="module")
def digits():
    return data.load("digits")


def _mlp(seed=0, dims=(64, 32, 16)):
    torch.manual_seed(seed)
    return Autoencoder(dims)


def test_fit_learns_and_logs_metrics(tmp_path, digits):
    model = _mlp()
    t = Trainer(model, epochs=4, batch_size=32, lr=3e-3, out_dir=tmp_path, **QUIET)
    before = t.evaluate(digits.val)
    r = t.fit(digits.train, digits.val)
    after = t.evaluate(digits.val)
    assert after["loss"] < 0.6 * before["loss"]
    assert r.epochs_completed == 4 and r.steps == 4 * math.ceil(1437 / 32) and not r.stopped_early
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines] == [1, 2, 3, 4] and lines == r.history
    for rec in lines:
        for key in ("epoch", "train_loss", "val_loss", "val_mse", "val_psnr", "seconds", "samples_per_s"):
            assert rec[key] is not None, key
        assert rec["val_psnr"] == pytest.approx(10 * math.log10(1 / rec["val_mse"]))
        assert rec["samples_per_s"] == pytest.approx(1437 / rec["train_seconds"])
    assert lines[-1]["train_loss"] < lines[0]["train_loss"]
    assert lines[-1]["val_loss"] == pytest.approx(after["loss"], rel=1e-6)
    assert r.best_epoch == min(lines, key=lambda x: x["val_loss"])["epoch"]
    assert r.checkpoint == ck.latest_checkpoint(tmp_path / "checkpoints").path


def test_evaluate_matches_a_manual_computation(digits):
    model = _mlp(1)
    t = Trainer(model, eval_batch_size=50, **QUIET)  # 180 samples: batches of 50, 50, 50, 30
    ev = t.evaluate(digits.test)
    with torch.no_grad():
        recon = model(digits.test.x)
    mse = float(((recon.double() - digits.test.x.double()) ** 2).mean())
    assert ev["samples"] == 180
    assert ev["mse"] == pytest.approx(mse, rel=1e-6)
    assert ev["loss"] == pytest.approx(mse, rel=1e-5)  # the mlp's loss is the MSE
    assert ev["psnr"] == pytest.approx(10 * math.log10(1 / mse), rel=1e-6)
    pred = t.predict(digits.test)
    torch.testing.assert_close(pred, recon)
    # standardised data is not in [0, 1]: no PSNR
    std = data.load("digits", scale="standard")
    assert Trainer(Autoencoder((64, 8), output="none"), **QUIET).evaluate(std.test)["psnr"] is None


def test_same_seed_same_weights_other_seed_other_weights(digits):
    def run(seed):
        model = _mlp(0)
        Trainer(model, epochs=2, batch_size=64, seed=seed, **QUIET).fit(digits.train)
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    a, b, c = run(3), run(3), run(4)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)  # another batch order


def test_trains_on_the_same_batches_as_the_loader(digits):
    """The Trainer's step sequence is: the loader's batches, in order, one Adam step each."""
    model, ref = _mlp(2), _mlp(2)
    Trainer(model, epochs=2, batch_size=100, seed=9, step_fn="plain", **QUIET).fit(digits.train)
    opt = torch.optim.Adam(ref.parameters(), lr=1e-3)
    loader = data.InMemoryLoader(digits.train.x, batch_size=100, seed=9)
    for _ in range(2):
        for xb in loader:
            opt.zero_grad()
            ref.loss(xb).backward()
            opt.step()
    for a, b in zip(model.parameters(), ref.parameters()):
        # fused Adam vs the for-loop Adam: the same formula, float32 rounding differs slightly
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", ["conv", "rnn", "vae"])
def test_other_model_families_train(digits, kind):
    torch.manual_seed(0)
    model = {"conv": lambda: ConvAutoencoder(1, 8, (4, 8), 8),
             "rnn": lambda: RecurrentAutoencoder(features=8, hidden=16, latent=4, seq_len=8, output="sigmoid"),
             "vae": lambda: VAE((64, 24, 6))}[kind]()
    t = Trainer(model, epochs=2, batch_size=128, lr=5e-3, **QUIET)
    before = t.evaluate(digits.val)["loss"]
    r = t.fit(digits.train, digits.val)
    assert r.history[-1]["val_loss"] < before
    assert t.predict(digits.test.x[:5]).shape == (5, *model.input_shape)


def test_rnn_without_fixed_length_gets_rows_as_steps(digits):
    torch.manual_seed(0)
    model = RecurrentAutoencoder(features=8, hidden=8, latent=4)  # input_shape (None, 8)
    t = Trainer(model, epochs=1, batch_size=256, **QUIET)
    t.fit(digits.train)
    assert t.predict(digits.test.x[:3]).shape == (3, 8, 8)


def test_wrong_sample_size_is_a_clear_error(digits):
    with pytest.raises(ValueError, match=r"takes samples of shape 784 .* has 64 values per sample"):
        Trainer(Autoencoder((784, 32)), **QUIET).fit(digits.train)


def test_early_stopping(tmp_path, digits):
    model = _mlp()
    # min_delta larger than any improvement: only epoch 1 counts as "better"
    r = Trainer(model, epochs=10, patience=2, min_delta=10.0, out_dir=tmp_path, **QUIET).fit(digits.train, digits.val)
    assert r.stopped_early and r.epochs_completed == 3 and r.best_epoch == 1
    # resuming a stopped run does not train further
    again = Trainer(_mlp(), epochs=10, patience=2, min_delta=10.0, out_dir=tmp_path, **QUIET)
    r2 = again.fit(digits.train, digits.val, resume=True)
    assert r2.stopped_early and r2.epochs_completed == 3 and len(r2.history) == 3


class _NaNAfter(Autoencoder):
    """An autoencoder whose loss turns NaN (or inf) from the ``at``-th call on."""

    def __init__(self, dims, at, value=float("nan")):
        super().__init__(dims)
        self.calls, self.at, self.value = 0, at, value

    def loss(self, batch):
        self.calls += 1
        out = super().loss(batch)
        return out * self.value if self.calls >= self.at else out


@pytest.mark.parametrize("value, word", [(float("nan"), "NaN"), (float("inf"), "infinite")])
def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, digits, value, word):
    torch.manual_seed(0)
    model = _NaNAfter((64, 16), at=30, value=value)  # epoch 1 = steps 1-23: checkpoint at 20 and 23
    t = Trainer(model, epochs=5, batch_size=64, out_dir=tmp_path, checkpoint_every=10, **QUIET)
    with pytest.raises(NonFiniteLossError, match=f"became {word} in epoch 2 .*last good checkpoint is .*ckpt-000000023"):
        t.fit(digits.train, digits.val)
    steps = [s for s, _ in ck.list_checkpoints(tmp_path / "checkpoints")]
    assert steps == [20, 23]
    good = ck.load_checkpoint(ck.list_checkpoints(tmp_path / "checkpoints")[-1][1])
    assert all(torch.isfinite(v).all() for v in good.model.values())
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 1


def test_refuses_to_mix_runs_and_resume_needs_a_checkpoint(tmp_path, digits):
    Trainer(_mlp(), epochs=1, out_dir=tmp_path, **QUIET).fit(digits.train)
    with pytest.raises(ValueError, match="already holds checkpoints"):
        Trainer(_mlp(), epochs=1, out_dir=tmp_path, **QUIET).fit(digits.train)
    with pytest.raises(ck.CheckpointError, match="nothing to resume"):
        Trainer(_mlp(), epochs=1, out_dir=tmp_path / "empty", **QUIET).fit(digits.train, resume=True)
    with pytest.raises(ck.CheckpointError, match="was written for model"):
        Trainer(_mlp(dims=(64, 8)), epochs=2, out_dir=tmp_path, **QUIET).fit(digits.train, resume=True)
    with pytest.raises(ck.CheckpointError, match="batch size 64"):
        Trainer(_mlp(), epochs=2, batch_size=32, out_dir=tmp_path, **QUIET).fit(digits.train, resume=True)


def test_progress_bar_shows_loss_and_samples_per_second(digits, capsys):
    Trainer(_mlp(), epochs=1, batch_size=64, progress=True, log=lambda m: None).fit(digits.train)
    err = capsys.readouterr().err
    assert "epoch 1/1" in err and "loss=" in err and "samples_s=" in err


def test_argument_checks():
    m = _mlp()
    with pytest.raises(ValueError, match="CUDA is not available" if not torch.cuda.is_available() else "unknown device"):
        Trainer(m, device="cuda" if not torch.cuda.is_available() else "nonsense")
    with pytest.raises(ValueError, match="precision must be 'fp32' or 'bf16'"):
        Trainer(m, precision="fp16", device="cpu")
    with pytest.raises(ValueError, match="lr must be a positive"):
        Trainer(m, lr=0.0)
    with pytest.raises(ValueError, match="batch_size"):
        Trainer(m, batch_size=0)
    with pytest.raises(TypeError, match="no loss"):
        Trainer(torch.nn.Linear(2, 2))


# ------------------------------------------------------------------------- the step seam


class _CountingStep:
    kind = "fused"
    made = []

    def __init__(self, model, optimizer):
        self.model, self.optimizer, self.calls = model, optimizer, 0
        _CountingStep.made.append(self)

    @classmethod
    def supports(cls, model):
        return isinstance(model, Autoencoder)

    def step(self, batch):
        self.calls += 1
        self.optimizer.zero_grad()
        loss = self.model.loss(batch)
        loss.backward()
        self.optimizer.step()
        return loss.detach()


def test_fused_step_is_used_when_present_and_supported(monkeypatch, digits):
    monkeypatch.setattr(train_pkg, "FusedStep", _CountingStep, raising=False)
    _CountingStep.made.clear()
    r = Trainer(_mlp(), epochs=1, batch_size=256, **QUIET).fit(digits.train)
    assert r.step_kind == "fused" and _CountingStep.made[-1].calls == r.steps == 6
    # a model it does not support gets the plain step
    torch.manual_seed(0)
    r = Trainer(VAE((64, 16, 4)), epochs=1, batch_size=256, **QUIET).fit(digits.train)
    assert r.step_kind == "plain"
    # explicitly plain
    assert Trainer(_mlp(), epochs=1, batch_size=256, step_fn="plain", **QUIET).fit(digits.train).step_kind == "plain"


def test_fused_step_that_raises_not_implemented_falls_back(monkeypatch, digits):
    class Refuses(_CountingStep):
        def __init__(self, model, optimizer):
            raise NotImplementedError("not this model")

    monkeypatch.setattr(train_pkg, "FusedStep", Refuses, raising=False)
    assert Trainer(_mlp(), epochs=1, batch_size=512, **QUIET).fit(digits.train).step_kind == "plain"


def test_float64_data_trains_a_float32_model_and_a_float64_model(digits):
    """numpy's default dtype is float64: such data trains the (float32) model in float32, and a
    ``model.double()`` gets float64 batches; both learn."""
    x64 = digits.train.x.double()
    model = _mlp()
    t = Trainer(model, epochs=1, batch_size=64, **QUIET)
    r = t.fit(x64, digits.val.x.double())
    assert math.isfinite(r.history[-1]["train_loss"]) and t.evaluate(x64)["loss"] is not None
    assert t.predict(x64[:5]).dtype == torch.float32
    m64 = _mlp().double()
    r64 = Trainer(m64, epochs=1, batch_size=64, step_fn="plain", **QUIET).fit(digits.train.x, None)
    assert math.isfinite(r64.history[-1]["train_loss"]) and next(m64.parameters()).dtype == torch.float64


def test_patience_without_validation_data_is_an_error(digits):
    with pytest.raises(ValueError, match=r"patience=2 stops on the validation loss, but there is no validation"):
        Trainer(_mlp(), epochs=3, patience=2, **QUIET).fit(digits.train)


def test_sigmoid_model_warns_about_targets_outside_unit_range(digits):
    msgs = []
    t = Trainer(_mlp(), epochs=1, batch_size=256, progress=False, log=msgs.append)
    t.fit(digits.train.x * 3 - 1, digits.val.x)  # training targets in [-1, 2]
    warned = [m for m in msgs if m.startswith("warning:")]
    assert len(warned) == 1 and "the training targets are outside [0, 1] (min -1, max 2)" in warned[0]


def test_flat_square_samples_are_drawn_as_images(tmp_path):
    from aecomp.train import plots

    x = torch.rand(3, 784)
    imgs, is_image = plots._as_images(x, (784,))
    assert is_image and imgs.shape == (3, 28, 28) and torch.equal(imgs[1], x[1].view(28, 28))
    strips, is_image = plots._as_images(torch.rand(3, 10), (10,))
    assert not is_image and strips.shape == (3, 1, 10)
    plots.save_reconstructions(x, x, tmp_path / "r.png", sample_shape=(784,))
    assert (tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"
