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
    (["--model", "vae", "--dims", "64,8"], "needs at least three widths"),
    (["--model", "rnn", "--dims", "8"], "hidden units then the code width"),
    (["--dims", "64,,32"], "--dims has an empty entry in '64,,32'"),
    (["--dims", ",64,32"], "--dims has an empty entry"),
    (["--patience", "2", "--val-fraction", "0"], "--patience 2 stops on the validation loss, but the validation "
                                                  "split is empty"),
    # 12.9 billion parameters: refused before anything is allocated (not the OOM killer, not a traceback)
    (["--dims", "64,100000000"], r"the model \(mlp, --dims 64,100000000\) has 12,900,000,064 parameters: about "
                                 r"192\.2 GiB .* only [0-9.]+ GiB of memory is available"),
    (["--model", "rnn", "--dims", "100000000,16"], r"GiB of memory is available"),
    (["--model", "conv", "--dims", "100000,100000,4"], r"GiB of memory is available"),
])
def test_usage_errors(tmp_path, monkeypatch, argv, pattern):
    from aecomp.train import output

    real = output.available_memory
    # never more than 16 GiB, so the huge models above are refused on any machine (never allocated)
    monkeypatch.setattr(output, "available_memory", lambda: min(real() or 2**34, 2**34))
    with pytest.raises(cli.UsageError, match=pattern) as info:
        _run(*argv, "--out", str(tmp_path / "o"))
    assert "\n" not in str(info.value)


def test_allocation_failure_is_one_line(tmp_path, monkeypatch):
    """A model that passes the size check but whose allocation fails anyway (memory taken by
    another process meanwhile): the allocator's RuntimeError becomes one line."""
    def fail(*a, **k):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: "
                           "you tried to allocate 25600000000 bytes.\nmore lines")

    real = cli.build_model
    monkeypatch.setattr(cli, "build_model", lambda s, shape, unit=None: (
        real(s, shape, unit) if torch.get_default_device().type == "meta" else fail()))
    with pytest.raises(cli.UsageError, match=r"not enough memory to build the model \(RuntimeError: .*can't "
                                             r"allocate memory.*\); use smaller --dims") as info:
        _run("--out", str(tmp_path / "o"))
    assert "\n" not in str(info.value)


def test_resume_on_a_fresh_folder_starts_fresh(tmp_path, capsys):
    """What a preemptible job needs: the same command (with --resume) every time."""
    out = tmp_path / "job"
    argv = ("--data", "digits", "--dims", "64,16", "--epochs", "1", "--batch-size", "256", "--out", str(out), "--resume")
    assert _run(*argv) == 0
    err = capsys.readouterr().err
    assert f"--resume: nothing to resume in {out} (no checkpoint yet); starting a new run" in err
    assert ck.latest_checkpoint(out / "checkpoints").step == 6
    assert _run(*argv[:4], "--epochs", "2", *argv[6:]) == 0  # the next time it resumes
    err = capsys.readouterr().err
    assert "nothing to resume" not in err and "resuming from" in err
    assert ck.latest_checkpoint(out / "checkpoints").step == 12


def test_resume_checks_the_data_content_and_works_from_another_directory(tmp_path, monkeypatch, capsys):
    g = np.random.default_rng(0)
    (tmp_path / "data").mkdir()
    (tmp_path / "elsewhere").mkdir()
    np.save(tmp_path / "data" / "t.npy", g.random((80, 6)).astype(np.float32))
    monkeypatch.chdir(tmp_path / "data")
    assert _run("--data", "t.npy", "--dims", "6,3", "--epochs", "1", "--out", "../run") == 0
    c = ck.latest_checkpoint(tmp_path / "run" / "checkpoints")
    assert c.state["run"]["settings"]["data"] == str(tmp_path / "data" / "t.npy")  # resolved
    import hashlib

    assert c.state["run"]["source"]["sha256"] == hashlib.sha256((tmp_path / "data" / "t.npy").read_bytes()).hexdigest()
    monkeypatch.chdir(tmp_path / "elsewhere")  # resume from another directory, data given or not
    assert _run("--out", str(tmp_path / "run"), "--resume", "--epochs", "2") == 0
    assert _run("--data", "../data/t.npy", "--out", "../run", "--resume", "--epochs", "3") == 0
    # the file's content changes: refused, or resumed with a warning when allowed
    np.save(tmp_path / "data" / "t.npy", g.random((80, 6)).astype(np.float32))
    capsys.readouterr()
    with pytest.raises(cli.UsageError, match=r"the data .*t\.npy changed since the run was checkpointed .*"
                                             r"pass --allow-data-change"):
        _run("--out", "../run", "--resume", "--epochs", "4")
    assert _run("--out", "../run", "--resume", "--epochs", "4", "--allow-data-change") == 0
    assert "warning: the data" in capsys.readouterr().err
    assert _run("--out", "../run", "--resume", "--epochs", "5") == 0  # the new content is now the run's


def test_flat_pixel_file_trains_with_sigmoid_and_square_reconstructions(tmp_path, capsys):
    """A flat [n, 784] file of pixels in [0, 1] with rare edge pixels (what MNIST is): not scaled
    per pixel, every split within the sigmoid's range, no warning, PSNR reported."""
    g = np.random.default_rng(0)
    x = np.zeros((300, 28, 28), dtype=np.float32)
    x[:, 6:22, 6:22] = g.random((300, 16, 16))
    for j in range(20):  # 20 edge pixels, each faintly lit in ~10 samples
        lit = g.random(300) < 0.03
        x[lit, 0, j] = g.uniform(0.005, 0.05, int(lit.sum()))
    np.savez(tmp_path / "flat.npz", x=x.reshape(300, 784), y=g.integers(0, 10, 300))
    out = tmp_path / "run"
    assert _run("--data", str(tmp_path / "flat.npz"), "--dims", "784,32", "--epochs", "1", "--out", str(out)) == 0
    err = capsys.readouterr().err
    assert "outside [0, 1]" not in err
    c = ck.latest_checkpoint(out / "checkpoints")
    assert c.state["model_config"]["output"] == "sigmoid"
    assert c.state["run"]["data"]["scale"] == "auto"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["test"]["psnr"] is not None and summary["test"]["mse"] < 0.2
    # per-feature min-max (asked for): a sigmoid model and validation targets far above 1 -> a warning
    assert _run("--data", str(tmp_path / "flat.npz"), "--dims", "784,32", "--epochs", "1", "--scale", "minmax",
                "--out", str(tmp_path / "mm")) == 0
    assert "warning: the model's output is a sigmoid (values in (0, 1)) but the validation targets are outside [0, 1]" in capsys.readouterr().err


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


def test_the_scaling_is_printed_recorded_and_kept_on_resume(tmp_path, capsys):
    """Issue 23 item 10: flat float 0..255 images get one global scaling, printed and recorded in the
    checkpoint and summary.json; --resume applies the recorded scaling, not one refitted to data
    that changed since."""
    g = np.random.default_rng(0)
    x = np.round(g.random((300, 64)) * 200.0)  # flat 8x8 "pixels", integer values, max <= 200
    np.save(tmp_path / "px.npy", x)
    out = tmp_path / "run"
    argv = ("--data", str(tmp_path / "px.npy"), "--dims", "64,16", "--batch-size", "128", "--out", str(out))
    assert _run(*argv, "--epochs", "1") == 0
    err = capsys.readouterr().err
    assert "input scaling global: x' = (x - 0) / 200 [auto: flat 8x8 images" in err
    recorded = ck.latest_checkpoint(out / "checkpoints").state["run"]["input_scaling"]
    assert recorded["kind"] == "global" and recorded["scale"] == 200.0
    assert json.loads((out / "summary.json").read_text())["input_scaling"]["scale"] == 200.0
    x[:, 0] = 255.0  # the data changes: a refit would divide by 255
    np.save(tmp_path / "px.npy", x)
    assert _run(*argv, "--epochs", "2", "--resume", "--allow-data-change") == 0
    assert "input scaling global: x' = (x - 0) / 200" in capsys.readouterr().err
    assert ck.latest_checkpoint(out / "checkpoints").state["run"]["input_scaling"]["scale"] == 200.0
