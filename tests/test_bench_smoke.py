"""The benchmark runner and renderer, end to end at tiny sizes, so they cannot rot.

The runner is called in this process (``benchmarks.run.main``, ``aecomp bench``) with ``--smoke``
(batch 8, two of the six layers, 3 samples, a 128-row training job) and writes into a tmp
directory only -- never into ``benchmarks/results/`` (checked). The numbers mean nothing; what is
checked is that every workload group produces well-formed rows, that the derived fields are what
their definitions say, and that the renderer turns the rows into tables, a PNG and a README
section without touching anything outside the markers.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from benchmarks import _timing, render
from benchmarks import run as bench_run
from benchmarks._machine import RESULTS_DIR

from .conftest import requires_cpu_ext


def _listing(path: Path):
    return sorted((p.name, p.stat().st_mtime_ns) for p in path.glob("*")) if path.exists() else []


def _rows(results_dir: Path):
    files = list(results_dir.glob("*.jsonl"))
    assert len(files) == 1, files
    return files[0], [json.loads(line) for line in files[0].read_text().splitlines()]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """One smoke run of every group with the eager baseline, shared by the checks below."""
    out = tmp_path_factory.mktemp("bench")
    before = _listing(RESULTS_DIR)
    rc = bench_run.main(["--smoke", "--device", "cpu", "--baselines", "eager", "--results-dir", str(out),
                         "--machine", "smoke test"])
    assert _listing(RESULTS_DIR) == before, "the smoke run wrote into benchmarks/results/"
    path, rows = _rows(out)
    return rc, path, rows


@requires_cpu_ext
def test_every_group_gives_wellformed_rows(smoke_run):
    rc, path, rows = smoke_run
    assert rc == 0, [r.get("error") for r in rows if "error" in r]
    assert path.name == "smoke_test.jsonl"
    kinds = [r["kind"] for r in rows]
    assert kinds[0] == "run" and kinds[-1] == "run_end"
    assert {"sgemm_gflops", "mm_bf16_gflops", "mm_int8_gops", "copy_gbps"} <= {
        r["name"] for r in rows if r["kind"] == "ceiling"}
    results = [r for r in rows if r["kind"] == "result"]
    assert {r["group"] for r in results} == {"op", "chain", "train_step", "train_job", "latency"}
    assert {r["workload"] for r in results} == {"linear_act", "mse_loss", "mlp", "mlp_mse_loss", "train_step",
                                                 "usual_loop", "train_job", "latency"}
    # CPU bfloat16 is mixed precision: only the training step and the usual loop have it
    assert {r["workload"] for r in results if r["dtype"] == "bfloat16"} == {"train_step", "usual_loop"}
    for r in rows:  # every row says where and when it was measured
        for field in ("run_id", "machine", "node", "cpu", "gpu", "torch", "triton", "commit", "date", "smoke"):
            assert field in r, (field, r)
    assert isinstance(rows[0]["cpu_flags"], list) and "matrix_engine" in rows[0]
    for r in results:
        assert "error" not in r, r
        assert 0 < r["p20_ms"] <= r["median_ms"] <= r["p80_ms"], r
        assert r["impl"] in ("eager", "aecomp:cpu")
        # (rows hold 6 significant digits: hence rel=1e-4 below)
        assert r["flops"] > 0
        assert r["gflops"] == pytest.approx(r["flops"] / (r["median_ms"] * 1e-3) / 1e9, rel=1e-4)
        want = "mm_bf16_gflops" if r["dtype"] == "bfloat16" else "sgemm_gflops"
        assert r["ceiling"] == want and r["frac_ceiling"] > 0
        assert r["frac_ceiling"] == pytest.approx(r["gflops"] / r["ceiling_gflops"], rel=1e-4)
        if r["workload"] != "train_job":  # the matmul of the row's dtype sampled in alternation with the case
            assert r["ceiling_how"].startswith(f"torch.mm {r['dtype']} sampled")
        assert r["mem_method"] == _timing.CPU_MEMORY_METHOD and r["peak_mem_bytes"] >= 0
        assert len(r["load_avg"]) == 3


@requires_cpu_ext
def test_ratios_are_formed_within_the_case(smoke_run):
    _, _, rows = smoke_run
    results = [r for r in rows if r["kind"] == "result"]
    by_case = {}
    for r in results:
        by_case.setdefault((r["workload"], r["mode"], r["shape"], r["batch"], r["dtype"]), {})[r["impl"]] = r
    # linear_act (2 layers x 2 modes), mse, chain, step and usual loop (2 dtypes each), job, latency
    assert len(by_case) == 2 * 2 + 2 + 4 + 2 + 2 + 1 + 1
    for case, impls in by_case.items():
        assert set(impls) == {"eager", "aecomp:cpu"}, case
        eager, ours = impls["eager"], impls["aecomp:cpu"]
        assert eager["ratio_vs_eager"] == pytest.approx(1.0, rel=1e-4)
        assert ours["ratio_vs_eager"] == pytest.approx(eager["median_ms"] / ours["median_ms"], rel=1e-4)
    job = by_case[("train_job", "job", "784-128-64-32-64-128-784", 64, "float32")]
    assert math.isfinite(job["aecomp:cpu"]["final_train_loss"]) and job["aecomp:cpu"]["params"]["samples"] == 128


@requires_cpu_ext
def test_render_tables_plot_and_readme_section(smoke_run, tmp_path):
    _, path, rows = smoke_run
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\nbefore\n\n{render.START}\nold text\n{render.END}\n\nafter\n")
    render.render([path], tmp_path, readme, plots=True, include_smoke=True)
    text = readme.read_text()
    assert text.startswith("# x\n\nbefore\n\n") and text.endswith("\n\nafter\n")
    assert "old text" not in text and text.count(render.START) == 1 and text.count(render.END) == 1
    section = text.split(render.START)[1]
    assert "smoke_test.jsonl" in section and "Training step" in section and "linear_act" in section
    assert "### CPU" in section and "None recorded yet" in section  # no GPU file: said, not mixed in
    for png in (tmp_path / "smoke_test_speedup_float32.png", tmp_path / "smoke_test_speedup_bfloat16.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    full = (tmp_path / "smoke_test.md").read_text()
    assert "## train_step — step" in full and "p20" in full
    table = render.short_table(rows)
    assert "train_step" in table and "aecomp:cpu" in table
    # smoke rows are left out unless asked for
    assert not render.Results(path).cases


def test_replace_section_needs_both_markers():
    with pytest.raises(ValueError, match="exactly one"):
        render.replace_section("no markers here", "body")
    with pytest.raises(ValueError, match="exactly one"):
        render.replace_section(f"{render.END} {render.START}", "body")


def test_quantile_matches_numpy_linear():
    np = pytest.importorskip("numpy")
    vals = [5.0, 1.0, 4.0, 2.0, 3.0, 9.0]
    for q in (0.0, 0.2, 0.5, 0.8, 1.0):
        assert _timing.quantile(vals, q) == pytest.approx(float(np.quantile(vals, q)))


@requires_cpu_ext
def test_aecomp_bench_subcommand_with_compile_baseline(tmp_path):
    """The torch.compile baseline's plumbing (dynamo with its 'eager' backend), in this process
    (``aecomp bench`` passes the same arguments to the runner in a child: tests/test_bench_cli.py)."""
    rc = bench_run.main(["--smoke", "--device", "cpu", "--only", "latency", "--baselines", "eager,compile",
                         "--compile-backend", "eager", "--phased", "--rounds", "2", "--results-dir", str(tmp_path),
                         "--machine", "cli"])
    assert rc == 0
    path, rows = _rows(tmp_path)
    results = [r for r in rows if r["kind"] == "result"]
    assert sorted((r["impl"], r["round"]) for r in results) == [
        (i, n) for i in ("aecomp:cpu", "compile", "eager") for n in (0, 1)]
    by = {(r["impl"], r["round"]): r for r in results}
    for n in (0, 1):
        # --phased (the GPU order): compile is measured in a later pass than eager and aecomp, its
        # ratio to eager still formed against the eager of the same case, run and round
        assert by["compile", n]["ratio_vs_eager"] == pytest.approx(
            by["eager", n]["median_ms"] / by["compile", n]["median_ms"], rel=1e-4)
    res = render.Results(path, include_smoke=True)
    (key,) = res.cases
    per_round = [by["compile", n]["median_ms"] / by["aecomp:cpu", n]["median_ms"] for n in (0, 1)]
    assert res.ratio(key, "aecomp:cpu", "compile") == pytest.approx(sum(per_round) / 2)  # median of two
    merged = res.cases[key]["eager"]
    assert merged["rounds"] == 2
    assert merged["median_ms"] == pytest.approx((by["eager", 0]["median_ms"] + by["eager", 1]["median_ms"]) / 2)


def test_bad_arguments_exit_2(tmp_path, capsys):
    assert bench_run.main(["--only", "nonsense", "--results-dir", str(tmp_path)]) == 2
    assert "unknown group 'nonsense'" in capsys.readouterr().err
    assert bench_run.main(["--backends", "cuda", "--device", "cpu", "--results-dir", str(tmp_path)]) == 2
    assert not list(tmp_path.iterdir())


def test_aecomp_bench_without_a_checkout_says_so(monkeypatch, capsys):
    import argparse

    from aecomp import bench

    monkeypatch.setattr(bench, "_find_checkout", lambda: None)
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    args = parser.parse_args(["--quick", "--only", "op"])
    from aecomp.cli import UsageError

    with pytest.raises(UsageError, match="source checkout"):
        bench.run(args)
    # through the whole command line: one line, exit code 2
    from aecomp.cli import main

    assert main(["bench", "--quick"]) == 2
    assert "benchmarks/ folder of an aecomp source checkout" in capsys.readouterr().err


def _fake_rows(device: str, machine: str, impls, dtypes, batches, rounds=1):
    """Rows as the runner writes them (the fields the renderer reads), with made-up times."""
    run = {"run_id": f"r-{machine}", "machine": machine, "device": device, "date": "2026-01-01T00:00:00Z",
           "commit": "0" * 40, "dirty": False, "torch": "2.x", "triton": "3.x", "threads": 1,
           "cpu": "Some CPU", "gpu": "Some GPU" if device == "cuda" else None, "cpu_count": 2, "rounds": rounds}
    rows = [dict(run, kind="run"), dict(run, kind="ceiling", name="copy_gbps", when="start", value=100.0,
                                        unit="GB/s", median_ms=1.0, p20_ms=1.0, p80_ms=1.0)]
    for n in range(rounds):
        for dtype in dtypes:
            for batch in batches:
                for w, mode, shape in (("train_step", "step", "784-128-64-32-64-128-784"),
                                       ("linear_act", "fwd", "784x128 relu"),
                                       ("linear_act", "fwd+bwd", "784x128 relu")):
                    for i, impl in enumerate(impls):
                        ms = (1.0 + i) * (1 + n)
                        rows.append(dict(run, kind="result", group="op", workload=w, mode=mode, shape=shape,
                                         batch=batch, dtype=dtype, impl=impl, round=n,
                                         role="aecomp" if impl.startswith("aecomp") else "baseline",
                                         median_ms=ms, p20_ms=ms * 0.9, p80_ms=ms * 1.1, frac_ceiling=0.5))
    return rows


def test_render_keeps_cpu_and_gpu_apart(tmp_path):
    cpu = tmp_path / "cpu_x.jsonl"
    gpu = tmp_path / "gpu_y.jsonl"
    for path, rows in ((cpu, _fake_rows("cpu", "cpu_x", ["aecomp:cpu", "eager", "compile"], ["float32"], [64, 1024])),
                       (gpu, _fake_rows("cuda", "gpu_y", ["aecomp:triton", "aecomp:triton+cudagraph", "eager",
                                                           "compile", "compile-max-autotune"],
                                        ["bfloat16", "float32"], [64, 65536], rounds=3))):
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    readme = tmp_path / "README.md"
    readme.write_text(f"{render.START}\n{render.END}\n")
    render.render([gpu, cpu], tmp_path, readme, plots=True)
    section = readme.read_text()
    cpu_part, gpu_part = section.split("\n### GPU\n")
    assert "### CPU" in cpu_part and "cpu_x.jsonl" in cpu_part and "gpu_y" not in cpu_part
    assert "gpu_y.jsonl" in gpu_part and "cpu_x" not in gpu_part
    assert "compile-max-autotune" in gpu_part and "aecomp:triton+cudagraph" in gpu_part
    assert "compile-max-autotune" not in cpu_part
    assert (tmp_path / "gpu_y_speedup_bfloat16.png").exists() and (tmp_path / "gpu_y_speedup_float32.png").exists()
    # eager is 3 ms and aecomp:triton 1 ms... times (1 + round): the ratio is 3.0 in every round
    res = render.Results(gpu)
    key = ("linear_act", "fwd", "784x128 relu", 64, "bfloat16")
    assert res.ratio(key, "aecomp:triton", "eager") == pytest.approx(3.0)
    assert res.fmt_ratio(key, "aecomp:triton", "compile-max-autotune", spread=True) == "5.00x (5.00-5.00)"
    assert res.cases[key]["eager"]["median_ms"] == pytest.approx(3.0 * 2)  # median over rounds of 3, 6, 9


@requires_cpu_ext
def test_default_results_go_to_a_user_folder_and_publish_is_asked_for(tmp_path, monkeypatch, capsys):
    """Without --results-dir the rows go to ./runs/bench (the user's folder), never to the tracked
    benchmarks/results/; --publish is refused with --smoke, and alone points at the tracked folder."""
    monkeypatch.chdir(tmp_path)
    before = _listing(RESULTS_DIR)
    assert bench_run.main(["--smoke", "--device", "cpu", "--only", "latency", "--baselines", "eager",
                           "--machine", "user"]) == 0
    assert _listing(RESULTS_DIR) == before
    path, rows = _rows(tmp_path / "runs" / "bench")
    assert path.name == "user.jsonl" and rows[0]["kind"] == "run"
    capsys.readouterr()
    assert bench_run.main(["--smoke", "--publish", "--device", "cpu"]) == 2
    assert "smoke results (--smoke) are never published" in capsys.readouterr().err
    assert bench_run.main(["--publish", "--results-dir", str(tmp_path), "--device", "cpu"]) == 2
    assert _listing(RESULTS_DIR) == before
    import argparse

    p = argparse.ArgumentParser()
    bench_run.add_arguments(p)
    assert bench_run.results_dir(p.parse_args(["--publish"])) == RESULTS_DIR
    assert bench_run.results_dir(p.parse_args([])) == Path("runs") / "bench"
