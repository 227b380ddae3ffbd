"""``aecomp fl`` on both engines, as a user runs it, each run a separate ``aecomp fl`` process.

Simulation (Ray): a small run with a client that drops out; the same command again after a
Ctrl-C (every process gone within seconds, the folder says ``complete: false``, ``--overwrite``
reruns) gives the same numbers; a run whose clients all fail exits non-zero.

Deployment: Flower's deployment runtime as real processes on 127.0.0.1 (a SuperLink, three
SuperNodes, a ClientApp process per message), started and stopped by the command. One client's
SuperNode is killed in the middle of the last round: the round completes with the other two after
the round timeout (60 s: Flower itself declares a node gone only after two missed 30-second
heartbeats, and a healthy round here must fit inside the timeout: every message starts a
ClientApp process that imports torch); round 1's bytes equal the simulation's count of the same run but for the
message ids; no process is left behind.

Starting Ray (or the deployment's processes, each importing torch) is most of the cost; the runs
are as small as the checks allow and share the first simulation run.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("flwr")
pytest.importorskip("ray")

COMMON = ["--clients", "3", "--rounds", "2", "--local-epochs", "1", "--coding", "top0.5+kmeans:4"]
SMALL = COMMON + ["--num-cpus", "1", "--round-timeout", "120", "--setup", "baseline,compressed+coding"]


def aecomp_fl(*argv, **kw):
    return subprocess.Popen([sys.executable, "-m", "aecomp", "fl", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def descendants(pid: int):
    """Pids of the live descendants of ``pid`` (walking /proc's parent links)."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                if fields[0] != "Z":
                    parents[int(entry)] = int(fields[1])
            except (OSError, IndexError):
                pass
    out, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, pp in parents.items() if pp in frontier and p not in out}
        out |= frontier
    return out


def alive(pids):
    gone_or_zombie = set()
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    gone_or_zombie.add(p)
        except OSError:
            gone_or_zombie.add(p)
    return set(pids) - gone_or_zombie


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("fl") / "a"
    p = aecomp_fl(*SMALL, "--fail", "2:1", "--out", str(out))
    stdout, stderr = p.communicate(timeout=600)
    assert p.returncode == 0, stderr[-3000:]
    return {"out": out, "stdout": stdout, "report": json.loads((out / "fl_report.json").read_text())}


def test_small_run_report(first_run):
    r = first_run["report"]
    assert list(r["setups"]) == ["baseline", "compressed+coding"]
    for name, row in r["setups"].items():
        assert 10.0 < row["test_accuracy"]["mean"] <= 100.0 and row["failures"] == 1, name  # client 1, round 2
    jobs = {j["setup"]: j for j in r["jobs"]}
    for name, j in jobs.items():
        r1, r2 = j["rounds"]
        assert r1["failures"] == 0 and r2["failures"] == 1 and r2["messages_up"] == 3, name
    assert jobs["compressed+coding"]["rounds"][0]["task"] == "autoencoder"
    assert r["setups"]["compressed+coding"]["fewer_bytes_vs_baseline"] > 20
    assert r["setups"]["compressed+coding"]["test_gap"]["low"] is not None  # one repeat: still an interval
    assert json.loads((first_run["out"] / "outputs.json").read_text())["complete"] is True
    md = (first_run["out"] / "fl_report.md").read_text()
    assert "| set-up |" in md and "Per repeat" in md
    assert (first_run["out"] / "accuracy_vs_bytes.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_ctrl_c_ends_every_process_and_the_rerun_gives_the_same_numbers(first_run, tmp_path):
    out = tmp_path / "b"
    p = aecomp_fl(*SMALL, "--fail", "2:1", "--out", str(out))
    seen = set()
    deadline = time.time() + 400
    line = ""
    while time.time() < deadline:  # wait until the federation runs: a round has been reported
        seen |= descendants(p.pid)
        line = p.stdout.readline()
        if "] round" in line or not line:
            break
    assert "] round" in line, (line, p.poll())
    seen |= descendants(p.pid)
    assert len(seen) >= 3  # the engine worker and Ray's processes
    t0 = time.time()
    p.send_signal(signal.SIGINT)
    _, stderr = p.communicate(timeout=60)
    took = time.time() - t0
    assert p.returncode == 130 and "interrupted" in stderr, stderr[-2000:]
    deadline = time.time() + 5
    while alive(seen) and time.time() < deadline:
        time.sleep(0.1)
    assert not alive(seen), [open(f"/proc/{q}/cmdline").read()[:100] for q in alive(seen)]
    assert took < 15, took
    assert json.loads((out / "outputs.json").read_text())["complete"] is False
    # a rerun there: refused without --overwrite, then the same numbers as the first run
    again = aecomp_fl(*SMALL, "--fail", "2:1", "--out", str(out))
    assert again.wait(timeout=120) == 2
    again = aecomp_fl(*SMALL, "--fail", "2:1", "--out", str(out), "--overwrite")
    _, stderr = again.communicate(timeout=600)
    assert again.returncode == 0, stderr[-3000:]
    a, b = first_run["report"], json.loads((out / "fl_report.json").read_text())
    for ja, jb in zip(a["jobs"], b["jobs"]):
        assert ja["test_correct"] == jb["test_correct"] and ja["val_accuracy"] == jb["val_accuracy"], ja["setup"]
        # the payloads are the same; the metadata differs by a few bytes a message (the simulation's
        # node and run ids are random 64-bit numbers: varints of 9 or 10 bytes)
        for ra, rb in zip(ja["rounds"], jb["rounds"]):
            n = ra["messages_down"] + ra["messages_up"]
            assert abs(ra["bytes"] - rb["bytes"]) <= 4 * n, (ja["setup"], ra["bytes"], rb["bytes"])


def test_a_run_whose_clients_all_fail_exits_non_zero(tmp_path):
    out = tmp_path / "c"
    p = aecomp_fl("--clients", "2", "--rounds", "1", "--local-epochs", "1", "--num-cpus", "1", "--setup", "baseline",
                  "--fail", "1:*", "--out", str(out))
    _, stderr = p.communicate(timeout=600)
    assert p.returncode == 1, stderr[-2000:]
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("aecomp fl: error: baseline seed 0, round 1: every client failed"), last
    assert "fault injection" in last
    assert json.loads((out / "outputs.json").read_text())["complete"] is False


def _run(*argv):
    p = subprocess.Popen([sys.executable, "-m", "aecomp", "fl", *argv], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    seen = set()
    while p.poll() is None:
        seen |= descendants(p.pid)
        time.sleep(0.2)
    stdout, stderr = p.communicate()
    return p.returncode, stdout, stderr, seen


def test_deployment_kill_a_client_mid_round_and_compare_bytes(first_run, tmp_path):
    rc, stdout, stderr, seen = _run(*COMMON, "--setup", "compressed+coding", "--round-timeout", "60", "--engine",
                                    "deployment", "--kill", "2:2", "--out", str(tmp_path / "d"))
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
    # the same job in the first simulation run (its fault is in round 2): round 1 moved the same messages
    sim = next(j for j in first_run["report"]["jobs"] if j["setup"] == "compressed+coding")
    s1 = sim["rounds"][0]
    assert (s1["messages_down"], s1["messages_up"]) == (r1["messages_down"], r1["messages_up"])
    # a deployment's message ids are 64 hex digits, the simulation's uuids 36 characters; node ids differ
    # in length too (a varint of up to 10 bytes): per message a few dozen bytes, nothing in the payload
    per_message = abs(r1["bytes"] - s1["bytes"]) / (s1["messages_down"] + s1["messages_up"])
    assert per_message < 100, (r1, s1)
    print(f"round 1 bytes: deployment {r1['bytes']:,}, simulation {s1['bytes']:,}")
