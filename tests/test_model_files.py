"""Model-file formats (aecomp.compress.modelfile, storage, coding): every file carries its format and
version, a checksum the reader verifies, the input scaling and the label map; one reader per format;
files of version 1 still load; damage is refused with one line naming the format."""
from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path

import pytest
import torch

from aecomp.compress import coding, storage
from aecomp.compress.modelfile import (CodedFileError, LegacyFormatWarning, ModelFileError, StorageError,
                                       read_model)
from aecomp.compress.net import CompressedNet
from aecomp.compress.packed import load_packed_model
from aecomp.compress.prune import prune_
from aecomp.compress.share import finalize, int8_model, share_model
from aecomp.data import Preprocessing
from aecomp.nn import FusedMLP

V1 = Path(__file__).parent / "data" / "format_v1"
GLOBAL = Preprocessing("global", torch.tensor(0.0), torch.tensor(255.0), unit=True)
LABELS = (0, 100, 200, 300, 400, 500, 600, 700, 800, 900)


def _net(seed: int = 0) -> CompressedNet:
    torch.manual_seed(seed)
    return CompressedNet(FusedMLP([64, 32, 16], ["relu", "none"]), FusedMLP([16, 10], "none"), mode="replace").eval()


def _per_feature() -> Preprocessing:
    g = torch.Generator().manual_seed(3)
    return Preprocessing("minmax", torch.rand(64, generator=g) * 3, 1 + torch.rand(64, generator=g) * 20, unit=True)


def _write(kind: str, path: Path, scaling=None, labels=None) -> Path:
    net = _net()
    if kind in ("float32", "int8"):
        storage.save_packed(net, path, values=kind, scaling=scaling, labels=labels)
    elif kind in ("int8-csr", "int8-bitmask", "float32-sparse"):
        pruned = copy.deepcopy(net)
        prune_(pruned, 0.95 if kind == "int8-csr" else 0.5)
        storage.save_packed(pruned, path, values="float32" if kind.startswith("float") else "int8", sparse=True,
                            scaling=scaling, labels=labels)
    elif kind == "shared":
        coding.save_coded(finalize(share_model(net, 4)), path, scaling=scaling, labels=labels)
    elif kind == "int8-coded":
        coding.save_coded(finalize(int8_model(net)), path, scaling=scaling, labels=labels)
    else:
        raise AssertionError(kind)
    return path


KINDS = ["float32", "float32-sparse", "int8", "int8-csr", "int8-bitmask", "shared", "int8-coded"]


def _suffix(kind):
    return ".aecc" if kind in ("shared", "int8-coded") else ".safetensors"


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("scaling", ["global", "per-feature", None])
def test_every_format_carries_version_scaling_and_labels(tmp_path, kind, scaling):
    s = {"global": GLOBAL, "per-feature": _per_feature(), None: None}[scaling]
    path = _write(kind, tmp_path / f"m{_suffix(kind)}", s, LABELS)
    got = read_model(path)
    assert got.meta.version == 2 and got.meta.format == ("aecomp-coded" if path.suffix == ".aecc" else
                                                         "aecomp-packed")
    assert got.meta.labels == LABELS
    if s is None:
        assert got.meta.scaling is None
    else:
        assert got.meta.scaling.kind == s.kind
        assert torch.equal(got.meta.scaling.shift, s.shift) and torch.equal(got.meta.scaling.scale, s.scale)
    with pytest.raises(ValueError, match="label map names 9 labels but the model has 10 classes"):
        _write(kind, tmp_path / f"bad{_suffix(kind)}", s, LABELS[:9])


def test_identity_labels_and_autoencoder_files(tmp_path):
    from aecomp.models import Autoencoder

    path = _write("int8", tmp_path / "m.safetensors", GLOBAL, list(range(10)))
    assert read_model(path).meta.labels is None  # 0..9 is no map at all
    ae = Autoencoder((64, 16, 8), output="sigmoid")
    p = tmp_path / "ae.safetensors"
    storage.save_float32(ae.state_dict(), p, config=ae.config, scaling=_per_feature())
    got = read_model(p)
    assert got.meta.format == "aecomp-tensors" and got.meta.scaling.shift.shape == (64,)
    assert set(got.tensors) == set(ae.state_dict())  # the scaling arrays are not model tensors
    x = torch.rand(3, 64)
    torch.testing.assert_close(got.to_model()(x), ae(x))
    with pytest.raises(ValueError, match="features"):
        coding.save_coded(finalize(share_model(_net(), 4)), tmp_path / "x.aecc",
                          scaling=Preprocessing("minmax", torch.zeros(5), torch.ones(5)))


@pytest.mark.parametrize("kind", ["int8", "float32", "int8-csr", "int8-bitmask"])
def test_one_flipped_bit_anywhere_in_a_safetensors_file_is_refused(tmp_path, kind):
    """Item 13 (before: 454 of 455 flips in an int8 file's data loaded silently): for int8, every byte
    of the safetensors header and 300 bytes of the data, one bit each; for the others 200 bytes."""
    path = _write(kind, tmp_path / "m.safetensors", GLOBAL, LABELS)
    raw = path.read_bytes()
    header_end = 8 + int.from_bytes(raw[:8], "little")
    g = torch.Generator().manual_seed(0)
    if kind == "int8":
        where = list(range(header_end)) + torch.randint(header_end, len(raw), (300,), generator=g).tolist()
    else:
        where = torch.randint(0, len(raw), (200,), generator=g).tolist()
    bad = tmp_path / "bad.safetensors"
    for i, pos in enumerate(where):
        flipped = bytearray(raw)
        flipped[pos] ^= 1 << (i % 8)
        bad.write_bytes(bytes(flipped))
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # never taken for a version-1 file
            with pytest.raises(ModelFileError) as info:
                load_packed_model(bad) if kind.startswith("int8") else storage.load_packed(bad)
        msg = str(info.value)
        assert "\n" not in msg and str(bad) in msg, (pos, msg)


def test_damage_is_named_by_the_format_detected(tmp_path):
    path = _write("shared", tmp_path / "m.aecc", GLOBAL, LABELS)
    raw = path.read_bytes()
    for name, data, pattern in [
            ("magic.aecc", b"AECD" + raw[4:], "not an aecomp coded model file as its magic suggests"),
            ("renamed.bin", b"XECC" + raw[4:], "damaged"),
            ("zeros.aecc", bytes(len(raw)), "not an aecomp coded model file as its name suggests"),
            ("header.aecc", raw[:12] + bytes([raw[12] ^ 4]) + raw[13:], "aecomp-coded version 2: checksum mismatch"),
            ("v7.aecc", raw[:4] + bytes([7]) + raw[5:], "aecomp-coded format version 7; this aecomp reads versions"),
            ("junk.safetensors", b"junk" * 10, "not a readable safetensors file"),
            ("junk.bin", b"junk" * 10, "not a model file aecomp reads"),
            ("empty.aecc", b"", "it is empty")]:
        p = tmp_path / name
        p.write_bytes(data)
        with pytest.raises(ModelFileError, match=pattern) as info:
            load_packed_model(p)
        msg = str(info.value)
        assert "\n" not in msg and str(p) in msg and "not a readable safetensors" not in msg or \
            name.endswith(".safetensors"), msg
    assert isinstance(pytest.raises(CodedFileError, load_packed_model, tmp_path / "magic.aecc").value,
                      CodedFileError)
    # a safetensors file of a version this aecomp does not know
    from safetensors.torch import save_file

    future = tmp_path / "future.safetensors"
    save_file({"0.w": torch.zeros(2, 2)}, str(future), metadata={"aecomp": json.dumps(
        {"format": "aecomp-packed", "version": 3})})
    with pytest.raises(StorageError, match="aecomp-packed version 3; this aecomp reads versions 1 and 2"):
        read_model(future)


def test_files_written_before_version_2_still_load(tmp_path):
    expect = json.loads((V1 / "expected.json").read_text())
    x = torch.tensor(expect["x"])
    with pytest.warns(LegacyFormatWarning, match="aecomp-packed version 1"):
        int8 = load_packed_model(V1 / "int8.safetensors", compute="float")
    assert int8.input_scaling is None and int8.labels is None
    torch.testing.assert_close(int8(x), torch.tensor(expect["int8"]), rtol=1e-5, atol=1e-5)
    with pytest.raises(TypeError, match="records no input scaling"):
        int8(torch.zeros(2, 16, dtype=torch.uint8))
    with pytest.warns(LegacyFormatWarning, match="aecomp-packed version 1"):
        f32 = storage.load_packed(V1 / "float32.safetensors")
    torch.testing.assert_close(f32(x), torch.tensor(expect["float32"]), rtol=1e-6, atol=1e-6)
    with pytest.warns(LegacyFormatWarning, match="aecomp-coded version 1"):
        shared = load_packed_model(V1 / "shared3.aecc")
    torch.testing.assert_close(shared(x), torch.tensor(expect["shared3"]), rtol=1e-5, atol=1e-5)
    with pytest.warns(LegacyFormatWarning, match="aecomp-tensors version 1"):
        ae = read_model(V1 / "autoencoder.safetensors").to_model()
    assert ae.config["dims"][0] == 16
    # version 1 files are unverifiable, but their own structure is still checked
    raw = bytearray((V1 / "shared3.aecc").read_bytes())
    raw[20] ^= 1
    (tmp_path / "bad.aecc").write_bytes(bytes(raw))
    with pytest.raises(CodedFileError, match="aecomp-coded version 1: checksum mismatch"):
        load_packed_model(tmp_path / "bad.aecc")


def test_new_files_load_without_warnings(tmp_path):
    for kind in KINDS:
        path = _write(kind, tmp_path / f"{kind}{_suffix(kind)}", GLOBAL, LABELS)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            read_model(path).to_model()


def test_header_dictionary_size_is_exposed():
    assert coding.HEADER_DICT_BYTES == len(coding.HEADER_DICT) > 0
    # the dictionary pays for itself on a typical header: it is part of the format, not the file
    import zlib

    from aecomp.compress.entropy import deflate

    text = json.dumps({"config": _net().config, "layers": [], "input": {"kind": "global", "shift": 0.0,
                                                                       "scale": 255.0}, "labels": None},
                      separators=(",", ":")).encode()
    assert len(deflate(text, coding.HEADER_DICT)) < len(zlib.compress(text, 9)) - 20
