"""Launch configurations for the Triton kernels: curated autotuning lists per GPU family.

A GEMM kernel computes an output tile ``[A, B]`` and loops over a reduction dimension ``R``
in steps of ``r``. The three linear_act kernels assign the problem dimensions (``M`` batch
rows, ``N`` out features, ``K`` in features) to those roles differently:

=========  ================================  =========  =========  =========
kernel     computes                          tile ``a``  tile ``b``  step ``r``
=========  ================================  =========  =========  =========
``fwd``    ``y[M, N] = act(x W^T + b)``      BLOCK_M    BLOCK_N    BLOCK_K
``dgrad``  ``dx[M, K] = gz W``               BLOCK_M    BLOCK_K    BLOCK_N
``wgrad``  ``dW[N, K] = gz^T x``, ``db``      BLOCK_N    BLOCK_K    BLOCK_M
=========  ================================  =========  =========  =========

so one list of :class:`Tile` serves all three. Families:

* ``hopper`` (sm_90: H100, H200): tiles sized for ``wgmma`` (one or two warp groups of 4 warps,
  128-row tiles) and its 227 KB of shared memory per block; deep pipelines (3-4 stages).
  The 32/64-wide tiles are for the narrow layers of an autoencoder (N = 32, 64).
* ``default`` (any other GPU): smaller tiles and 3 stages, fitting the ~100 KB of shared
  memory of consumer parts as well as the 164 KB of an A100.
* ``interpreter`` (``TRITON_INTERPRET=1``): one small tile. Autotuning under the interpreter
  would only measure Python overhead; 32-wide tiles keep the interpreter's per-program cost
  down while small test shapes (33, 40, 64) still cross tile edges in every dimension.

Shared memory of a pipelined GEMM is about ``stages * (a*r + r*b) * element_size`` bytes, so
the 32-bit (float32 / tf32) lists halve the reduction step ``r`` of the 16-bit lists (and are
shorter: float32 is the slow path, bfloat16 the one that matters).
``tests/test_triton_aot.py`` compiles every entry for sm_90 and checks it fits.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Dict, List, Tuple

# Per-block opt-in shared memory limit of H100/H200 (sm_90): 227 KB.
HOPPER_SMEM_BYTES = 232448
GROUP_M = 8  # programs along M that share W tiles in L2 (grouped launch order)


@dataclass(frozen=True)
class Tile:
    a: int
    b: int
    r: int
    warps: int
    stages: int


# bfloat16 / float16 tiles for sm_90: one or two warp groups, 3-4 stages.
_HOPPER_16 = (
    Tile(128, 256, 64, 8, 3),  # wide outputs (784, 4096)
    Tile(128, 128, 64, 8, 4),  # 8 warps: with 4 the wgrad tile spills (triton 3.6 and 3.9)
    Tile(128, 64, 64, 4, 4),  # the narrow layers of an autoencoder (N = 64, 32)
    Tile(128, 32, 64, 4, 4),
)
# float32 tiles for sm_90 (tf32 tensor cores or full-precision FMA): half the reduction step.
_HOPPER_32 = (
    Tile(128, 128, 32, 8, 3),
    Tile(128, 64, 32, 4, 4),
    Tile(128, 32, 32, 4, 4),
)
_DEFAULT_16 = (
    Tile(128, 128, 32, 8, 3),
    Tile(128, 64, 32, 4, 3),
    Tile(64, 64, 32, 4, 3),
    Tile(64, 32, 32, 4, 3),
)
_DEFAULT_32 = (
    Tile(128, 64, 16, 4, 3),
    Tile(64, 64, 16, 4, 3),
    Tile(64, 32, 16, 4, 3),
)
_INTERPRETER = (Tile(32, 32, 32, 1, 1),)

GEMM_TILES: Dict[Tuple[str, int], Tuple[Tile, ...]] = {
    ("hopper", 2): _HOPPER_16,
    ("hopper", 4): _HOPPER_32,
    ("default", 2): _DEFAULT_16,
    ("default", 4): _DEFAULT_32,
    ("interpreter", 2): _INTERPRETER,
    ("interpreter", 4): _INTERPRETER,
}

# Which kernel parameter plays which role (see the table above).
GEMM_ROLES: Dict[str, Tuple[str, str, str]] = {
    "fwd": ("BLOCK_M", "BLOCK_N", "BLOCK_K"),
    "dgrad": ("BLOCK_M", "BLOCK_K", "BLOCK_N"),
    "wgrad": ("BLOCK_N", "BLOCK_K", "BLOCK_M"),
}

# Streaming (elementwise / reduction) kernels: elements per program and warps. 4096
# elements over 8 warps is 16 per thread: four 16-byte loads of float32 per operand.
STREAM: Dict[str, Dict[str, int]] = {
    "hopper": {"BLOCK": 4096, "warps": 8, "REDUCE_BLOCK": 1024, "reduce_warps": 4},
    "default": {"BLOCK": 2048, "warps": 8, "REDUCE_BLOCK": 1024, "reduce_warps": 4},
    "interpreter": {"BLOCK": 64, "warps": 1, "REDUCE_BLOCK": 16, "reduce_warps": 1},
}


# Per-kernel replacements of a list's tile where that kernel spills registers with it (found by
# the sm_90 AOT compile under triton 3.6, the GPU machine's, and 3.9: tests/test_triton_aot.py
# checks every GEMM config for spills under both). wgrad keeps a [BLOCK_N, BLOCK_M] gz^T tile and
# the bias-gradient sums live besides the accumulator: 128x256x64 w8 spills 16 B at 3 stages
# (3.9), 128x32x32 w4 16 B (3.9); 2 stages / 8 warps do not, on either version.
_TILE_OVERRIDES: Dict[Tuple[str, str, int], Dict[Tile, Tile]] = {
    ("wgrad", "hopper", 2): {Tile(128, 256, 64, 8, 3): Tile(128, 256, 64, 8, 2)},
    ("wgrad", "hopper", 4): {Tile(128, 32, 32, 4, 4): Tile(128, 32, 32, 8, 4)},
}


def gemm_tiles(family: str, element_size: int, kernel: str = "fwd") -> Tuple[Tile, ...]:
    esize = 4 if element_size >= 4 else 2
    swap = _TILE_OVERRIDES.get((kernel, family, esize), {})
    return tuple(swap.get(t, t) for t in GEMM_TILES[(family, esize)])


def gemm_configs(kernel: str, family: str, element_size: int) -> List:
    """``triton.Config`` objects for ``kernel`` ('fwd', 'dgrad', 'wgrad')."""
    import triton

    ra, rb, rr = GEMM_ROLES[kernel]
    return [
        triton.Config({ra: t.a, rb: t.b, rr: t.r, "GROUP_M": GROUP_M}, num_warps=t.warps, num_stages=t.stages)
        for t in gemm_tiles(family, element_size, kernel)
    ]


def _next_pow2(n: int) -> int:
    return 1 if n <= 1 else 1 << (int(n) - 1).bit_length()


def _static_int(v):
    """``v`` as a Python int when it is one (not a ``torch.SymInt``), else None. Never calls
    ``int()`` on a symbolic size: under ``torch.compile`` that would add a guard pinning the
    batch size to its current value (every new batch size a recompile, and an error with
    ``torch._dynamo.mark_dynamic``)."""
    return v if type(v) is int else None


def make_prune(kernel: str, dims: Tuple[str, str]):
    """An ``early_config_prune`` that drops tiles much wider than the output.

    ``dims`` names the kernel arguments holding the output tile's extents (roles ``a``, ``b``).
    A tile wider than the next power of two of its extent (floor 32) computes only padding;
    dropping it saves compile and benchmark time. At least the smallest tile is kept. An extent
    that is not a plain int (a symbolic batch size under ``torch.compile``) does not prune: no
    guard is ever put on it. With :func:`pinned` the first tile left is the only one.
    """
    ra, rb, _ = GEMM_ROLES[kernel]

    def prune(configs, named_args, **kwargs):
        ea = _static_int(named_args.get(dims[0]))
        eb = _static_int(named_args.get(dims[1]))
        kept = [c for c in configs
                if (ea is None or c.kwargs[ra] <= max(_next_pow2(ea), 64))
                and (eb is None or c.kwargs[rb] <= max(_next_pow2(eb), 32))]
        if not kept:
            kept = [min(configs, key=lambda c: c.kwargs[ra] * c.kwargs[rb])]
        return kept[:1] if pinned() else kept

    return prune


def pinned() -> bool:
    """``AECOMP_TRITON_AUTOTUNE=off``: one configuration per kernel and shape, chosen by the rules
    above (never by timing), so the same shapes run the same tile in every process. That is what
    makes results bit-for-bit reproducible across processes (a tile's ``tl.sum`` / ``tl.dot``
    order depends on its shape, and autotuning may time another tile best in another process);
    the GPU check's test stage uses it to compile one tile per kernel instead of all of them."""
    return os.environ.get("AECOMP_TRITON_AUTOTUNE", "on").lower() in ("off", "0", "pinned", "no")


def bucket(m):
    """The autotuning bucket of a batch size: its next power of two (plain ints only; a symbolic
    size is returned as is, so tracing never guards on it)."""
    mi = _static_int(m)
    return m if mi is None else _next_pow2(mi)


@functools.lru_cache(maxsize=None)
def cuda_family(index: int) -> Tuple[str, int]:
    """(config family, streaming multiprocessor count) of CUDA device ``index``."""
    import torch

    props = torch.cuda.get_device_properties(index)
    return ("hopper" if props.major == 9 else "default"), props.multi_processor_count


def device_family(device, interpreted: bool) -> Tuple[str, int]:
    """(config family, SM count) for kernels launched on ``device`` (a ``torch.device``)."""
    if interpreted or device.type != "cuda":
        return "interpreter", 4
    import torch

    return cuda_family(device.index if device.index is not None else torch.cuda.current_device())


def _traced(t) -> bool:
    """Whether ``t`` is a stand-in of tracing (fake / functional tensor, or dynamo compiling):
    then the compiled graph sets the device itself and no CUDA call may be made here."""
    import torch

    if torch.compiler.is_compiling():
        return True
    from torch._subclasses.fake_tensor import FakeTensor
    from torch._subclasses.functional_tensor import FunctionalTensor

    return isinstance(t, (FakeTensor, FunctionalTensor)) or torch._C._functorch.is_functionaltensor(t)


def on_tensor_device(launcher):
    """Runs ``launcher`` (whose first argument is a tensor) with that tensor's CUDA device
    current: Triton launches on the current device and stream, so without the guard a ``cuda:1``
    tensor would be handed to a kernel running on ``cuda:0``."""
    import contextlib

    import torch

    @functools.wraps(launcher)
    def run(t, *args, **kwargs):
        dev = t.device
        if dev.type != "cuda" or dev.index is None or _traced(t):
            return launcher(t, *args, **kwargs)
        with torch.cuda.device(dev) if dev.index != torch.cuda.current_device() else contextlib.nullcontext():
            return launcher(t, *args, **kwargs)

    return run


def interpreting() -> bool:
    """Whether ``@triton.jit`` defines kernels for Triton's interpreter in this process."""
    import triton

    knobs = getattr(triton, "knobs", None)
    if knobs is not None:
        return bool(knobs.runtime.interpret)
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "yes", "on", "y")


# ----------------------------------------------------------------------------------------
# Fused layer chains (kernels/mlp.py)
# ----------------------------------------------------------------------------------------
# A chain kernel keeps every intermediate activation of a BLOCK_M-row tile on chip, and loads
# each middle layer's whole weight as one [P_in, P_out] tile (P = the width padded to a power
# of two, at least 16). What bounds the intermediate widths is that weight tile in shared
# memory next to the activation tile (the tensor cores read B from shared memory):
#   16-bit, P = 256: W 256 x 256 x 2 = 128 KB + h 64 x 256 x 2 = 32 KB   -> fits 227 KB (Hopper)
#   float32, P = 256: W alone is 256 KB                                   -> does not fit
#   float32, P = 128: W 64 KB + h 64 x 128 x 4 = 32 KB                    -> fits
# Intermediate widths above the limit split the chain there (see kernels/mlp.py plan_chain).
# The interpreter uses Hopper's limits so that the tests exercise the GPU's plan.
CHAIN_MAX_WIDTH: Dict[Tuple[str, int], int] = {
    ("hopper", 2): 256,
    ("hopper", 4): 128,
    ("default", 2): 128,  # ~100 KB of shared memory on consumer parts
    ("default", 4): 64,
    ("interpreter", 2): 256,
    ("interpreter", 4): 128,
}
CHAIN_NARROW = 128  # a chain whose widest intermediate is at most this takes the "narrow" tiles


@dataclass(frozen=True)
class ChainTile:
    """Tiles of the chain kernels: ``m`` rows per program; ``k`` the step over the chain's input
    width (forward) and the tile of ``dx`` (backward); ``n`` the tile of the chain's output width."""

    m: int
    k: int
    n: int
    warps: int
    stages: int


# Register budget: the float32 accumulator of a [m, P] layer is m * P / (32 * warps) registers a
# thread (128 x 128 over 8 warps: 64); "wide" chains (P = 256) halve m to stay clear of spills.
# Checked by the sm_90 AOT compile (tests/test_triton_aot.py, which reads cuobjdump's register and
# stack counts): every 16-bit chain tile below compiles without spills (reference autoencoder:
# 128-row tiles 197 registers forward, 174 backward). float32 with full-precision ("ieee") dots
# runs on FMA units, whose operands live in registers: a 128-deep product needs ~K registers
# per operand row, so some float32 tiles spill; each kernel (fwd, bwd) has one spill-free tile in
# the list (fwd: 64-row, bwd: 32-row) and autotuning picks per kernel. float32 with tf32 allowed
# uses wgmma and does not spill.
CHAIN_TILES: Dict[Tuple[str, int, str], Tuple[ChainTile, ...]] = {
    ("hopper", 2, "narrow"): (ChainTile(128, 64, 64, 8, 3), ChainTile(64, 64, 64, 4, 3)),
    ("hopper", 2, "wide"): (ChainTile(64, 64, 64, 8, 2), ChainTile(64, 32, 32, 8, 3)),
    ("hopper", 4, "narrow"): (ChainTile(64, 32, 32, 8, 2), ChainTile(32, 32, 32, 8, 2)),
    ("default", 2, "narrow"): (ChainTile(64, 32, 64, 4, 2), ChainTile(128, 32, 64, 8, 2)),
    ("default", 4, "narrow"): (ChainTile(32, 32, 32, 4, 2),),
    # one small tile (the interpreter's cost is per program and per helper call): batch 33 crosses
    # a row-tile edge, input/output widths 50 a K/N-tile edge
    ("interpreter", 2, "narrow"): (ChainTile(32, 32, 32, 1, 1),),
    ("interpreter", 2, "wide"): (ChainTile(32, 32, 32, 1, 1),),
    ("interpreter", 4, "narrow"): (ChainTile(32, 32, 32, 1, 1),),
}


# float32 "ieee" chains (FMA dot products, both operands in registers) compile without spills
# under triton 3.9, but triton 3.6 -- the GPU machine's -- spills 1.1-1.3 KB a thread with every
# tile tried on the reference autoencoder (64/32/16-row tiles, 4 to 16 warps, 1-2 stages: sm_90
# AOT compiles, cuobjdump stack bytes). Below this version those chains run one linear_act per
# layer instead (spill-free GEMM tiles); tf32 chains use wgmma and stay fused.
FP32_IEEE_CHAIN_MIN_TRITON = (3, 9)


def triton_version() -> Tuple[int, ...]:
    import triton

    return tuple(int(p) for p in triton.__version__.split("+")[0].split(".")[:2] if p.isdigit())


def chain_max_width(family: str, element_size: int, precision: str = "ieee") -> int:
    """The widest intermediate layer a fused chain keeps on chip (0: no chain is fused)."""
    esize = 4 if element_size >= 4 else 2
    if esize == 4 and precision == "ieee" and family != "interpreter" and triton_version() < FP32_IEEE_CHAIN_MIN_TRITON:
        return 0
    return CHAIN_MAX_WIDTH[(family, esize)]


def chain_tiles(family: str, element_size: int, widest: int) -> Tuple[ChainTile, ...]:
    """The tiles for a chain whose widest padded intermediate is ``widest``."""
    esize = 4 if element_size >= 4 else 2
    kind = "narrow" if widest <= CHAIN_NARROW else "wide"
    return CHAIN_TILES[(family, esize, kind)]


def chain_configs(family: str, element_size: int, widest: int) -> List:
    """``triton.Config`` objects for the chain kernels (the first tile only when :func:`pinned`)."""
    import triton

    tiles = chain_tiles(family, element_size, widest)
    return [
        triton.Config({"BLOCK_M": t.m, "BLOCK_K": t.k, "BLOCK_N": t.n}, num_warps=t.warps, num_stages=t.stages)
        for t in (tiles[:1] if pinned() else tiles)
    ]
