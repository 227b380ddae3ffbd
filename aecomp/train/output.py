"""Output folders and resources of a run (``aecomp train``, ``aecomp compress``, ``aecomp demo``).

* :func:`prepare_folder` creates ``--out`` or says in one line why it cannot (a file there, a
  file on the way, no permission);
* :class:`FolderLock` holds an OS file lock (``fcntl.flock``, exclusive, non-blocking) on
  ``<out>/.aecomp.lock`` for the whole run, so two runs never write into one folder at the same
  time. The second one gets one line naming the first one's pid (written into the lock file).
  The kernel drops the lock when the holder exits in any way, ``kill -9`` included, so a lock is
  never stale; the file itself stays behind, empty of meaning until the next run takes it.
  (No ``fcntl``, e.g. on Windows: no lock, and the run goes on.)
* :func:`check_memory` refuses, before anything is allocated, a model whose weights, gradients
  and Adam state cannot fit in the memory this machine has available (``--dims 64,100000000``
  would otherwise end in the kernel's OOM killer, not in an error).
"""
from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Optional, Union

__all__ = ["LOCK_NAME", "FolderLock", "OutputError", "available_memory", "check_memory", "prepare_folder"]

LOCK_NAME = ".aecomp.lock"


class OutputError(ValueError):
    """An output folder or a resource a run cannot use; the message is one line."""


def prepare_folder(path: Union[str, os.PathLike], flag: str = "--out") -> Path:
    """Create ``path`` (and its parents) if needed; :class:`OutputError` when it is not a usable folder."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise OutputError(f"{flag} {p} is a file, not a folder; choose a folder")
    try:
        p.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocker = next((q for q in [p, *p.parents] if q.exists() and not q.is_dir()), None)
        where = f"{blocker} is a file" if blocker is not None else "a part of the path is a file"
        raise OutputError(f"{flag} {p}: cannot create the folder ({where})") from None
    except OSError as exc:
        raise OutputError(f"{flag} {p}: cannot create the folder ({exc.strerror or exc})") from None
    if not os.access(p, os.W_OK | os.X_OK):
        raise OutputError(f"{flag} {p}: the folder is not writable")
    return p


class FolderLock:
    """``with FolderLock(folder):`` -- an exclusive ``flock`` on ``folder/.aecomp.lock`` for the run."""

    def __init__(self, folder: Union[str, os.PathLike], flag: str = "--out") -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.flag = flag
        self._fh = None

    def acquire(self) -> "FolderLock":
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX: no lock
            return self
        try:
            fh = open(self.path, "a+")
        except OSError as exc:
            raise OutputError(f"{self.flag} {self.folder}: cannot create {LOCK_NAME} ({exc.strerror or exc})") from None
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            fh.seek(0)
            holder = fh.read().strip() or "unknown"
            fh.close()
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise OutputError(f"{self.flag} {self.folder} is in use by another aecomp run (pid {holder}); "
                                  f"wait for it to finish or choose another {self.flag}") from None
            raise OutputError(f"{self.flag} {self.folder}: cannot lock {LOCK_NAME} ({exc.strerror or exc})") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        self._fh = fh
        return self

    def release(self) -> None:
        if self._fh is not None:
            self._fh.close()  # closing the descriptor drops the flock
            self._fh = None

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def available_memory() -> Optional[int]:
    """Bytes of memory available to a new allocation (Linux: ``MemAvailable``), or None if unknown."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_memory(params: int, what: str, copies: int = 4, bytes_per_value: int = 4) -> None:
    """Refuse ``params`` float32 parameters that, with ``copies`` copies (weights, gradients, Adam's
    two moments), need more than the available memory: :class:`OutputError` saying how much."""
    need = int(params) * copies * bytes_per_value
    have = available_memory()
    if have is not None and need > have:
        raise OutputError(f"{what} has {params:,} parameters: about {need / 2**30:.1f} GiB with gradients and "
                          f"optimizer state, but only {have / 2**30:.1f} GiB of memory is available; "
                          f"use smaller widths")
