"""``aecomp train``: in-process through ``aecomp.train.cli`` and as ``python -m aecomp train``."""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import aecomp
from aecomp.train import checkpoint as ck
from aecomp.train import cli

ROOT = Path(__file__).resolve().parents[1]
HAVE_MAIN_CLI = (ROOT / "aecomp" / "cli.py").is_file() and (ROOT / "aecomp" / "cli.py").stat().st_size > 0
PNG = b"\x89PNG\r\n\x1a\n"


def _run(*argv: str) -> int:
    p = argparse.ArgumentParser()
    cli.add_arguments(p)
    return cli.run(p.parse_args([*argv, "--no-progress"]))


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(k, None)
    return env


def test_train_writes_checkpoint_metrics_and_pngs(tmp_path, capsys):
    out = tmp_path / "run"
    assert _run("--data", "digits", "--model", "mlp", "--dims", "64,32,16", "--epochs", "2", "--batch-size", "128",
                "--lr", "0.003", "--seed", "1", "--out", str(out)) == 0
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines] == [1, 2]
    for name in ("reconstructions.png", "loss.png"):
        assert (out / name).read_bytes()[:8] == PNG
    summary = json.loads((out / "summary.json").read_text())
    assert summary["test"]["samples"] == 180 and summary["test"]["psnr"] > 0
    c = ck.latest_checkpoint(out / "checkpoints")
    assert c.step == 2 * 12 and c.state["model_config"] == {"type": "mlp", "dims": [64, 32, 16], "output": "sigmoid",
                                                            "backend": None}
    assert c.state["run"]["settings"]["lr"] == 0.003
    model = ck.load_model(out)
    assert isinstance(model, aecomp.models.Autoencoder)
    err = capsys.readouterr().err
    assert "epoch 2/2" in err and "done, 2 epochs" in err

    # resume to a longer run; the settings come from the checkpoint
    assert _run("--out", str(out), "--resume", "--epochs", "3") == 0
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 3
    with pytest.raises(cli.UsageError, match=r"--dims 64,16 differs from the run being resumed \(64,32,16\)"):
        _run("--out", str(out), "--resume", "--dims", "64,16")
    with pytest.raises(cli.UsageError, match="already holds the checkpoints of a run; add --resume"):
        _run("--out", str(out))


@pytest.mark.parametrize("model, extra", [("conv", ["--dims", "4,8,8"]), ("rnn", ["--dims", "16,4"]),
                                          ("vae", ["--dims", "64,24,6", "--beta", "0.5"]), ("mlp", [])])
def test_each_model_family(tmp_path, model, extra):
    out = tmp_path / model
    assert _run("--data", "digits", "--model", model, *extra, "--epochs", "1", "--batch-size", "256",
                "--out", str(out)) == 0
    cfg = ck.latest_checkpoint(out / "checkpoints").state["model_config"]
    assert cfg["type"] == model
    assert (out / "reconstructions.png").read_bytes()[:8] == PNG


def test_user_table_with_standard_scaling(tmp_path):
    g = np.random.default_rng(0)
    np.savez(tmp_path / "t.npz", x=g.normal(size=(120, 10)), y=g.integers(0, 2, 120))
    out = tmp_path / "run"
    assert _run("--data", str(tmp_path / "t.npz"), "--scale", "standard", "--epochs", "1", "--out", str(out)) == 0
    c = ck.latest_checkpoint(out / "checkpoints")
    assert c.state["model_config"]["output"] == "none" and c.state["model_config"]["dims"][0] == 10
    assert json.loads((out / "summary.json").read_text())["test"]["psnr"] is None


def test_non_finite_loss_exits_1_with_one_line(tmp_path, capsys):
    np.save(tmp_path / "huge.npy", np.full((40, 4), 1e30, dtype=np.float32))  # (x_hat - x)^2 overflows
    out = tmp_path / "run"
    # the reference backend: the loss is inf (this test is about the CLI, not a kernel's overflow)
    assert _run("--data", str(tmp_path / "huge.npy"), "--scale", "none", "--epochs", "1", "--backend", "reference",
                "--out", str(out)) == 1
    err = capsys.readouterr().err
    assert "error: the training loss became infinite in epoch 1" in err


@pytest.mark.parametrize("argv, pattern", [
    (["--dims", "60,32,16"], "starts with 60 but each sample of 'digits' has 64 values"),
    (["--dims", "64,x"], "comma-separated integers"),
    (["--dims", "64,0"], "positive integers"),
    (["--data", "nowhere.npy"], "nowhere.npy: no such file"),
    (["--data", "digitz"], "unknown data 'digitz'"),
    (["--backend", "fancy"], "unknown --backend 'fancy'"),
    (["--epochs", "-1"], "--epochs must be >= 0"),
    (["--batch-size", "0"], "--batch-size must be positive"),
    (["--lr", "0"], "--lr must be a positive number"),
    (["--val-fraction", "1.5"], r"--val-fraction must be in \[0, 1\)"),
    (["--device", "tpu"], "--device must be auto, cpu or cuda"),
    (["--device", "cpu", "--bf16"], "bf16 autocast is for CUDA"),
    (["--model", "vae", "--dims", "64,8"], "needs at least three widths"),
    (["--model", "rnn", "--dims", "8"], "hidden units then the code width"),
    (["--resume"], "no checkpoint in"),
])
def test_usage_errors(tmp_path, argv, pattern):
    with pytest.raises(cli.UsageError, match=pattern) as info:
        _run(*argv, "--out", str(tmp_path / "o"))
    assert "\n" not in str(info.value)


def test_conv_needs_square_images(tmp_path):
    np.save(tmp_path / "t.npy", np.random.default_rng(0).random((30, 12)))
    with pytest.raises(cli.UsageError, match="--model conv needs square images"):
        _run("--data", str(tmp_path / "t.npy"), "--model", "conv", "--out", str(tmp_path / "o"))


def test_unavailable_backend_says_why(tmp_path):
    missing = [n for n, (ok, _) in aecomp.available_backends().items() if not ok]
    if not missing:
        pytest.skip("every backend is available here")
    with pytest.raises(cli.UsageError, match=f"--backend {missing[0]} is not available here"):
        _run("--backend", missing[0], "--out", str(tmp_path / "o"))


@pytest.mark.skipif(not HAVE_MAIN_CLI, reason="aecomp/cli.py (the top-level command line) is not there yet")
def test_python_m_aecomp_train_killed_then_resumed_matches(tmp_path):
    """A real ``python -m aecomp train`` run, killed by SIGKILL after step 12 (checkpoints every 5
    steps, so the last one is step 10, mid epoch 2), resumed with ``--resume``: the weights equal
    those of an uninterrupted run bit for bit."""
    args = ["train", "--data", "digits", "--dims", "64,24,8", "--epochs", "2", "--batch-size", "128",
            "--checkpoint-every", "5", "--seed", "4"]
    killed = tmp_path / "killed"
    env = dict(_env(), AECOMP_TEST_KILL_AFTER_STEP="12")
    proc = subprocess.run([sys.executable, "-m", "aecomp", *args, "--out", str(killed)], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert [s for s, _ in ck.list_checkpoints(killed / "checkpoints")] == [5, 10]

    from aecomp.cli import main

    assert main(["train", "--out", str(killed), "--resume", "--no-progress"]) == 0
    assert main([*args, "--out", str(tmp_path / "straight"), "--no-progress"]) == 0
    a = ck.latest_checkpoint(killed / "checkpoints")
    b = ck.latest_checkpoint(tmp_path / "straight" / "checkpoints")
    assert a.step == b.step == 24
    for k in b.model:
        assert torch.equal(a.model[k], b.model[k]), k



@pytest.mark.skipif(not HAVE_MAIN_CLI, reason="aecomp/cli.py (the top-level command line) is not there yet")
def test_main_cli_prints_one_line_and_exits_2(tmp_path, capsys):
    from aecomp.cli import main

    assert main(["train", "--data", str(tmp_path / "none.csv"), "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"aecomp: error: {tmp_path / 'none.csv'}: no such file"]
