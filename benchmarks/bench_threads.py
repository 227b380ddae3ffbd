"""What a user who sets no thread count gets: the training step at one thread against torch's
default thread count, interleaved in one process.

    python -m benchmarks.bench_threads [--quick]

The reference autoencoder's step (FusedStep + Adam(fused=True)) at batch 64 and 1024, float32
and bf16 (``precision="bf16"``, the matrix engine), and the peer a user would pick at each
precision (eager; eager under ``torch.autocast(bfloat16)``): each sample is taken with
``torch.set_num_threads(1)`` or with the thread count torch starts with, alternating. aecomp's
kernels split work over threads only above 2^28 multiply-adds (csrc/cpu/microkernel.h:
kParallelMinFlops), so both settings run the same single-threaded path; the peers use
whatever torch does. Prints the median wall time per setting.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_threads", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    default = torch.get_num_threads()
    from benchmarks._workloads import Settings, _eager_step, _fused_step

    s = Settings(device="cpu", backends=["cpu"], baselines=["eager"], dtypes=["float32"], batches=[64])
    print(f"torch default threads: {default}; load average {os.getloadavg()}")
    for batch in (64, 1024):
        for dtype in (torch.float32, torch.bfloat16):
            fns = {"aecomp": _fused_step(batch, dtype, "cpu", "cpu"), "eager": _eager_step(batch, dtype, "cpu", None, s)}
            wall = {(n, t): [] for n in fns for t in (1, default)}
            for _ in range(3):
                for f in fns.values():
                    f()
            for _ in range(10 if args.quick else 40):
                for t in (1, default):
                    torch.set_num_threads(t)
                    for n, f in fns.items():
                        t0 = time.perf_counter()
                        f()
                        wall[(n, t)].append(time.perf_counter() - t0)
            torch.set_num_threads(default)
            med = {k: statistics.median(v) * 1e3 for k, v in wall.items()}
            name = "bf16" if dtype == torch.bfloat16 else "fp32"
            for n in fns:
                print(f"batch {batch:5d} {name} {n:7s}: 1 thread {med[(n, 1)]:8.3f} ms   default ({default}) "
                      f"{med[(n, default)]:8.3f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
