"""What a user who sets no thread count gets: the training step at one thread against torch's
default thread count.

    python -m benchmarks.bench_threads [--quick]

The reference autoencoder's step (FusedStep + Adam(fused=True)) at batch 64 and 1024, float32
and bf16 (``precision="bf16"``, the matrix engine), and the peer a user would pick at each
precision (eager; eager under ``torch.autocast(bfloat16)``). Each setting runs in its own
process (a thread count set once, as a user would; switching it between samples wakes and parks
thread pools and measures that instead), the processes alternating, three times; each prints
the median wall time of its steps after a warm-up. aecomp's kernels split work over threads
only above 2^28 multiply-adds (csrc/cpu/microkernel.h: kParallelMinFlops), so both settings run
its single-threaded path; the peers use whatever torch does.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys

CHILD = """
import statistics, sys, time, torch
threads, batch, dtype, which, steps = sys.argv[1:6]
if threads != "default":
    torch.set_num_threads(int(threads))
from benchmarks._workloads import Settings, _eager_step, _fused_step
dt = torch.bfloat16 if dtype == "bf16" else torch.float32
s = Settings(device="cpu", backends=["cpu"], baselines=["eager"], dtypes=["float32"], batches=[64])
f = _fused_step(int(batch), dt, "cpu", "cpu") if which == "aecomp" else _eager_step(int(batch), dt, "cpu", None, s)
for _ in range(5):
    f()
ts = []
for _ in range(int(steps)):
    t0 = time.perf_counter()
    f()
    ts.append(time.perf_counter() - t0)
print(statistics.median(ts) * 1e3, torch.get_num_threads())
"""


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_threads", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("OMP_NUM_THREADS", None)
    steps = "15" if args.quick else "40"
    print(f"load average {os.getloadavg()}")
    for batch in ("64", "1024"):
        for dtype in ("fp32", "bf16"):
            for which in ("aecomp", "eager"):
                res = {"1": [], "default": []}
                nthreads = None
                for _ in range(3):
                    for threads in ("1", "default"):
                        out = subprocess.run([sys.executable, "-c", CHILD, threads, batch, dtype, which, steps],
                                             env=env, capture_output=True, text=True, timeout=600, cwd=root)
                        if out.returncode != 0:
                            print(out.stderr[-2000:], file=sys.stderr)
                            return 1
                        ms, n = out.stdout.split()
                        res[threads].append(float(ms))
                        if threads == "default":
                            nthreads = n
                one, dflt = statistics.median(res["1"]), statistics.median(res["default"])
                print(f"batch {batch:>5s} {dtype} {which:7s}: 1 thread {one:8.3f} ms   default ({nthreads}) "
                      f"{dflt:8.3f} ms   default / 1 thread {dflt / one:5.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
