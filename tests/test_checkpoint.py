"""Checkpoints: safetensors + JSON, manifest last, corruption detected, exact resume after SIGKILL.

The kill test: a subprocess trains a VAE (its loss samples noise, so the RNG state matters too)
on digits for 3 epochs of 23 steps with a checkpoint every 5 steps, and kills itself with
SIGKILL right after step 33 (``AECOMP_TEST_KILL_AFTER_STEP``), i.e. in the middle of epoch 2,
three steps after its last checkpoint (step 30). Resuming repeats steps 31-33 and finishes; the
weights must be bit-identical to an uninterrupted run, and so must the logged training losses.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from aecomp import data
from aecomp.models import VAE, Autoencoder
from aecomp.train import Trainer, checkpoint as ck
from aecomp.train.checkpoint import CheckpointError

ROOT = Path(__file__).resolve().parents[1]


def _adam_after_steps(model, n=3):
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(n):
        opt.zero_grad()
        model.loss(torch.rand(8, model.input_shape[0])).backward()
        opt.step()
    return opt


def _save(root, step, model, opt=None, state=None, keep=2):
    return ck.save_checkpoint(root, step, model_state=model.state_dict(),
                              optimizer_state=opt.state_dict() if opt else None, state=state or {"step": step}, keep=keep)


def test_round_trip_model_and_optimizer(tmp_path):
    m = Autoencoder((12, 6, 3))
    opt = _adam_after_steps(m)
    path = _save(tmp_path, 7, m, opt, {"hello": [1, 2.5, None], "step": 7})
    assert sorted(p.name for p in path.iterdir()) == sorted(
        ["MANIFEST.json", "model.safetensors", "optimizer.safetensors", "optimizer.json", "state.json"])
    c = ck.load_checkpoint(path)
    assert c.step == 7 and c.state["hello"] == [1, 2.5, None]
    m2 = Autoencoder((12, 6, 3))
    m2.load_state_dict(c.model)
    for (k, a), (_, b) in zip(m.state_dict().items(), m2.state_dict().items()):
        assert torch.equal(a, b), k
    opt2 = torch.optim.Adam(m2.parameters(), lr=1.0)
    opt2.load_state_dict(c.optimizer)
    assert opt2.param_groups[0]["lr"] == 1e-2 and opt2.param_groups[0]["betas"] == (0.9, 0.999)
    # the next step is identical from the original and the restored state
    x = torch.rand(8, 12)
    for model, o in ((m, opt), (m2, opt2)):
        o.zero_grad()
        model.loss(x).backward()
        o.step()
    for a, b in zip(m.parameters(), m2.parameters()):
        assert torch.equal(a, b)


def test_files_are_safetensors_and_json_only(tmp_path):
    from safetensors.torch import load_file

    path = _save(tmp_path, 1, Autoencoder((6, 3)), _adam_after_steps(Autoencoder((6, 3)), 1))
    for name in ("model.safetensors", "optimizer.safetensors"):
        assert all(isinstance(v, torch.Tensor) for v in load_file(path / name).values())
    for name in ("optimizer.json", "state.json", "MANIFEST.json"):
        json.loads((path / name).read_text())
    with pytest.raises(CheckpointError, match="without pickling"):
        ck.save_checkpoint(tmp_path, 2, model_state={}, state={"bad": object()})


def test_keeps_the_newest_two_and_drops_stale_future(tmp_path):
    m = Autoencoder((6, 3))
    for step in (5, 10, 15, 20):
        _save(tmp_path, step, m)
    assert [s for s, _ in ck.list_checkpoints(tmp_path)] == [15, 20]
    _save(tmp_path, 17, m)  # a run resumed from 15 writes over the abandoned future (20)
    assert [s for s, _ in ck.list_checkpoints(tmp_path)] == [15, 17]
    _save(tmp_path, 30, m, keep=1)
    assert [s for s, _ in ck.list_checkpoints(tmp_path)] == [30]
    assert not [p for p in tmp_path.rglob("*.tmp")]


def _corrupt(path: Path, how: str) -> None:
    if how == "truncate":
        f = path / "model.safetensors"
        f.write_bytes(f.read_bytes()[:-7])
    elif how == "flip":
        f = path / "optimizer.safetensors"
        raw = bytearray(f.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        f.write_bytes(bytes(raw))
    elif how == "flip-state":
        f = path / "state.json"
        raw = bytearray(f.read_bytes())
        raw[2] ^= 0x01
        f.write_bytes(bytes(raw))
    elif how == "manifest-garbage":
        (path / "MANIFEST.json").write_bytes(b"{\"format\": \"aecomp-ch")
    elif how == "no-manifest":
        (path / "MANIFEST.json").unlink()
    elif how == "missing-file":
        (path / "optimizer.json").unlink()


@pytest.mark.parametrize("how, pattern", [
    ("truncate", "corrupt: model.safetensors has .* bytes"),
    ("flip", "corrupt: optimizer.safetensors does not match its SHA-256"),
    ("flip-state", "corrupt: state.json does not match its SHA-256"),
    ("manifest-garbage", "not valid JSON"),
    ("no-manifest", "incomplete: no MANIFEST.json"),
    ("missing-file", "cannot read optimizer.json"),
])
def test_corrupt_checkpoint_is_a_clear_error_and_the_previous_one_is_used(tmp_path, how, pattern):
    m = Autoencoder((6, 3))
    opt = _adam_after_steps(m, 1)
    _save(tmp_path, 1, m, opt)
    good = {k: v.clone() for k, v in m.state_dict().items()}
    _adam_after_steps(m, 1)
    bad = _save(tmp_path, 2, m, opt)
    _corrupt(bad, how)
    with pytest.raises(CheckpointError, match=pattern) as info:
        ck.load_checkpoint(bad)
    assert "\n" not in str(info.value)
    skipped = []
    c = ck.latest_checkpoint(tmp_path, on_skip=skipped.append)
    assert c.step == 1 and len(skipped) == 1 and "ckpt-000000002" in skipped[0]
    for k, v in good.items():
        assert torch.equal(c.model[k], v)


def test_atomic_write_replaces_whole_file(tmp_path):
    p = tmp_path / "f.bin"
    ck.atomic_write(p, b"old contents")
    ck.atomic_write(p, b"new")
    assert p.read_bytes() == b"new"
    assert [x.name for x in tmp_path.iterdir()] == ["f.bin"]


def test_load_model_rebuilds_from_config(tmp_path):
    m = VAE((10, 6, 2), beta=0.5)
    _save(tmp_path / "checkpoints", 3, m, state={"model_config": m.config})
    r = ck.load_model(tmp_path)
    assert isinstance(r, VAE) and r.config == m.config
    for a, b in zip(m.state_dict().values(), r.state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        ck.load_model(tmp_path / "elsewhere")


# ------------------------------------------------------------------------- kill and resume

_SCRIPT = textwrap.dedent("""
    import sys, torch
    torch.set_num_threads(1)
    from aecomp import data
    from aecomp.models import VAE
    from aecomp.train import Trainer
    s = data.load("digits")
    torch.manual_seed(0)
    model = VAE((64, 24, 6))
    Trainer(model, epochs=3, batch_size=64, seed=5, out_dir=sys.argv[1], checkpoint_every=5,
            progress=False, log=lambda m: None).fit(s.train, s.val)
""")


def _fit_in_process(out, resume=False):
    s = data.load("digits")
    torch.manual_seed(0)
    model = VAE((64, 24, 6))
    Trainer(model, epochs=3, batch_size=64, seed=5, out_dir=out, checkpoint_every=5, progress=False,
            log=lambda m: None).fit(s.train, s.val, resume=resume)
    return model


def test_sigkill_mid_epoch_then_resume_is_bit_identical(tmp_path):
    killed = tmp_path / "killed"
    env = dict(os.environ, AECOMP_TEST_KILL_AFTER_STEP="33", OMP_NUM_THREADS="1",
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", _SCRIPT, str(killed)], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    steps = [s for s, _ in ck.list_checkpoints(killed / "checkpoints")]
    assert steps == [25, 30]  # epoch 1 ends at step 23 (not kept: two newer), then 25 and 30
    lines = (killed / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 1  # epoch 1 was logged before the kill

    resumed = _fit_in_process(killed, resume=True)
    straight = _fit_in_process(tmp_path / "straight")
    for (k, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), f"{k} differs after resume"
    hist_a = [json.loads(x) for x in (killed / "metrics.jsonl").read_text().splitlines()]
    hist_b = [json.loads(x) for x in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in hist_a] == [1, 2, 3]
    assert [h["train_loss"] for h in hist_a] == [h["train_loss"] for h in hist_b]
    assert [h["val_loss"] for h in hist_a] == [h["val_loss"] for h in hist_b]
    final = ck.latest_checkpoint(killed / "checkpoints")
    assert final.step == 69 and final.state["epochs_completed"] == 3


def test_resume_falls_back_past_a_corrupt_newest_checkpoint(tmp_path):
    out = tmp_path / "run"
    straight = _fit_in_process(tmp_path / "straight")
    _fit_in_process(out)
    # kept: 65 (mid epoch 3) and 69 (the end); corrupt 69, so resuming redoes steps 66-69 from 65
    newest = ck.list_checkpoints(out / "checkpoints")[-1][1]
    _corrupt(newest, "truncate")
    notes = []
    s = data.load("digits")
    torch.manual_seed(0)
    model = VAE((64, 24, 6))
    Trainer(model, epochs=3, batch_size=64, seed=5, out_dir=out, checkpoint_every=5, progress=False,
            log=notes.append).fit(s.train, s.val, resume=True)
    assert any("skipping checkpoint" in n and "corrupt" in n for n in notes)
    for a, b in zip(straight.state_dict().values(), model.state_dict().values()):
        assert torch.equal(a, b)
