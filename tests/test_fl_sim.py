"""One Flower simulation (Ray backend) of the three set-ups, 3 clients, 2 rounds, one client
dropping out in the middle of round 2: the run goes on, bytes are counted both ways, the report
is written, and Ray leaves no process behind.

One simulation for all the checks: starting Ray and its client actors (each imports torch) is
most of the cost, tens of seconds on a loaded 2-core machine.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time

import pytest

flwr = pytest.importorskip("flwr")
pytest.importorskip("ray")

from flwr.app import ConfigRecord, Metadata, RecordDict  # noqa: E402
from flwr.app.message import make_message  # noqa: E402

from aecomp.fl.apps import build_model, to_record  # noqa: E402
from aecomp.fl.grid import wire_bytes  # noqa: E402
from aecomp.fl.run import run_federated, write_report  # noqa: E402
from aecomp.fl.settings import SETUPS, FLSettings  # noqa: E402

SETTINGS = FLSettings(clients=3, rounds=2, local_epochs=1, drop=((2, 1),), num_cpus=1, round_timeout=120)


def _ray_processes(marker: str):
    """Processes whose command line mentions ``marker`` (this run's Ray temp folder)."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmd:
            found.append((int(pid), cmd[:120]))
    return found


@pytest.fixture(scope="module")
def run():
    temp = tempfile.mkdtemp(prefix="aecomp-ray-", dir="/tmp")  # short: Ray's socket paths must fit
    lines = []
    t0 = time.perf_counter()
    try:
        report = run_federated(SETTINGS, log=lines.append, ray_temp_dir=temp)
        seconds = time.perf_counter() - t0
        deadline = time.time() + 10  # ray.shutdown() has returned; give the OS a moment to reap
        while _ray_processes(temp) and time.time() < deadline:
            time.sleep(0.2)
        left = _ray_processes(temp)
        yield {"report": report, "lines": lines, "left": left, "seconds": seconds}
    finally:
        shutil.rmtree(temp, ignore_errors=True)


def test_each_setup_runs_its_rounds(run):
    setups = run["report"]["setups"]
    assert list(setups) == list(SETUPS)
    for name, r in setups.items():
        assert [row["round"] for row in r["rounds"]] == [1, 2], name
        last = r["rounds"][-1]
        assert last["accuracy"] is not None and 10.0 < last["accuracy"] <= 100.0, (name, last)
        assert r["final_accuracy"] == last["accuracy"]
    for name in ("compressed", "compressed+coded"):  # round 1 trains the autoencoder
        first = setups[name]["rounds"][0]
        assert first["task"] == "autoencoder" and first["accuracy"] is None and 0 < first["recon_mse"] < 1
        assert setups[name]["rounds"][1]["task"] == "compressed"
    assert len(run["lines"]) == 6 and all("B this round" in line for line in run["lines"])


def test_dropped_client_does_not_stop_the_run(run):
    for name, r in run["report"]["setups"].items():
        r1, r2 = r["rounds"]
        assert r1["failures"] == 0 and r2["failures"] == 1, name  # client 1 dropped out in round 2
        assert r1["messages_up"] == r2["messages_up"] == 3, name  # its error reply still arrived
        assert r1["failure_bytes"] == 0 and 0 < r2["failure_bytes"] < 8000, name  # an error, no model
        per_model_down = r2["bytes_down"] / 3
        per_model_up = (r2["bytes_up"] - r2["failure_bytes"]) / 2  # the two clients that finished
        assert 0.7 < per_model_up / per_model_down < 1.3, name
        assert r["failures"] == 1


def test_bytes_measured_both_ways_and_ordered(run):
    setups = run["report"]["setups"]
    base = setups["baseline"]
    # the live count of a round's downlink = 3 x the size of the same message built here
    # (metadata differs by a few bytes: node ids, run id)
    model = build_model("lenet", SETTINGS, 64, 10)
    meta = Metadata(run_id=1, message_id="x" * 36, src_node_id=1, dst_node_id=2 ** 62, reply_to_message_id="",
                    group_id="", created_at=time.time(), ttl=43200.0, message_type="train")
    known = make_message(meta, RecordDict({"arrays": to_record(model), "config": ConfigRecord(
        {"task": "lenet", "round-offset": 0, "server-round": 1})}))
    per_message = base["rounds"][0]["bytes_down"] / 3
    assert abs(per_message - wire_bytes(known)) < 64, (per_message, wire_bytes(known))
    for name, r in setups.items():
        assert r["bytes_down"] > 0 and r["bytes_up"] > 0
        assert r["bytes_total"] == sum(row["bytes"] for row in r["rounds"])
    assert base["bytes_per_round"] > setups["compressed"]["bytes_per_round"] > setups["compressed+coded"]["bytes_per_round"]
    assert setups["compressed+coded"]["bytes_ratio"] > 2 * setups["compressed"]["bytes_ratio"]


def test_report_written(run, tmp_path):
    paths = write_report(run["report"], tmp_path)
    data = json.loads(paths["json"].read_text())
    assert data["settings"]["clients"] == 3 and data["versions"]["flwr"] == flwr.__version__
    assert all(math.isfinite(r["bytes_per_round"]) for r in data["setups"].values())
    md = paths["md"].read_text()
    assert "| set-up |" in md and "compressed+coded" in md and "1 failed" in md
    png = paths["png"].read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_ray_shut_down_and_gone(run):
    import ray

    assert not ray.is_initialized()
    assert run["left"] == [], run["left"]
    print(f"simulation of 3 set-ups x 2 rounds x 3 clients: {run['seconds']:.1f} s")
