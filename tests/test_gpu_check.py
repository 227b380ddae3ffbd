"""benchmarks/gpu_check.sh rehearsed without a GPU: ``--dry-run`` runs nothing and advances a fake
clock by each stage's planned (or given) seconds, so the budget arithmetic of the real run is
checked: every stage is planned and leaves its folder and command under $OUT, the summary is
written, a failing stage does not stop the later ones, and the worst case fits the 8 minutes."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"


def _dry_run(tmp_path, **env):
    out = tmp_path / "out"
    full = dict(os.environ, OUT=str(out), PYTHON=sys.executable, GPU_CHECK_PLAN_ARGS="--no-collect", **env)
    run = subprocess.run(["bash", str(SCRIPT), "--dry-run"], cwd=ROOT, env=full, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, timeout=300)
    summary = json.loads((out / "summary.json").read_text())
    return run, out, summary


@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None, reason="needs bash, timeout")
def test_dry_run_plans_every_stage_within_budget(tmp_path):
    run, out, summary = _dry_run(tmp_path, GPU_CHECK_FAKE_S="env=3,build=170,tests=160")
    assert run.returncode == 0, run.stdout
    stages = [s["stage"] for s in summary["stages"]]
    assert stages == ["env", "build", "tests", "bench", "render"], stages
    assert summary["dry_run"] is True and summary["elapsed_s"] <= 480
    for name in stages:
        assert (out / name / "cmd").exists() and (out / name / "log").exists(), name
    tests_cmd = (out / "tests" / "cmd").read_text()
    assert "AECOMP_TRITON_AUTOTUNE=off" in tests_cmd and "-n" in tests_cmd and "junit" in tests_cmd
    bench_cmd = (out / "bench" / "cmd").read_text()
    assert "--results-dir" in bench_cmd and str(out / "bench") in bench_cmd and "--budget-s" in bench_cmd
    plan = json.loads((out / "plan.json").read_text())["compiles_per_layer_set"]
    assert plan["total_pinned"] < plan["total_full"] / 2  # the test stage compiles one tile per key


@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None, reason="needs bash, timeout")
def test_dry_run_worst_case_failed_build_still_runs_the_rest_in_time(tmp_path):
    # every stage takes its whole limit, and the CUDA build fails: the CPU-only build, the tests,
    # the bench and render still run, each with a limit cut to the time left
    run, out, summary = _dry_run(tmp_path, GPU_CHECK_FAKE_FAIL="build")
    assert run.returncode == 1, run.stdout  # a failed stage fails the check
    stages = {s["stage"]: s for s in summary["stages"]}
    assert list(stages) == ["env", "build", "build_cpu", "tests", "bench", "render"], list(stages)
    assert stages["build"]["exit"] == 1 and stages["tests"]["exit"] == 0
    worst = sum(s["limit_s"] for s in summary["stages"]) + 10 * len(stages)  # + each stage's kill grace
    assert summary["elapsed_s"] <= 470 and worst <= 480 + 60, (summary, worst)
    assert stages["build_cpu"]["limit_s"] >= 60 and stages["tests"]["limit_s"] >= 60
