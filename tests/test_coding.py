"""Entropy-coded model files: codecs round-trip, files load bit-identical, damage gives one error."""
import math

import numpy as np
import pytest
import torch

from aecomp.compress import coding, entropy
from aecomp.compress.net import accuracy, linear_layers
from aecomp.compress.share import PackedNet, SharedLinear, finalize, int8_model, share_model


@pytest.mark.parametrize("alphabet", [2, 3, 16, 255, 256])
@pytest.mark.parametrize("n", [0, 1, 7, 1023])
def test_every_codec_roundtrips(alphabet, n):
    rng = np.random.default_rng(alphabet * 1000 + n)
    p = rng.dirichlet(np.full(alphabet, 0.3))
    sym = rng.choice(alphabet, size=n, p=p)
    for name in entropy.CODECS:
        enc, _ = entropy.CODECS[name]
        data = enc(sym, alphabet)
        assert np.array_equal(entropy.decode_symbols(name, data, alphabet, n), sym), name


def test_huffman_is_within_one_bit_of_entropy():
    rng = np.random.default_rng(0)
    p = np.array([0.5, 0.2, 0.1, 0.1, 0.05, 0.03, 0.01, 0.01])
    sym = rng.choice(8, size=20000, p=p)
    counts = np.bincount(sym, minlength=8)
    q = counts / counts.sum()
    entropy_bits = -(counts * np.log2(np.where(q > 0, q, 1))).sum()
    lengths = entropy.huffman_lengths(counts)
    assert np.sum(2.0 ** -lengths[lengths > 0]) <= 1.0  # Kraft: a prefix code
    coded_bits = (counts * lengths).sum()
    assert entropy_bits <= coded_bits <= entropy_bits + counts.sum()
    data = entropy.huffman_encode(sym, 8)
    assert len(data) == math.ceil(8 * 5 / 8) + math.ceil(coded_bits / 8)


def test_huffman_lengths_are_limited():
    counts = np.array([2 ** i for i in range(30)])  # Fibonacci-like skew: unlimited depth would be 29
    lengths = entropy.huffman_lengths(counts)
    assert lengths.max() <= entropy.MAX_LEN
    assert np.sum(2.0 ** -lengths) <= 1.0
    sym = np.repeat(np.arange(30), 3)
    assert np.array_equal(entropy.huffman_decode(entropy.huffman_encode(sym, 30), 30, sym.size), sym)


@pytest.mark.parametrize("g", range(1, 9))
def test_gap_coding_roundtrip(g):
    rng = np.random.default_rng(g)
    pos = np.flatnonzero(rng.random(5000) < 0.07)
    pos = np.concatenate([[0], pos, [4999]]) if g % 2 else pos
    pos = np.unique(pos)
    sym = entropy.gaps_encode(pos, g)
    assert sym.max() < (1 << g)
    assert np.array_equal(entropy.gaps_decode(sym, g), pos)


def _net(pruned: bool, kind: str) -> PackedNet:
    from aecomp.compress.baselines import lenet_300_100
    from aecomp.compress.prune import prune_

    torch.manual_seed(3)
    model = lenet_300_100(64, 10)
    if pruned:
        prune_(model, 0.9)
    return finalize(share_model(model, 5) if kind == "shared" else int8_model(model)), model


@pytest.mark.parametrize("pruned", [False, True])
@pytest.mark.parametrize("kind", ["shared", "int8"])
def test_file_roundtrip_bit_identical(tmp_path, pruned, kind):
    net, _ = _net(pruned, kind)
    path = tmp_path / "m.aecc"
    nbytes = coding.save_coded(net, path)
    assert nbytes == path.stat().st_size
    back = coding.load_coded(path)
    assert back.config == net.config
    for a, b in zip(net.layers, back.layers):
        assert type(a) is type(b) and a.activation == b.activation
        assert torch.equal(a.dense_weight(), b.dense_weight())
        assert torch.equal(a.bias, b.bias)
        if kind == "shared":
            assert torch.equal(a.codes, b.codes) and torch.equal(a.codebook, b.codebook)
            assert (a.mask is None) == (b.mask is None)
            if a.mask is not None:
                assert torch.equal(a.mask, b.mask)
        else:
            assert torch.equal(a.q, b.q) and torch.equal(a.scale, b.scale)
    x = torch.rand(40, 64)
    assert torch.equal(net.to_model()(x), back.to_model()(x))


def test_coded_is_smaller_than_packed_bits(tmp_path):
    net, model = _net(True, "shared")
    nbytes = coding.save_coded(net, tmp_path / "m.aecc")
    nnz = net.nnz()
    # 5-bit codes + 1 bit per entry of a bitmask would be the plain packed size
    plain = nnz * 5 / 8 + sum(m.weight.numel() for m in linear_layers(model)) / 8
    assert nbytes < plain


def test_damaged_files_give_one_clear_error(tmp_path):
    net, _ = _net(True, "shared")
    path = tmp_path / "m.aecc"
    coding.save_coded(net, path)
    data = path.read_bytes()
    cases = {"truncated": data[:len(data) // 2], "tiny": data[:5], "flipped": bytearray(data),
             "magic": b"XXXX" + data[4:], "version": data[:4] + bytes([9]) + data[5:]}
    cases["flipped"][len(data) // 3] ^= 0x10
    expect = {"truncated": "checksum mismatch", "tiny": "truncated", "flipped": "checksum mismatch",
              "magic": "not an aecomp coded model file", "version": "format version 9"}
    for name, bad in cases.items():
        p = tmp_path / f"{name}.aecc"
        p.write_bytes(bytes(bad))
        with pytest.raises(coding.CodedFileError, match=expect[name]) as info:
            coding.load_coded(p)
        assert str(p) in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(coding.CodedFileError, match="cannot read"):
        coding.load_coded(tmp_path / "missing.aecc")


def test_save_refuses_unrounded_codebook(tmp_path):
    layer = SharedLinear(torch.zeros(2, 3, dtype=torch.uint8), torch.linspace(0, 1.0001, 4), 2)
    net = PackedNet({"type": "classifier", "dims": [3, 2], "activations": ["none"]}, [layer])
    with pytest.raises(ValueError, match="finalize"):
        coding.save_coded(net, tmp_path / "x.aecc")


def test_same_accuracy_after_load(tmp_path):
    from aecomp import data
    from aecomp.compress.baselines import lenet_300_100
    from aecomp.compress.net import fit_classifier

    tr = data.load("digits", seed=0).train
    torch.manual_seed(0)
    model = lenet_300_100(64, 10)
    fit_classifier(model, tr.x[:500], tr.y[:500], epochs=2, lr=3e-3)
    net = finalize(share_model(model, 4))
    coding.save_coded(net, tmp_path / "m.aecc")
    back = coding.load_coded(tmp_path / "m.aecc").to_model()
    assert accuracy(back, tr.x, tr.y) == accuracy(net.to_model(), tr.x, tr.y)
