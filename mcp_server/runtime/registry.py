"""What is running: one JSON record per llama-server instance, under a lock every process shares.

The MCP server (one per Claude Code conversation), the CLI and the dashboard are separate
processes, so the truth cannot live in any one of them. Records live in
``state_dir()/instances/<id>.json``; every read-modify-write happens while holding an exclusive
``flock`` on ``state_dir()/lock``. A record is a claim, not the truth: the runtime checks it
against the OS or Docker before reporting it.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import threading
import time
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import Iterable, Iterator

from pydantic import BaseModel, Field

from mcp_server import paths
from mcp_server.profiles.config import BackendName
from mcp_server.errors import storage_errors
from mcp_server.files import atomic_write
from mcp_server.workers.spec import WorkerUse


class InstanceStatus(StrEnum):
    LOADING = "loading"  # process started, /health not yet 200 (503 while the model loads)
    READY = "ready"  # /health answered 200
    FAILED = "failed"  # ended without being asked to, or never became ready
    STOPPED = "stopped"  # stopped on request


LIVE = (InstanceStatus.LOADING, InstanceStatus.READY)


class Diagnosis(BaseModel):
    """Why a start failed, read from the log and the exit status."""

    cause: str = Field(description="oom | model-missing | model-unreadable | model-incomplete | unknown-architecture | "
                                   "invalid-argument | port-in-use | timeout | crashed | killed | exited | "
                                   "worker-unreachable | worker-lost | worker-version-mismatch | "
                                   "worker-token-refused | worker-busy | worker | unknown")
    worker: str | None = Field(default=None, description="the RPC worker the failure is about")
    summary: str
    fix: str
    device: str | None = Field(default=None, description="device named in an out-of-memory failure")
    stage: str | None = Field(default=None, description="weights | kv-cache | compute-buffers, for oom")
    evidence: list[str] = Field(default_factory=list, description="log lines the diagnosis rests on")


class InstanceRecord(BaseModel):
    id: str
    profile: str
    backend: BackendName
    status: InstanceStatus
    host: str
    port: int
    argv: list[str]
    env: dict[str, str] = Field(default_factory=dict)
    log_path: str
    model_path: str
    model_bytes: int = 0
    visible_devices: list[int] | None = None
    pid: int | None = Field(default=None, description="llama-server's pid (native), host pid in Docker")
    pid_create_time: float | None = Field(default=None, description="guards against pid reuse")
    supervisor_pid: int | None = Field(default=None, description="llama-pilot's keeper process (native)")
    exit_file: str | None = None
    container_id: str | None = None
    container_name: str | None = None
    started_at: float
    ready_at: float | None = None
    ended_at: float | None = None
    load_timeout_s: float = 300.0
    exit_code: int | None = None
    diagnosis: Diagnosis | None = None
    adopted: bool = False
    note: str | None = Field(default=None, description="how the record came to be, when not by a start here "
                                                       "(e.g. recovered after the state folder was lost)")
    stop_requested: bool = Field(default=False, description="a stop was asked for: the end is a stop, not a failure")
    workers: list[WorkerUse] = Field(default_factory=list, description="RPC workers whose devices it uses")

    @property
    def base_url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{host}:{self.port}"

    @property
    def is_live(self) -> bool:
        return self.status in LIVE


def live_records(instances: "Iterable[InstanceRecord] | None" = None) -> list[InstanceRecord]:
    """The records that claim a running server (read from the registry when none are given).

    A claim, not a check: monitoring uses it to name processes, the runtime verifies claims."""
    if instances is None:
        try:
            instances = Registry().all()
        except OSError:
            return []
    return [r for r in instances if r.is_live]


def new_instance_id(profile: str) -> str:
    return f"{profile}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


class Registry:
    """The records and the lock; only the runtime writes through it."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = root or paths.state_dir()
        self.dir = self.root / "instances"
        with storage_errors("create", self.dir, fix=paths.home_fix):
            self.dir.mkdir(parents=True, exist_ok=True)
            self.run_dir.mkdir(exist_ok=True)
        self._lock_path = self.root / "lock"
        self._depth = 0
        self._lock_fd: int | None = None
        self._owner: int | None = None  # the thread holding the lock
        self._threads = threading.Lock()

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Exclusive across processes (flock) and across threads, re-entrant within one thread.

        Re-entry is per thread: a second thread sharing this Registry (the dashboard's workers) waits
        on the thread lock as another process waits on the flock, instead of walking in on the count.
        """
        me = threading.get_ident()
        if self._owner == me:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        with self._threads:
            with storage_errors("open the lock", self._lock_path, fix=paths.home_fix):
                fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                self._owner, self._lock_fd, self._depth = me, fd, 1
                try:
                    yield
                finally:
                    self._owner, self._depth, self._lock_fd = None, 0, None
                    fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)

    @property
    def lock_fd(self) -> int | None:
        """The lock's descriptor while this process holds it: a child that inherits it holds the lock too."""
        return self._lock_fd

    @property
    def run_dir(self) -> Path:
        """The keepers' pid and exit files, ``<instance id>.pid`` / ``.exit``."""
        return self.root / "run"

    def _path(self, instance_id: str) -> Path:
        return self.dir / f"{instance_id}.json"

    def all(self) -> list[InstanceRecord]:
        records = []
        for path in sorted(self.dir.glob("*.json")):
            try:
                records.append(InstanceRecord.model_validate_json(path.read_text()))
            except (OSError, ValueError):
                continue  # a half-written file cannot exist (atomic writes); anything else is not ours
        return sorted(records, key=lambda r: r.started_at)

    def get(self, instance_id: str) -> InstanceRecord | None:
        path = self._path(instance_id)
        try:
            return InstanceRecord.model_validate_json(path.read_text())
        except FileNotFoundError:
            return None

    def save(self, record: InstanceRecord) -> None:
        data = json.dumps(record.model_dump(mode="json"), indent=2).encode()
        with storage_errors("save the instance record in", self.dir, fix=paths.home_fix):
            # 0600: a record holds the server's argv, and with it any --api-key.
            atomic_write(self._path(record.id), data, mode=0o600)

    def delete(self, instance_id: str) -> None:
        """Forget an instance: its record and its keeper's pid and exit files."""
        self._path(instance_id).unlink(missing_ok=True)
        for suffix in (".pid", ".exit"):
            (self.run_dir / f"{instance_id}{suffix}").unlink(missing_ok=True)

    def prune_run_files(self) -> int:
        """Remove pid and exit files that no record refers to (left by older versions or lost records).

        Call under the lock: a launch saves its record before its keeper writes these files."""
        if not self.run_dir.is_dir():
            return 0
        known = {p.stem for p in self.dir.glob("*.json")}
        removed = 0
        for path in self.run_dir.iterdir():
            name = _run_file_name(path.name)
            for suffix in (".pid", ".exit"):
                if name.endswith(suffix) and name.removesuffix(suffix) not in known:
                    path.unlink(missing_ok=True)
                    removed += 1
        return removed



def _run_file_name(name: str) -> str:
    """The pid or exit file a name in the run folder stands for, its keeper's temporary files included.

    Keepers write ``.<id>.pid.<random>.tmp`` (``<id>.pid.tmp`` in older versions) and rename it;
    one killed in between leaves the temporary file behind.
    """
    if name.startswith(".") and name.endswith(".tmp"):
        return name[1:].removesuffix(".tmp").rpartition(".")[0]
    return name.removesuffix(".tmp")
