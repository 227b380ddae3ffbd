"""Bring your own model / encoder / images / few labels, end to end through the compression pipeline
(``aecomp.compress.compress_model`` and ``aecomp compress --model/--encoder/--labels/--unlabeled/--study``),
on the embedded digits with the smallest settings that still run every step."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from torch import nn

from aecomp import data
from aecomp.cli import main
from aecomp.compress import CompressError, compress_model
from aecomp.train.checkpoint import resolve_checkpoint
from tests.test_pretrained import train_run  # noqa: F401  (the fixture: a 1-epoch aecomp train run on digits)

# every step runs, each as short as it can be (the point is the path, not the accuracy)
FAST = dict(repeats=1, ae_epochs=2, epochs=2, prune_epochs=1, share_epochs=1, bits=[4], mode="frozen", distill=False,
            latency_repeats=2, export=False, baselines=False)
FAST_ARGS = ["--repeats", "1", "--ae-epochs", "2", "--epochs", "2", "--prune-epochs", "1", "--share-epochs", "1",
             "--bits", "4", "--mode", "frozen", "--no-distill", "--latency-repeats", "2", "--no-export",
             "--no-baselines"]


@pytest.fixture(scope="module")
def user_model():
    """A user's nn.Sequential trained briefly on digits pixels divided by 16."""
    d = data.load("digits", scale="none")
    g = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 24), nn.ReLU(), nn.Linear(24, 10))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(150):
        opt.zero_grad()
        nn.functional.cross_entropy(model(d.train.x / 16), d.train.y).backward()
        opt.step()
    return model.eval()


def _one_line_exit(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("aecomp: error: ") and "\n" not in err
    return err


def test_compress_model_of_a_users_sequential(tmp_path, user_model):
    before = copy.deepcopy(user_model.state_dict())
    result = compress_model(user_model, "digits", scale="16", out=tmp_path / "mine", **FAST)
    for k, v in user_model.state_dict().items():  # never modified in place
        assert torch.equal(v, before[k]), k
    rows = {r["name"]: r for r in result["rows"]}
    assert "your model" in rows["baseline"]["description"]
    for step in ("baseline-int8", "baseline-pruned90-shared4", "compressed-frozen-pruned70-shared4"):
        assert step in rows
    # the baseline's file holds the user's weights exactly (float32 file)
    from aecomp.compress import storage

    stored = storage.load_packed(rows["baseline"]["file"])
    torch.testing.assert_close(stored.layers[0].weight, user_model[0].weight, rtol=0, atol=0)
    # the declared scaling is the one the data got, and the report says so
    x = data.load("digits", scale="none").test.x[:5]
    with torch.no_grad():
        assert torch.equal(stored(x / 16).argmax(1), user_model(x / 16).argmax(1))
    text = result["paths"]["md"].read_text()
    assert "(x - 0) / 16, declared; not refitted" in text and "trained outside this run" in text
    assert result["recommendation"].compared > 10
    assert all(p.exists() for p in result["files"])
    # the run's own autoencoder can be reused from its folder
    from aecomp.compress.pretrained import load_encoder

    assert load_encoder(tmp_path / "mine").dims == (64, 32, 16)


def test_a_model_whose_classes_mean_other_labels_is_refused(tmp_path, user_model):
    from aecomp.compress import storage
    from aecomp.compress.own_model import read_classifier

    path = tmp_path / "relabelled.safetensors"
    storage.save_packed(read_classifier(user_model).model, path, labels=[9, 8, 7, 6, 5, 4, 3, 2, 1, 0],
                        scaling=data.Preprocessing("global", torch.tensor(0.0), torch.tensor(16.0), unit=True))
    with pytest.raises(CompressError, match="the same labels"):
        compress_model(path, "digits", out=tmp_path / "x", **FAST)


def test_cli_model_state_dict_and_its_mistakes(tmp_path, capsys, user_model):
    path = tmp_path / "mine.pt"
    torch.save(user_model.state_dict(), path)
    out = str(tmp_path / "run")
    assert "--activations" in _one_line_exit(capsys, ["compress", "--model", str(path), "--out", out])
    assert "--scale" in _one_line_exit(capsys, ["compress", "--model", str(path), "--activations", "relu,none",
                                                "--out", out])
    # a different data width, and a model whose scaling is wrong enough to be near chance
    assert "64 inputs" in _one_line_exit(capsys, ["compress", "--model", str(path), "--activations", "relu,none",
                                                  "--scale", "16", "--data", "digits28", "--out", out, *FAST_ARGS])
    assert "chance" in _one_line_exit(capsys, ["compress", "--model", str(path), "--activations", "relu,none",
                                               "--scale", "-16", "--out", str(tmp_path / "neg"), *FAST_ARGS])
    scaler = tmp_path / "scaler.npz"  # a per-feature scaling of the model's width, data of another
    np.savez(scaler, shift=np.zeros(64, np.float32), scale=np.full(64, 16, np.float32))
    assert "64 inputs" in _one_line_exit(capsys, ["compress", "--model", str(path), "--activations", "relu,none",
                                                  "--scale", str(scaler), "--data", "digits28", "--out", out,
                                                  *FAST_ARGS])
    conv = tmp_path / "conv.pt"
    torch.save(nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)).state_dict(), conv)
    err = _one_line_exit(capsys, ["compress", "--model", str(conv), "--activations", "relu,none", "--scale", "16",
                                  "--out", out])
    assert "convolution" in err and "normalisation" in err
    assert "unknown --scale" in _one_line_exit(capsys, ["compress", "--scale", "16x", "--out", out])
    assert main(["compress", "--model", str(path), "--activations", "relu,none", "--scale", "16", "--out", out,
                 *FAST_ARGS]) == 0
    printed = capsys.readouterr().out
    assert "recommended:" in printed and (tmp_path / "run" / "report.md").is_file()


def test_cli_encoder_labels_and_unlabeled(tmp_path, capsys, train_run):
    extra = tmp_path / "more.npy"
    np.save(extra, np.random.default_rng(0).integers(0, 17, size=(40, 8, 8)).astype(np.float32))
    out = tmp_path / "reuse"
    assert main(["compress", "--encoder", str(train_run), "--labels", "5", "--unlabeled", str(extra),
                 "--out", str(out), *FAST_ARGS]) == 0
    report = (out / "report.md").read_text()
    assert "pretrained encoder from" in report and "64-24-8" in report
    assert "few labels: 50 training labels (5 per class)" in report
    assert "test images the encoder was pretrained on" in report and "--unlabeled" in report
    doc = json.loads((out / "report.json").read_text())
    assert doc["samples"]["train"] == 50
    # the frozen CompressedNet's encoder is the run's encoder, untouched
    enc_run = resolve_checkpoint(train_run).model["encoder.0.weight"]
    net = resolve_checkpoint(out / "checkpoints" / "compressed-frozen").model["encoder.0.weight"]
    assert torch.equal(enc_run, net)
    # an encoder whose width differs from the data, and a folder without one
    err = _one_line_exit(capsys, ["compress", "--encoder", str(train_run), "--data", "digits28",
                                  "--out", str(tmp_path / "x"), *FAST_ARGS])
    assert "64 inputs" in err and "784" in err
    (tmp_path / "empty").mkdir()
    assert "no encoder" in _one_line_exit(capsys, ["compress", "--encoder", str(tmp_path / "empty"),
                                                   "--out", str(tmp_path / "y")])
    assert "class" in _one_line_exit(capsys, ["compress", "--labels", "500", "--out", str(tmp_path / "z"),
                                              *FAST_ARGS])


def test_cli_study_folder_rules(tmp_path, capsys):
    out = str(tmp_path / "study")
    argv = ["compress", "--study", "transfer", "--source", "0-4", "--target", "5-9", "--labels", "5", "--repeats", "1",
            "--ae-epochs", "2", "--epochs", "2", "--out", out]
    assert main(argv) == 0
    assert "Transfer on digits" in capsys.readouterr().out
    assert "not empty" in _one_line_exit(capsys, argv)
    assert main(argv + ["--overwrite"]) == 0
    assert json.loads((tmp_path / "study" / "outputs.json").read_text())["complete"]


def test_compress_model_needs_something_brought():
    with pytest.raises(CompressError):
        compress_model(None, "digits")
    with pytest.raises(TypeError, match="unknown setting"):
        compress_model(nn.Linear(64, 10), "digits", scale="16", epochz=3)


def test_the_pipeline_sees_the_declared_scaling_on_every_split(tmp_path, monkeypatch, user_model):
    """What default_families gets: splits scaled the declared way, with that scaling recorded
    (what the files of a run record as their input scaling)."""
    from aecomp.compress import pipeline

    seen = []
    monkeypatch.setattr(pipeline, "default_families", lambda rec: seen.append(rec))
    with pytest.raises(ValueError, match="baseline"):  # nothing recorded: no baseline row to report on
        compress_model(user_model, "digits", scale="0,16", out=tmp_path / "spy", **dict(FAST, repeats=2))
    assert len(seen) == 2
    raw = [pipeline.load_labeled(pipeline.CompressSettings(data="digits", scale="none"), r) for r in range(2)]
    for rec, r in zip(seen, raw):
        assert rec.base is not None and rec.base is not user_model
        for d, d_raw in zip(rec.splits, r):
            assert float(d.preprocessing.scale) == 16.0 and float(d.preprocessing.shift) == 0.0
            torch.testing.assert_close(d.x, d_raw.x / 16)
