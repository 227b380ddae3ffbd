"""Output folders and resources of a run (``aecomp train``, ``aecomp compress``, ``aecomp demo``).

* :func:`prepare_folder` creates ``--out`` or says in one line why it cannot (a file there, a
  file on the way, no permission);
* :class:`FolderLock` holds an OS file lock (``fcntl.flock``, exclusive, non-blocking) on
  ``<out>/.aecomp.lock`` for the whole run, so two runs never write into one folder at the same
  time. The second one gets one line naming the first one's pid (written into the lock file).
  The kernel drops the lock when the holder exits in any way, ``kill -9`` included, so a lock is
  never stale; the file itself stays behind, empty of meaning until the next run takes it.
  (No ``fcntl``, e.g. on Windows: no lock, and the run goes on.)
* :func:`clear_folder` and :func:`write_outputs_list` keep a folder holding exactly one run's
  outputs (``aecomp compress``, ``aecomp fl``): a folder that is not empty is refused unless
  ``overwrite`` is set, and then only the earlier run's files (those its ``outputs.json`` lists,
  or its ``layout`` when it did not finish) are removed; anything else there is refused, nothing
  removed. ``outputs.json`` says ``complete: false`` from the start to the end of a run, so an
  interrupted run leaves a folder that says so and that ``--overwrite`` may clear.
* :func:`run_folder` is the three together for a command's whole run: prepare, lock, clear,
  ``complete: false``, the run, ``complete: true`` (only if the run returned), unlock.
* :func:`check_memory` refuses, before anything is allocated, a model whose weights, gradients
  and Adam state cannot fit in the memory this machine has available (``--dims 64,100000000``
  would otherwise end in the kernel's OOM killer, not in an error).
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Union

__all__ = ["LOCK_NAME", "OUTPUTS_FILE", "FolderLock", "OutputError", "available_memory", "check_memory",
           "clear_folder", "prepare_folder", "previous_outputs", "run_folder", "write_outputs_list"]

LOCK_NAME = ".aecomp.lock"
OUTPUTS_FILE = "outputs.json"


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


def _files_under(out: Path, names: Sequence[str]) -> List[Path]:
    found: List[Path] = []
    for n in names:
        p = out / n
        if p.is_dir() and not p.is_symlink():
            found += [q for q in p.rglob("*") if not q.is_dir() or q.is_symlink()]
        elif p.exists() or p.is_symlink():
            found.append(p)
    return found


def previous_outputs(out: Path, layout: Sequence[str], report: str) -> Optional[List[Path]]:
    """The files of the earlier run in ``out``: those its ``outputs.json`` lists; the ``layout``'s
    when that run did not finish (or predates outputs.json, but wrote its ``report``); None when
    the folder does not look like such an output folder at all."""
    listing = out / OUTPUTS_FILE
    if listing.is_file():
        try:
            doc = json.loads(listing.read_text())
        except (OSError, ValueError):
            doc = {}
        if isinstance(doc, dict) and doc.get("complete") and isinstance(doc.get("files"), list):
            return [out / n for n in doc["files"] if isinstance(n, str) and ".." not in Path(n).parts]
        return _files_under(out, layout)
    if (out / report).is_file():
        return _files_under(out, layout)
    return None


def clear_folder(out: Path, overwrite: bool, layout: Sequence[str], command: str, report: str) -> None:
    """Leave ``out`` empty (but for the lock), or raise :class:`OutputError` (module docstring).
    Nothing is removed unless everything in the folder is the earlier run's. ``layout``: what
    ``command`` writes at the top of its folder; ``report``: its report file."""
    top = sorted(p.name for p in out.iterdir() if p.name != LOCK_NAME)
    if not top:
        return
    names = ", ".join(top[:4]) + (", ..." if len(top) > 4 else "")
    present = [p for p in out.rglob("*") if (not p.is_dir() or p.is_symlink()) and p != out / LOCK_NAME]
    if not overwrite:
        raise OutputError(f"--out {out} is not empty ({names}); add --overwrite to replace the outputs of an "
                          f"earlier run there, or choose another --out")
    previous = previous_outputs(out, layout, report)
    if previous is None:
        raise OutputError(f"--overwrite: --out {out} holds {names} but no earlier {command} run (no "
                          f"{OUTPUTS_FILE} or {report}); nothing is removed: choose another --out")
    ours = {p.resolve() if not p.is_symlink() else p for p in previous}
    foreign = sorted(str(p.relative_to(out)) for p in present
                     if (p.resolve() if not p.is_symlink() else p) not in ours)
    if foreign:
        raise OutputError(f"--overwrite: --out {out} also holds {', '.join(foreign[:4])}"
                          f"{', ...' if len(foreign) > 4 else ''}, which the earlier run did not write; "
                          f"nothing is removed: move it or choose another --out")
    for p in present:
        p.unlink()
    for d in sorted((q for q in out.rglob("*") if q.is_dir() and not q.is_symlink()),
                    key=lambda q: len(q.parts), reverse=True):
        if not any(d.iterdir()):
            d.rmdir()


def write_outputs_list(out: Path, complete: bool, command: str) -> None:
    """``outputs.json``: at the start ``complete: false`` (a crash leaves a folder ``--overwrite``
    may clear), at the end every file the run wrote (made readable as any other file)."""
    from .checkpoint import atomic_write, default_file_mode

    files = sorted(str(p.relative_to(out)) for p in out.rglob("*")
                   if p.is_file() and p.name != LOCK_NAME and p.name != OUTPUTS_FILE) if complete else []
    mode = default_file_mode()
    for f in files:  # safetensors' writer creates its files 0600; every other file gets 0666 less the umask
        os.chmod(out / f, mode)
    doc = {"written_by": command, "complete": complete, "files": sorted(files + [OUTPUTS_FILE])}
    atomic_write(out / OUTPUTS_FILE, (json.dumps(doc, indent=1) + "\n").encode())


@contextlib.contextmanager
def run_folder(path: Union[str, os.PathLike], overwrite: bool, layout: Sequence[str], command: str,
               report: str, error: type = OutputError) -> Iterator[Path]:
    """The output folder of one run of ``command`` (module docstring): yields the prepared, locked,
    cleared folder whose ``outputs.json`` says ``complete: false``; when the body returns, every
    file it wrote is listed and ``complete: true``; the lock is released either way. A folder
    that cannot be used (not creatable, locked, not clearable, not writable) raises ``error`` (a
    one-line message; :class:`OutputError` unless the command has its own) before the body runs."""
    try:
        out = prepare_folder(path)
        lock = FolderLock(out).acquire()
    except OutputError as exc:
        raise error(str(exc)) from None
    try:
        try:
            clear_folder(out, overwrite, layout, command, report)
            write_outputs_list(out, False, command)
        except OutputError as exc:
            raise error(str(exc)) from None
        except OSError as exc:
            raise error(f"--out {out}: cannot write ({exc.strerror or exc})") from None
        yield out
        write_outputs_list(out, True, command)
    finally:
        lock.release()
