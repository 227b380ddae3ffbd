"""ONNX export: a CompressedNet (or MLP classifier) as one file, an autoencoder as two.

The fused ops (``aecomp::linear_act`` and friends) are custom torch ops that no ONNX runtime
knows, so they are not exported as they are. A ``CompressedNet`` / ``FusedMLP`` is exported
through its plain-torch twin (``to_sequential()``: ``nn.Linear`` + ``nn.ReLU``/``nn.Sigmoid``,
the same state_dict), which becomes the standard operators ``Gemm`` + ``Relu``/``Sigmoid``.
Any other autoencoder (conv, recurrent, VAE) is traced with ``aecomp.use_backend("reference")``,
under which every fused op is its plain-torch definition.

Exporter: ``torch.onnx.export(..., dynamo=True)`` (``torch.export`` + onnxscript, the default
since torch 2.9; it runs offline). The legacy TorchScript exporter also works in torch 2.13 but
is deprecated. The batch dimension is dynamic (input ``x``, output ``y``; batch size any >= 1);
opset 20 (the exporter's default in torch 2.13). One self-contained file
(``external_data=False``).

An autoencoder is split into what each side of a link runs: the sender's
``<stem>.encoder.onnx`` (``x -> z``) and the receiver's ``<stem>.decoder.onnx`` (``z -> x_hat``).

:func:`check_onnx` runs a file in onnxruntime and returns the largest absolute difference from
the torch model (float32); the tests require <= 1e-5 on the test split.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from pathlib import Path
from typing import Callable, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from ..nn import FusedMLP
from .net import CompressedNet

__all__ = [
    "MissingDependencyError",
    "check_onnx",
    "export_autoencoder",
    "export_int8_onnx",
    "export_onnx",
    "onnx_ops",
    "require_onnx",
    "run_onnx",
]

PathLike = Union[str, os.PathLike]
INSTALL_HINT = "pip install onnx onnxruntime"


class MissingDependencyError(ImportError):
    """A package that ONNX export or checking needs is not installed; the message says how to get it."""


def require_onnx(runtime: bool = False) -> None:
    """Raise :class:`MissingDependencyError` naming the package to install when onnx (and, with
    ``runtime=True``, onnxruntime) or onnxscript (the exporter's dependency) is missing."""
    missing = []
    for name in ("onnx", "onnxscript") + (("onnxruntime",) if runtime else ()):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise MissingDependencyError(f"ONNX export needs {', '.join(missing)}, which is not installed: "
                                     f"pip install {' '.join(missing)}  (all of it: {INSTALL_HINT} onnxscript)")


class _Plain(nn.Module):
    """A plain-torch function ``x -> fn(x)`` with an argument named ``x`` (the ONNX input name)."""

    def __init__(self, body: nn.Module, method: Optional[str] = None) -> None:
        super().__init__()
        self.body = body
        self.method = method

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return getattr(self.body, self.method)(x) if self.method else self.body(x)


def _twin(model: nn.Module) -> Tuple[nn.Module, bool]:
    """(plain-torch module, needs the reference backend while tracing)."""
    if isinstance(model, (CompressedNet, FusedMLP)):
        return _Plain(model.to_sequential().eval()), False
    return _Plain(model.eval()), True


@contextlib.contextmanager
def _quiet_exporter():
    """The exporter logs torchvision notes and prints progress; keep the terminal clean."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.onnx._internal.exporter._registration",
                                              "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


def _export(module: nn.Module, example: torch.Tensor, path: PathLike, reference_backend: bool) -> Path:
    require_onnx()
    from .. import use_backend

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if example.shape[0] < 2:  # a batch of 1 would be specialised to 1
        example = example.expand(2, *example.shape[1:]).contiguous()
    batch = torch.export.Dim("batch", min=1)
    ctx = use_backend("reference") if reference_backend else contextlib.nullcontext()
    with ctx, _quiet_exporter(), torch.no_grad():
        program = torch.onnx.export(module, (example,), None, dynamo=True, verbose=False, external_data=False,
                                    input_names=["x"], output_names=["y"], dynamic_shapes={"x": {0: batch}})
        program.save(str(path), external_data=False)
    return path


def _example(model: nn.Module, example: Optional[torch.Tensor]) -> torch.Tensor:
    if example is not None:
        return example.detach().float()
    if isinstance(model, CompressedNet):
        return torch.rand(2, model.in_features)
    if isinstance(model, FusedMLP):
        return torch.rand(2, model.dims[0])
    shape = getattr(model, "input_shape", None)
    if shape is None or any(s is None for s in shape):
        raise ValueError(f"export_onnx: give an example input for a {type(model).__name__} (its input shape is not fixed)")
    return torch.rand(2, *shape)


def export_onnx(model: nn.Module, path: PathLike, example: Optional[torch.Tensor] = None) -> Path:
    """Export a CompressedNet / FusedMLP classifier (``x -> logits``) to one ONNX file."""
    plain, ref = _twin(model)
    return _export(plain, _example(model, example), path, ref)


def encoder_decoder_paths(path: PathLike) -> Tuple[Path, Path]:
    """``model.onnx`` -> (``model.encoder.onnx``, ``model.decoder.onnx``)."""
    p = Path(path)
    stem = p.name[:-len(".onnx")] if p.name.endswith(".onnx") else p.name
    return p.with_name(stem + ".encoder.onnx"), p.with_name(stem + ".decoder.onnx")


def export_autoencoder(autoencoder: nn.Module, path: PathLike,
                       example: Optional[torch.Tensor] = None) -> Tuple[Path, Path]:
    """Export the encoder (``x -> z``) and the decoder (``z -> x_hat``) as two ONNX files next
    to ``path`` (see :func:`encoder_decoder_paths`); returns their paths."""
    enc_path, dec_path = encoder_decoder_paths(path)
    x = _example(autoencoder, example)
    autoencoder = autoencoder.eval()
    if isinstance(getattr(autoencoder, "encoder", None), FusedMLP) and type(autoencoder).__name__ == "Autoencoder":
        enc, dec, ref = _Plain(autoencoder.encoder.to_sequential().eval()), \
            _Plain(autoencoder.decoder.to_sequential().eval()), False
    else:
        enc, dec, ref = _Plain(autoencoder, "encode"), _Plain(autoencoder, "decode"), True
    from .. import use_backend

    with torch.no_grad(), (use_backend("reference") if ref else contextlib.nullcontext()):
        z = enc(x)
    _export(enc, x, enc_path, ref)
    _export(dec, z, dec_path, ref)
    return enc_path, dec_path


def run_onnx(path: PathLike, x: torch.Tensor) -> torch.Tensor:
    """Run an exported file in onnxruntime (CPU) on ``x``; float32 out."""
    require_onnx(runtime=True)
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return torch.from_numpy(session.run(None, {name: x.detach().float().cpu().numpy()})[0])


@torch.no_grad()
def check_onnx(path: PathLike, fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> float:
    """``max |onnxruntime(path)(x) - fn(x)|`` in float32."""
    got = run_onnx(path, x)
    want = fn(x.float()).float()
    if got.shape != want.shape:
        raise AssertionError(f"{path}: onnxruntime gave shape {list(got.shape)}, torch {list(want.shape)}")
    return float((got - want).abs().max()) if got.numel() else 0.0


def onnx_ops(path: PathLike) -> Sequence[str]:
    """The operator types in an ONNX file's graph, in order."""
    require_onnx()
    import onnx

    return [node.op_type for node in onnx.load(str(path)).graph.node]


# ---------------------------------------------------------------------- int8 ONNX (integer operators)
# An int8 classifier (per-channel int8 weights, see aecomp.compress.quantize) as ONNX that
# onnxruntime runs in int8. Per layer, with h the layer's float input:
#
#     hq, hs, hz = DynamicQuantizeLinear(h)          uint8, per tensor (scale, zero point)
#     acc        = MatMulInteger(hq, Q^T, hz, 0)      int32, exact: sum_k (hq - hz) q
#     y          = act(Cast<float>(acc) * (hs * s) + b)
#
# Why integer operators and not QDQ: a QDQ file needs a fixed activation scale per layer
# (calibration), or it runs DequantizeLinear on the weights and a float MatMul; dynamic
# quantization (DynamicQuantizeLinear + MatMulInteger) keeps the weights int8 in the file and
# in onnxruntime's memory, needs no calibration data, and onnxruntime fuses the chain into its
# DynamicQuantizeMatMul kernel (u8 x s8 GEMM). It is also exactly the integer arithmetic of our
# packed kernel's int8 path (csrc/cpu/packed_mlp.cpp), so the two agree to float rounding.
INT8_OPSET = 17


def _int8_layers(source):
    """``([(q int8 [N, K], scale [N], bias or None, activation)], config)`` of an int8 model file
    (read by its format's one reader, ``modelfile.read_model``) or PackedNet."""
    from .share import Int8Linear, PackedNet

    if isinstance(source, PackedNet):
        net = source
    else:
        from .modelfile import read_model

        stored = read_model(source)
        if not hasattr(stored, "packed_net"):
            raise ValueError(f"{os.fspath(source)}: an {stored.meta.name} file, not a classifier")
        net = stored.packed_net()
    out = []
    for i, layer in enumerate(net.layers):
        if not isinstance(layer, Int8Linear):
            raise ValueError(f"export_int8_onnx: layer {i} is a {type(layer).__name__}; int8 ONNX needs int8 layers "
                             f"(shared-weight models export as float ONNX)")
        out.append((layer.q, layer.scale, layer.bias, layer.activation))
    return out, net.config


def export_int8_onnx(source, path: PathLike) -> Path:
    """Write an int8 classifier (an int8 model file or an ``aecomp.compress.share.PackedNet`` of
    int8 layers) as integer-operator ONNX (see the comment above); input ``x``, output ``y``,
    dynamic batch."""
    require_onnx()
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    layers, _ = _int8_layers(source)
    nodes, inits = [], []
    k0 = int(layers[0][0].shape[1])
    h = "x"
    inits.append(numpy_helper.from_array(np.zeros((), dtype=np.int8), "w_zero"))
    for i, (q, s, b, act) in enumerate(layers):
        inits.append(numpy_helper.from_array(q.numpy().T.copy(), f"q{i}"))
        inits.append(numpy_helper.from_array(s.float().numpy(), f"s{i}"))
        nodes.append(helper.make_node("DynamicQuantizeLinear", [h], [f"h{i}_q", f"h{i}_s", f"h{i}_z"]))
        nodes.append(helper.make_node("MatMulInteger", [f"h{i}_q", f"q{i}", f"h{i}_z", "w_zero"], [f"acc{i}"]))
        nodes.append(helper.make_node("Cast", [f"acc{i}"], [f"accf{i}"], to=TensorProto.FLOAT))
        nodes.append(helper.make_node("Mul", [f"h{i}_s", f"s{i}"], [f"m{i}"]))
        nodes.append(helper.make_node("Mul", [f"accf{i}", f"m{i}"], [f"lin{i}"]))
        cur = f"lin{i}"
        if b is not None:
            inits.append(numpy_helper.from_array(b.float().numpy(), f"b{i}"))
            nodes.append(helper.make_node("Add", [cur, f"b{i}"], [f"pre{i}"]))
            cur = f"pre{i}"
        last = i == len(layers) - 1
        out = "y" if last else f"a{i}"
        if act == "relu":
            nodes.append(helper.make_node("Relu", [cur], [out]))
        elif act == "sigmoid":
            nodes.append(helper.make_node("Sigmoid", [cur], [out]))
        else:
            nodes.append(helper.make_node("Identity", [cur], [out]))
        h = out
    n_out = int(layers[-1][0].shape[0])
    graph = helper.make_graph(nodes, "aecomp_int8", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", k0])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", n_out])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", INT8_OPSET)],
                              producer_name="aecomp")
    model.ir_version = min(model.ir_version, 10)
    onnx.checker.check_model(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path
