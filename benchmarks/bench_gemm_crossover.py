"""Where the CPU microkernels (csrc/cpu/microkernel.h) stop beating ATen's sgemm: one thread,
forward GEMM y = x @ W^T (packing of W included, as in a layer call), square and skinny
shapes, interleaved in the same run, medians of thread CPU time (the machine is shared; CPU
time is what the kernel itself costs). The decision in csrc/cpu/train_step.cpp
(use_microkernel) follows this table.

    python -m benchmarks.bench_gemm_crossover
"""
from __future__ import annotations

import time

import torch

SHAPES = [(64, 784, 128), (1024, 784, 128), (64, 128, 784), (256, 256, 256), (512, 512, 512), (768, 768, 768),
          (1024, 1024, 1024), (1536, 1536, 1536), (2048, 2048, 2048), (4096, 784, 128), (4096, 1024, 1024)]


def _median_cpu_time(fn, reps: int, rounds: int = 5) -> float:
    fn()
    times = []
    for _ in range(rounds):
        t0 = time.thread_time()
        for _ in range(reps):
            fn()
        times.append((time.thread_time() - t0) / reps)
    return sorted(times)[len(times) // 2]


def main() -> None:
    from aecomp import _ext

    C = _ext.load()[0]
    torch.set_num_threads(1)
    print(f"isa {C._cpu_isa()}; load {open('/proc/loadavg').read().split()[:3]}")
    print(f"{'M x K x N':>20} {'aten GF/s':>10} {'mk GF/s':>10} {'mk/aten':>8}")
    for m, k, n in SHAPES:
        x, w = torch.randn(m, k), torch.randn(n, k)
        flops = 2.0 * m * n * k
        reps = max(1, int(2e8 / flops))
        ta = _median_cpu_time(lambda: torch.mm(x, w.t()), reps)
        tm = _median_cpu_time(lambda: C._mk_linear_fwd(x, w, None, "none"), reps)
        print(f"{m:>6} x {k:>5} x {n:>5} {flops / ta / 1e9:10.1f} {flops / tm / 1e9:10.1f} {ta / tm:8.2f}")


if __name__ == "__main__":
    main()
