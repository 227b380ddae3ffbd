"""``aecomp fl --engine deployment``: Flower's deployment runtime as real processes on 127.0.0.1
(a SuperLink, three SuperNodes, a ClientApp process per message), started and stopped by the
command. One client's SuperNode is killed in the middle of the last round: the round completes
with the other two after the round timeout; the bytes of the rounds before equal the simulation
engine's count of the same run, but for the message ids; no process is left behind.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

pytest.importorskip("flwr")

from .test_fl_sim import alive, descendants  # noqa: E402

ARGS = ["--clients", "3", "--rounds", "2", "--local-epochs", "1", "--setup", "compressed+coding",
        "--coding", "top0.5+kmeans:4", "--round-timeout", "40"]


def _run(*argv):
    p = subprocess.Popen([sys.executable, "-m", "aecomp", "fl", *argv], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    seen = set()
    while p.poll() is None:
        seen |= descendants(p.pid)
        time.sleep(0.2)
    stdout, stderr = p.communicate()
    return p.returncode, stdout, stderr, seen


def test_deployment_kill_a_client_mid_round_and_compare_bytes(tmp_path):
    rc, stdout, stderr, seen = _run(*ARGS, "--engine", "deployment", "--kill", "2:2", "--out", str(tmp_path / "d"))
    assert rc == 0, (stdout[-2000:], stderr[-3000:])
    assert "killed client 2's SuperNode" in stdout
    assert len(seen) >= 4 + 3  # SuperLink, 3 SuperNodes, their helpers, the ServerApp and ClientApp processes
    deadline = time.time() + 5
    while alive(seen) and time.time() < deadline:
        time.sleep(0.1)
    assert not alive(seen)
    dep = json.loads((tmp_path / "d" / "fl_report.json").read_text())["jobs"][0]
    r1, r2 = dep["rounds"]
    assert r1["messages_up"] == 3 and r1["failures"] == 0
    assert r2["messages_down"] == 3 and r2["messages_up"] == 2 and r2["failures"] == 0  # the killed one: no reply
    assert dep["test_accuracy"] > 10.0
    # the same run on the simulation engine (nobody killed): round 1 moved the same messages
    rc, stdout, stderr, _ = _run(*ARGS, "--num-cpus", "1", "--out", str(tmp_path / "s"))
    assert rc == 0, stderr[-3000:]
    sim = json.loads((tmp_path / "s" / "fl_report.json").read_text())["jobs"][0]
    s1 = sim["rounds"][0]
    assert (s1["messages_down"], s1["messages_up"]) == (r1["messages_down"], r1["messages_up"])
    # a deployment's message ids are 64 hex digits, the simulation's uuids 36 characters; node ids differ
    # in length too (a varint of up to 10 bytes): per message a few dozen bytes, nothing in the payload
    per_message = abs(r1["bytes"] - s1["bytes"]) / (s1["messages_down"] + s1["messages_up"])
    assert per_message < 100, (r1, s1)
    print(f"round 1 bytes: deployment {r1['bytes']:,}, simulation {s1['bytes']:,}")
