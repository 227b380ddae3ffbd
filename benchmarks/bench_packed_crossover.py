"""Where the matrix engine starts to win for packed inference: the batch crossover of
csrc/cpu/packed_mlp.cpp (kInt8BrgemmRows, kCodebookBrgemmRows).

    python -m benchmarks.bench_packed_crossover [--quick]

The CompressedNet chain 784-128-64-32-10 as int8 and as 4-bit shared weights, one thread, at
batches 1 .. 256: the packed op with brgemm allowed (AMX-INT8 u8s8 / bf16 tiles above the
crossover) against the same op with ``torch.backends.mkldnn`` off (the AVX-512 VNNI tiles and
the float microkernels at every batch), interleaved in one process. The crossover constants
are read at build time, so this script times the two paths per layer directly with the
crossover set to 1 (``AECOMP_PACKED_BRGEMM_ROWS=1``, read once per process): run it in a fresh
process. Prints, per batch, both medians and the ratio (> 1: brgemm faster).
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

from benchmarks import _timing

BATCHES = (1, 2, 4, 8, 12, 16, 24, 32, 64, 128, 256)


def chains():
    from aecomp.compress.quantize import quantize_per_channel
    from aecomp.ops import PackedChain, codebook_layer, int8_layer

    g = torch.Generator().manual_seed(0)
    dims, acts = [784, 128, 64, 32, 10], ["relu", "relu", "none", "none"]
    i8, cb = [], []
    for k, n, a in zip(dims[:-1], dims[1:], acts):
        w = torch.randn(n, k, generator=g) / k ** 0.5
        b = torch.randn(n, generator=g) * 0.1
        q, s = quantize_per_channel(w)
        i8.append(int8_layer(q, s, b, a))
        book = torch.linspace(-2, 2, 16) / k ** 0.5
        cb.append(codebook_layer(torch.randint(0, 16, (n, k), generator=g, dtype=torch.uint8), book, None, b, a))
    return {"int8": PackedChain(i8), "shared4": PackedChain(cb)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_packed_crossover", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    if os.environ.get("AECOMP_PACKED_BRGEMM_ROWS") != "1":
        env = dict(os.environ, AECOMP_PACKED_BRGEMM_ROWS="1")
        os.execve(sys.executable, [sys.executable, "-m", "benchmarks.bench_packed_crossover", *sys.argv[1:]], env)
    import aecomp._C as C

    torch.set_num_threads(1)
    print(f"matrix engine: {C._brgemm_describe()}; load average {os.getloadavg()}")
    sample_s, repeats = (0.01, 7) if args.quick else (0.03, 15)
    for name, chain in chains().items():
        for batch in BATCHES:
            x = torch.rand(batch, 784)

            def off(chain=chain, x=x):
                torch.backends.mkldnn.enabled = False
                try:
                    return chain(x)
                finally:
                    torch.backends.mkldnn.enabled = True

            fns = {"brgemm": lambda chain=chain, x=x: chain(x), "vnni/microkernels": off}
            with torch.inference_mode():
                inner = {n: _timing.warm_up(f, sample_s) for n, f in fns.items()}
                r = _timing.time_interleaved(fns, inner, repeats)
            a, b = r["brgemm"]["median_s"] * 1e6, r["vnni/microkernels"]["median_s"] * 1e6
            print(f"{name:8s} batch {batch:4d}: brgemm {a:8.1f} us   vnni/microkernels {b:8.1f} us   ratio {b / a:5.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
