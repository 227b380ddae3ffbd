"""A pretrained encoder from an ``aecomp train`` run (folder, checkpoint, safetensors file), its input
scaling, and the bad inputs: a folder without an encoder, a width that differs from the data."""
from __future__ import annotations

import json

import pytest
import torch

from aecomp import data
from aecomp.cli import main
from aecomp.compress import storage
from aecomp.compress.pretrained import EncoderError, check_width, load_encoder
from aecomp.models import Autoencoder


def _one_line(exc) -> str:
    text = str(exc.value)
    assert text and "\n" not in text
    return text


@pytest.fixture(scope="module")
def train_run(tmp_path_factory):
    """A 1-epoch ``aecomp train`` run on digits (64 features, 0..16 pixels: global min-max)."""
    out = tmp_path_factory.mktemp("runs") / "ae"
    assert main(["train", "--data", "digits", "--model", "mlp", "--dims", "64,24,8", "--epochs", "1",
                 "--batch-size", "256", "--out", str(out), "--no-progress"]) == 0
    return out


def test_encoder_from_a_train_run_folder_has_its_architecture_and_scaling(train_run):
    enc = load_encoder(train_run)
    assert enc.dims == (64, 24, 8) and enc.latent == 8
    splits = data.load("digits", val_fraction=0.1, test_fraction=0.1, seed=0)
    # the run's scaling: fitted on the run's own training split (digits: one global min-max, 0..16)
    assert enc.preprocessing.kind == splits.train.preprocessing.kind == "global"
    assert float(enc.preprocessing.scale) == pytest.approx(16.0)
    assert enc.data["spec"] == "digits"
    # the weights are the checkpoint's
    from aecomp.train.checkpoint import resolve_checkpoint

    ckpt = resolve_checkpoint(train_run)
    assert torch.equal(enc.autoencoder.encoder.layers[0].weight, ckpt.model["encoder.0.weight"])
    # a checkpoint folder and its model.safetensors give the same encoder
    for source in (ckpt.path, ckpt.path / "model.safetensors"):
        again = load_encoder(source)
        assert torch.equal(again.autoencoder.encoder.layers[0].weight, enc.autoencoder.encoder.layers[0].weight)


def test_declared_scaling_replaces_the_runs(train_run):
    enc = load_encoder(train_run, scale="0,255")
    assert float(enc.preprocessing.scale) == 255.0 and enc.notes
    with pytest.raises(EncoderError) as exc:
        load_encoder(train_run, scale="minmax")  # fitting on new data is not the encoder's scaling
    assert "--scale" in _one_line(exc)


def test_width_mismatch_is_one_line(train_run):
    enc = load_encoder(train_run)
    check_width(enc, 64, "digits")
    with pytest.raises(EncoderError) as exc:
        check_width(enc, 784, "digits28")
    text = _one_line(exc)
    assert "64" in text and "784" in text and "digits28" in text


def test_a_folder_without_an_encoder_is_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("hello")
    for folder in (tmp_path / "empty", tmp_path / "other"):
        with pytest.raises(EncoderError) as exc:
            load_encoder(folder)
        assert "no encoder" in _one_line(exc)
    with pytest.raises(EncoderError) as exc:
        load_encoder(tmp_path / "nowhere")
    assert "no such" in _one_line(exc)


def test_a_damaged_checkpoint_is_one_line(tmp_path, train_run):
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(train_run, run)
    for ck in (run / "checkpoints").iterdir():
        p = ck / "model.safetensors"
        raw = bytearray(p.read_bytes())
        raw[-1] ^= 0xFF
        p.write_bytes(bytes(raw))
    with pytest.raises(EncoderError) as exc:
        load_encoder(run)
    _one_line(exc)


def test_a_conv_run_is_refused(tmp_path):
    out = tmp_path / "conv"
    assert main(["train", "--data", "digits", "--model", "conv", "--dims", "4,4", "--epochs", "1",
                 "--batch-size", "512", "--out", str(out), "--no-progress"]) == 0
    with pytest.raises(EncoderError) as exc:
        load_encoder(out)
    assert "'conv'" in _one_line(exc)


def test_safetensors_file_needs_a_declared_scaling(tmp_path):
    ae = Autoencoder([64, 12, 5])
    path = tmp_path / "ae.safetensors"
    storage.save_float32(ae.state_dict(), path, metadata={"aecomp": json.dumps({"config": ae.config})})
    with pytest.raises(EncoderError) as exc:
        load_encoder(path)
    assert "--scale" in _one_line(exc)
    enc = load_encoder(path, scale="16")
    assert enc.dims == (64, 12, 5)
    x = torch.rand(3, 64)
    torch.testing.assert_close(enc.autoencoder.encode(x), ae.encode(x))
    # a file without an architecture, or holding a classifier
    bare = tmp_path / "bare.safetensors"
    storage.save_float32(ae.state_dict(), bare)
    with pytest.raises(EncoderError) as exc:
        load_encoder(bare, scale="16")
    assert "architecture" in _one_line(exc)
    from aecomp.nn import FusedMLP

    clf = tmp_path / "clf.safetensors"
    storage.save_packed(FusedMLP([64, 10], "none"), clf)
    with pytest.raises(EncoderError) as exc:
        load_encoder(clf, scale="16")
    assert "--model" in _one_line(exc)


def test_model_file_with_its_scaling_needs_no_declaration(tmp_path):
    from aecomp.data import Preprocessing

    ae = Autoencoder([64, 12, 5])
    path = tmp_path / "ae2.safetensors"
    storage.save_float32(ae.state_dict(), path, config=ae.config,
                         scaling=Preprocessing("global", torch.tensor(0.0), torch.tensor(16.0), unit=True))
    enc = load_encoder(path)
    assert float(enc.preprocessing.scale) == 16.0 and enc.dims == (64, 12, 5)


def test_autoencoder_object_is_copied(tmp_path):
    ae = Autoencoder([64, 12, 5])
    enc = load_encoder(ae, scale="none")
    with torch.no_grad():
        enc.autoencoder.encoder.layers[0].weight.zero_()
    assert ae.encoder.layers[0].weight.abs().sum() > 0
    with pytest.raises(EncoderError) as exc:
        load_encoder(ae)
    assert "--scale" in _one_line(exc)
