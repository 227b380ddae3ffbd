"""benchmarks/gpu_check.sh rehearsed without a GPU, and what it runs.

``--dry-run`` runs nothing and advances a fake clock by each stage's planned seconds (its limit,
or the seconds given); the bench stage is planned by the runner itself (``benchmarks.run --plan``:
its own selection within its budget, by its cost estimates). Checked: every stage is planned and
leaves its folder and command, the build runs beside the Triton tests, a failing stage does not
stop the later ones, every stage at its limit still ends within the budget, and what comes back
from the device is at most 8 files. Also: the GPU test lists hold the tests the GPU check owes
(and every GPU test of the suite), and the runner's GPU cases (training step at batch 64 / 4096 /
65536, packed inference at 1 / 256 / 65536) are built, without a GPU.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch

from benchmarks import gpu_check_plan

from .conftest import requires_cpu_ext

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
BUDGET = 480
needs_shell = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None,
                                 reason="needs bash, timeout")


def _dry_run(tmp_path, **env):
    out, work = tmp_path / "out", tmp_path / "work"
    full = dict(os.environ, OUT=str(out), GPU_CHECK_WORK=str(work), PYTHON=sys.executable,
                GPU_CHECK_PLAN_ARGS="--no-collect", **env)
    run = subprocess.run(["bash", str(SCRIPT), "--dry-run"], cwd=ROOT, env=full, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, timeout=300)
    summary = json.loads((out / "summary.json").read_text())
    return run, out, work, summary


@needs_shell
def test_dry_run_plans_every_stage_within_budget(tmp_path):
    run, out, work, summary = _dry_run(tmp_path, GPU_CHECK_FAKE_S="env=4,build=150,tests_triton=140,tests_cuda=70")
    assert run.returncode == 0, run.stdout
    stages = {s["stage"]: s for s in summary["stages"]}
    assert list(stages) == ["env", "tests_triton", "build", "tests_cuda", "bench", "render"], run.stdout
    assert summary["dry_run"] is True and summary["budget_s"] == BUDGET and summary["elapsed_s"] <= BUDGET
    # the build ran beside the Triton tests: the clock moved by the longer of the two
    assert stages["tests_cuda"]["limit_s"] == 110
    for name in stages:
        assert (work / name / "cmd").exists() and (work / name / "log").exists(), name
    for name in ("tests_triton", "tests_cuda"):
        cmd = (work / name / "cmd").read_text()
        assert "AECOMP_TRITON_AUTOTUNE=off" in cmd and " -n " in cmd and "junit" in cmd, cmd
    assert "tests/test_triton_fused_optim.py::test_gpu_fused_optimizer_follows_torch_optim" in \
        (work / "tests_triton" / "cmd").read_text()
    assert "tests/test_packed_ops.py::test_cuda_tensors_run_the_triton_kernels" in \
        (work / "tests_cuda" / "cmd").read_text()
    assert "build_ext --inplace" in (work / "build" / "cmd").read_text()
    bench_cmd = (work / "bench" / "cmd").read_text()
    assert "--results-dir" in bench_cmd and str(work / "bench") in bench_cmd and "--budget-s" in bench_cmd
    # the bench stage's fake time is the runner's own plan, which fits the budget it was given
    plan = json.loads((work / "bench" / "plan.json").read_text())
    assert plan["baselines"] == ["eager", "compile"] and "max-autotune" not in bench_cmd
    budget = stages["bench"]["limit_s"] - 30
    assert plan["budget_s"] == budget and plan["planned_s"] <= budget + 10
    assert stages["bench"]["seconds"] == min(int(plan["planned_s"] + 0.999) + 10, stages["bench"]["limit_s"])
    assert plan["measurements"][0]["what"] == "ceilings (start)" and len(plan["measurements"]) > 10
    compiles = json.loads((work / "plan.json").read_text())["compiles_per_layer_set"]
    assert compiles["total_pinned"] < compiles["total_full"] / 2  # the test stages compile one tile per key
    # what comes back from the device: at most 8 files, the logs in one archive
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= 8 and {"summary.json", "tests_summary.txt", "gpu_check_logs.tar.gz"} <= set(files), files
    with tarfile.open(out / "gpu_check_logs.tar.gz") as tar:
        names = tar.getnames()
    assert all(f"./{s}/cmd" in names for s in stages) and "./bench/plan.json" in names, names
    assert "stage         exit  seconds  limit" in run.stdout  # the closing table


@needs_shell
def test_dry_run_worst_case_failed_build_still_runs_the_rest_in_time(tmp_path):
    # every stage takes its whole limit (the bench too), and the build fails: the tests, the bench
    # and render still run, each with a limit cut to the time left
    run, out, work, summary = _dry_run(tmp_path, GPU_CHECK_FAKE_FAIL="build", GPU_CHECK_FAKE_S="bench=100000")
    assert run.returncode == 1, run.stdout  # a failed stage fails the check
    stages = {s["stage"]: s for s in summary["stages"]}
    assert list(stages) == ["env", "tests_triton", "build", "tests_cuda", "bench", "render"], list(stages)
    assert stages["build"]["exit"] == 1 and stages["tests_cuda"]["exit"] == 0
    assert stages["bench"]["exit"] == 124  # ran to its limit
    assert summary["elapsed_s"] <= BUDGET, summary
    worst = (stages["env"]["limit_s"] + max(stages["build"]["limit_s"], stages["tests_triton"]["limit_s"])
             + sum(stages[s]["limit_s"] for s in ("tests_cuda", "bench", "render")))
    assert worst <= BUDGET, (summary, worst)
    assert stages["build"]["limit_s"] >= 180 and stages["tests_cuda"]["limit_s"] >= 100
    assert stages["bench"]["limit_s"] >= 60


@needs_shell
def test_dry_run_stage_selection_for_a_rerun(tmp_path):
    run, out, work, summary = _dry_run(tmp_path, GPU_CHECK_STAGES="tests_cuda,render",
                                       GPU_TESTS_CUDA="tests/test_cuda_models.py")
    assert run.returncode == 0, run.stdout
    assert [s["stage"] for s in summary["stages"]] == ["env", "tests_cuda", "render"]
    assert (work / "tests_cuda" / "cmd").read_text().rstrip().endswith("tests/test_cuda_models.py")


# ------------------------------------------------------------------------------------------------
# the GPU tests the check runs
# ------------------------------------------------------------------------------------------------
OWED = {  # what the check must run (issue 28), by node id
    "triton": ["tests/test_triton_fused_optim.py::test_gpu_fused_optimizer_follows_torch_optim",
               "tests/test_triton_ops.py::test_gpu_dynamic_batch_compiles_once",
               "tests/test_triton_mlp.py::test_gpu_reference_autoencoder"],
    "cuda": ["tests/test_packed_ops.py::test_cuda_tensors_run_the_triton_kernels",
             "tests/test_cuda_models.py::test_autoencoder_then_vae_on_the_cuda_backend_in_one_process",
             "tests/test_cuda_ops.py::test_linear_act_matches_reference_and_triton",  # Triton = CUDA = reference
             "tests/test_cuda_mlp.py::test_autoencoder_matches_reference_and_triton",
             "tests/test_fused_step.py::test_cuda_graph_step_matches_eager_step_on_gpu"],
}


def test_gpu_test_lists_hold_the_owed_tests_and_only_gpu_tests():
    """(Each id names a test function of a file the CPU suite collects, so pytest collects it too;
    ``python -m benchmarks.gpu_check_plan --out plan.json`` counts the items by collecting them.)"""
    found = gpu_check_plan.gpu_tests()
    for group, ids in OWED.items():
        assert set(ids) <= set(found[group]), (group, set(ids) - set(found[group]))
    assert not set(found["triton"]) & set(found["cuda"])
    assert all(i.startswith("tests/test_triton_") for i in found["triton"])
    # the subprocess tests (slowest) first, for the parallel workers
    assert found["cuda"][0].endswith(("in_one_process", "test_compute_sanitizer"))
    for group, ids in found.items():
        assert len(ids) == len(set(ids)) and ids, group
    # CPU-only tests are not picked up
    everything = set(found["triton"]) | set(found["cuda"])
    assert "tests/test_triton_ops.py::test_backend_unavailable_without_gpu" not in everything
    assert "tests/test_train.py::test_argument_checks" not in everything  # asks is_available(), runs anyway


def test_gpu_test_finder_reads_the_three_skip_forms(tmp_path):
    (tmp_path / "test_x.py").write_text(
        "import pytest, torch\n"
        "gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason='x')\n"
        "HAS_GPU = False\n"
        "@gpu\ndef test_a(): pass\n"
        "@pytest.mark.skipif(not HAS_GPU, reason='x')\ndef test_b(): pass\n"
        "def test_c():\n    '''doc'''\n    if not torch.cuda.is_available():\n        pytest.skip('x')\n"
        "@pytest.mark.skipif(HAS_GPU, reason='no-GPU message')\ndef test_d(): pass\n"
        "def test_e():\n    assert torch.cuda.is_available() in (True, False)\n")
    found = gpu_check_plan.gpu_tests(tmp_path)
    assert found == {"triton": [], "cuda": [f"{tmp_path.name}/test_x.py::test_{n}" for n in "abc"]}


# ------------------------------------------------------------------------------------------------
# the runner's GPU cases, built without a GPU
# ------------------------------------------------------------------------------------------------
def test_gpu_training_step_and_packed_inference_cases():
    from benchmarks import run as bench_run
    from benchmarks._workloads import Settings, build_cases

    p = __import__("argparse").ArgumentParser()
    bench_run.add_arguments(p)
    cfg = bench_run.settings_from_args(p.parse_args(["--device", "cuda", "--plan", "x"]))
    assert cfg["step_batches"] == [64, 4096, 65536] and cfg["dtypes"] == ["bfloat16", "float32"]
    assert "compile-max-autotune" in cfg["baselines"]  # the runner has it; the check leaves it out
    s = Settings(device="cuda", backends=["triton", "cuda"], baselines=cfg["baselines"], dtypes=cfg["dtypes"],
                 batches=cfg["batches"])
    cases = build_cases(["train_step", "inference"], s, cfg["step_batches"])
    steps = {(c.batch, c.dtype): c for c in cases if c.workload == "train_step"}
    assert sorted(steps) == sorted((b, d) for b in (64, 4096, 65536) for d in ("bfloat16", "float32"))
    names = {i.name for i in steps[4096, "float32"].impls}
    assert {"aecomp:triton", "aecomp:cuda", "eager", "compile", "compile-max-autotune"} <= names
    packed = [c for c in cases if c.workload == "packed_mlp"]
    assert sorted({c.batch for c in packed}) == [1, 256, 65536]
    assert {c.shape.split()[-1] for c in packed} == {"int8", "shared4"} and len(packed) == 12
    for c in packed:  # packed_mlp runs on the triton backend only
        assert [i.name for i in c.impls] == ["aecomp:triton", "eager", "compile", "compile-max-autotune"]
        assert c.group == "inference" and not c.grad and c.flops > 0
    assert build_cases(["inference"], Settings(device="cpu", backends=["cpu"], baselines=["eager"],
                                              dtypes=["float32"], batches=[64]), [64]) == []


@requires_cpu_ext
@pytest.mark.parametrize("kind", ["int8", "shared4"])
def test_packed_reference_net_float_weights_are_the_packed_ones(kind):
    """The eager baseline's float weights are exactly the packed ones dequantized: the packed
    chain in float semantics (what the Triton kernel computes) equals the eager chain."""
    from aecomp import ops
    from benchmarks._workloads import PACKED_ACTS, eager_chain, packed_reference_net

    chain, ws, bs = packed_reference_net(kind)
    x = torch.rand(37, 784)
    want = eager_chain(x.double(), [w.double() for w in ws], [b.double() for b in bs], PACKED_ACTS)
    for backend in ("cpu", "reference"):
        got = ops.packed_mlp(x, chain.with_compute("float"), backend=backend)
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)
    if kind == "shared4":
        assert all(w.unique().numel() <= 16 for w in ws)
