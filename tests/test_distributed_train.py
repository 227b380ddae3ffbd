"""Two processes with DistributedDataParallel (gloo over loopback) match one process.

``python -m torch.distributed.run --nproc_per_node=2 -m aecomp train ...`` on the CPU: each rank
trains on its half of every global batch of 64 (the last batch of each epoch has 29 samples,
split 15/14, so the loss weighting of unequal shards is exercised). The single-process run with
the same settings must end with the same weights up to float32 reordering of the gradient sum
(tolerance below), and only rank 0 writes the metrics log. Checkpoints every 10 steps exercise
the collectives of a mid-epoch checkpoint (every rank's RNG state gathered to rank 0).
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from aecomp.train import checkpoint as ck

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["train", "--data", "digits", "--model", "mlp", "--dims", "64,32,16", "--epochs", "2", "--batch-size", "64",
        "--seed", "3", "--checkpoint-every", "10", "--no-progress"]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not (ROOT / "aecomp" / "cli.py").is_file() or (ROOT / "aecomp" / "cli.py").stat().st_size == 0,
                    reason="the aecomp command line (aecomp/cli.py) is not there yet")
def test_two_process_ddp_matches_one_process(tmp_path):
    from aecomp.cli import main

    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    if Path("/sys/class/net/lo").exists():
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    ddp_out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--nnodes=1",
           "--master_addr=127.0.0.1", f"--master_port={_free_port()}", "-m", "aecomp", *ARGS, "--out", str(ddp_out)]
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "2 process(es)" in proc.stderr

    assert main([*ARGS, "--out", str(tmp_path / "single")]) == 0

    a = ck.latest_checkpoint(ddp_out / "checkpoints")
    b = ck.latest_checkpoint(tmp_path / "single" / "checkpoints")
    assert a.step == b.step == 46 and a.state["world_size"] == 2 and b.state["world_size"] == 1
    for k in b.model:
        # 46 Adam steps on gradients summed in another order: measured max |diff| 1.4e-7. Without
        # the weighting of the unequal last shards (15/14) it was 1.4e-4, which this catches.
        torch.testing.assert_close(a.model[k], b.model[k], rtol=1e-5, atol=1e-6, msg=lambda m: f"{k}: {m}")
    la = [json.loads(x) for x in (ddp_out / "metrics.jsonl").read_text().splitlines()]
    lb = [json.loads(x) for x in (tmp_path / "single" / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in la] == [1, 2]  # rank 0 alone writes: no duplicate lines
    for x, y in zip(la, lb):
        assert x["train_loss"] == pytest.approx(y["train_loss"], rel=1e-5)
        assert x["val_loss"] == pytest.approx(y["val_loss"], rel=1e-4)
    assert (ddp_out / "reconstructions.png").is_file() and (ddp_out / "loss.png").is_file()
