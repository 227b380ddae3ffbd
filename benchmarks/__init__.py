"""aecomp benchmarks: pytest-benchmark suites (bench_*.py) and the runner (python -m benchmarks.run)."""
