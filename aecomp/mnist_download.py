"""Download the four MNIST IDX files with the standard library: mirrors, sha256, atomic writes.

``download_mnist()`` makes sure ``folder`` (default :func:`cache_dir`: ``$AECOMP_MNIST_DIR``, else
``~/.cache/aecomp/mnist``) holds::

    train-images-idx3-ubyte.gz  train-labels-idx1-ubyte.gz  t10k-images-idx3-ubyte.gz  t10k-labels-idx1-ubyte.gz

For each file not already there with the right sha256, the mirrors (:data:`MIRRORS`, or
``$AECOMP_MNIST_MIRRORS``, comma-separated base URLs) are tried in order: the body streams into a
temporary file in the same folder (a tqdm bar on a terminal) while its sha256 is computed; a
file of the wrong size or digest (a truncated or corrupted download) is deleted and the next
mirror tried; a good one is fsynced and renamed into place (``os.replace``), so the folder never
holds a partial file under a final name. When no mirror gives a good copy, one
:class:`DownloadError` line says what failed and which files to put where by hand.
``aecomp.data`` calls this for ``--data mnist``.
"""
from __future__ import annotations

import hashlib
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

__all__ = ["FILES", "MIRRORS", "DownloadError", "cache_dir", "download_mnist"]

MIRRORS: Tuple[str, ...] = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",  # the mirror torchvision uses
    "https://storage.googleapis.com/cvdf-datasets/mnist/",  # the one TensorFlow uses
    "http://yann.lecun.com/exdb/mnist/",  # the original (often refuses scripts)
)

#: name -> (bytes, sha256) of the gzip files, as published
FILES: Dict[str, Tuple[int, str]] = {
    "train-images-idx3-ubyte.gz": (9_912_422, "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609"),
    "train-labels-idx1-ubyte.gz": (28_881, "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c"),
    "t10k-images-idx3-ubyte.gz": (1_648_877, "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6"),
    "t10k-labels-idx1-ubyte.gz": (4_542, "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"),
}

CHUNK = 1 << 16


class DownloadError(RuntimeError):
    """MNIST could not be downloaded; the message (one line) says which files to put where."""


def cache_dir() -> Path:
    env = os.environ.get("AECOMP_MNIST_DIR")
    return Path(env) if env else Path.home() / ".cache" / "aecomp" / "mnist"


def _mirrors() -> Tuple[str, ...]:
    env = os.environ.get("AECOMP_MNIST_MIRRORS")
    return tuple(m.strip() for m in env.split(",") if m.strip()) if env else MIRRORS


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _bar(total: int, desc: str):
    if not sys.stderr.isatty():
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, desc=desc, leave=False)


def _fetch(url: str, dest: Path, size: int, sha: str, timeout: float) -> Optional[str]:
    """Download ``url`` into ``dest`` atomically; returns None, or why it failed."""
    tmp = dest.with_name(f".{dest.name}.part{os.getpid()}")
    try:
        h = hashlib.sha256()
        got = 0
        with urllib.request.urlopen(url, timeout=timeout) as resp, open(tmp, "wb") as fh:
            bar = _bar(int(resp.headers.get("Content-Length") or size), dest.name)
            try:
                while True:
                    block = resp.read(CHUNK)
                    if not block:
                        break
                    fh.write(block)
                    h.update(block)
                    got += len(block)
                    if bar is not None:
                        bar.update(len(block))
            finally:
                if bar is not None:
                    bar.close()
            fh.flush()
            os.fsync(fh.fileno())
        if got != size:
            return f"{url}: got {got:,} bytes, expected {size:,} (truncated)"
        if h.hexdigest() != sha:
            return f"{url}: sha256 {h.hexdigest()[:12]}... does not match {sha[:12]}... (corrupted)"
        os.replace(tmp, dest)
        try:  # make the rename durable
            fd = os.open(dest.parent, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError:
            pass
        return None
    except urllib.error.HTTPError as exc:
        return f"{url}: HTTP {exc.code}"
    except urllib.error.URLError as exc:
        return f"{url}: {exc.reason}"
    except (OSError, ValueError) as exc:  # timeouts, resets, IncompleteRead (an HTTPException/ValueError)
        return f"{url}: {type(exc).__name__}: {exc}"
    except Exception as exc:  # http.client.IncompleteRead and friends
        return f"{url}: {type(exc).__name__}: {exc}"
    finally:
        if tmp.exists():
            tmp.unlink()


def download_mnist(folder=None, mirrors: Optional[Sequence[str]] = None, files: Optional[Dict[str, Tuple[int, str]]] = None,
                   timeout: float = 30.0) -> Path:
    """Make ``folder`` hold the verified MNIST files; returns the folder (see the module docstring).

    ``files`` (name -> (bytes, sha256)) defaults to :data:`FILES`; tests pass their own.
    """
    folder = Path(folder) if folder is not None else cache_dir()
    mirrors = tuple(mirrors) if mirrors is not None else _mirrors()
    files = files if files is not None else FILES
    folder.mkdir(parents=True, exist_ok=True)
    failures = []
    for name, (size, sha) in files.items():
        dest = folder / name
        if dest.is_file() and dest.stat().st_size == size and _sha256(dest) == sha:
            continue
        reasons = []
        for base in mirrors:
            why = _fetch(base.rstrip("/") + "/" + name, dest, size, sha, timeout)
            if why is None:
                break
            reasons.append(why)
        else:
            failures.append(f"{name} ({'; '.join(reasons) or 'no mirror'})")
    if failures:
        more = f" and {len(failures) - 1} more file(s)" if len(failures) > 1 else ""
        raise DownloadError(f"could not download MNIST: {failures[0]}{more}. Offline: put "
                            f"{', '.join(files)} (from {mirrors[0] if mirrors else MIRRORS[0]}) into {folder} "
                            f"(or any folder, then use --data mnist:DIR)")
    return folder
