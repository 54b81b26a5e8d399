"""How an instance actually runs: one small interface, a native and a Docker implementation.

A backend launches a LaunchSpec, tells whether it is still running (and how it ended), stops it,
and reads its log. Decisions (which port, whether to start at all, rollback) belong to
:mod:`mcp_server.runtime.lifecycle`; backends only act.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Literal, Protocol

import psutil
from pydantic import BaseModel, Field

from mcp_server.engine.argv import LaunchSpec
from mcp_server.errors import LlamaPilotError
from mcp_server.runtime.registry import InstanceRecord


class ProcessState(BaseModel):
    alive: bool
    exit_code: int | None = None
    detail: str | None = None  # e.g. "OOMKilled", "pid reused by another program"


# Every server llama-pilot starts carries these in its environment (native) or labels (Docker):
# which LLAMA_PILOT_HOME started it, as which instance of which profile. They are what tells our
# own servers from another home's, a test suite's or one a person started by hand.
MARK_HOME = "LLAMA_PILOT_OWNER_HOME"
MARK_INSTANCE = "LLAMA_PILOT_OWNER_INSTANCE"
MARK_PROFILE = "LLAMA_PILOT_OWNER_PROFILE"

Owner = Literal["ours", "home-gone", "other-home", "unmarked", "unreadable"]


def owner_marks(home: Path, instance_id: str, profile: str) -> dict[str, str]:
    return {MARK_HOME: str(home), MARK_INSTANCE: instance_id, MARK_PROFILE: profile}


def classify_owner(marks: dict[str, str] | None, home: Path, same_user: bool) -> Owner:
    """Whose server this is, from its marks: this home's, a vanished home's (same user), or not ours."""
    if marks is None:
        return "unreadable"
    marked_home = marks.get(MARK_HOME)
    if not marked_home or not marks.get(MARK_INSTANCE):
        return "unmarked"
    if os.path.abspath(marked_home) == os.path.abspath(home):
        return "ours"
    if same_user and not os.path.isdir(marked_home):
        return "home-gone"  # its home was deleted or moved away: nobody else can manage it
    return "other-home"


# Owners whose servers this home may adopt and stop without naming them one by one.
OWN = ("ours", "home-gone")


class Unmanaged(BaseModel):
    """A llama-server (process or container) that no record owns."""

    backend: str
    pid: int | None = None
    container_id: str | None = None
    argv: list[str]
    port: int | None = None
    model_path: str | None = None
    started_at: float
    owner: Owner = Field(description="ours: started by this LLAMA_PILOT_HOME; home-gone: by a home that no "
                                     "longer exists (same user); other-home, unmarked (started by hand or by "
                                     "another tool), unreadable (another user's): foreign, never touched "
                                     "without --force")
    home: str | None = Field(default=None, description="the LLAMA_PILOT_HOME that started it, from its marks")
    instance: str | None = Field(default=None, description="its instance id, from its marks")
    profile: str | None = Field(default=None, description="its profile id, from its marks")

    @property
    def is_own(self) -> bool:
        return self.owner in OWN


class Backend(Protocol):
    name: str

    def launch(self, record: InstanceRecord, spec: LaunchSpec, hold_fd: int | None = None) -> InstanceRecord: ...

    def state(self, record: InstanceRecord) -> ProcessState: ...

    def stop(self, record: InstanceRecord, grace_s: float) -> ProcessState: ...

    def read_log(self, record: InstanceRecord) -> str: ...

    def unmanaged(self, known: list[InstanceRecord], home: Path) -> list[Unmanaged]: ...


def append_separator(log_path: Path, text: str) -> None:
    """A visible line between runs: logs are kept across restarts, as the original dashboard did."""
    try:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            log.write(f"\n----- llama-pilot {stamp}: {text} -----\n".encode())
    except OSError as exc:
        from mcp_server import paths
        from mcp_server.errors import StorageError

        raise StorageError.from_os_error(exc, "write the log", log_path, fix=paths.home_fix(exc)) from None


def argv_value(argv: list[str], *flags: str) -> str | None:
    """The word after the first of ``flags`` found in ``argv`` (in the order the flags are given)."""
    for flag in flags:
        if flag in argv:
            i = argv.index(flag)
            if i + 1 < len(argv):
                return argv[i + 1]
    return None


def argv_port(argv: list[str]) -> int | None:
    value = argv_value(argv, "--port")
    return int(value) if value is not None and value.isdigit() else None


def argv_model(argv: list[str]) -> str | None:
    return argv_value(argv, "--model", "-m")


# The keeper needs only the standard library and this package, so it starts without `site` (-S): no
# .pth files to run, which is most of an interpreter's start on a loaded machine, and the server it
# launches comes up that much sooner. The package's folder goes on its path instead.
KEEPER = (sys.executable, "-S", "-m", "mcp_server.runtime.keeper")
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])


def _keeper_env(marks: dict[str, str]) -> dict[str, str]:
    env = {**os.environ, **marks}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_ROOT, os.environ.get("PYTHONPATH")) if p)
    return env


class NativeBackend:
    """llama-server as a local process under a keeper, in its own session and process group."""

    name = "native"

    def launch(self, record: InstanceRecord, spec: LaunchSpec, hold_fd: int | None = None) -> InstanceRecord:
        """Start the keeper, which starts llama-server; returns the record with both pids.

        ``hold_fd`` is the registry lock's descriptor: the keeper inherits it and closes it only once
        the pid file is written, so a launcher killed at any moment leaves the lock held until the
        server can be found from its record (see :meth:`recover`).
        """
        log_path = Path(record.log_path)
        pid_file, exit_file = run_files(record)
        pid_file.parent.mkdir(parents=True, exist_ok=True)
        for stale in (pid_file, exit_file):
            stale.unlink(missing_ok=True)
        hold = ["--hold-fd", str(hold_fd)] if hold_fd is not None else []
        with open(log_path, "ab") as log:
            keeper = subprocess.Popen(
                [*KEEPER, *hold, str(pid_file), str(exit_file), "--", *spec.argv],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=_keeper_env(record.env),
                start_new_session=True, close_fds=True, pass_fds=(hold_fd,) if hold_fd is not None else ())
        pid = self._wait_pid(pid_file, exit_file, keeper)
        return record.model_copy(update={"pid": pid, "supervisor_pid": keeper.pid, "pid_create_time": create_time(pid),
                                         "exit_file": str(exit_file)})

    @staticmethod
    def _wait_pid(pid_file: Path, exit_file: Path, keeper: subprocess.Popen[bytes]) -> int | None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            pids = _read_pids(pid_file)
            if pids is not None:
                return pids[0]
            if exit_file.exists() or keeper.poll() is not None:
                return None  # could not exec the engine: the exit file says why
            time.sleep(0.005)
        raise LlamaPilotError("the keeper process did not start llama-server within 10 s")

    def recover(self, record: InstanceRecord) -> InstanceRecord:
        """A record saved before its launcher learned the pids (the launcher was killed): fill them in
        from the keeper's pid file. Unchanged when there is nothing to recover."""
        if record.pid is not None or not record.exit_file:
            return record
        pids = _read_pids(run_files(record)[0])
        if pids is None:
            return record
        pid, keeper_pid = pids
        return record.model_copy(update={"pid": pid, "supervisor_pid": keeper_pid or record.supervisor_pid,
                                         "pid_create_time": create_time(pid)})

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
        if record.pid:
            return ProcessState(alive=False, detail=_gone_detail(record.pid, record.pid_create_time))
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

    def unmanaged(self, known: list[InstanceRecord], home: Path) -> list[Unmanaged]:
        owned = {r.pid for r in known if r.pid} | {r.supervisor_pid for r in known if r.supervisor_pid}
        me = os.geteuid()
        found = []
        # Every status call scans: only the process name first (one tiny read per process), then
        # cmdline and environment of the llama-servers.
        for pid in _pids_named("llama-server"):
            if pid in owned:
                continue
            try:
                proc = psutil.Process(pid)
                cmd = proc.cmdline()
                started = proc.create_time()
                if proc.status() == psutil.STATUS_ZOMBIE:
                    continue
            except psutil.Error:
                continue
            if not cmd or Path(cmd[0]).name != "llama-server" or _in_container(proc.pid):
                continue  # the Docker backend reports containers through the Docker API
            marks = _marks(proc)
            try:
                same_user = proc.uids().effective == me
            except psutil.Error:
                same_user = False
            found.append(Unmanaged(backend=self.name, pid=proc.pid, argv=cmd, port=argv_port(cmd),
                                   model_path=argv_model(cmd), started_at=started,
                                   owner=classify_owner(marks, home, same_user),
                                   home=(marks or {}).get(MARK_HOME), instance=(marks or {}).get(MARK_INSTANCE),
                                   profile=(marks or {}).get(MARK_PROFILE)))
        return found


def _pids_named(name: str) -> list[int]:
    """Pids whose process name (``comm``, at most 15 characters) is ``name``."""
    proc = Path("/proc")
    if not (proc / "self" / "comm").exists():  # not Linux: psutil knows how
        return [p.pid for p in psutil.process_iter(["name"]) if p.info.get("name") == name]
    found = []
    for entry in os.scandir(proc):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/comm", "rb") as fh:
                if fh.read().rstrip(b"\n").decode(errors="replace") == name[:15]:
                    found.append(int(entry.name))
        except OSError:
            continue  # ended meanwhile
    return found


def run_files(record: InstanceRecord) -> tuple[Path, Path]:
    """The keeper's pid file and exit file of an instance (the pid file sits beside the exit file)."""
    exit_file = Path(record.exit_file or "")
    return exit_file.with_suffix(".pid"), exit_file


def _read_pids(pid_file: Path) -> tuple[int, int | None] | None:
    try:
        data = json.loads(pid_file.read_text())
        return int(data["pid"]), (int(data["keeper_pid"]) if data.get("keeper_pid") else None)
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return None


def _marks(proc: psutil.Process) -> dict[str, str] | None:
    """The llama-pilot marks in a process's environment; None when the environment is not readable."""
    try:
        env = proc.environ()
    except psutil.Error:
        return None
    return {k: env[k] for k in (MARK_HOME, MARK_INSTANCE, MARK_PROFILE) if k in env}


def _gone_detail(pid: int, started: float | None) -> str:
    """Why a recorded pid is not our running server: ended but not yet reaped, reused, or gone."""
    try:
        proc = psutil.Process(pid)
        same = started is None or abs(proc.create_time() - started) < 0.01
        if same and proc.status() == psutil.STATUS_ZOMBIE:
            return "the process has ended and is waiting to be reaped by its parent"
        if not same:
            return "its pid now belongs to another program (the record is stale)"
    except psutil.Error:
        pass
    return "process is gone and no exit status was recorded"


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
    return wait_ended([p for p in (record.pid, record.supervisor_pid) if p], timeout_s)


def wait_ended(pids: list[int], timeout_s: float) -> bool:
    """True once every pid is gone or a zombie (ended; its parent, maybe not us, reaps it)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not any(_alive(p) for p in pids):
            return True
        time.sleep(0.02)
    return not any(_alive(p) for p in pids)
