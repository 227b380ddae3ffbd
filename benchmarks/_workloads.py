"""The benchmark matrix: every workload as a list of :class:`Case`, each with its implementations.

A case is one point of the matrix (workload x mode x shape x batch x dtype); its implementations
(aecomp on each backend, and the baselines) are timed in the same process on the same random
inputs. Implementation names:

* ``aecomp:<backend>`` -- aecomp's op / module / step on that backend;
* ``eager`` -- the same computation in plain PyTorch written the usual way;
* ``compile`` -- ``torch.compile`` of the eager function (default mode);
* ``compile-max-autotune`` -- GPU only: ``torch.compile(mode="max-autotune")`` (CUDA graphs
  included; ``torch.compiler.cudagraph_mark_step_begin()`` before each call).

Workloads and what one timed call does (FLOPs count multiply-adds as 2; ``B`` = batch):

==============  ======  ====================================================================
workload        mode    one call
==============  ======  ====================================================================
linear_act      fwd     ``act(x W^T + b)`` under no_grad; ``2 B K N`` FLOPs
                fwd+bwd forward then backward of a random ``g``: gradients of x, W and b
                        (x requires grad, as in a hidden layer); ``6 B K N``
mse_loss        fwd     ``mean((a - t)^2)`` on ``[B, 784]``; memory-bound: ``3 n`` FLOPs,
                        ``2 n`` elements moved (fraction of the copy ceiling is the one to read)
                fwd+bwd and the gradient of ``a``; ``6 n`` FLOPs, ``5 n`` elements moved
mlp             fwd     the reference autoencoder 784-128-64-32-64-128-784 (relu, relu, none,
                        relu, relu, sigmoid) as one chain; ``2 B sum K_i N_i``
                fwd+bwd its backward from a random ``g``: gradients of every W and b, not
                        of x (data); ``2 B sum K_i N_i`` more for wgrad, the same minus the
                        first layer for dgrad
mlp_mse_loss    fwd     ``mse(mlp(x), x)``; aecomp with its fused loss entry
                fwd+bwd and the backward
train_step      step    one training step of the reference autoencoder: forward, MSE,
                        backward, Adam (lr 1e-3). eager: ``nn.Sequential`` + ``nn.MSELoss`` +
                        ``torch.optim.Adam`` (its default implementation), ``zero_grad``;
                        compile: ``torch.compile`` of that whole step function (graph breaks
                        at ``backward`` allowed); aecomp: ``FusedStep`` with
                        ``Adam(fused=True)``; on the GPU also ``aecomp:<backend>+cudagraph``:
                        ``FusedStep(cuda_graph=True)`` with a capturable Adam. CPU bfloat16:
                        float32 parameters everywhere (mixed precision, what a user runs):
                        eager / compile under ``torch.autocast("cpu", bfloat16)``, aecomp
                        ``FusedStep(precision="bf16")`` (bf16 GEMMs on the matrix engine)
usual_loop      step    CPU: the seed's model and its own loop (``zero_grad``, ``crit(model(x),
                        x)``, ``backward``, default ``Adam`` 1e-3), batch from a rotating set
                        of 64 batches. eager: as written (bfloat16: under autocast); aecomp:
                        the same loop on ``aecomp.accelerate(model)`` (bfloat16:
                        ``accelerate(model, precision="bf16")``), same optimizer
train_job       job     ``benchmarks/bench_train_job.py``: the usual DataLoader loop vs
                        ``aecomp.train.Trainer``, digits28 train split, batch 64, whole epochs
latency         infer   inference of a CompressedNet (the reference encoder 784-128-64-32 and a
                        32 -> 10 head) at batch 1 and 256, no_grad; eager: its
                        ``to_sequential()`` copy; compile: ``torch.compile`` of that copy
packed_mlp      infer   GPU only (group ``inference``; on the CPU ``--only inference`` runs
                        ``benchmarks/bench_inference.py``): that CompressedNet with packed
                        weights, int8 per channel (shape ``... int8``) or 4-bit shared
                        weights (``... shared4``), through ``aecomp.ops.packed_mlp`` (the
                        Triton kernels unpack in registers) at batch 1, 256 and 65536, no_grad;
                        eager / compile: the dequantized float weights as F.linear + act in
                        the case's dtype (what a deployer runs without aecomp)
==============  ======  ====================================================================

On the GPU the training step runs at batch 64, 4096 and 65536 (``benchmarks/run.py``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ._layers import REFERENCE_LAYERS, eager_linear_act

AE_DIMS = (784, 128, 64, 32)
CHAIN_DIMS = (784, 128, 64, 32, 64, 128, 784)
CHAIN_ACTS = ("relu", "relu", "none", "relu", "relu", "sigmoid")
HEAD_CLASSES = 10
GROUPS = ("op", "chain", "train_step", "train_job", "latency", "inference")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class Impl:
    name: str                         # aecomp:<backend> | eager | compile | compile-max-autotune
    make: Callable[[], Callable[[], Any]]   # builds the timed zero-argument callable (may compile)
    phase: int = 0                    # phased (GPU) runs: 0 aecomp + eager, 1 compile, 2 max-autotune
    est_s: float = 2.0                # rough cost (build + timing), for the time budget
    note: str = ""

    @property
    def role(self) -> str:
        return "aecomp" if self.name.startswith("aecomp") else "baseline"

    @property
    def backend(self) -> Optional[str]:
        """``aecomp:triton+cudagraph`` -> ``triton``; None for a baseline."""
        return self.name.split(":", 1)[1].split("+", 1)[0] if self.name.startswith("aecomp:") else None


@dataclass
class Case:
    group: str
    workload: str
    mode: str
    shape: str
    batch: int
    dtype: str
    flops: float
    nbytes: Optional[float] = None
    grad: bool = True                 # autograd on while building and timing
    impls: List[Impl] = field(default_factory=list)
    params: Dict[str, Any] = field(default_factory=dict)
    priority: float = 0.0             # phased runs: lower first (see benchmarks/run.py)
    # a case that times itself (the training job): (case, impls, settings, memory) -> {impl: summary}
    measure: Optional[Callable[..., Dict[str, Dict[str, Any]]]] = None
    # the case's input tensors, made on first use by its implementations; the runner empties it
    # after each measurement so the inputs of finished cases do not pile up (GPU batch 65536)
    cache: Dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> Tuple:
        return (self.workload, self.mode, self.shape, self.batch, self.dtype)


@dataclass
class Settings:
    device: str
    backends: Sequence[str]           # aecomp backends to time
    baselines: Sequence[str]          # among eager, compile, compile-max-autotune
    dtypes: Sequence[str]
    batches: Sequence[int]            # op / chain / train_step
    latency_batches: Sequence[int] = (1, 256)
    packed_batches: Sequence[int] = (1, 256, 65536)  # inference (GPU): the packed CompressedNet
    compile_backend: str = "inductor"
    job_epochs: int = 10
    job_repeats: int = 3
    job_samples: Optional[int] = None  # None: the digits28 train split; else that many random rows
    seed: int = 0
    layers: Optional[Sequence[int]] = None  # indices into REFERENCE_LAYERS (None: all six)


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------
def compiled(fn: Callable, settings: Settings, mode: Optional[str] = None) -> Callable:
    if settings.compile_backend != "inductor":  # the smoke test: dynamo only, no codegen
        return torch.compile(fn, backend=settings.compile_backend)
    return torch.compile(fn, mode=mode)


def _cudagraph_step(fn: Callable) -> Callable:
    mark = getattr(torch.compiler, "cudagraph_mark_step_begin", None)

    def run():
        if mark is not None:
            mark()
        return fn()

    return run


def baseline_impls(settings: Settings, build: Callable[[Optional[str]], Callable[[], Any]],
                   compile_est: float) -> List[Impl]:
    """eager / compile / max-autotune impls from ``build(mode)``: ``mode`` None is eager, else
    the torch.compile mode ("default" or "max-autotune")."""
    out = []
    if "eager" in settings.baselines:
        out.append(Impl("eager", lambda: build(None), phase=0, est_s=2.0))
    if "compile" in settings.baselines:
        out.append(Impl("compile", lambda: build("default"), phase=1, est_s=compile_est,
                        note=f"torch.compile (backend={settings.compile_backend})"))
    if "compile-max-autotune" in settings.baselines and settings.device == "cuda":
        out.append(Impl("compile-max-autotune", lambda: _cudagraph_step(build("max-autotune")), phase=2,
                        est_s=compile_est * 3, note='torch.compile(mode="max-autotune")'))
    return out


def chain_flops(dims: Sequence[int], batch: int, backward: bool, input_grad: bool = False) -> float:
    pairs = list(zip(dims[:-1], dims[1:]))
    fwd = sum(2 * batch * k * n for k, n in pairs)
    if not backward:
        return float(fwd)
    dgrad = sum(2 * batch * k * n for k, n in (pairs if input_grad else pairs[1:]))
    return float(fwd + fwd + dgrad)  # forward + wgrad + dgrad


def _params(dims: Sequence[int], dtype, device, grad: bool):
    ws, bs = [], []
    for k, n in zip(dims[:-1], dims[1:]):
        ws.append((torch.randn(n, k, device=device) / math.sqrt(k)).to(dtype).requires_grad_(grad))
        bs.append((torch.rand(n, device=device) * 0.2 - 0.1).to(dtype).requires_grad_(grad))
    return ws, bs


def eager_chain(x, ws, bs, acts):
    """The usual PyTorch: F.linear then the activation, layer by layer."""
    for w, b, a in zip(ws, bs, acts):
        x = eager_linear_act(x, w, b, a)
    return x


def _reset(*tensors) -> None:
    for t in tensors:
        t.grad = None


# ----------------------------------------------------------------------------------------------
# op: linear_act, mse_loss
# ----------------------------------------------------------------------------------------------
def linear_act_cases(s: Settings) -> List[Case]:
    from aecomp import ops

    cases = []
    for dname in s.dtypes:
        dtype = DTYPES[dname]
        for batch in s.batches:
            layers = [REFERENCE_LAYERS[i] for i in s.layers] if s.layers is not None else REFERENCE_LAYERS
            for k, n, act in layers:
                for mode in ("fwd", "fwd+bwd"):
                    grad = mode == "fwd+bwd"
                    esz = torch.empty((), dtype=dtype).element_size()
                    nbytes = (batch * k + n * k + n + batch * n) * esz
                    if grad:  # backward reads g, y, x, W; writes dx, dW, db
                        nbytes += (2 * batch * n + batch * k + n * k + batch * k + n * k + n) * esz
                    case = Case("op", "linear_act", mode, f"{k}x{n} {act}", batch, dname,
                                flops=2.0 * batch * k * n * (3 if grad else 1), nbytes=nbytes, grad=grad,
                                params={"in": k, "out": n, "act": act},
                                priority=_priority(s, dname, batch))
                    data = case.cache

                    def inputs(batch=batch, k=k, n=n, dtype=dtype, grad=grad, data=data):
                        if not data:
                            data["x"] = torch.randn(batch, k, device=s.device).to(dtype).requires_grad_(grad)
                            data["w"] = (torch.randn(n, k, device=s.device) / math.sqrt(k)).to(dtype) \
                                .requires_grad_(grad)
                            data["b"] = (torch.rand(n, device=s.device) * 0.2 - 0.1).to(dtype).requires_grad_(grad)
                            data["g"] = torch.randn(batch, n, device=s.device).to(dtype)
                        return data["x"], data["w"], data["b"], data["g"]

                    def runner(f, act=act, grad=grad, inputs=inputs):
                        x, w, b, g = inputs()
                        if not grad:
                            return lambda: f(x, w, b, act)

                        def run():
                            _reset(x, w, b)
                            f(x, w, b, act).backward(g)

                        return run

                    for be in s.backends:
                        case.impls.append(Impl(f"aecomp:{be}", lambda be=be, runner=runner: runner(
                            lambda x, w, b, a: ops.linear_act(x, w, b, a, backend=be))))
                    case.impls += baseline_impls(
                        s, lambda mode, runner=runner: runner(
                            eager_linear_act if mode is None else compiled(eager_linear_act, s, mode)),
                        compile_est=20.0)
                    cases.append(case)
    return cases


def mse_cases(s: Settings) -> List[Case]:
    from aecomp import ops

    cases = []
    for dname in s.dtypes:
        dtype = DTYPES[dname]
        for batch in s.batches:
            numel = batch * CHAIN_DIMS[-1]
            esz = torch.empty((), dtype=dtype).element_size()
            for mode in ("fwd", "fwd+bwd"):
                grad = mode == "fwd+bwd"
                case = Case("op", "mse_loss", mode, f"{batch}x{CHAIN_DIMS[-1]}", batch, dname,
                            flops=3.0 * numel * (2 if grad else 1), nbytes=(5 if grad else 2) * numel * esz,
                            grad=grad, params={"reduction": "mean"}, priority=_priority(s, dname, batch) + 0.5)
                data = case.cache

                def runner(f, batch=batch, dtype=dtype, grad=grad, data=data):
                    if not data:
                        data["a"] = torch.rand(batch, CHAIN_DIMS[-1], device=s.device).to(dtype).requires_grad_(grad)
                        data["t"] = torch.rand(batch, CHAIN_DIMS[-1], device=s.device).to(dtype)
                    a, t = data["a"], data["t"]
                    if not grad:
                        return lambda: f(a, t)

                    def run():
                        a.grad = None
                        f(a, t).backward()

                    return run

                for be in s.backends:
                    case.impls.append(Impl(f"aecomp:{be}", lambda be=be, runner=runner: runner(
                        lambda a, t: ops.mse_loss(a, t, "mean", backend=be))))
                case.impls += baseline_impls(
                    s, lambda mode, runner=runner: runner(
                        F.mse_loss if mode is None else compiled(F.mse_loss, s, mode)),
                    compile_est=15.0)
                cases.append(case)
    return cases


# ----------------------------------------------------------------------------------------------
# chain: mlp, mlp_mse_loss
# ----------------------------------------------------------------------------------------------
def _eager_mlp_mse(x, ws, bs, acts):
    return F.mse_loss(eager_chain(x, ws, bs, acts), x)


def chain_cases(s: Settings) -> List[Case]:
    from aecomp import ops

    cases = []
    shape = "-".join(map(str, CHAIN_DIMS))
    acts = list(CHAIN_ACTS)
    for dname in s.dtypes:
        dtype = DTYPES[dname]
        for batch in s.batches:
            for workload in ("mlp", "mlp_mse_loss"):
                for mode in ("fwd", "fwd+bwd"):
                    grad = mode == "fwd+bwd"
                    case = Case("chain", workload, mode, shape, batch, dname,
                                flops=chain_flops(CHAIN_DIMS, batch, grad), grad=grad,
                                params={"activations": acts}, priority=_priority(s, dname, batch) - 0.5)
                    data = case.cache

                    def runner(f, batch=batch, dtype=dtype, grad=grad, data=data, workload=workload):
                        if not data:
                            data["x"] = torch.rand(batch, CHAIN_DIMS[0], device=s.device).to(dtype)
                            data["ws"], data["bs"] = _params(CHAIN_DIMS, dtype, s.device, grad)
                            data["g"] = torch.randn(batch, CHAIN_DIMS[-1], device=s.device).to(dtype)
                        x, ws, bs, g = data["x"], data["ws"], data["bs"], data["g"]
                        if not grad:
                            return lambda: f(x, ws, bs, acts)

                        def run():
                            _reset(*ws, *bs)
                            out = f(x, ws, bs, acts)
                            if workload == "mlp":
                                out.backward(g)
                            else:
                                out.backward()

                        return run

                    if workload == "mlp":
                        def aecomp_fn(be):
                            return lambda x, ws, bs, a: ops.mlp(x, ws, bs, a, backend=be)
                        eager = eager_chain
                    else:
                        def aecomp_fn(be):
                            return lambda x, ws, bs, a: ops.mlp_mse_loss(x, ws, bs, a, backend=be)
                        eager = _eager_mlp_mse
                    for be in s.backends:
                        case.impls.append(Impl(f"aecomp:{be}", lambda be=be, runner=runner, aecomp_fn=aecomp_fn:
                                               runner(aecomp_fn(be))))
                    case.impls += baseline_impls(
                        s, lambda mode, runner=runner, eager=eager: runner(
                            eager if mode is None else compiled(eager, s, mode)),
                        compile_est=40.0)
                    cases.append(case)
    return cases


# ----------------------------------------------------------------------------------------------
# train_step
# ----------------------------------------------------------------------------------------------
def _autocast_cpu(dtype, device: str):
    """CPU bfloat16 rows: float32 parameters and data under autocast (None: plain dtype)."""
    return device == "cpu" and dtype == torch.bfloat16


def _eager_step(batch: int, dtype, device: str, compile_mode: Optional[str], s: Settings) -> Callable[[], Any]:
    from .bench_train_job import EagerAutoencoder

    mixed = _autocast_cpu(dtype, device)
    pdtype = torch.float32 if mixed else dtype
    model = EagerAutoencoder().to(device=device, dtype=pdtype)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    crit = nn.MSELoss()
    x = torch.rand(batch, AE_DIMS[0], device=device).to(pdtype)
    step = _loop_step(model, opt, crit, lambda: x, mixed)
    return step if compile_mode is None else compiled(step, s, compile_mode)


def _loop_step(model, opt, crit, next_x: Callable[[], torch.Tensor], autocast: bool) -> Callable[[], Any]:
    """The usual step: zero_grad, crit(model(x), x) (under CPU bf16 autocast if asked), backward, step."""
    import contextlib

    def step():
        x = next_x()
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext():
            loss = crit(model(x), x)
        loss.backward()
        opt.step()
        return loss

    return step


def _fused_step(batch: int, dtype, device: str, backend: str, cuda_graph: bool = False) -> Callable[[], Any]:
    from aecomp.models import Autoencoder
    from aecomp.train import FusedStep

    mixed = _autocast_cpu(dtype, device)
    model = Autoencoder(AE_DIMS, output="sigmoid", backend=backend).to(
        device=device, dtype=torch.float32 if mixed else dtype)
    if mixed:  # bf16 GEMMs on the matrix engine, float32 master weights
        fs = FusedStep(model, torch.optim.Adam(model.parameters(), lr=1e-3, fused=True), precision="bf16")
        x = torch.rand(batch, AE_DIMS[0], device=device)
        return lambda: fs.step(x)
    if cuda_graph:  # the whole step captured once and replayed: needs a capturable optimizer
        try:
            opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True, capturable=True)
        except (RuntimeError, ValueError):
            opt = torch.optim.Adam(model.parameters(), lr=1e-3, capturable=True)
        fs = FusedStep(model, opt, cuda_graph=True)
    else:
        fs = FusedStep(model, torch.optim.Adam(model.parameters(), lr=1e-3, fused=True))
    x = torch.rand(batch, AE_DIMS[0], device=device).to(dtype)
    return lambda: fs.step(x)


def _has_cuda_graph_step() -> bool:
    import inspect

    from aecomp.train import FusedStep

    return "cuda_graph" in inspect.signature(FusedStep.__init__).parameters


def train_step_cases(s: Settings) -> List[Case]:
    cases = []
    for dname in s.dtypes:
        dtype = DTYPES[dname]
        for batch in s.batches:
            case = Case("train_step", "train_step", "step", "-".join(map(str, CHAIN_DIMS)), batch, dname,
                        flops=chain_flops(CHAIN_DIMS, batch, True), grad=True,
                        params={"optimizer": "Adam(lr=1e-3)", "loss": "mse"},
                        priority=_priority(s, dname, batch) - 2)
            mixed = _autocast_cpu(dtype, s.device)
            for be in s.backends:
                case.impls.append(Impl(f"aecomp:{be}", lambda be=be, batch=batch, dtype=dtype:
                                       _fused_step(batch, dtype, s.device, be),
                                       note="FusedStep(precision='bf16'), Adam(fused=True)" if mixed
                                       else "FusedStep, Adam(fused=True)"))
                if s.device == "cuda" and _has_cuda_graph_step():
                    case.impls.append(Impl(f"aecomp:{be}+cudagraph", lambda be=be, batch=batch, dtype=dtype:
                                           _fused_step(batch, dtype, s.device, be, cuda_graph=True), est_s=5.0,
                                           note="FusedStep(cuda_graph=True), Adam(capturable=True)"))
            case.impls += baseline_impls(
                s, lambda mode, batch=batch, dtype=dtype: _eager_step(batch, dtype, s.device, mode, s),
                compile_est=40.0)  # a guess (forward+backward graph and Adam's), until a run observes it
            if mixed:
                for impl in case.impls:
                    if impl.role == "baseline":
                        impl.note = (impl.note + ", " if impl.note else "") + "float32 model under autocast(bfloat16)"
            cases.append(case)
    return cases


def _usual_loop(batch: int, dtype, accelerated: bool) -> Callable[[], Any]:
    """The seed's model trained with its own loop (see the table above)."""
    import aecomp

    from ._layers import EagerAutoencoder

    mixed = dtype == torch.bfloat16
    torch.manual_seed(0)
    model = EagerAutoencoder()
    crit = nn.MSELoss()
    if accelerated:
        model = aecomp.accelerate(model, precision="bf16" if mixed else "fp32")
        crit = aecomp.accelerate(crit)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    data = torch.rand(64, batch, AE_DIMS[0])
    it = [0]

    def next_x():
        it[0] += 1
        return data[it[0] % 64]

    return _loop_step(model, opt, crit, next_x, mixed and not accelerated)


def usual_loop_cases(s: Settings) -> List[Case]:
    if s.device != "cpu" or "cpu" not in s.backends:
        return []
    cases = []
    for dname in s.dtypes:
        dtype = DTYPES[dname]
        if dtype not in (torch.float32, torch.bfloat16):
            continue
        for batch in s.batches:
            mixed = dtype == torch.bfloat16
            case = Case("train_step", "usual_loop", "step", "-".join(map(str, CHAIN_DIMS)), batch, dname,
                        flops=chain_flops(CHAIN_DIMS, batch, True), grad=True,
                        params={"optimizer": "Adam(lr=1e-3)", "loss": "nn.MSELoss"})
            case.impls.append(Impl("aecomp:cpu", lambda batch=batch, dtype=dtype: _usual_loop(batch, dtype, True),
                                   note="aecomp.accelerate(model" + (", precision='bf16')" if mixed else ")")))
            if "eager" in s.baselines:
                case.impls.append(Impl("eager", lambda batch=batch, dtype=dtype: _usual_loop(batch, dtype, False),
                                       note="the loop as written" + (" under autocast(bfloat16)" if mixed else "")))
            cases.append(case)
    return cases


# ----------------------------------------------------------------------------------------------
# train_job
# ----------------------------------------------------------------------------------------------
def train_job_cases(s: Settings) -> List[Case]:
    if "eager" not in s.baselines and not s.backends:
        return []
    n_train = s.job_samples or 1437  # digits28 train split (checked when the data loads)
    per_sample = chain_flops(CHAIN_DIMS, 1, True)
    case = Case("train_job", "train_job", "job", "-".join(map(str, CHAIN_DIMS)), 64, "float32",
                flops=per_sample * n_train * s.job_epochs,
                params={"epochs": s.job_epochs, "repeats": s.job_repeats,
                        "data": "digits28 train split" if s.job_samples is None else f"{s.job_samples} random rows"},
                priority=50)
    if "eager" in s.baselines:
        case.impls.append(Impl("eager", lambda: None, est_s=20.0, note="DataLoader + nn.Sequential + Adam, "
                                                                         "loss.item() per step"))
    for be in s.backends:
        case.impls.append(Impl(f"aecomp:{be}", lambda: None, est_s=10.0, note="aecomp.train.Trainer"))
    case.measure = _measure_train_job
    return [case]


def _measure_train_job(case: Case, impls: List[Impl], s: Settings,
                       measure_memory: Callable) -> Dict[str, Dict[str, Any]]:
    """Alternating whole jobs (usual loop, Trainer on each backend), after one warm-up epoch each."""
    import statistics

    from ._timing import quantile
    from .bench_train_job import EagerAutoencoder, aecomp_trainer, usual_loop

    device = torch.device(s.device)
    if s.job_samples is None:
        from aecomp import data

        x = data.load("digits28", seed=s.seed).train.x
    else:
        g = torch.Generator().manual_seed(s.seed)
        x = torch.rand(s.job_samples, AE_DIMS[0], generator=g)
    case.flops = chain_flops(CHAIN_DIMS, 1, True) * x.shape[0] * s.job_epochs
    case.params["samples"] = int(x.shape[0])
    case.params["steps"] = s.job_epochs * -(-x.shape[0] // 64)
    torch.manual_seed(s.seed)
    init = {k: v.clone() for k, v in EagerAutoencoder().state_dict().items()}

    def job(impl: Impl, epochs: int):
        if impl.name == "eager":
            secs, loss = usual_loop(x, init, epochs, s.seed, device)
            return secs, loss, "usual loop"
        return aecomp_trainer(x, init, epochs, s.seed, device, impl.backend)

    results: Dict[str, Dict[str, Any]] = {}
    live = []
    for impl in impls:  # warm-up: imports, allocator, kernels
        try:
            job(impl, 1)
            live.append(impl)
        except Exception as exc:
            results[impl.name] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
    times: Dict[str, List[float]] = {i.name: [] for i in live}
    losses: Dict[str, float] = {}
    kinds: Dict[str, str] = {}
    for r in range(s.job_repeats):
        order = live[r % len(live):] + live[:r % len(live)] if live else []
        for impl in order:
            secs, loss, kind = job(impl, s.job_epochs)
            times[impl.name].append(secs)
            losses[impl.name], kinds[impl.name] = loss, kind
    for impl in live:
        t = times[impl.name]
        results[impl.name] = {"median_s": statistics.median(t), "p20_s": quantile(t, 0.2), "p80_s": quantile(t, 0.8),
                              "samples": len(t), "timer": "perf_counter (whole job)",
                              "final_train_loss": losses[impl.name], "step_kind": kinds[impl.name],
                              **measure_memory(lambda impl=impl: job(impl, 1))}
    return results


# ----------------------------------------------------------------------------------------------
# latency
# ----------------------------------------------------------------------------------------------
def _compressed_net(backend: Optional[str], device: str, dtype):
    """A CompressedNet (encoder 784-128-64-32 + head 32 -> 10) and what it is."""
    from aecomp.models import Autoencoder

    ae = Autoencoder(AE_DIMS, output="sigmoid", backend=backend)
    try:
        from aecomp.compress import CompressedNet
    except ImportError:  # aecomp.compress not there: the stand-in the issue names
        from aecomp.nn import FusedLinear

        net = nn.Sequential(ae.encoder, FusedLinear(AE_DIMS[-1], HEAD_CLASSES, backend=backend))
        return net.to(device=device, dtype=dtype).eval(), "stand-in: Autoencoder.encoder + FusedLinear(32, 10)"
    net = CompressedNet.from_autoencoder(ae, num_classes=HEAD_CLASSES, mode="frozen", backend=backend)
    return net.to(device=device, dtype=dtype).eval(), "CompressedNet.from_autoencoder (one ops.mlp call)"


def _plain_copy(net) -> nn.Module:
    if hasattr(net, "to_sequential"):
        return net.to_sequential().eval()
    enc, head = net[0], net[1]
    return nn.Sequential(*enc.to_sequential(), head.to_linear()).eval()


def latency_cases(s: Settings) -> List[Case]:
    cases = []
    dims = AE_DIMS + (HEAD_CLASSES,)
    for dname in s.dtypes:
        dtype = DTYPES[dname]
        for batch in s.latency_batches:
            case = Case("latency", "latency", "infer", "-".join(map(str, dims)), batch, dname,
                        flops=chain_flops(dims, batch, False), grad=False, priority=_priority(s, dname, batch) + 3)

            def runner(backend, mode=None, batch=batch, dtype=dtype, case=case):
                torch.manual_seed(s.seed)  # the same weights for every implementation
                net, what = _compressed_net(backend, s.device, dtype)
                case.params["model"] = what
                x = torch.rand(batch, AE_DIMS[0], device=s.device).to(dtype)
                if backend is not None:
                    return lambda: net(x)
                plain = _plain_copy(net)
                f = plain if mode is None else compiled(plain, s, mode)
                return lambda: f(x)

            for be in s.backends:
                case.impls.append(Impl(f"aecomp:{be}", lambda be=be, runner=runner: runner(be)))
            case.impls += baseline_impls(s, lambda mode, runner=runner: runner(None, mode), compile_est=20.0)
            cases.append(case)
    return cases


# ----------------------------------------------------------------------------------------------
# inference (GPU): the packed CompressedNet
# ----------------------------------------------------------------------------------------------
PACKED_DIMS = AE_DIMS + (HEAD_CLASSES,)
PACKED_ACTS = ("relu", "relu", "none", "none")  # encoder 784-128-64-32, head 32 -> 10 (logits)
PACKED_KINDS = ("int8", "shared4")


def packed_reference_net(kind: str, seed: int = 0):
    """``(PackedChain, float32 weights, float32 biases)`` of the reference CompressedNet with
    packed weights. ``int8``: per-channel int8 (``quantize_per_channel``). ``shared4``: each
    layer's weights replaced by the nearest of 16 shared values (its 16 quantiles; a stand-in
    for k-means, the same 4-bit layout and the same kernel work). The float weights are exactly
    the packed ones dequantized, so every implementation computes the same function."""
    from aecomp.compress.quantize import dequantize_per_channel, quantize_per_channel
    from aecomp.ops import PackedChain, codebook_layer, int8_layer

    g = torch.Generator().manual_seed(seed)
    layers, ws, bs = [], [], []
    for (k, n), act in zip(zip(PACKED_DIMS[:-1], PACKED_DIMS[1:]), PACKED_ACTS):
        w = torch.randn(n, k, generator=g) / math.sqrt(k)
        b = torch.rand(n, generator=g) * 0.2 - 0.1
        if kind == "int8":
            q, scale = quantize_per_channel(w)
            layers.append(int8_layer(q, scale, b, act))
            w = dequantize_per_channel(q, scale)
        elif kind == "shared4":
            table = torch.quantile(w.reshape(-1), torch.linspace(0.02, 0.98, 16))
            codes = (w.reshape(-1, 1) - table).abs().argmin(dim=1).reshape(n, k).to(torch.uint8)
            layers.append(codebook_layer(codes, table, None, b, act))
            w = table[codes.long()]
        else:
            raise ValueError(f"packed_reference_net: kind must be one of {', '.join(PACKED_KINDS)}, got {kind!r}")
        ws.append(w)
        bs.append(b)
    return PackedChain(layers), ws, bs


def inference_cases(s: Settings) -> List[Case]:
    """GPU only: the packed CompressedNet (see the module table). On the CPU the packed path is
    timed by ``benchmarks/bench_inference.py`` (against onnxruntime, one thread)."""
    if s.device != "cuda":
        return []
    from aecomp import ops
    from aecomp._backend import get_backend

    backends = [be for be in s.backends if "packed_mlp" in get_backend(be).ops]
    cases = []
    for kind in PACKED_KINDS:
        for dname in s.dtypes:
            dtype = DTYPES[dname]
            for batch in s.packed_batches:
                case = Case("inference", "packed_mlp", "infer", "-".join(map(str, PACKED_DIMS)) + f" {kind}", batch,
                            dname, flops=chain_flops(PACKED_DIMS, batch, False), grad=False,
                            params={"weights": kind, "activations": list(PACKED_ACTS)},
                            priority=_priority(s, dname, batch) + 1 + 0.1 * PACKED_KINDS.index(kind))
                data = case.cache

                def inputs(kind=kind, batch=batch, dtype=dtype, data=data):
                    if not data:
                        chain, ws, bs = packed_reference_net(kind, s.seed)
                        data["chain"] = chain
                        data["ws"] = [w.to(device=s.device, dtype=dtype) for w in ws]
                        data["bs"] = [b.to(device=s.device, dtype=dtype) for b in bs]
                        data["x"] = torch.rand(batch, PACKED_DIMS[0], device=s.device).to(dtype)
                    return data

                def packed(be, inputs=inputs):
                    d = inputs()
                    return lambda: ops.packed_mlp(d["x"], d["chain"], backend=be)

                def eager(mode, inputs=inputs):
                    d = inputs()
                    f = eager_chain if mode is None else compiled(eager_chain, s, mode)
                    return lambda: f(d["x"], d["ws"], d["bs"], PACKED_ACTS)

                for be in backends:
                    case.impls.append(Impl(f"aecomp:{be}", lambda be=be, packed=packed: packed(be)))
                case.impls += baseline_impls(s, eager, compile_est=20.0)
                cases.append(case)
    return cases


def _priority(s: Settings, dname: str, batch: int) -> float:
    """GPU: bfloat16 and the largest batch first (the numbers that matter most there). The
    dtype's step (1) is smaller than a phase's (run.PHASE_WEIGHT, 3): the cheap eager+aecomp pass
    of a float32 case comes before the compile pass of a bfloat16 one."""
    if s.device != "cuda":
        return 0.0
    return (0 if dname == "bfloat16" else 1) - math.log2(max(batch, 1)) / 20


BUILDERS = {
    "op": (linear_act_cases, mse_cases),
    "chain": (chain_cases,),
    "train_step": (train_step_cases, usual_loop_cases),
    "train_job": (train_job_cases,),
    "latency": (latency_cases,),
    "inference": (inference_cases,),
}


def build_cases(groups: Sequence[str], settings: Settings, train_step_batches: Sequence[int]) -> List[Case]:
    cases: List[Case] = []
    for group in GROUPS:
        if group not in groups:
            continue
        for builder in BUILDERS[group]:
            if group == "train_step":
                sub = Settings(**{**settings.__dict__, "batches": train_step_batches})
                cases += builder(sub)
            elif settings.device == "cpu":
                # bfloat16 on the CPU is mixed precision: only the training step and the usual loop have it
                dtypes = [d for d in settings.dtypes if d != "bfloat16"] or ["float32"]
                cases += builder(Settings(**{**settings.__dict__, "dtypes": dtypes[:1] if group == "latency"
                                             else dtypes}))
            else:
                cases += builder(settings)
    return cases
