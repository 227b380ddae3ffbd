"""The benchmark entry points from outside the checkout root: ``aecomp bench`` runs the checkout's
``benchmarks/run.py`` in a child process (the library itself imports no ``benchmarks`` package),
and ``benchmarks/bench_inference.py`` runs by its path from any folder."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(args, cwd):
    return subprocess.run([sys.executable, *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=300)


def test_aecomp_bench_runs_the_checkout_runner_in_a_child(tmp_path):
    """Every argument reaches the runner, which works in the caller's folder (its default
    ./runs/bench is the user's), and the calling process imports no ``benchmarks``."""
    code = ("import sys; from aecomp.cli import main; "
            "rc = main(['bench', '--smoke', '--device', 'cpu', '--only', 'latency', '--baselines', 'eager', "
            "'--machine', 'cli', '--quiet']); "
            "print('IMPORTED', sorted(m for m in sys.modules if m.split('.')[0] == 'benchmarks')); sys.exit(rc)")
    proc = _run(["-c", code], tmp_path)
    assert proc.returncode == 0, proc.stdout
    assert "IMPORTED []" in proc.stdout, proc.stdout[-2000:]
    rows = (tmp_path / "runs" / "bench" / "cli.jsonl").read_text().splitlines()
    assert any('"kind": "result"' in r and '"latency"' in r for r in rows), rows[:3]


def test_bench_inference_by_path_from_another_folder(tmp_path):
    proc = _run([str(ROOT / "benchmarks" / "bench_inference.py"), "--help"], tmp_path)
    assert proc.returncode == 0, proc.stdout
    assert "--quick" in proc.stdout
