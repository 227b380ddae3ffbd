"""Direct timing of the CPU targets of issue 17, interleaved in one process, medians:

- the training step of the reference autoencoder (784-128-64-32-64-128-784, MSE, Adam lr 1e-3)
  at batch 64 and 1024: eager with torch's default Adam, eager with Adam(fused=True), and
  aecomp's FusedStep (the optimizer fused into the backward), plus the fraction of the
  single-core sgemm rate (torch.mm 1024^3) the FusedStep reaches;
- linear_act forward+backward (grads of x, W, b) against eager on the six reference layers;
- the FusedStep with 2 threads against 1 thread.

Both wall time and thread CPU time are reported: the machine is shared, and CPU time is what
the work itself costs when another process holds the core.

    python -m benchmarks.bench_cpu_direct [--rounds 7]
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn as nn

from ._layers import REFERENCE_LAYERS, EagerAutoencoder, eager_linear_act, layer_inputs

DIMS = (784, 128, 64, 32, 64, 128, 784)


def _eager_step(batch: int, fused: bool):
    model = EagerAutoencoder()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=fused)
    crit = nn.MSELoss()
    x = torch.rand(batch, 784)

    def step():
        opt.zero_grad()
        crit(model(x), x).backward()
        opt.step()

    return step


def _fused_step(batch: int):
    from aecomp.models import Autoencoder
    from aecomp.train import FusedStep

    model = Autoencoder((784, 128, 64, 32))
    fs = FusedStep(model, torch.optim.Adam(model.parameters(), lr=1e-3, fused=True))
    x = torch.rand(batch, 784)
    assert fs.uses_fused_optimizer(x)
    return lambda: fs.step(x)


def _linear_fb(impl, batch, k, n, act):
    from aecomp import ops

    x, w, b = layer_inputs(batch, k, n)
    g = torch.rand(batch, n)
    fn = eager_linear_act if impl == "eager" else (lambda *a: ops.linear_act(*a, backend="cpu"))

    def step():
        w.grad = None
        b.grad = None
        x.grad = None
        fn(x, w, b, act).backward(g)

    return step


def _measure(cases, rounds, threads_of=lambda key: 1):
    res = {k: ([], []) for k in cases}
    for _ in range(rounds):
        for key, (fn, reps) in cases.items():
            torch.set_num_threads(threads_of(key))
            fn()
            w0, c0 = time.perf_counter(), time.thread_time()
            for _ in range(reps):
                fn()
            res[key][0].append((time.perf_counter() - w0) / reps)
            res[key][1].append((time.thread_time() - c0) / reps)
    med = lambda v: sorted(v)[len(v) // 2]
    return {k: (med(w), med(c)) for k, (w, c) in res.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    from aecomp import _ext

    torch.set_num_threads(1)
    print(f"isa {_ext.load()[0]._cpu_isa()}; load before {open('/proc/loadavg').read().split()[:3]}")
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    cases = {("sgemm",): (lambda: torch.mm(a, b), 3)}
    for batch in (64, 1024):
        reps = 50 if batch == 64 else 5
        cases[("step", batch, "eager")] = (_eager_step(batch, False), reps)
        cases[("step", batch, "eager_fused_adam")] = (_eager_step(batch, True), reps)
        cases[("step", batch, "aecomp")] = (_fused_step(batch), reps)
    cases[("step2t", 64, "aecomp")] = (_fused_step(64), 50)
    cases[("step2t", 1024, "aecomp")] = (_fused_step(1024), 5)
    for k, n, act in REFERENCE_LAYERS:
        for impl in ("eager", "aecomp"):
            cases[("linear", f"{k}->{n} {act}", impl)] = (_linear_fb(impl, 64, k, n, act), 100)
    med = _measure(cases, args.rounds, threads_of=lambda key: 2 if key[0] == "step2t" else 1)
    torch.set_num_threads(1)
    print(f"load after {open('/proc/loadavg').read().split()[:3]}")
    sg_w, sg_c = med[("sgemm",)]
    rate = lambda t: 2 * 1024 ** 3 / t / 1e9
    print(f"sgemm 1024^3, 1 thread: {rate(sg_w):.1f} GFLOP/s wall, {rate(sg_c):.1f} GFLOP/s CPU time")
    flops_row = sum(6 * DIMS[i] * DIMS[i + 1] for i in range(len(DIMS) - 1))
    for clock, i in (("wall", 0), ("cpu", 1)):
        print(f"-- {clock} time")
        for batch in (64, 1024):
            e, ef, o = (med[("step", batch, k)][i] for k in ("eager", "eager_fused_adam", "aecomp"))
            o2 = med[("step2t", batch, "aecomp")][i]
            frac = flops_row * batch / o / (2 * 1024 ** 3 / med[("sgemm",)][i])
            print(f"train step b{batch}: eager {e * 1e6:.0f} us, eager+fused Adam {ef * 1e6:.0f} us, aecomp "
                  f"{o * 1e6:.0f} us -> {e / o:.2f}x eager, {ef / o:.2f}x eager fused Adam, {100 * frac:.0f}% of "
                  f"sgemm; 2 threads {o2 * 1e6:.0f} us ({o / o2:.2f}x the 1-thread speed)")
        ratios = []
        for k, n, act in REFERENCE_LAYERS:
            name = f"{k}->{n} {act}"
            r = med[("linear", name, "eager")][i] / med[("linear", name, "aecomp")][i]
            ratios.append(r)
            print(f"linear_act fwd+bwd b64 {name:>18}: {r:.2f}x eager")
        gm = 1.0
        for r in ratios:
            gm *= r
        print(f"linear_act geometric mean {gm ** (1 / len(ratios)):.2f}x, worst {min(ratios):.2f}x")


if __name__ == "__main__":
    main()
