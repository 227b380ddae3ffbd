"""The processes of a federated run, started and stopped by ``aecomp fl``: either engine.

``simulation``
    one worker process (``python -m aecomp.fl.engine simulate ...``) runs Flower's
    ``run_simulation`` (Ray: a GCS, a raylet and one client actor per CPU, all its children).
``deployment``
    Flower's deployment runtime on 127.0.0.1: one ``flower-superlink`` (which starts the
    ServerApp in its own ``flwr-serverapp`` process), ``clients`` ``flower-supernode`` processes
    (each starts a ``flwr-clientapp`` process per message), and the run submitted with
    ``flwr run`` from a generated Flower App folder whose components are this package's apps.
    Its own ``FLWR_HOME`` (a temporary folder): nothing in the user's ``~/.flwr`` is read or
    written. Runtime dependency installation is off (the apps need only this environment).

Every process is started in a session of its own, so it and all its children form one process
group; :class:`Processes` ends every group it started (SIGTERM, then SIGKILL after
``grace`` seconds) when the run ends in any way: finished, failed, or interrupted (Ctrl-C). Ray's
processes are also found by the run's own Ray temp folder in their command line, in case one of
them left the group. The ServerApp reports through two files (:mod:`aecomp.fl.server`): the
parent prints the progress lines as they come and reads the result when it says ``done`` or
``error``. Fault injection ``kill``: a client that reaches the round writes a marker file, and the
parent kills that SuperNode's whole process group (the client is gone mid-round, as after a
crash or a power cut).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from .settings import FLError, FLSettings

__all__ = ["Processes", "run_engine"]

POLL = 0.2  # seconds between looks at the files and processes


class Processes:
    """Child processes, each the leader of its own process group; :meth:`stop` ends them all."""

    def __init__(self, grace: float = 3.0, markers: Optional[List[str]] = None) -> None:
        self.procs: List[subprocess.Popen] = []
        self.grace = grace
        self.markers = markers or []  # command-line substrings of descendants that may leave the group

    def start(self, argv: List[str], log: Path, env: Optional[Dict[str, str]] = None) -> subprocess.Popen:
        with open(log, "ab") as out:
            p = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 env=env, start_new_session=True)
        self.procs.append(p)
        return p

    def kill_group(self, p: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
        try:
            os.killpg(p.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def stop(self) -> None:
        for p in self.procs:
            self.kill_group(p, signal.SIGTERM)
        end = time.time() + self.grace
        while time.time() < end and any(p.poll() is None for p in self.procs):
            time.sleep(0.05)
        for p in self.procs:  # SIGKILL the groups even when the leader is gone: its children may not be
            self.kill_group(p, signal.SIGKILL)
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        for pid in find_processes(self.markers):
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


def find_processes(markers: List[str]) -> List[int]:
    """Pids of live processes whose command line contains any of ``markers`` (Linux /proc)."""
    if not markers:
        return []
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
            with open(f"/proc/{entry}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and any(m in cmd for m in markers):
            found.append(int(entry))
    return found


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Tail:
    """Prints the lines appended to a file since the last call."""

    def __init__(self, path: Path, log: Callable[[str], None]) -> None:
        self.path, self.log, self.pos = path, log, 0

    def __call__(self) -> None:
        try:
            with open(self.path) as f:
                f.seek(self.pos)
                data = f.read()
        except FileNotFoundError:
            return
        end = data.rfind("\n") + 1
        for line in data[:end].splitlines():
            self.log(line)
        self.pos += len(data[:end].encode())


def _read_result(path: Path) -> Optional[Dict[str, Any]]:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return doc if doc.get("done") or doc.get("error") else None


def _tail_of(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def run_engine(s: FLSettings, log: Callable[[str], None] = print, work: Optional[Path] = None,
               keep: bool = False) -> Dict[str, Any]:
    """Run ``s`` on ``s.engine`` in child processes; returns the ServerApp's result document.
    Raises :class:`FLError` when the run failed (every client of a round failed, a process died)
    and ``KeyboardInterrupt`` as it came; every process started here is gone on return."""
    own = work is None
    work = Path(tempfile.mkdtemp(prefix="aefl-", dir="/tmp")) if own else Path(work)  # short: Ray's socket paths
    files = {"result": str(work / "result.json"), "progress": str(work / "progress.log"),
             "settings": str(work / "settings.json")}
    Path(files["settings"]).write_text(json.dumps(s.to_dict()))
    procs = Processes(markers=[str(work)])
    tail = _Tail(Path(files["progress"]), log)
    try:
        if s.engine == "simulation":
            argv = [sys.executable, "-m", "aecomp.fl.engine", "simulate", files["settings"], files["result"],
                    files["progress"], str(work / "ray")]
            watch = [procs.start(argv, work / "worker.log")]
            logs = [work / "worker.log"]
        else:
            watch, logs = _start_deployment(s, work, files, procs)
        killed = set()
        while True:
            tail()
            doc = _read_result(Path(files["result"]))
            if doc is not None:
                break
            for i, p in enumerate(watch):
                if p.poll() is not None and i not in killed:
                    raise FLError(f"the {s.engine} engine's process {Path(p.args[1]).name} (pid {p.pid}) exited with "
                                  f"{p.returncode} before the run finished; its log ({logs[i]}):\n{_tail_of(logs[i])}")
            if s.kill:
                for marker in (work / "markers").glob("kill-*"):
                    pid = int(marker.name.split("-")[1])
                    procs.kill_group(watch[1 + pid])  # watch[0] is the SuperLink
                    killed.add(1 + pid)
                    marker.unlink()
                    log(f"(fault injection) killed client {pid}'s SuperNode (pid {watch[1 + pid].pid}) mid-round")
            time.sleep(POLL)
        tail()
        if doc.get("error"):
            raise FLError(doc["error"])
        return doc
    finally:
        procs.stop()
        if own and not keep:
            shutil.rmtree(work, ignore_errors=True)


# ---------------------------------------------------------------------- deployment
_PYPROJECT = """[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "aecompfl"
version = "1.0.0"
description = "aecomp.fl's apps on Flower's deployment runtime"
license = "Apache-2.0"
dependencies = []

[tool.flwr.app]
publisher = "aecomp"

[tool.flwr.app.components]
serverapp = "aecompfl_app:server"
clientapp = "aecompfl_app:client"

[tool.flwr.app.config]
settings-file = ""
result-file = ""
progress-file = ""
"""

_APP = '''"""Generated by aecomp.fl.engine: the apps of aecomp.fl, settings from the run config."""
from aecomp.fl.apps import make_client_app
from aecomp.fl.server import make_server_app

server = make_server_app()
client = make_client_app()
'''


def _start_deployment(s: FLSettings, work: Path, files: Dict[str, str], procs: Processes):
    bindir = str(Path(sys.executable).parent)
    env = dict(os.environ, FLWR_HOME=str(work / "flwr-home"), AECOMP_FL_MARKERS=str(work / "markers"),
               PATH=bindir + os.pathsep + os.environ.get("PATH", ""), PYTHONUNBUFFERED="1")
    (work / "markers").mkdir()
    (work / "flwr-home").mkdir()
    app = work / "app"
    app.mkdir()
    (app / "pyproject.toml").write_text(_PYPROJECT)
    (app / "aecompfl_app.py").write_text(_APP)
    port = free_port()
    (work / "flwr-home" / "config.toml").write_text(
        f'[superlink]\ndefault = "aecomp"\n\n[superlink.aecomp]\naddress = "127.0.0.1:{port}"\ninsecure = true\n')
    exe = lambda name: str(Path(bindir) / name)  # noqa: E731
    link = procs.start([exe("flower-superlink"), "--insecure", "--disable-runtime-dependency-installation",
                        "--host", "127.0.0.1", "--port", str(port)], work / "superlink.log", env)
    watch, logs = [link], [work / "superlink.log"]
    for i in range(s.clients):
        log_i = work / f"supernode-{i}.log"
        watch.append(procs.start([exe("flower-supernode"), "--insecure", "--superlink", f"127.0.0.1:{port}",
                                  "--node-config", f"partition-id={i} num-partitions={s.clients}",
                                  "--port", str(free_port())], log_i, env))
        logs.append(log_i)
    _wait_for_port(port, link, work / "superlink.log")
    config = f"settings-file='{files['settings']}' result-file='{files['result']}' progress-file='{files['progress']}'"
    submit = subprocess.run([exe("flwr"), "run", str(app), "aecomp", "--run-config", config, "--format", "json"],
                            env=env, capture_output=True, text=True, timeout=300, start_new_session=True)
    if submit.returncode != 0:
        raise FLError(f"flwr run failed ({submit.returncode}): {(submit.stderr or submit.stdout).strip()[-800:]}")
    return watch, logs


def _wait_for_port(port: int, proc: subprocess.Popen, log: Path, timeout: float = 120.0) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if proc.poll() is not None:
            raise FLError(f"flower-superlink exited with {proc.returncode}; its log ({log}):\n{_tail_of(log)}")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(POLL)
    raise FLError(f"flower-superlink did not listen on 127.0.0.1:{port} within {timeout:.0f} s; log: {log}")


# ---------------------------------------------------------------------- the simulation worker
def _simulate(settings_file: str, result: str, progress: str, ray_dir: str) -> int:
    import logging
    import warnings

    from flwr.simulation import run_simulation

    from .apps import make_client_app
    from .server import make_server_app

    s = FLSettings.from_dict(json.loads(Path(settings_file).read_text()))
    logging.getLogger("flwr").setLevel(logging.ERROR)  # the progress lines say what happens
    init_args = {"num_cpus": s.num_cpus or os.cpu_count() or 1, "include_dashboard": False, "log_to_driver": False,
                 "logging_level": "ERROR", "_temp_dir": ray_dir}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"ray\..*")
        run_simulation(server_app=make_server_app(s, {"result": result, "progress": progress}),
                       client_app=make_client_app(s), num_supernodes=s.clients,
                       backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}, "init_args": init_args})
    if not Path(result).exists():  # the ServerApp never got to write: say so to the parent
        Path(result).write_text(json.dumps({"done": False, "error": "the simulation ended without a result "
                                                                     "(see the worker log)"}))
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "simulate":
        sys.exit(_simulate(*sys.argv[2:]))
    sys.exit("usage: python -m aecomp.fl.engine simulate SETTINGS RESULT PROGRESS RAY_DIR")
