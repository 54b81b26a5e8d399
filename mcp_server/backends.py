"""How an instance actually runs: one small interface, a native and a Docker implementation.

A backend launches a LaunchSpec, tells whether it is still running (and how it ended), stops it,
and reads its log. Decisions (which port, whether to start at all, rollback) belong to
:mod:`mcp_server.runtime`; backends only act.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Protocol

import psutil
from pydantic import BaseModel

from .argv import LaunchSpec
from .errors import LlamaPilotError
from .instances import InstanceRecord


class ProcessState(BaseModel):
    alive: bool
    exit_code: int | None = None
    detail: str | None = None  # e.g. "OOMKilled", "pid reused by another program"


class Unmanaged(BaseModel):
    """A llama-server (process or container) that no record owns."""

    backend: str
    pid: int | None = None
    container_id: str | None = None
    argv: list[str]
    port: int | None = None
    model_path: str | None = None
    started_at: float


class Backend(Protocol):
    name: str

    def launch(self, record: InstanceRecord, spec: LaunchSpec) -> InstanceRecord: ...

    def state(self, record: InstanceRecord) -> ProcessState: ...

    def stop(self, record: InstanceRecord, grace_s: float) -> ProcessState: ...

    def read_log(self, record: InstanceRecord) -> str: ...

    def unmanaged(self, known: list[InstanceRecord]) -> list[Unmanaged]: ...


def append_separator(log_path: Path, text: str) -> None:
    """A visible line between runs: logs are kept across restarts, as the original dashboard did."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        log.write(f"\n----- llama-pilot {stamp}: {text} -----\n".encode())


def argv_port(argv: list[str]) -> int | None:
    for flag in ("--port",):
        if flag in argv:
            i = argv.index(flag)
            if i + 1 < len(argv) and argv[i + 1].isdigit():
                return int(argv[i + 1])
    return None


def argv_model(argv: list[str]) -> str | None:
    for flag in ("--model", "-m"):
        if flag in argv:
            i = argv.index(flag)
            if i + 1 < len(argv):
                return argv[i + 1]
    return None


class NativeBackend:
    """llama-server as a local process under a keeper, in its own session and process group."""

    name = "native"

    def launch(self, record: InstanceRecord, spec: LaunchSpec) -> InstanceRecord:
        log_path = Path(record.log_path)
        run_dir = Path(record.exit_file or "").parent
        run_dir.mkdir(parents=True, exist_ok=True)
        pid_file = run_dir / f"{record.id}.pid"
        exit_file = Path(record.exit_file or run_dir / f"{record.id}.exit")
        for stale in (pid_file, exit_file):
            stale.unlink(missing_ok=True)
        with open(log_path, "ab") as log:
            keeper = subprocess.Popen(
                [sys.executable, "-m", "mcp_server.keeper", str(pid_file), str(exit_file), "--", *spec.argv],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **spec.env},
                start_new_session=True, close_fds=True)
        pid = self._wait_pid(pid_file, exit_file, keeper)
        return record.model_copy(update={"pid": pid, "supervisor_pid": keeper.pid, "pid_create_time": create_time(pid),
                                         "exit_file": str(exit_file)})

    @staticmethod
    def _wait_pid(pid_file: Path, exit_file: Path, keeper: subprocess.Popen[bytes]) -> int | None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if pid_file.exists():
                try:
                    return int(json.loads(pid_file.read_text())["pid"])
                except (ValueError, KeyError):
                    pass
            if exit_file.exists() or keeper.poll() is not None:
                return None  # could not exec the engine: the exit file says why
            time.sleep(0.005)
        raise LlamaPilotError("the keeper process did not start llama-server within 10 s")

    def state(self, record: InstanceRecord) -> ProcessState:
        ended = _read_exit(record)
        if ended is not None:
            return ProcessState(alive=False, exit_code=ended)
        if record.pid and _same_process(record.pid, record.pid_create_time):
            return ProcessState(alive=True)
        if record.supervisor_pid and _alive(record.supervisor_pid):
            # The server just ended and its keeper is about to write the exit status: wait for it.
            deadline = time.monotonic() + 2.0
            while time.monotonic() < deadline:
                ended = _read_exit(record)
                if ended is not None:
                    return ProcessState(alive=False, exit_code=ended)
                time.sleep(0.01)
        if record.pid and psutil.pid_exists(record.pid):
            return ProcessState(alive=False, detail="pid now belongs to another program (record is stale)")
        return ProcessState(alive=False, detail="process is gone and no exit status was recorded")

    def stop(self, record: InstanceRecord, grace_s: float) -> ProcessState:
        targets = self._group(record)
        _signal_all(targets, signal.SIGTERM)
        if not _wait_gone(record, grace_s):
            _signal_all(targets, signal.SIGKILL)
            _wait_gone(record, 10)
        return self.state(record)

    def _group(self, record: InstanceRecord) -> list[tuple[str, int]]:
        # Our own instances: signal the keeper's whole group. Adopted ones: the server's pid alone
        # unless it leads its own group.
        if record.supervisor_pid and _alive(record.supervisor_pid):
            return [("group", record.supervisor_pid)]
        if record.pid and _same_process(record.pid, record.pid_create_time):
            try:
                if os.getpgid(record.pid) == record.pid:
                    return [("group", record.pid)]
            except OSError:
                pass
            return [("pid", record.pid)]
        return []

    def read_log(self, record: InstanceRecord) -> str:
        try:
            return Path(record.log_path).read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def unmanaged(self, known: list[InstanceRecord]) -> list[Unmanaged]:
        owned = {r.pid for r in known if r.pid} | {r.supervisor_pid for r in known if r.supervisor_pid}
        found = []
        for proc in psutil.process_iter(["pid", "name", "cmdline", "create_time"]):
            info = proc.info
            cmd = info.get("cmdline") or []
            if not cmd or Path(cmd[0]).name != "llama-server" or info["pid"] in owned:
                continue
            if _in_container(info["pid"]):
                continue  # the Docker backend reports those through the Docker API
            found.append(Unmanaged(backend=self.name, pid=info["pid"], argv=cmd, port=argv_port(cmd),
                                   model_path=argv_model(cmd), started_at=info["create_time"]))
        return found


def _in_container(pid: int) -> bool:
    try:
        cgroup = Path(f"/proc/{pid}/cgroup").read_text()
    except OSError:
        return False
    return "docker" in cgroup or "containerd" in cgroup


def _read_exit(record: InstanceRecord) -> int | None:
    if not record.exit_file:
        return None
    try:
        return int(json.loads(Path(record.exit_file).read_text())["exit_code"])
    except (FileNotFoundError, ValueError, KeyError):
        return None


def create_time(pid: int | None) -> float | None:
    """When the process started (guards against pid reuse); None when it is not visible from here."""
    if not pid:
        return None
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def _same_process(pid: int, started: float | None) -> bool:
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return started is None or abs(proc.create_time() - started) < 0.01
    except psutil.Error:
        return False


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _signal_all(targets: list[tuple[str, int]], sig: signal.Signals) -> None:
    for kind, pid in targets:
        try:
            if kind == "group":
                os.killpg(pid, sig)
            else:
                os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _wait_gone(record: InstanceRecord, timeout_s: float) -> bool:
    """True once the server and its keeper have both exited."""
    deadline = time.monotonic() + timeout_s
    pids = [p for p in (record.pid, record.supervisor_pid) if p]
    while time.monotonic() < deadline:
        if not any(_alive(p) for p in pids):
            return True
        time.sleep(0.02)
    return not any(_alive(p) for p in pids)
