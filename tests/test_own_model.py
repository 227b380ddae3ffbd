"""Reading a user's own classifier (module, state_dict, files) and their declared input scaling."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import aecomp
from aecomp.compress.net import CompressedNet
from aecomp.compress.own_model import ModelError, declared_scaling, read_classifier
from aecomp.nn import FusedMLP


def _one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text and text
    return text


def _sequential(features=37, hidden=(23, 11), classes=5, acts=(nn.ReLU, nn.Sigmoid)):
    layers, d = [], features
    for h, a in zip(hidden, acts):
        layers += [nn.Linear(d, h), a()]
        d = h
    layers.append(nn.Linear(d, classes))
    return nn.Sequential(*layers)


def _reference(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x)


# ---------------------------------------------------------------------------------------- modules
def test_sequential_is_read_as_the_same_function_and_left_untouched():
    user = _sequential()
    before = copy.deepcopy(user.state_dict())
    own = read_classifier(user)
    assert isinstance(own.model, FusedMLP)
    assert own.dims == (37, 23, 11, 5) and own.activations == ("relu", "sigmoid", "none")
    x = torch.randn(13, 37)
    # float32: the fused chain and torch's layers differ only in summation order
    torch.testing.assert_close(own.model(x), _reference(user, x), rtol=1e-5, atol=1e-5)
    # a copy: changing it leaves the user's model alone, and reading changed nothing
    with torch.no_grad():
        own.model.layers[0].weight.add_(1.0)
    for k, v in user.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(p.data_ptr() != q.data_ptr() for p in user.parameters() for q in own.model.parameters())
    assert aecomp.compress.classifier_config(own.model) == {"type": "classifier", "dims": [37, 23, 11, 5],
                                                             "activations": ["relu", "sigmoid", "none"]}


def test_training_flag_of_the_users_model_is_kept():
    user = _sequential().train()
    read_classifier(user)
    assert user.training and all(m.training for m in user.modules())


def test_inference_only_layers_are_dropped_and_noted():
    user = nn.Sequential(nn.Flatten(), nn.Linear(20, 9), nn.ReLU(), nn.Dropout(0.3), nn.Identity(),
                         nn.Sequential(nn.Linear(9, 4)), nn.LogSoftmax(dim=1))
    own = read_classifier(user)
    assert own.dims == (20, 9, 4)
    x = torch.randn(6, 20)
    want = _reference(user, x)
    torch.testing.assert_close(F.log_softmax(own.model(x), 1), want, rtol=1e-5, atol=1e-5)
    text = " ".join(own.notes)
    assert "Dropout" in text and "LogSoftmax" in text


def test_fx_traceable_module_with_functional_activations_and_a_layer_without_bias():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = nn.Linear(31, 17)
            self.fc2 = nn.Linear(17, 8, bias=False)
            self.out = nn.Linear(8, 3)

        def forward(self, x):
            return self.out(self.fc2(F.relu(self.fc1(x))).sigmoid())

    user = Net()
    own = read_classifier(user)
    assert own.activations == ("relu", "sigmoid", "none")
    assert any("zero bias" in n and "fc2" in n for n in own.notes)
    x = torch.randn(9, 31)
    torch.testing.assert_close(own.model(x), _reference(user, x), rtol=1e-5, atol=1e-5)


def test_accelerated_fused_and_compressed_models_are_read():
    user = _sequential(features=19, hidden=(7,), classes=3, acts=(nn.ReLU,))
    x = torch.randn(4, 19)
    for m in (aecomp.accelerate(user), FusedMLP.from_sequential(user),
              CompressedNet(FusedMLP([19, 7], "relu"), FusedMLP([7, 3], "none"))):
        own = read_classifier(m)
        torch.testing.assert_close(own.model(x), _reference(m, x), rtol=1e-5, atol=1e-5)


def test_float64_model_is_converted_with_a_note():
    user = _sequential().double()
    own = read_classifier(user)
    assert own.model.layers[0].weight.dtype == torch.float32
    assert any("float64" in n for n in own.notes)
    x = torch.randn(3, 37, dtype=torch.float64)
    torch.testing.assert_close(own.model(x.float()).double(), _reference(user, x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("model, names", [
    (nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2)), ["Conv2d", "BatchNorm2d"]),
    (nn.Sequential(nn.Linear(8, 6), nn.LayerNorm(6), nn.Linear(6, 2)), ["LayerNorm"]),
    (nn.Sequential(nn.Linear(8, 6), nn.Tanh(), nn.Linear(6, 2)), ["Tanh"]),
    (nn.Sequential(nn.Linear(8, 6), nn.LeakyReLU(), nn.Linear(6, 2)), ["LeakyReLU"]),
])
def test_unsupported_layers_are_refused_in_one_line_naming_them(model, names):
    with pytest.raises(ModelError) as exc:
        read_classifier(model)
    text = _one_line(exc)
    assert all(n in text for n in names) and "packed path" in text


def test_linear_subclass_is_refused():
    class LoRALinear(nn.Linear):
        def forward(self, x):
            return super().forward(x) * 2

    with pytest.raises(ModelError) as exc:
        read_classifier(nn.Sequential(LoRALinear(5, 3)))
    assert "LoRALinear" in _one_line(exc)


def test_branching_or_shared_forward_is_refused():
    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(6, 6)
            self.b = nn.Linear(6, 2)

        def forward(self, x):
            return self.b(F.relu(self.a(x)) + x)

    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(6, 6)

        def forward(self, x):
            return self.a(torch.relu(self.a(x)))

    shared = nn.Linear(6, 6)
    for m, word in ((Residual(), "chain"), (Twice(), "twice"), (nn.Sequential(shared, nn.ReLU(), shared), "same")):
        with pytest.raises(ModelError) as exc:
            read_classifier(m)
        assert word in _one_line(exc)


@pytest.mark.parametrize("model, word", [
    (nn.Sequential(nn.ReLU(), nn.Linear(4, 2)), "before the first Linear"),
    (nn.Sequential(nn.Linear(4, 3), nn.Sigmoid(), nn.ReLU(), nn.Linear(3, 2)), "one activation"),
    (nn.Sequential(nn.Linear(4, 3), nn.Softmax(dim=1), nn.Linear(3, 2)), "only at the end"),
    (nn.Sequential(nn.Linear(4, 3), nn.Softmax(dim=0)), "dim=0"),
    (nn.Sequential(nn.Linear(4, 3), nn.Linear(5, 2)), "takes 5 features"),
    (nn.Sequential(nn.Identity()), "no Linear"),
])
def test_chains_that_are_not_one_linear_chain_are_refused(model, word):
    with pytest.raises(ModelError) as exc:
        read_classifier(model)
    assert word in _one_line(exc)


def test_relu_twice_is_one_relu():
    user = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.ReLU(), nn.Linear(4, 2))
    own = read_classifier(user)
    assert own.activations == ("relu", "none")


def test_activations_given_for_a_module_must_agree():
    with pytest.raises(ModelError) as exc:
        read_classifier(_sequential(), activations="relu,relu,none")
    assert "disagrees" in _one_line(exc)
    assert read_classifier(_sequential(), activations="relu,sigmoid,none").dims[0] == 37


# ---------------------------------------------------------------------------------------- state dicts and files
def test_state_dict_needs_its_activations():
    sd = _sequential().state_dict()
    with pytest.raises(ModelError) as exc:
        read_classifier(sd)
    assert "--activations" in _one_line(exc) and "3 here" in str(exc.value)
    for bad in ("relu,none", "relu,tanh,none", ""):
        with pytest.raises(ModelError) as exc:
            read_classifier(sd, activations=bad)
        _one_line(exc)
    user = _sequential()
    own = read_classifier(user.state_dict(), activations="relu,sigmoid,none")
    x = torch.randn(5, 37)
    torch.testing.assert_close(own.model(x), _reference(user, x), rtol=1e-5, atol=1e-5)
    assert not own.notes
    # a last activation is legal (nothing in a state_dict says otherwise) but said in the notes
    assert any("last layer applies relu" in n for n in read_classifier(sd, activations="relu,sigmoid,relu").notes)


def test_state_dict_with_norm_or_conv_tensors_is_refused():
    sd = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm1d(2), nn.Linear(2, 2)).state_dict()
    with pytest.raises(ModelError) as exc:
        read_classifier(sd, activations="relu,relu,none")
    text = _one_line(exc)
    assert "convolution" in text and "normalisation" in text


def test_safetensors_file_with_sorted_keys_keeps_the_layer_order(tmp_path):
    from safetensors.torch import save_file

    # 12 layers: alphabetical order would put "10" before "2"; the file stores keys sorted
    dims = [29] + [13] * 11 + [4]
    user = nn.Sequential(*[m for a, b in zip(dims[:-1], dims[1:]) for m in (nn.Linear(a, b), nn.ReLU())][:-1])
    path = tmp_path / "mine.safetensors"
    save_file({k: v.contiguous() for k, v in user.state_dict().items()}, str(path))
    acts = ",".join(["relu"] * 11 + ["none"])
    own = read_classifier(path, activations=acts)
    assert own.dims == tuple(dims)
    x = torch.randn(3, 29)
    torch.testing.assert_close(own.model(x), _reference(user, x), rtol=1e-5, atol=1e-5)


def test_pt_files(tmp_path):
    user = _sequential()
    sd_path = tmp_path / "sd.pt"
    torch.save(user.state_dict(), sd_path)
    own = read_classifier(str(sd_path), activations="relu,sigmoid,none")
    x = torch.randn(2, 37)
    torch.testing.assert_close(own.model(x), _reference(user, x), rtol=1e-5, atol=1e-5)
    ckpt = tmp_path / "ckpt.pth"
    torch.save({"epoch": 3, "model_state_dict": user.state_dict()}, ckpt)
    assert read_classifier(ckpt, activations="relu,sigmoid,none").dims == own.dims
    whole = tmp_path / "whole.pt"
    torch.save(user, whole)
    with pytest.raises(ModelError) as exc:
        read_classifier(whole)
    assert "pickled" in _one_line(exc)


@pytest.mark.parametrize("name, content, word", [
    ("missing.safetensors", None, "no such file"),
    ("model.onnx", b"x", "unknown model file type"),
    ("broken.safetensors", b"\x00\x01garbage", "not a readable safetensors"),
    ("broken.pt", b"not a torch file", "not a readable torch file"),
])
def test_bad_files_give_one_line(tmp_path, name, content, word):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ModelError) as exc:
        read_classifier(path, activations="relu,none")
    assert word in _one_line(exc)
    with pytest.raises(ModelError) as exc:
        read_classifier(tmp_path, activations="relu,none")
    assert "folder" in _one_line(exc)


def test_aecomp_model_file_carries_its_architecture(tmp_path):
    from aecomp.compress import storage
    from aecomp.models import Autoencoder

    mlp = FusedMLP([21, 9, 4], ["relu", "none"])
    path = tmp_path / "m.safetensors"
    storage.save_packed(mlp, path)
    own = read_classifier(path)
    assert own.dims == (21, 9, 4) and own.activations == ("relu", "none")
    x = torch.randn(3, 21)
    torch.testing.assert_close(own.model(x), _reference(mlp, x), rtol=1e-5, atol=1e-5)
    ae = Autoencoder([21, 9, 4])
    ae_path = tmp_path / "ae.safetensors"
    storage.save_float32(ae.state_dict(), ae_path, metadata={"aecomp": __import__("json").dumps({"config": ae.config})})
    with pytest.raises(ModelError) as exc:
        read_classifier(ae_path)
    assert "--encoder" in _one_line(exc)


def test_aecomp_files_bring_their_scaling_and_label_map(tmp_path):
    from aecomp.compress import coding, storage
    from aecomp.compress.share import finalize, share_model
    from aecomp.data import Preprocessing

    mlp = FusedMLP([12, 6, 3], ["relu", "none"])
    scaling = Preprocessing("global", torch.tensor(0.0), torch.tensor(16.0), unit=True)
    path = tmp_path / "m.safetensors"
    storage.save_packed(mlp, path, scaling=scaling, labels=[3, 5, 9])
    own = read_classifier(path)
    assert own.labels == (3, 5, 9) and float(own.scaling.scale) == 16.0 and "aecomp-packed" in own.source
    coded = tmp_path / "m.aecc"
    coding.save_coded(finalize(share_model(mlp, 4)), coded)
    own = read_classifier(coded)
    assert own.dims == (12, 6, 3)
    raw = bytearray(path.read_bytes())
    raw[-3] ^= 0x10  # a flipped bit in a weight: the file's checksum catches it
    path.write_bytes(bytes(raw))
    with pytest.raises(ModelError) as exc:
        read_classifier(path)
    assert "damaged" in _one_line(exc)


def test_weights_that_are_not_float_or_finite_are_refused():
    sd = {"0.weight": torch.ones(3, 4, dtype=torch.int64), "0.bias": torch.zeros(3)}
    with pytest.raises(ModelError) as exc:
        read_classifier(sd, activations="none")
    assert "dtype" in _one_line(exc)
    sd = {"0.weight": torch.full((3, 4), float("nan")), "0.bias": torch.zeros(3)}
    with pytest.raises(ModelError) as exc:
        read_classifier(sd, activations="none")
    assert "NaN" in _one_line(exc)
    with pytest.raises(ModelError) as exc:
        read_classifier(42)
    _one_line(exc)


# ---------------------------------------------------------------------------------------- declared scaling
def test_declared_scaling_forms(tmp_path):
    x = torch.rand(4, 6) * 255
    none = declared_scaling("none")
    assert torch.equal(none.apply(x), x)
    div = declared_scaling("255")
    torch.testing.assert_close(div.apply(x), x / 255)
    both = declared_scaling("0.1307,0.3081")
    torch.testing.assert_close(both.apply(x), (x - 0.1307) / 0.3081)
    assert declared_scaling("minmax") == "minmax"  # a fitted kind: the caller fits and says so
    mean, std = np.random.rand(6).astype(np.float32), np.random.rand(6).astype(np.float32) + 0.5
    path = tmp_path / "scaler.npz"
    np.savez(path, mean=mean, std=std)
    per_feature = declared_scaling(str(path))
    torch.testing.assert_close(per_feature.apply(x), (x - torch.from_numpy(mean)) / torch.from_numpy(std))


@pytest.mark.parametrize("text", ["0", "1,0", "a,b", "1,2,3", "nan", "missing.npz"])
def test_bad_declared_scaling_is_one_line(text):
    with pytest.raises(ModelError) as exc:
        declared_scaling(text)
    assert "--scale" in _one_line(exc)
