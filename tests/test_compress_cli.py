"""``aecomp compress``, ``aecomp export`` and ``aecomp demo`` end to end on digits (small settings)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from aecomp.cli import main

FAST = ["--ae-epochs", "3", "--epochs", "2", "--prune-epochs", "1", "--latency-repeats", "2",
        "--share-epochs", "1", "--bits", "4", "--no-distill", "--repeats", "1"]  # the protocol: test_compress_protocol.py
FIELDS = ("name", "params", "bytes", "accuracy", "recon_mse", "latency_ms_b1", "latency_ms_b256", "ratio")


def _one_line_error(capsys, argv, *needles):
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("aecomp: error: "), err
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def compress_run(tmp_path_factory):
    """One small ``aecomp compress --mode all`` run (no ONNX) shared by the tests below."""
    out = tmp_path_factory.mktemp("compress")
    code = main(["compress", "--data", "digits", "--latent", "8", "--mode", "all", "--out", str(out),
                 "--no-export", *FAST])
    assert code == 0
    return out


def test_compress_writes_the_report_and_every_file_it_names(compress_run):
    doc = json.loads((compress_run / "report.json").read_text())
    assert doc["dataset"] == "digits" and doc["latent"] == 8
    rows = {m["name"]: m for m in doc["models"]}
    for name in ("baseline", "baseline-int8", "baseline-pruned90", "baseline-pruned90-int8", "pca-8",
                 "autoencoder", "autoencoder-linear"):
        assert name in rows, sorted(rows)
    for fam in ("compressed-replace", "compressed-frozen", "compressed-finetune", "logreg", "scratch"):
        for suffix in ("", "-int8", "-pruned70", "-pruned70-int8"):
            assert f"{fam}{suffix}" in rows, sorted(rows)
    for m in rows.values():
        for f in FIELDS:
            assert f in m, (m["name"], f)
        assert m["bytes"] == os.path.getsize(m["file"])  # bytes = the file that holds the model
        assert m["ratio"] == pytest.approx(rows["baseline"]["bytes"] / m["bytes"])
        assert m["latency_ms_b1"] > 0 and m["latency_ms_b256"] > 0
    assert rows["autoencoder"]["accuracy"] is None and rows["autoencoder"]["recon_mse"] > 0
    assert rows["pca-8"]["recon_mse"] > 0 and rows["pca-8"]["accuracy"] > 50
    assert rows["baseline"]["recon_mse"] is None and rows["baseline"]["val_accuracy"] > 50
    # int8 and sparse files are what they claim: much smaller than float32
    assert rows["baseline-int8"]["bytes"] < rows["baseline"]["bytes"] / 3.3
    assert rows["baseline-pruned90"]["bytes"] < rows["baseline"]["bytes"] / 4
    assert rows["compressed-frozen"]["params"] * 5 < rows["baseline"]["params"]
    md = (compress_run / "report.md").read_text()
    assert "| compressed-replace-int8 |" in md and "not drawn" in md and "Han et al." not in md
    assert (compress_run / "accuracy_vs_bytes.png").stat().st_size > 5000


def test_compress_bad_inputs_give_one_clear_line(tmp_path, capsys):
    _one_line_error(capsys, ["compress", "--data", "digits", "--mode", "squash", "--out", str(tmp_path)],
                    "unknown --mode 'squash'", "replace, frozen, finetune or all")
    _one_line_error(capsys, ["compress", "--data", "digits", "--latent", "100", "--out", str(tmp_path)],
                    "--latent 100", "64 input features")
    unlabeled = tmp_path / "x.npy"
    np.save(unlabeled, np.random.rand(50, 12).astype(np.float32))
    _one_line_error(capsys, ["compress", "--data", str(unlabeled), "--latent", "4", "--out", str(tmp_path)],
                    "has no labels")
    _one_line_error(capsys, ["compress", "--data", "nowhere.npz", "--out", str(tmp_path)], "nowhere.npz")
    _one_line_error(capsys, ["compress", "--data", "digits", "--sparsity", "1.5", "--out", str(tmp_path)],
                    "--sparsity")
    _one_line_error(capsys, ["compress", "--data", "digits", "--latent", "0", "--out", str(tmp_path)], "--latent")


def test_compress_on_a_labeled_npz(tmp_path, capsys):
    g = np.random.default_rng(0)
    y = g.integers(0, 3, size=300)
    x = (g.normal(size=(300, 10)) + 2 * y[:, None]).astype(np.float32)  # three separable clusters
    np.savez(tmp_path / "d.npz", x=x, y=y)
    code = main(["compress", "--data", str(tmp_path / "d.npz"), "--latent", "3", "--mode", "frozen",
                 "--out", str(tmp_path / "run"), "--no-export", *FAST, "--epochs", "30"])
    out, _ = capsys.readouterr()
    assert code == 0
    assert out.startswith("recommended: ") and "report.json" in out and "| compressed-frozen |" not in out
    doc = json.loads((tmp_path / "run" / "report.json").read_text())
    assert {m["name"] for m in doc["models"]} >= {"baseline", "compressed-frozen", "pca-3"}
    assert not any(m["name"].startswith("compressed-replace") for m in doc["models"])


@pytest.mark.parametrize("name", ["compressed-replace", "autoencoder"])
def test_export_a_checkpoint_written_by_compress(compress_run, tmp_path, capsys, name):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    out = tmp_path / f"{name}.onnx"
    code = main(["export", str(compress_run / "checkpoints" / name), "--format", "onnx", "--out", str(out)])
    stdout, err = capsys.readouterr()
    assert code == 0, err
    if name == "autoencoder":
        files = [tmp_path / "autoencoder.encoder.onnx", tmp_path / "autoencoder.decoder.onnx"]
    else:
        files = [out]
    for f in files:
        assert f.is_file() and str(f) in stdout
    assert stdout.count("max |diff|") == len(files)
    diffs = [float(line.rsplit(" ", 1)[1]) for line in stdout.splitlines() if "max |diff|" in line]
    assert max(diffs) <= 1e-5


def test_export_a_packed_int8_file(compress_run, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from aecomp.compress import load_packed
    from aecomp.compress.export import run_onnx

    packed = compress_run / "models" / "compressed-frozen-int8.safetensors"
    out = tmp_path / "int8.onnx"
    assert main(["export", str(packed), "--out", str(out)]) == 0
    capsys.readouterr()
    x = torch.rand(11, 64)
    with torch.no_grad():
        want = load_packed(packed)(x)
    # the ONNX file takes raw inputs: the digits' 0..16, scaled inside by the file's own scaling
    from aecomp.compress.storage import read_packed

    raw = read_packed(packed).meta.scaling.invert(x)
    assert float(raw.max()) > 2
    assert float((run_onnx(out, raw) - want).abs().max()) <= 1e-5


def test_export_bad_inputs_give_one_clear_line(tmp_path, capsys, compress_run):
    _one_line_error(capsys, ["export", str(tmp_path / "missing"), "--out", str(tmp_path / "m.onnx")], "no such")
    _one_line_error(capsys, ["export", str(compress_run / "checkpoints" / "baseline"), "--format", "tflite"],
                    "unknown --format 'tflite'")
    (tmp_path / "empty").mkdir()
    _one_line_error(capsys, ["export", str(tmp_path / "empty")], "no checkpoint")


def test_export_a_compress_folder_into_a_folder(compress_run, tmp_path, capsys, monkeypatch):
    """`aecomp export RUN --out DIR/`: every model the compress run saved, one file each, inside DIR;
    --model picks one; the autoencoders' own .safetensors files export too."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    out = tmp_path / "onnx"
    assert main(["export", str(compress_run), "--model", "compressed-frozen", "--out", f"{out}/"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["compressed-frozen.onnx"]
    capsys.readouterr()
    monkeypatch.chdir(tmp_path)
    assert main(["export", str(compress_run / "models" / "autoencoder.safetensors"), "--out", "ae/"]) == 0
    stdout = capsys.readouterr().out
    assert (tmp_path / "ae" / "autoencoder.encoder.onnx").is_file() and stdout.count("max |diff|") == 2
    assert max(float(x.rsplit(" ", 1)[1]) for x in stdout.splitlines() if "max |diff|" in x) <= 1e-5
    # without --model: every model of the run (each one exports as above), into <run>-onnx/ by default
    import argparse

    from aecomp.compress import export_cli

    parser = argparse.ArgumentParser()
    export_cli.add_arguments(parser)
    args = parser.parse_args([str(compress_run)])
    targets, into_folder = export_cli._targets(args)
    assert into_folder and [n for n, _ in targets] == ["autoencoder", "baseline", "compressed-finetune",
                                                         "compressed-frozen", "compressed-replace", "logreg",
                                                         "scratch"]
    assert export_cli._out_path(args, "baseline", True) == Path(f"{compress_run.name}-onnx") / "baseline.onnx"
    # an existing folder given without the slash: inside it as well; a new name without it: that file
    one = parser.parse_args([str(compress_run / "checkpoints" / "baseline"), "--out", str(out)])
    assert export_cli._out_path(one, "baseline", False) == out / "baseline.onnx"
    one = parser.parse_args([str(compress_run / "checkpoints" / "baseline"), "--out", str(tmp_path / "b.onnx")])
    assert export_cli._out_path(one, "baseline", False) == tmp_path / "b.onnx"


def test_export_option_errors(compress_run, tmp_path, capsys):
    _one_line_error(capsys, ["export", str(compress_run), "--tolerance", "-1"], "--tolerance must be a number >= 0")
    _one_line_error(capsys, ["export", str(compress_run), "--model", "nope"], "--model 'nope' is not in",
                    "compressed-frozen")
    _one_line_error(capsys, ["export", str(compress_run / "models" / "nope.aecc")], "no such")


def test_demo_runs_end_to_end_and_prints_a_short_answer(tmp_path, capsys):
    """The demo with tiny settings and ONNX export on: the short answer (the recommended file, one
    frontier line per family), then what it wrote; the full table only in report.md."""
    pytest.importorskip("onnxruntime")
    out = tmp_path / "demo"
    code = main(["demo", "--out", str(out), "--mode", "frozen", *FAST])
    stdout, _ = capsys.readouterr()
    assert code == 0
    answer, _, listing = stdout.partition("\nwrote (")
    lines = answer.splitlines()
    assert lines[0].startswith("demo: ") and "repeat" in lines[0]
    assert lines[1].startswith("recommended: ") and os.path.isfile(lines[1].split(": ", 1)[1])
    families = lines[lines.index(next(x for x in lines if x.startswith("frontier"))) + 1:]
    for fam in ("baseline", "logreg", "compressed-frozen", "scratch"):
        assert any(x.split()[0] == fam for x in families), fam
    assert len(stdout.splitlines()) < 25 and "| model |" not in stdout  # no table on the console
    assert str(out / "report.json") in listing and f"{out / 'models'}/ (" in listing and ".aecc" in listing
    doc = json.loads((out / "report.json").read_text())
    assert doc["dataset"] == "digits"
    assert all(o["max_abs_diff"] <= 1e-5 for o in doc["onnx"]) and len(doc["onnx"]) == 3
    files = json.loads((out / "outputs.json").read_text())["files"]
    assert any(f.endswith(".aecc") for f in files) and "onnx/autoencoder.decoder.onnx" in files
