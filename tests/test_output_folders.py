"""Output folders of ``aecomp train`` / ``compress`` / ``demo``: usable or one clear line, locked
against a second run, holding exactly one run's outputs, written with one file mode; and the
label checks of ``compress``."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from aecomp.cli import main
from aecomp.train import output

from .test_compress_cli import _one_line_error

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--ae-epochs", "2", "--epochs", "1", "--prune-epochs", "1", "--latency-repeats", "1", "--no-export",
        "--share-epochs", "1", "--bits", "4", "--no-distill", "--repeats", "1"]


def _labeled(tmp_path: Path, n: int = 120) -> Path:
    g = np.random.default_rng(0)
    y = np.arange(n) % 3
    x = (g.normal(size=(n, 10)) + y[:, None]).astype(np.float32)
    path = tmp_path / "d.npz"
    np.savez(path, x=x, y=y)
    return path


def _files(folder: Path):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and p.name != output.LOCK_NAME)


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(k, None)
    return env


# ------------------------------------------------------------------------------ item 7: --out


def _command(cmd: str, tmp_path: Path):
    if cmd == "train":
        return ["train", "--data", "digits", "--epochs", "1", "--no-progress"]
    if cmd == "compress":
        return ["compress", "--data", str(_labeled(tmp_path)), "--latent", "3", *FAST]
    return ["demo", *FAST]


@pytest.mark.parametrize("cmd", ["train", "compress", "demo"])
def test_unusable_out_is_one_line_exit_2(tmp_path, capsys, cmd):
    argv = _command(cmd, tmp_path)
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    _one_line_error(capsys, [*argv, "--out", str(a_file)], f"--out {a_file} is a file, not a folder")
    _one_line_error(capsys, [*argv, "--out", str(a_file / "sub")],
                    f"--out {a_file / 'sub'}: cannot create the folder ({a_file} is a file)")
    if sys.platform.startswith("linux"):  # nothing can be created under /proc, not even by root
        _one_line_error(capsys, [*argv, "--out", "/proc/aecomp-test/out"], "cannot create the folder")
    assert a_file.read_text() == "x"


@pytest.mark.parametrize("cmd, extra", [("compress", ["--hidden", "100000000"]), ("demo", ["--hidden", "100000000"]),
                                        ("train", ["--dims", "64,100000000"])])
def test_widths_too_large_for_memory_are_one_line_exit_2(tmp_path, capsys, monkeypatch, cmd, extra):
    real = output.available_memory
    monkeypatch.setattr(output, "available_memory", lambda: min(real() or 2**34, 2**34))  # never allocated
    _one_line_error(capsys, [*_command(cmd, tmp_path), *extra, "--out", str(tmp_path / "o")],
                    "parameters: about", "GiB of memory is available")


# ------------------------------------------------------------------------------ item 3: locks


def test_second_train_on_the_same_out_is_refused_naming_the_first_pid(tmp_path):
    """Two real processes: the first holds --out (a long run), the second stops at once with one
    line naming the first's pid; after the first is killed with SIGKILL the folder is free again."""
    out = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-m", "aecomp", "train", "--data", "digits", "--dims", "64,16",
                              "--epochs", "100000", "--batch-size", "8", "--out", str(out), "--no-progress"],
                             env=_env(), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        lock = out / output.LOCK_NAME
        deadline = time.monotonic() + 90
        while not (lock.is_file() and lock.read_text().strip() == str(first.pid)):
            assert first.poll() is None, first.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "the first run never took the lock"
            time.sleep(0.1)
        second = subprocess.run([sys.executable, "-m", "aecomp", "train", "--data", "digits", "--dims", "64,16",
                                 "--epochs", "1", "--out", str(out), "--no-progress"],
                                env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert second.returncode == 2
        assert second.stderr.strip().splitlines() == [
            f"aecomp: error: --out {out} is in use by another aecomp run (pid {first.pid}); wait for it to finish "
            f"or choose another --out"]
        assert first.poll() is None  # the first one goes on
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
        first.stderr.close()
    # the kernel dropped the lock with the process: the same folder can be resumed (or started) now
    assert main(["train", "--out", str(out), "--resume", "--epochs", "0", "--no-progress"]) == 0


def test_compress_on_a_locked_out_is_refused(tmp_path, capsys):
    out = tmp_path / "c"
    out.mkdir()
    with output.FolderLock(out):  # another open file description: flock conflicts even in one process
        _one_line_error(capsys, [*_command("compress", tmp_path), "--out", str(out)],
                        f"is in use by another aecomp run (pid {os.getpid()})")
    assert not _files(out)


# ------------------------------------------------------------------------------ item 4 + 13


def test_compress_folder_holds_exactly_one_runs_outputs_and_one_file_mode(tmp_path, capsys):
    from aecomp.compress.export_cli import compress_models

    old_mask = os.umask(0o027)  # a umask other than the usual 022, so the mode check means something
    try:
        data = _labeled(tmp_path)
        out = tmp_path / "c"
        base = ["compress", "--data", str(data), "--latent", "3", "--out", str(out), *FAST]
        assert main([*base, "--mode", "all"]) == 0
        capsys.readouterr()
        first = _files(out)
        assert any(f.startswith("models/compressed-replace") for f in first)
        assert json.loads((out / "outputs.json").read_text())["files"] == first
        # a used folder without --overwrite: refused, nothing touched
        _one_line_error(capsys, [*base, "--mode", "frozen"], f"--out {out} is not empty", "add --overwrite")
        assert _files(out) == first
        # --overwrite: exactly the new run's outputs afterwards, nothing stale for export to pick up
        assert main([*base, "--mode", "frozen", "--overwrite"]) == 0
        capsys.readouterr()
        second = _files(out)
        assert json.loads((out / "outputs.json").read_text())["files"] == second
        assert not [f for f in second if "replace" in f or "finetune" in f], second
        assert [n for n, _ in compress_models(out)] == ["autoencoder", "baseline", "compressed-frozen", "logreg", "scratch"]
        assert all(len(list((out / "checkpoints" / n).iterdir())) == 1 for n, _ in compress_models(out))
        # files of both commands get the same mode: what open() gives under the umask
        train_out = tmp_path / "t"
        assert main(["train", "--data", str(data), "--epochs", "1", "--out", str(train_out), "--no-progress"]) == 0
        capsys.readouterr()
        modes = {f"{folder.name}/{f}": (folder / f).stat().st_mode & 0o777
                 for folder in (out, train_out) for f in _files(folder)}
        assert set(modes.values()) == {0o640}, {k: oct(v) for k, v in modes.items() if v != 0o640}
        # anything the earlier run did not write: --overwrite refuses and removes nothing
        (out / "models" / "mine.txt").write_text("keep me")
        _one_line_error(capsys, [*base, "--mode", "frozen", "--overwrite"], "also holds models/mine.txt",
                        "nothing is removed")
        assert _files(out) == sorted(second + ["models/mine.txt"])
        mine = tmp_path / "mine"
        mine.mkdir()
        (mine / "notes.txt").write_text("x")
        _one_line_error(capsys, [*base[:-len(FAST) - 2], "--out", str(mine), *FAST, "--overwrite"],
                        "but no earlier aecomp compress run", "nothing is removed")
        assert (mine / "notes.txt").read_text() == "x"
    finally:
        os.umask(old_mask)


def test_an_interrupted_run_can_be_overwritten(tmp_path):
    from aecomp.compress import pipeline
    from aecomp.train.output import clear_folder

    out = tmp_path / "c"
    (out / "models").mkdir(parents=True)
    (out / "models" / "baseline.safetensors").write_bytes(b"partial")
    (out / "outputs.json").write_text(json.dumps({"complete": False, "files": ["outputs.json"]}))
    clear_folder(out, True, pipeline.LAYOUT, "aecomp compress", "report.json")
    assert list(out.iterdir()) == []


def test_demo_replaces_its_own_earlier_outputs_by_default():
    from aecomp.cli import build_parser

    args = build_parser("demo").parse_args(["demo"])
    assert args.overwrite is True and args.out == "aecomp-demo"
    assert build_parser("compress").parse_args(["compress"]).overwrite is False


# ------------------------------------------------------------------------------ item 5: labels


@pytest.fixture
def labeled(tmp_path):
    from aecomp.compress.pipeline import CompressSettings, load_labeled

    s = CompressSettings(data=str(_labeled(tmp_path)), latent=3)
    return s, load_labeled(s)


@pytest.mark.parametrize("split, value, pattern", [
    ("val", -1, "labels must be 0, 1, 2, ...; the val split has label -1"),
    ("test", -3, "the test split has label -3"),
    ("test", 7, r"the test split has label\(s\) 7 that the training split never has \(1 sample\(s\)\)"),
    ("val", 5, r"the val split has label\(s\) 5 that the training split never has"),
    ("train", -2, "the train split has label -2"),
])
def test_labels_are_checked_on_every_split(labeled, split, value, pattern):
    from aecomp.compress.pipeline import CompressError, check_labels

    s, splits = labeled
    assert check_labels(s, splits) == 3
    getattr(splits, split).y[0] = value
    with pytest.raises(CompressError, match=pattern):
        check_labels(s, splits)


def test_an_implausible_class_count_is_refused_unless_allowed(labeled, tmp_path, capsys):
    from aecomp.compress.pipeline import CompressError, check_labels

    s, splits = labeled
    splits.train.y[0] = 1_000_000  # one stray label: a million-output head
    with pytest.raises(CompressError, match=r"the largest label is 1000000, so 1,000,001 classes for 84 training "
                                            r"samples \(4 distinct labels\); more than --max-classes 1000"):
        check_labels(s, splits)
    s.max_classes = 1_000_001
    assert check_labels(s, splits) == 1_000_001
    # from a file, sparse labels are remapped to 0..k-1 (the model file keeps the map), so a stray
    # 1,000,000 becomes a class of its own with one sample: trained, but named in a warning
    from aecomp import data as data_mod

    g = np.random.default_rng(1)
    y = np.arange(60) % 2
    y[5] = 1_000_000
    np.savez(tmp_path / "stray.npz", x=g.random((60, 6)).astype(np.float32), y=y)
    s.data = str(tmp_path / "stray.npz")
    stray = data_mod.load(s.data, val_fraction=0.1, test_fraction=0.1, stratify=True)
    assert stray.label_map == (0, 1, 1_000_000)
    with pytest.warns(UserWarning, match=r"label 1000000 has 1 training sample\(s\) where the median class has"):
        assert check_labels(s, stray) == 3


# ------------------------------------------------------------------------------ item 2: --scale


def test_compress_scale_option_reaches_the_data(tmp_path):
    """`compress --scale`: auto leaves a flat file of pixels in [0, 1] as it is (so the
    autoencoder gets a sigmoid output and targets inside its range); minmax is per pixel."""
    import argparse

    from aecomp.compress.cli import add_arguments, settings_from_args
    from aecomp.compress.pipeline import load_labeled

    g = np.random.default_rng(0)
    x = np.zeros((100, 16, 16), dtype=np.float32)
    x[:, 4:12, 4:12] = g.random((100, 8, 8))
    x[g.random(100) < 0.05, 0, 0] = 0.01
    np.savez(tmp_path / "px.npz", x=x.reshape(100, 256), y=np.arange(100) % 2)
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    for scale, kind in ((None, "none"), ("minmax", "minmax"), ("global", "global")):
        argv = ["--data", str(tmp_path / "px.npz")] + (["--scale", scale] if scale else [])
        splits = load_labeled(settings_from_args(parser.parse_args(argv)))
        assert splits.train.preprocessing.kind == kind and splits.train.unit_range
        if kind == "none":  # (fitted min-max can put a validation value a hair above 1)
            assert all(float(d.x.max()) <= 1.0 for d in splits)
