"""The bf16 training step on the CPU's matrix engine (csrc/cpu/train_step_bf16.cpp), against the
float64 reference with the tolerances of its error model (the file's header comment):

* loss, and every gradient (read through SGD lr=1: p_new = p - g), on odd shapes and batches:
  equal, up to float32 sums (EMU in tests/_bf16_reference.py), to the float64 emulation of the documented
  bf16 algorithm (every GEMM operand rounded to bf16 where the kernels round it), and against
  the exact float64 step within the per-element bounds of tests/_bf16_reference.py: each GEMM operand rounded to bf16
  once (u = 2^-8), so an element is within c u of its sum of |terms|, and the errors handed
  down from other layers propagated to first order (ReLUs near 0: their masks may flip); the
  typical error is ~ u sqrt(K) |term|, well inside.
* Adam: the state the step leaves (exp_avg = (1 - b1) g, exp_avg_sq = (1 - b2) g^2, step) from
  the same gradients;
* a training curve: bf16 reaches the float32 final loss within 5% (the stated margin);
* FusedStep / Trainer / CLI plumbing: precision="bf16", resume, export; the microkernels where
  the matrix engine cannot run bf16 (subprocess with ONEDNN_MAX_CPU_ISA=AVX2).
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _bf16_reference import EMU, bf16_emulation, chain_reference  # noqa: E402  (tests/_bf16_reference.py)
from aecomp import _ext  # noqa: E402
from aecomp.train import FusedStep
from aecomp.train.fused import bf16_engine

C = _ext.load()[0]
pytestmark = pytest.mark.skipif(C is None or not hasattr(C, "mlp_mse_train_step_bf16"), reason="aecomp._C not built")
needs_bf16 = pytest.mark.skipif(not bf16_engine(), reason="no bf16 matrix engine on this CPU")


class Chain(torch.nn.Module):
    """A chain autoencoder of FusedLinear layers (what FusedStep takes), from explicit dims/acts."""

    def __init__(self, dims, acts):
        super().__init__()
        from aecomp.nn import FusedLinear

        self.layers = torch.nn.ModuleList(
            FusedLinear(k, n, activation=a) for k, n, a in zip(dims[:-1], dims[1:], acts))

    def fused_chain(self):
        return list(self.layers), None

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


def _reference(model, x):
    layers = list(model.layers)
    return chain_reference([l.weight for l in layers], [l.bias for l in layers], [l.activation for l in layers], x)


DIMS = [
    ([37, 19, 8, 19, 37], ["relu", "sigmoid", "relu", "sigmoid"]),
    ([784, 128, 64, 32, 64, 128, 784], ["relu", "relu", "none", "relu", "relu", "sigmoid"]),
    ([6, 3, 6], ["none", "relu"]),
]


@needs_bf16
@pytest.mark.parametrize("batch", [1, 13, 70])
@pytest.mark.parametrize("dims,acts", DIMS, ids=["odd", "reference", "tiny"])
def test_one_step_gradients_against_float64(dims, acts, batch):
    torch.manual_seed(batch + len(dims))
    model = Chain(dims, acts)
    x = torch.rand(batch, dims[0])
    before = [p.detach().clone() for p in model.parameters()]
    r = _reference(model, x)
    layers = list(model.layers)
    e = bf16_emulation([l.weight for l in layers], [l.bias for l in layers], [l.activation for l in layers], x)
    gw, gb, bounds = r["gw"], r["gb"], r["bounds"]
    d, ey = (r["y"] - x.double()).abs(), r["bound_y"]
    loss_bound = (2 * d * ey + ey * ey).mean().item()  # |(d + e)^2 - d^2| averaged
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    fs = FusedStep(model, opt, precision="bf16")
    assert fs.compute_precision(x) == "bf16"
    loss = fs.step(x).item()
    assert abs(loss - r["loss"]) <= loss_bound + 1e-6 * r["loss"]
    assert abs(loss - e["loss"]) <= EMU * e["loss"]
    L = len(model.layers)
    for k, layer in enumerate(model.layers):
        g = (before[2 * k] - layer.weight.detach()).double()  # SGD lr=1: p_new = p - g
        gbias = (before[2 * k + 1] - layer.bias.detach()).double()
        bw, bb = bounds[k]
        # float32 p - g then p - (p - g): the subtraction's rounding, eps32 |p|
        slack_w = 2.0 ** -23 * before[2 * k].double().abs()
        slack_b = 2.0 ** -23 * before[2 * k + 1].double().abs()
        assert ((g - gw[k]).abs() <= bw + slack_w + 1e-30).all(), f"dW_{k} of {L}"
        assert ((gbias - gb[k]).abs() <= bb + slack_b + 1e-30).all(), f"db_{k} of {L}"
        # and exactly the documented bf16 algorithm: float32 sums apart, what its float64 emulation gives
        for got, want in ((g, e["gw"][k]), (gbias, e["gb"][k])):
            assert (got - want).norm() <= EMU * want.norm() + 2.0 ** -23 * before[2 * k].norm(), f"layer {k}"


@needs_bf16
def test_adam_state_from_bf16_gradients():
    torch.manual_seed(3)
    dims, acts = DIMS[0]
    model = Chain(dims, acts)
    x = torch.rand(29, dims[0])
    r = _reference(model, x)
    gw, gb, bounds = r["gw"], r["gb"], r["bounds"]
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.8, 0.9))
    FusedStep(model, opt, precision="bf16").step(x)
    for k, layer in enumerate(model.layers):
        for p, g, e in ((layer.weight, gw[k], bounds[k][0]), (layer.bias, gb[k], bounds[k][1])):
            st = opt.state[p]
            assert float(st["step"]) == 1.0
            # float32 state: one rounding (eps32) of (1 - b1) g and (1 - b2) g^2 beside the bf16 error e of g
            assert ((st["exp_avg"].double() - 0.2 * g).abs() <= 0.2 * e + 2.0 ** -23 * 0.2 * g.abs() + 1e-30).all()
            assert ((st["exp_avg_sq"].double() - 0.1 * g * g).abs()
                    <= 0.1 * (2 * g.abs() * e + e * e) + 2.0 ** -22 * 0.1 * g * g + 1e-30).all()


@needs_bf16
def test_training_curve_reaches_the_float32_loss():
    """Digits autoencoder, 20 epochs: the bf16 final training loss is within 5% of float32's (the
    stated margin: over seeds 0-3 the ratio was 0.97-1.03, on AMX and on AVX512-BF16 alike; two
    trainings that differ in rounding follow different trajectories by that much)."""
    from aecomp import data
    from aecomp.models import Autoencoder
    from aecomp.train import Trainer

    splits = data.load("digits", seed=0)
    finals = {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(0)
        model = Autoencoder((64, 32, 16), output="sigmoid")
        tr = Trainer(model, epochs=20, batch_size=64, lr=3e-3, seed=0, device="cpu", precision=precision,
                     progress=False, log=lambda m: None)
        result = tr.fit(splits.train)
        assert tr.step_kind.startswith("fused")
        finals[precision] = result.history[-1]["train_loss"]
        if precision == "bf16":
            assert tr.compute_precision == "bf16"
    assert finals["bf16"] <= finals["fp32"] * 1.05, finals


def test_precision_is_checked():
    model = Chain([6, 3, 6], ["relu", "sigmoid"])
    with pytest.raises(ValueError, match="precision must be one of fp32, bf16"):
        FusedStep(model, torch.optim.SGD(model.parameters(), lr=0.1), precision="bfloat16")


@needs_bf16
def test_c_entry_refuses_bad_input():
    model = Chain([6, 3, 6], ["relu", "sigmoid"])
    ws = [l.weight for l in model.layers]
    bs = [l.bias for l in model.layers]
    none4 = [None] * 4
    with pytest.raises(ValueError, match="empty batch"):
        C.mlp_mse_train_step_bf16(torch.rand(0, 6), ws, bs, "relu,sigmoid", torch.rand(0, 6), "mean", [], [-1] * 4,
                                  none4, none4, none4, [False] * 4)
    with pytest.raises(ValueError, match="the fused step runs float32 CPU tensors; got x of dtype Double"):
        C.mlp_mse_train_step_bf16(torch.rand(2, 6).double(), [w.double() for w in ws], [b.double() for b in bs],
                                  "relu,sigmoid", torch.rand(2, 6), "mean", [], [-1] * 4, none4, none4, none4,
                                  [False] * 4)
    with pytest.raises(TypeError, match="weights\\[0\\] has dtype torch.float32 but x has dtype torch.float64"):
        C.mlp_mse_train_step_bf16(torch.rand(2, 6).double(), ws, bs, "relu,sigmoid", torch.rand(2, 6), "mean", [],
                                  [-1] * 4, none4, none4, none4, [False] * 4)
    with pytest.raises(ValueError, match="target has shape"):
        C.mlp_mse_train_step_bf16(torch.rand(2, 6), ws, bs, "relu,sigmoid", torch.rand(3, 6), "mean", [], [-1] * 4,
                                  none4, none4, none4, [False] * 4)


_SUB = """
import torch, aecomp._C as C
from aecomp.models import Autoencoder
from aecomp.train import FusedStep
torch.manual_seed(0)
m = Autoencoder((64, 32, 16), output="sigmoid")
fs = FusedStep(m, torch.optim.Adam(m.parameters(), lr=1e-3), precision="bf16")
x = torch.rand(32, 64)
l0 = fs.step(x).item()
for _ in range(20):
    l = fs.step(x).item()
print(C._brgemm_level(), fs.compute_precision(x), l < l0)
"""


def test_without_the_engine_bf16_runs_the_float32_microkernels():
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2"}
    out = subprocess.run([sys.executable, "-c", _SUB], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["none", "fp32", "True"]


@needs_bf16
def test_cli_bf16_run_resumes_bit_identically_and_exports(tmp_path, capsys):
    """`aecomp train --precision bf16`: a run stopped after 2 epochs and resumed to 3 ends with the
    same weights, bit for bit, as 3 epochs in one go; the checkpoint exports to ONNX like an fp32 one."""
    from aecomp.cli import main
    from aecomp.train import checkpoint as ck

    common = ["train", "--data", "digits", "--dims", "64,32,16", "--batch-size", "64", "--precision", "bf16",
              "--no-progress"]
    assert main([*common, "--epochs", "3", "--out", str(tmp_path / "once")]) == 0
    assert "precision bf16 asked, the fused step ran bf16" in capsys.readouterr().err
    assert main([*common, "--epochs", "2", "--out", str(tmp_path / "twice")]) == 0
    assert main(["train", "--out", str(tmp_path / "twice"), "--resume", "--epochs", "3", "--no-progress"]) == 0
    state = ck.latest_checkpoint(tmp_path / "twice" / "checkpoints").state
    assert state["run"]["settings"]["precision"] == "bf16" and state["trainer"]["precision"] == "bf16"
    a, b = ck.load_model(tmp_path / "once"), ck.load_model(tmp_path / "twice")
    for (na, pa), (nb, pb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert na == nb and pa.dtype == torch.float32 and torch.equal(pa, pb), na
    assert main(["export", str(tmp_path / "twice"), "--format", "onnx", "--out", str(tmp_path / "ae.onnx")]) == 0
    assert (tmp_path / "ae.encoder.onnx").exists() and (tmp_path / "ae.decoder.onnx").exists()


@needs_bf16
def test_adam_state_denormals_become_zero():
    """The optimizer runs with denormals as zero (train_step_bf16.cpp, DenormalsAreZero): an
    exp_avg that decays below 2^-126 (a weight whose gradient is 0) is 0, not a slow denormal."""
    torch.manual_seed(0)
    model = Chain([16, 8, 16], ["relu", "sigmoid"])
    with torch.no_grad():
        model.layers[0].bias[3] = -1e4  # hidden unit 3 never fires: its incoming weights get gradient 0
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    fs = FusedStep(model, opt, precision="bf16")
    x = torch.rand(8, 16)
    fs.step(x)
    st = opt.state[model.layers[0].weight]
    assert (st["exp_avg"][3] == 0).all()
    st["exp_avg"][3] = 1.2e-38  # normal; 0.9 of it is a denormal
    fs.step(x)
    assert (st["exp_avg"][3] == 0).all() and (st["exp_avg"][:3] != 0).any()
