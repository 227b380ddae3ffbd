"""ONNX export of a CompressedNet and of an autoencoder's two halves, checked in onnxruntime."""
from __future__ import annotations

import builtins

import pytest
import torch

from aecomp import data, models
from aecomp.compress import CompressedNet, fit_classifier
from aecomp.compress.pipeline import fit_autoencoder

pytest.importorskip("onnx", reason="pip install onnx onnxruntime")
pytest.importorskip("onnxruntime", reason="pip install onnx onnxruntime")
pytest.importorskip("onnxscript", reason="pip install onnxscript")

from aecomp.compress.export import (  # noqa: E402
    MissingDependencyError,
    check_onnx,
    encoder_decoder_paths,
    export_autoencoder,
    export_onnx,
    onnx_ops,
    require_onnx,
    run_onnx,
)

STANDARD_OPS = {"Gemm", "MatMul", "Add", "Relu", "Sigmoid"}
TOL = 1e-5  # float32: onnxruntime's Gemm against torch's addmm, same math, different summation order


@pytest.fixture(scope="module")
def digits():
    return data.load("digits", test_fraction=0.2, seed=0)


@pytest.fixture(scope="module")
def trained(digits):
    tr, va, _ = digits
    torch.manual_seed(0)
    ae = models.Autoencoder([64, 32, 8], output="sigmoid")
    fit_autoencoder(ae, tr, va, epochs=3, lr=1e-2, batch_size=64, seed=0)
    net = CompressedNet.from_autoencoder(ae, 10, mode="replace", head_hidden=(16,))
    fit_classifier(net, tr.x, tr.y, epochs=2, lr=3e-3)
    return ae, net


def test_compressed_net_exports_to_standard_ops_and_matches(tmp_path, digits, trained):
    _, net = trained
    te = digits.test
    path = export_onnx(net, tmp_path / "net.onnx", te.x[:2])
    ops = onnx_ops(path)
    assert set(ops) <= STANDARD_OPS, ops
    assert ops.count("Relu") == 2 and ops.count("Gemm") + ops.count("MatMul") == 4
    assert check_onnx(path, net, te.x) <= TOL  # the whole test split, dynamic batch 359
    assert run_onnx(path, te.x[:1]).shape == (1, 10)  # batch 1 too


def test_autoencoder_exports_as_encoder_and_decoder(tmp_path, digits, trained):
    ae, _ = trained
    te = digits.test
    enc, dec = export_autoencoder(ae, tmp_path / "ae.onnx", te.x[:2])
    assert (enc, dec) == encoder_decoder_paths(tmp_path / "ae.onnx")
    assert enc.name == "ae.encoder.onnx" and dec.name == "ae.decoder.onnx"
    assert set(onnx_ops(enc)) <= STANDARD_OPS and "Sigmoid" not in onnx_ops(enc)
    assert onnx_ops(dec)[-1] == "Sigmoid" and set(onnx_ops(dec)) <= STANDARD_OPS
    with torch.no_grad():
        z = ae.encode(te.x)
    assert check_onnx(enc, ae.encode, te.x) <= TOL
    assert check_onnx(dec, ae.decode, z) <= TOL
    # sender -> receiver: the two files chained give the reconstruction
    x_hat = run_onnx(dec, run_onnx(enc, te.x))
    with torch.no_grad():
        assert float((x_hat - ae(te.x)).abs().max()) <= TOL


def test_a_non_mlp_autoencoder_exports_through_the_reference_backend(tmp_path):
    import aecomp

    ae = models.VAE([64, 16, 4]).eval()
    x = torch.rand(5, 64)
    enc, dec = export_autoencoder(ae, tmp_path / "vae.onnx")
    with aecomp.use_backend("reference"):
        assert check_onnx(enc, ae.encode, x) <= TOL
        assert check_onnx(dec, ae.decode, ae.encode(x)) <= TOL
    assert not any(op.startswith("aecomp") for op in onnx_ops(enc) + onnx_ops(dec))


def test_missing_onnx_names_the_package(monkeypatch):
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "onnxruntime":
            raise ImportError("No module named 'onnxruntime'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    require_onnx()  # export alone needs no runtime
    with pytest.raises(MissingDependencyError, match="pip install onnxruntime"):
        require_onnx(runtime=True)


# ------------------------------------------------------------------ a user's accelerated model
class _UserAutoencoder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = torch.nn.Sequential(torch.nn.Linear(20, 12), torch.nn.ReLU(), torch.nn.Linear(12, 6))
        self.decoder = torch.nn.Sequential(torch.nn.Linear(6, 12), torch.nn.ReLU(), torch.nn.Linear(12, 20),
                                           torch.nn.Sigmoid())

    def forward(self, x):
        return self.decoder(self.encoder(x))


@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "torchscript"])
@pytest.mark.parametrize("batched", [False, True], ids=["2d", "3d"])
def test_accelerated_user_model_exports_with_the_standard_call(tmp_path, dynamo, batched):
    """torch.onnx.export of an accelerate()d model, no extra arguments: standard ONNX ops only,
    onnxruntime gives the model's outputs."""
    import warnings

    import onnx

    import aecomp

    torch.manual_seed(0)
    plain = _UserAutoencoder().eval()
    model = aecomp.accelerate(plain)
    x = torch.rand(2, 5, 20) if batched else torch.rand(5, 20)
    path = str(tmp_path / "model.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), path, dynamo=dynamo)
    ops_used = {n.op_type for n in onnx.load(path).graph.node}
    assert ops_used <= STANDARD_OPS | {"Transpose", "Reshape", "Constant", "Shape", "Concat", "Gather",
                                        "Unsqueeze", "Identity"}, ops_used
    assert {"Relu", "Sigmoid"} <= ops_used and ops_used & {"Gemm", "MatMul"}
    import onnxruntime as ort

    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    (got,) = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    torch.testing.assert_close(torch.from_numpy(got), plain(x).detach(), rtol=TOL, atol=TOL)


def test_fused_mse_loss_exports(tmp_path):
    import onnx

    import aecomp

    class WithLoss(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Linear(6, 6), torch.nn.Sigmoid())
            self.loss = torch.nn.MSELoss()

        def forward(self, x):
            return self.loss(self.net(x), x)

    model = aecomp.accelerate(WithLoss()).eval()
    x = torch.rand(4, 6)
    path = str(tmp_path / "loss.onnx")
    torch.onnx.export(model, (x,), path)
    import onnxruntime as ort

    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    (got,) = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    torch.testing.assert_close(torch.tensor(got), model(x).detach(), rtol=TOL, atol=TOL)
    assert "aecomp" not in {n.domain for n in onnx.load(path).graph.node}


class _ScriptedChains(torch.nn.Module):
    """Calls the chain ops by name (a TorchScript user): exercises their TorchScript symbolics."""

    def __init__(self):
        super().__init__()
        self.w0 = torch.nn.Parameter(torch.randn(4, 6))
        self.w1 = torch.nn.Parameter(torch.randn(3, 4))
        self.b1 = torch.nn.Parameter(torch.randn(3))
        self.w2 = torch.nn.Parameter(torch.randn(6, 3))

    def forward(self, x):
        y = torch.ops.aecomp.mlp(x, [self.w0, self.w1], [None, self.b1], "relu,sigmoid")
        loss = torch.ops.aecomp.mlp_mse_loss(x, [self.w0, self.w1, self.w2], [None, self.b1, None],
                                             "relu,sigmoid,none", x, "sum")
        return y, loss


def test_scripted_chain_ops_export_with_the_torchscript_exporter(tmp_path):
    import warnings

    import onnxruntime as ort

    import aecomp  # noqa: F401  (registers the ops and their ONNX symbolics)

    model = torch.jit.script(_ScriptedChains())
    x = torch.rand(5, 6)
    path = str(tmp_path / "chains.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), path, dynamo=False)
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    for g, want in zip(got, model(x)):
        torch.testing.assert_close(torch.from_numpy(g).reshape(want.shape), want.detach(), rtol=TOL, atol=TOL * 40)


# ---------------------------------------------------------------------- issue 23 item 11: the CLI's default check
def _lenet_run(root, names=("a",), scale=8.0):
    """A compress-style folder of LeNet-300-100 (784 inputs) checkpoints whose weights are scaled up,
    as trained MNIST weights are: large logits, float32 differences above 1e-5."""
    from aecomp.compress.baselines import lenet_300_100
    from aecomp.compress.net import classifier_config
    from aecomp.train.checkpoint import save_checkpoint

    for i, name in enumerate(names):
        torch.manual_seed(i)
        net = lenet_300_100(784, 10)
        with torch.no_grad():
            for p in net.parameters():
                p.mul_(scale)
        save_checkpoint(root / "checkpoints" / name, 1, model_state=net.state_dict(),
                        state={"model_config": classifier_config(net),
                               "input_scaling": {"kind": "global", "shift": 0.0, "scale": 255.0}})
    return root


def test_default_tolerance_is_the_float32_error_bound_and_grows_with_fan_in(tmp_path, capsys):
    """Before: a fixed --tolerance 1e-5, which a 784-input network's ordinary float32 differences
    exceed (exit 1 after writing the files)."""
    from aecomp.cli import main
    from aecomp.compress.export import float32_error_bound

    run = _lenet_run(tmp_path / "run")
    assert main(["export", str(run), "--out", str(tmp_path / "onnx") + "/"]) == 0, capsys.readouterr().err
    line = capsys.readouterr().out.strip()
    diff = float(line.rsplit(" ", 1)[1])
    assert diff > 1e-5, line  # what the old default refused
    assert main(["export", str(run), "--out", str(tmp_path / "strict") + "/", "--tolerance", "1e-9"]) == 1
    capsys.readouterr()
    # the bound grows with the fan-in: the same sums |W| |x| over 64 and over 784 inputs, sqrt(K + 1)
    torch.manual_seed(0)
    w64, x64 = torch.randn(10, 64), torch.rand(16, 64)
    x784 = x64.repeat(1, 13)[:, :784]
    w784 = w64.repeat(1, 13)[:, :784] * (w64.abs() @ x64.T).sum() / (w64.repeat(1, 13)[:, :784].abs() @ x784.T).sum()
    b64 = float32_error_bound([(w64, None, "none")], x64)
    b784 = float32_error_bound([(w784, None, "none")], x784)
    torch.testing.assert_close((b784 / b64).mean().item(), (785 / 65) ** 0.5, rtol=0.05, atol=0)


def test_a_failed_export_leaves_no_files(tmp_path, capsys, monkeypatch):
    from aecomp.cli import main
    from aecomp.compress import export as export_mod

    run = _lenet_run(tmp_path / "run", names=("a", "b"))
    out = tmp_path / "made" / "onnx"
    # 1. the check fails (onnxruntime off by more than the bound): every file written is removed,
    # and the folders the command made
    real = export_mod.run_onnx
    monkeypatch.setattr(export_mod, "run_onnx", lambda path, x: real(path, x) + 0.05)
    assert main(["export", str(run), "--out", f"{out}/"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "beyond the float32 error bound" in err[0] and "no file is left" in err[0]
    assert not (tmp_path / "made").exists()
    monkeypatch.setattr(export_mod, "run_onnx", real)
    # 2. the exporter fails on the second model: the first one's file goes too; a folder that was
    # there before stays, with what it held
    out.mkdir(parents=True)
    (out / "mine.txt").write_text("keep")
    calls = []
    real_export = export_mod.export_onnx

    def flaky(model, path, *a, **k):
        calls.append(path)
        if len(calls) == 2:
            raise RuntimeError("exporter broke")
        return real_export(model, path, *a, **k)

    monkeypatch.setattr(export_mod, "export_onnx", flaky)
    assert main(["export", str(run), "--out", f"{out}/"]) == 1
    assert "exporter broke" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["mine.txt"]
