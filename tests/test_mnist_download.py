"""The MNIST downloader against local HTTP servers (127.0.0.1): good, truncated, corrupted, offline."""
import gzip
import hashlib
import http.server
import os
import socket
import struct
import threading

import numpy as np
import pytest

from aecomp import mnist_download as md


def _idx(arr: np.ndarray) -> bytes:
    code = 0x08  # unsigned byte
    head = struct.pack(">BBBB", 0, 0, code, arr.ndim) + b"".join(struct.pack(">I", d) for d in arr.shape)
    return gzip.compress(head + arr.astype(np.uint8).tobytes(), mtime=0)


@pytest.fixture(scope="module")
def payloads():
    rng = np.random.default_rng(0)
    return {"train-images-idx3-ubyte.gz": _idx(rng.integers(0, 256, (60, 28, 28))),
            "train-labels-idx1-ubyte.gz": _idx(np.arange(60) % 10),
            "t10k-images-idx3-ubyte.gz": _idx(rng.integers(0, 256, (20, 28, 28))),
            "t10k-labels-idx1-ubyte.gz": _idx(np.arange(20) % 10)}


def _files(payloads):
    return {k: (len(v), hashlib.sha256(v).hexdigest()) for k, v in payloads.items()}


class _Server:
    """Serves ``payloads`` at http://127.0.0.1:<port>/; ``mode``: ok | truncated | corrupted | missing."""

    def __init__(self, payloads, mode):
        self.hits = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                name = self.path.strip("/").split("/")[-1]
                outer.hits.append(name)
                body = payloads.get(name)
                if body is None or mode == "missing":
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if mode == "truncated":
                    self.wfile.write(body[:len(body) // 2])  # then close: a cut connection
                    self.close_connection = True
                    return
                if mode == "corrupted":
                    body = bytearray(body)
                    body[len(body) // 2] ^= 0xFF
                self.wfile.write(bytes(body))

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def _no_partials(folder):
    return [p for p in os.listdir(folder) if ".part" in p]


def test_download_verifies_and_loads(tmp_path, payloads, monkeypatch):
    with _Server(payloads, "ok") as srv:
        folder = md.download_mnist(tmp_path / "mnist", mirrors=[srv.url], files=_files(payloads), timeout=5)
        assert sorted(os.listdir(folder)) == sorted(payloads)
        for name, body in payloads.items():
            assert (folder / name).read_bytes() == body
        n = len(srv.hits)
        md.download_mnist(folder, mirrors=[srv.url], files=_files(payloads), timeout=5)
        assert len(srv.hits) == n  # verified files are not fetched again
    # the data module reads what was downloaded (through the env override of the cache folder)
    from aecomp import data

    monkeypatch.setenv("AECOMP_MNIST_DIR", str(folder))
    monkeypatch.setattr(md, "FILES", _files(payloads))  # our fake files are the "published" ones here
    splits = data.load("mnist", seed=0)
    assert splits.train.features == 784 and len(splits.test) == 20


@pytest.mark.parametrize("bad", ["truncated", "corrupted"])
def test_bad_mirror_falls_back_to_the_next(tmp_path, payloads, bad):
    with _Server(payloads, bad) as broken, _Server(payloads, "ok") as good:
        folder = md.download_mnist(tmp_path / "m", mirrors=[broken.url, good.url], files=_files(payloads),
                                   timeout=5)
        assert broken.hits and good.hits
    for name, body in payloads.items():
        assert (folder / name).read_bytes() == body
    assert not _no_partials(folder)


@pytest.mark.parametrize("bad", ["truncated", "corrupted", "missing"])
def test_only_bad_mirrors_give_one_line(tmp_path, payloads, bad):
    with _Server(payloads, bad) as broken:
        with pytest.raises(md.DownloadError) as info:
            md.download_mnist(tmp_path / "m", mirrors=[broken.url], files=_files(payloads), timeout=5)
    msg = str(info.value)
    assert "\n" not in msg
    assert {"truncated": "truncated", "corrupted": "corrupted", "missing": "HTTP 404"}[bad] in msg
    assert "train-images-idx3-ubyte.gz" in msg and "t10k-labels-idx1-ubyte.gz" in msg and str(tmp_path / "m") in msg
    assert os.listdir(tmp_path / "m") == []  # no partial or bad file left behind


def test_offline_names_the_files_and_folder(tmp_path, monkeypatch):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now: connection refused, like a machine without network
    monkeypatch.setenv("AECOMP_MNIST_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("AECOMP_MNIST_MIRRORS", f"http://127.0.0.1:{port}/")
    from aecomp import data

    with pytest.raises(data.DataError) as info:
        data.load("mnist", seed=0)
    msg = str(info.value)
    assert "\n" not in msg and "Offline: put" in msg and str(tmp_path / "cache") in msg
    for name in md.FILES:
        assert name in msg


def test_published_checksums_are_well_formed():
    assert set(md.FILES) == {"train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                             "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"}
    for size, sha in md.FILES.values():
        assert size > 0 and len(sha) == 64 and int(sha, 16) >= 0
