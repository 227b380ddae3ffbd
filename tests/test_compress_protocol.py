"""``aecomp compress`` on the protocol (issue 24): choices on validation only, test reported once per
model, repeats with a spread, the accuracy of what each file runs, and a planted leak caught.

The pipeline runs here with tiny settings (a few epochs, two repeats): these tests check how
numbers are chosen and reported, not how good they are."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from aecomp.compress import protocol
from aecomp.compress.pipeline import CompressSettings, Recorder, run_compression

SMALL = dict(data="digits", latent=8, mode="frozen", ae_epochs=3, epochs=3, prune_epochs=1, share_epochs=1, bits=[4],
             distill=False, latency_repeats=1, export=False, repeats=2)


def _scramble_test_labels(monkeypatch):
    """A test-set-only change: every repeat's test labels permuted (train and validation untouched)."""
    real = protocol.load_repeat

    def load_repeat(*args, **kw):
        splits = real(*args, **kw)
        g = torch.Generator().manual_seed(123)
        splits.test.y = splits.test.y[torch.randperm(len(splits.test), generator=g)]
        return splits

    monkeypatch.setattr(protocol, "load_repeat", load_repeat)


def _plant_leak(monkeypatch):
    """The classic leak: the best training epoch is picked on the test split instead of validation."""
    monkeypatch.setattr(Recorder, "fit_kw", property(lambda rec: dict(
        x_val=rec.splits.test.x, y_val=rec.splits.test.y, batch_size=rec.s.batch_size, seed=rec.seed)))


def _choices(result):
    """Everything the run chose, and every validation figure it chose with."""
    doc = result["report"]
    return {"recommended": doc["recommendation"].get("name"), "frontier": doc["frontier"],
            "best": doc["best_compressed_on_validation"],
            "val": {m["name"]: (m["val_accuracy"], (m.get("over_repeats") or {}).get("val_accuracy"))
                    for m in doc["models"]}}


def _run(tmp_path, name, **kw):
    torch.set_num_threads(1)
    return run_compression(CompressSettings(out=str(tmp_path / name), **dict(SMALL, **kw)), log=lambda m: None)


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    return _run(tmp_path_factory.mktemp("protocol"), "run")


def test_a_test_set_only_change_changes_no_choice(small_run, tmp_path, monkeypatch):
    _scramble_test_labels(monkeypatch)
    scrambled = _run(tmp_path, "scrambled")
    assert _choices(scrambled) == _choices(small_run)
    # ... while the test figures did change (the scrambling reached the test split)
    acc = {m["name"]: m["accuracy"] for m in small_run["report"]["models"] if m.get("accuracy") is not None}
    assert any(abs(m["accuracy"] - acc[m["name"]]) > 5 for m in scrambled["report"]["models"] if m["name"] in acc)


def test_the_validation_split_never_fits_or_stops_a_model(small_run, tmp_path, monkeypatch):
    """Scrambling the validation labels changes no trained model: every file, every test figure is
    the same (validation only ranks); with --early-stopping 0 nothing is held out of training."""
    real = protocol.load_repeat

    def load_repeat(*args, **kw):
        splits = real(*args, **kw)
        splits.val.y = splits.val.y[torch.randperm(len(splits.val), generator=torch.Generator().manual_seed(5))]
        return splits

    monkeypatch.setattr(protocol, "load_repeat", load_repeat)
    other = _run(tmp_path, "val-scrambled")
    test = lambda r: {m["name"]: (m["bytes"], m["accuracy"]) for m in r["report"]["models"]}  # noqa: E731
    assert test(other) == test(small_run)
    from aecomp.compress.pipeline import early_stopping_split

    tr = real("digits", 0).train
    fit, stop = early_stopping_split(tr, 0.1, 0)
    assert len(fit) + len(stop) == len(tr) and abs(len(stop) - 0.1 * len(tr)) < 1
    torch.testing.assert_close(fit.x.double().sum(0) + stop.x.double().sum(0), tr.x.double().sum(0))
    assert early_stopping_split(tr, 0.0, 0) == (tr, None)


def test_a_planted_leak_is_caught(tmp_path, monkeypatch):
    """The same comparison catches a pipeline that chooses on the test split."""
    _plant_leak(monkeypatch)
    leaky = _run(tmp_path, "leaky", repeats=1)
    _scramble_test_labels(monkeypatch)
    leaky_scrambled = _run(tmp_path, "leaky-scrambled", repeats=1)
    assert _choices(leaky) != _choices(leaky_scrambled)


def test_every_row_is_summarised_over_the_repeats(small_run):
    doc = small_run["report"]
    rows = {m["name"]: m for m in doc["models"]}
    assert doc["protocol"]["repeats"] == 2 and doc["protocol"]["compared"] == len(small_run["stats"])
    for fam in ("baseline", "logreg", "compressed-frozen", "scratch"):
        for suffix in ("", "-int8", "-int8-coded", "-shared8", "-pruned70-int8-coded", "-pruned70-shared4",
                       "-pruned70-sharedmix"):
            name = fam + ("-pruned90" + suffix[len("-pruned70"):] if fam == "baseline" and "pruned" in suffix
                          else suffix)
            over = rows[name]["over_repeats"]
            assert over["val_accuracy"]["n"] == 2 and over["test_accuracy"]["n"] == 2, name
            if name != "baseline":
                gap = over["val_gap"]
                assert gap["low"] <= gap["mean"] <= gap["high"] and gap["repeats"] == 2
    assert rows["autoencoder"]["over_repeats"]["recon_mse"]["n"] == 2
    # the recommendation: the smallest file whose mean validation gap is within one point
    rec = doc["recommendation"]
    ok = [m for m in doc["models"] if m.get("over_repeats", {}).get("val_gap")
          and m["over_repeats"]["val_gap"]["mean"] >= -1.0]
    assert rec["name"] == min(ok + [rows["baseline"]], key=lambda m: m["over_repeats"]["bytes"]["mean"])["name"]
    assert rec["test_gap"]["low"] <= rec["test_gap"]["mean"] and "validation" in rec["reason"]
    md = (small_run["paths"]["md"]).read_text()
    assert f"{doc['protocol']['compared']} models were compared" in md
    assert "Autoencoder against random initialisation" in md and doc["ae_vs_random"]
    assert "not drawn" in md and doc["published"] == []
    for c in doc["ae_vs_random"]:  # --mode frozen: the frozen encoder against the same net from random init
        assert c["autoencoder"].replace("compressed-frozen", "scratch") == c["random_init"]
    assert len(doc["ae_vs_random"]) == 8 + len(SMALL["bits"]) and doc["ae_vs_random_sentence"]


def test_row_descriptions_say_what_was_trained(small_run):
    rows = {m["name"]: m for m in small_run["report"]["models"]}
    assert "the head only (the encoder stays frozen)" in rows["compressed-frozen-pruned70-shared4"]["description"]
    assert "random initialisation" in rows["scratch"]["description"] and "no autoencoder" in rows["scratch"]["description"]
    assert "every weight retrained" in rows["logreg-pruned70"]["description"]
    assert rows["logreg"]["family"] == "logreg" and rows["logreg"]["params"] == 64 * 10 + 10


def test_accuracy_is_that_of_what_the_file_runs(small_run):
    """Issue 23 item 14: the accuracy column comes from the path a user runs (packed for int8 and
    shared-weight files), measured on repeat 0's test split."""
    from aecomp.compress import storage
    from aecomp.compress.packed import load_packed_model

    te = protocol.load_repeat("digits", 0, seed=0, val_fraction=0.1, test_fraction=0.2).test
    rows = [m for m in small_run["report"]["models"] if m.get("accuracy") is not None and m["name"] != "pca-8"]
    assert {m["runs_on"] for m in rows} == {"packed", "float32"}
    for m in rows:
        assert m["bytes"] == os.path.getsize(m["file"])
        # te.x is scaled already: a packed model's model(x) takes raw inputs (its file's own scaling)
        model = load_packed_model(m["file"]).forward_scaled if m["runs_on"] == "packed" else \
            storage.load_packed(m["file"])
        with torch.no_grad():
            acc = 100.0 * float((model(te.x).argmax(1) == te.y).float().mean())
        assert acc == pytest.approx(m["accuracy"]), m["name"]
        assert (m["runs_on"] == "packed") == (m["values"] in ("int8", "shared")), m["name"]


def test_coded_rows_load_back_bit_identical(small_run):
    from aecomp.compress import coding

    rows = [m for m in small_run["report"]["models"] if m.get("file", "").endswith(".aecc")]
    assert {"baseline-int8-coded", "baseline-shared8", "logreg-pruned70-shared4"} <= {m["name"] for m in rows}
    m = min(rows, key=lambda r: r["bytes"])
    a, b = coding.load_coded(m["file"]), coding.load_coded(m["file"])
    for la, lb in zip(a.layers, b.layers):
        assert torch.equal(la.dense_weight(), lb.dense_weight())
    assert any(p.suffix == ".aecc" for p in small_run["files"])  # issue 23 item 11: listed among what was written


def test_a_baseline_at_chance_gets_a_warning_and_no_recommendation(tmp_path, capsys):
    """Issue 23 item 12: all-zero images -> the baseline sits at chance -> no model is recommended."""
    from aecomp.cli import main

    g = np.random.default_rng(0)
    np.savez(tmp_path / "zeros.npz", x=np.zeros((300, 16), np.float32), y=g.integers(0, 3, 300))
    code = main(["compress", "--data", str(tmp_path / "zeros.npz"), "--latent", "4", "--out", str(tmp_path / "run"),
                 "--mode", "frozen", "--ae-epochs", "1", "--epochs", "2", "--prune-epochs", "1", "--share-epochs", "1",
                 "--bits", "4", "--no-distill", "--no-export", "--latency-repeats", "1", "--repeats", "2"])
    out, _ = capsys.readouterr()
    assert code == 0
    assert out.startswith("WARNING: no recommendation.") and "not clearly above chance" in out
    doc = json.loads((tmp_path / "run" / "report.json").read_text())
    assert doc["recommendation"]["name"] is None and doc["smallest_within_1pt"] is None
    assert "**No recommendation.**" in (tmp_path / "run" / "report.md").read_text()


@pytest.mark.parametrize("argv, needle", [(["--bits", "1,4"], "--bits must be comma-separated integers in 2..8"),
                                          (["--bits", "x"], "--bits must be"),
                                          (["--temperature", "0"], "--temperature must be a positive number"),
                                          (["--alpha", "2"], "--alpha must be in [0, 1]"),
                                          (["--share-epochs", "-1"], "--share-epochs must be >= 0"),
                                          (["--repeats", "0"], "--repeats must be >= 1"),
                                          (["--points", "-1"], "--points must be a number >= 0")])
def test_flags_reject_bad_values_in_one_line(tmp_path, capsys, argv, needle):
    from aecomp.cli import main

    code = main(["compress", "--data", "digits", "--out", str(tmp_path), *argv])
    _, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and needle in lines[0], err


def test_flags_reach_the_settings():
    import argparse

    from aecomp.compress.cli import add_arguments, settings_from_args

    p = argparse.ArgumentParser()
    add_arguments(p)
    s = settings_from_args(p.parse_args(["--bits", "2,8", "--no-distill", "--temperature", "2", "--alpha", "0.5",
                                         "--share-epochs", "3", "--repeats", "5", "--points", "0.5",
                                         "--no-baselines", "--early-stopping", "0", "--no-fold-inputs",
                                         "--no-mixed-bits"]))
    assert (s.bits, s.distill, s.temperature, s.alpha, s.share_epochs) == ([2, 8], False, 2.0, 0.5, 3)
    assert (s.repeats, s.points, s.baselines, s.early_stopping) == (5, 0.5, False, 0.0)
    assert (s.fold_inputs, s.mixed_bits) == (False, False)
    d = settings_from_args(p.parse_args([]))
    assert d.bits == [3, 4, 5] and d.distill is True and d.repeats >= 3 and d.baselines is True
    assert d.fold_inputs and d.mixed_bits
