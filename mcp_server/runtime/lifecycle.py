"""Start, stop, switch and watch llama-server instances; the only writer of instance records.

Every decision that depends on what is running (is this profile already up, is that port free,
what must stop before a switch) is made while holding the registry lock, so two processes
asking at once get one consistent answer. Waiting for a model to load happens outside the lock:
a 60 GB model must not block ``status`` for a minute.
"""

from __future__ import annotations

import errno
import socket
import time
from pathlib import Path
from typing import Callable

import psutil
from pydantic import BaseModel, Field

from mcp_server import paths
from mcp_server.engine.argv import launch_spec
from mcp_server.runtime.native import (Backend, NativeBackend, ProcessState, Unmanaged, append_separator, create_time,
                       argv_value, owner_marks, wait_ended)
from mcp_server.errors import LlamaPilotError, ValidationError
from mcp_server.runtime.server_api import health
from mcp_server.runtime.registry import Diagnosis, InstanceRecord, InstanceStatus, Registry, new_instance_id
from mcp_server.runtime.server_log import LoadProgress, LoadReport, diagnose, load_progress, parse_load_report, strip_ansi
from mcp_server.profiles.config import Config, Profile

Progress = Callable[["LoadProgress"], None]

# Loading is mostly reading the file: assume a slow disk (150 MB/s) on top of a fixed minute, so a
# 250 MB model gets ~62 s and a 60 GB one ~7.5 min before we call it stuck.
_BASE_TIMEOUT_S = 60.0
_BYTES_PER_S = 150e6


class LifecycleError(LlamaPilotError):
    """Base for lifecycle failures."""


class AlreadyRunning(LifecycleError):
    pass


class NotRunning(LifecycleError):
    pass


class StartRefused(LifecycleError):
    """Refused before launching anything; the diagnosis says why, as for a failed start."""

    def __init__(self, diagnosis: Diagnosis) -> None:
        self.diagnosis = diagnosis
        super().__init__(f"{diagnosis.summary} (cause: {diagnosis.cause}). Fix: {diagnosis.fix}")


class PortInUse(StartRefused):
    def __init__(self, port_text: str, owner: str) -> None:
        super().__init__(Diagnosis(cause="port-in-use", summary=f"{port_text} is in use by {owner}",
                                   fix="stop it, or set another PORT for the profile"))


class StartFailed(LifecycleError):
    """A start ended without a ready server; carries the diagnosis and the instance record."""

    def __init__(self, record: InstanceRecord, diagnosis: Diagnosis, log_tail: list[str]) -> None:
        self.record = record
        self.diagnosis = diagnosis
        self.log_tail = log_tail
        lines = "\n".join(f"  {line}" for line in log_tail[-8:])
        super().__init__(f"{record.profile} failed to start: {diagnosis.summary} (cause: {diagnosis.cause}).\n"
                         f"Fix: {diagnosis.fix}\nLog: {record.log_path}\nLast log lines:\n{lines}")


class InstanceView(BaseModel):
    """What status() reports for one instance."""

    id: str
    profile: str
    backend: str
    status: InstanceStatus
    host: str
    port: int
    url: str
    pid: int | None
    container_id: str | None
    started_at: float
    ready_at: float | None
    ended_at: float | None
    uptime_s: float | None = Field(description="seconds since ready, while it runs")
    load_seconds: float | None
    exit_code: int | None
    diagnosis: Diagnosis | None
    log_path: str
    adopted: bool
    note: str | None = None
    progress: LoadProgress | None = None


class SwitchResult(BaseModel):
    stopped: list[InstanceView]
    started: InstanceView | None
    rolled_back: list[InstanceView] = Field(default_factory=list)
    error: str | None = None


def _view(record: InstanceRecord, progress: LoadProgress | None = None) -> InstanceView:
    now = time.time()
    uptime = round(now - record.ready_at, 1) if record.status == InstanceStatus.READY and record.ready_at else None
    load = round(record.ready_at - record.started_at, 3) if record.ready_at else None
    return InstanceView(id=record.id, profile=record.profile, backend=record.backend, status=record.status,
                        host=record.host, port=record.port, url=record.base_url, pid=record.pid,
                        container_id=record.container_id, started_at=record.started_at, ready_at=record.ready_at,
                        ended_at=record.ended_at, uptime_s=uptime, load_seconds=load, exit_code=record.exit_code,
                        diagnosis=record.diagnosis, log_path=record.log_path, adopted=record.adopted,
                        note=record.note, progress=progress)


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host if host not in ("", "0.0.0.0") else "0.0.0.0", port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
        return True


class Runtime:
    """Lifecycle operations over one models.conf, one registry and the backends."""

    def __init__(self, config: Config, registry: Registry | None = None,
                 backends: dict[str, Backend] | None = None) -> None:
        self.config = config
        self.registry = registry or Registry()
        self._backends: dict[str, Backend] = dict(backends or {})

    # -- backends ------------------------------------------------------------------------

    def backend(self, name: str) -> Backend:
        if name not in self._backends:
            if name == "native":
                self._backends[name] = NativeBackend()
            elif name == "docker":
                from mcp_server.runtime.containers import DockerBackend

                self._backends[name] = DockerBackend(image=self.config.host.docker_image,
                                                     models_dir=self.config.host.models_dir)
            else:
                raise LlamaPilotError(f"unknown backend {name!r}: use native or docker")
        return self._backends[name]

    def _backend_name(self, profile: Profile, override: str | None) -> str:
        return override or profile.get("BACKEND") or self.config.host.backend

    # -- reconcile -----------------------------------------------------------------------

    def _refresh(self, record: InstanceRecord) -> InstanceRecord:
        """Check one live record against reality; persists any change. Call under the lock."""
        if not record.is_live:
            return record
        if record.backend == "native" and record.pid is None:
            recovered = self.backend("native").recover(record)  # type: ignore[attr-defined]
            if recovered is not record:
                record = recovered
                self.registry.save(record)
        try:
            state = self.backend(record.backend).state(record)
        except LlamaPilotError:
            return record  # e.g. the Docker daemon is down: report the last known state, decide nothing
        if not state.alive:
            return self._mark_ended(record, state)
        if record.status == InstanceStatus.LOADING and health(record.base_url, timeout=1.0)[0] == 200:
            record = record.model_copy(update={"status": InstanceStatus.READY, "ready_at": time.time()})
            self.registry.save(record)
        return record

    def _mark_ended(self, record: InstanceRecord, state: ProcessState, *, timed_out: bool = False,
                    requested: bool = False) -> InstanceRecord:
        current = self.registry.get(record.id)
        if not requested and current is not None:
            # Whoever notices the end first (a status call, the wait of a start whose caller
            # cancelled) must not call a requested stop a failure, nor overwrite how it ended.
            if not current.is_live:
                return current
            requested = current.stop_requested
        if requested:
            update = {"status": InstanceStatus.STOPPED, "exit_code": state.exit_code, "ended_at": time.time()}
        else:
            log = self.backend(record.backend).read_log(record)
            diagnosis = diagnose(log, state.exit_code, timed_out=timed_out, port=record.port)
            if state.detail and diagnosis.cause in ("unknown", "exited", "killed"):
                diagnosis = diagnosis.model_copy(update={"summary": f"{diagnosis.summary} ({state.detail})"})
            update = {"status": InstanceStatus.FAILED, "exit_code": state.exit_code, "ended_at": time.time(),
                      "diagnosis": diagnosis}
            if record.backend == "docker":
                # An exited container still holds its log and its name: archive the log, remove it.
                self.backend(record.backend).stop(record, 0)
        record = record.model_copy(update=update)
        self.registry.save(record)
        return record

    def _records(self) -> list[InstanceRecord]:
        """All records, refreshed, with only the newest ended record kept per profile."""
        with self.registry.lock():
            records = self._reconciled()
            newest_ended: dict[str, InstanceRecord] = {}
            for record in records:
                if record.is_live:
                    continue
                older = newest_ended.get(record.profile)
                if older is None or older.started_at < record.started_at:
                    if older is not None:
                        self.registry.delete(older.id)
                    newest_ended[record.profile] = record
                else:
                    self.registry.delete(record.id)
            self.registry.prune_run_files()
            return [r for r in records if r.is_live or newest_ended.get(r.profile) is r]

    def _reconciled(self) -> list[InstanceRecord]:
        """Every record checked against the OS, plus records recovered for this home's servers that
        have none (the state folder was deleted, or the home moved). Call under the lock.

        Without this, a server whose record was lost would be invisible: status would say nothing
        runs, a start would launch a second copy on the next port, and ``stop all`` would leave it.
        """
        records = [self._refresh(r) for r in self.registry.all()]
        for orphan in self._own_orphans(records):
            records.append(self._record_orphan(orphan, note=_recovered_note(orphan)))
        return records

    def _own_orphans(self, known: list[InstanceRecord]) -> list[Unmanaged]:
        # Only running servers are recovered: an exited container left behind is for `orphans` to
        # list, not a live instance (it has no pid).
        return [o for o in self._unmanaged(known, tolerant=True)
                if o.is_own and o.pid and (o.backend == "native" or o.owner == "ours")]

    def _unmanaged(self, known: list[InstanceRecord], *, tolerant: bool) -> list[Unmanaged]:
        """What each backend in use finds without a record; ``tolerant``: a backend that cannot be
        asked (no Docker daemon) finds nothing, instead of failing the call."""
        found: list[Unmanaged] = []
        for name in ("native", "docker") if self._uses_docker(known) else ("native",):
            try:
                found += self.backend(name).unmanaged(known, paths.home())
            except LlamaPilotError:
                if not tolerant:
                    raise
        return found

    def _uses_docker(self, known: list[InstanceRecord]) -> bool:
        return any(r.backend == "docker" for r in known) or self.config.host.backend == "docker" or any(
            p.get("BACKEND") == "docker" for p in self.config.profiles.values())

    # -- operations ----------------------------------------------------------------------

    def status(self) -> list[InstanceView]:
        """Every known instance: live ones, and the last ended one per profile (with its cause)."""
        views = []
        for record in self._records():
            progress = None
            if record.status == InstanceStatus.LOADING:
                progress = load_progress(self.backend(record.backend).read_log(record))
            views.append(_view(record, progress))
        return views

    def live(self) -> list[InstanceRecord]:
        return [r for r in self._records() if r.is_live]

    def start_model(self, profile_id: str, *, backend: str | None = None, port: int | None = None,
              timeout_s: float | None = None, progress: Progress | None = None, wait: bool = True) -> InstanceView:
        """Start a profile and (by default) wait until it answers /health with 200."""
        if timeout_s is not None and not 0 < timeout_s <= 86400:
            raise ValidationError("timeout_s", timeout_s, "must be more than 0 and at most 86400 seconds "
                                  "(leave it out for the default, which grows with the model's size)")
        record = self._launch(profile_id, backend=backend, port=port, timeout_s=timeout_s)
        if not wait:
            return _view(record)
        return _view(self._wait_ready(record, progress))

    def wait(self, instance_id: str, progress: Progress | None = None) -> InstanceView:
        """Wait for an instance started with ``wait=False`` to become ready (or fail)."""
        record = self.registry.get(instance_id)
        if record is None:
            raise NotRunning(f"no instance {instance_id}")
        if record.status == InstanceStatus.READY:
            return _view(record)
        if not record.is_live:
            raise StartFailed(record, record.diagnosis or diagnose("", record.exit_code), self._tail(record))
        return _view(self._wait_ready(record, progress))

    def _launch(self, profile_id: str, *, backend: str | None, port: int | None,
                timeout_s: float | None) -> InstanceRecord:
        from mcp_server.engine.binary import locate_engine

        profile = self.config.profile(profile_id)
        backend_name = self._backend_name(profile, backend)
        model_path = self.config.model_path(profile)
        if model_path is None or not model_path.is_file():
            raise StartRefused(Diagnosis(cause="model-missing", summary=f"{profile_id}: model file {model_path} is missing",
                                         fix="download it or fix MODEL (llama-pilot lint lists missing files and shards)"))
        engine = "llama-server" if backend_name == "docker" else locate_engine(self.config.host.engine).path
        with self.registry.lock():
            live = [r for r in self._reconciled() if r.is_live]
            for other in live:
                if other.profile == profile_id:
                    raise AlreadyRunning(f"{profile_id} is already {other.status} on port {other.port} "
                                         f"(instance {other.id}); stop it first, or use switch")
            chosen = self._choose_port(profile, port, live)
            spec = launch_spec(profile, self.config, engine=engine, port=chosen,
                               model_root="/models" if backend_name == "docker" else None)
            size = sum(p.stat().st_size for p in _shards(model_path))
            instance_id = new_instance_id(profile_id)
            record = InstanceRecord(
                id=instance_id, profile=profile_id, backend=backend_name, status=InstanceStatus.LOADING,
                host=spec.host, port=spec.port, argv=spec.argv,
                env={**spec.env, **owner_marks(paths.home(), instance_id, profile_id)},
                log_path=str(paths.logs_dir() / f"{profile_id}.log"), model_path=str(model_path), model_bytes=size,
                visible_devices=spec.visible_devices, exit_file=str(self.registry.run_dir / f"{instance_id}.exit"),
                started_at=time.time(), load_timeout_s=timeout_s or (_BASE_TIMEOUT_S + size / _BYTES_PER_S))
            append_separator(Path(record.log_path), f"starting {profile_id} ({profile.name}) as {instance_id}, "
                                                    f"{backend_name}, port {spec.port}")
            self.registry.save(record)  # claim the port before the slow part
            try:
                record = self.backend(backend_name).launch(record, spec, hold_fd=self.registry.lock_fd)
            except LlamaPilotError:
                self.registry.delete(record.id)
                raise
            self.registry.save(record)
            return record

    def _choose_port(self, profile: Profile, requested: int | None, live: list[InstanceRecord]) -> int:
        taken = {r.port for r in live}
        explicit = requested or (int(profile.values["PORT"]) if "PORT" in profile.values else None)
        if explicit is not None:
            if explicit in taken or not port_is_free(explicit):
                owner = next((r.profile for r in live if r.port == explicit), "another program")
                raise PortInUse(f"port {explicit}", owner)
            return explicit
        port = int(profile.get("PORT") or self.config.host.port)
        for candidate in range(port, port + 100):
            if candidate not in taken and port_is_free(candidate):
                return candidate
        raise PortInUse(f"every port from {port} to {port + 99}", "other programs")

    def _wait_ready(self, record: InstanceRecord, progress: Progress | None) -> InstanceRecord:
        backend = self.backend(record.backend)
        deadline = record.started_at + record.load_timeout_s
        delay = 0.02
        last_fraction = -1.0
        while True:
            state = backend.state(record)
            if not state.alive:
                with self.registry.lock():
                    record = self._mark_ended(record, state)
                raise StartFailed(record, record.diagnosis or diagnose("", state.exit_code), self._tail(record))
            if health(record.base_url, timeout=2.0)[0] == 200:
                with self.registry.lock():
                    record = record.model_copy(update={"status": InstanceStatus.READY, "ready_at": time.time()})
                    self.registry.save(record)
                if progress:
                    progress(LoadProgress(stage="ready", fraction=1.0))
                return record
            if progress:
                current = load_progress(backend.read_log(record))
                if current.fraction != last_fraction:
                    last_fraction = current.fraction
                    progress(current)
            if time.time() >= deadline:
                final = backend.stop(record, grace_s=5)
                with self.registry.lock():
                    record = self._mark_ended(record, final, timed_out=True)
                raise StartFailed(record, record.diagnosis or diagnose("", None, timed_out=True), self._tail(record))
            time.sleep(delay)
            delay = min(delay * 1.5, 0.1)  # detection lag stays under 0.1 s, a few % of a short load

    def _tail(self, record: InstanceRecord, n: int = 20) -> list[str]:
        text = strip_ansi(self.backend(record.backend).read_log(record))
        return text.splitlines()[-n:]

    def stop_model(self, target: str = "all", grace_s: float = 10.0) -> list[InstanceView]:
        """Stop one profile (or instance id), or all; returns once each port is free."""
        with self.registry.lock():
            live = [r for r in self._reconciled() if r.is_live]
        chosen = live if target == "all" else [r for r in live if target in (r.profile, r.id)]
        if not chosen and target != "all":
            known = ", ".join(sorted({r.profile for r in live})) or "nothing is running"
            raise NotRunning(f"{target} is not running ({known})")
        return [_view(self._stop_one(r, grace_s)) for r in chosen]

    def _stop_one(self, record: InstanceRecord, grace_s: float) -> InstanceRecord:
        with self.registry.lock():
            record = (self.registry.get(record.id) or record).model_copy(update={"stop_requested": True})
            self.registry.save(record)
        state = self.backend(record.backend).stop(record, grace_s)
        _wait_port_free(record.port, timeout_s=10)
        _wait_gpu_release(record.pid, timeout_s=15)
        with self.registry.lock():
            return self._mark_ended(record, state, requested=True)

    def switch_model(self, profile_id: str, *, backend: str | None = None, timeout_s: float | None = None,
               progress: Progress | None = None) -> SwitchResult:
        """Stop what occupies the target's devices, start the target; on failure restart what was there."""
        target = self.config.profile(profile_id)
        live = self.live()
        for record in live:
            if record.profile == profile_id and record.status == InstanceStatus.READY:
                return SwitchResult(stopped=[], started=_view(record))
        wanted = _devices(target)
        occupying = [r for r in live if _overlap(wanted, r.visible_devices)]
        stopped = [_view(self._stop_one(r, 10.0)) for r in occupying]
        try:
            started = self.start_model(profile_id, backend=backend, timeout_s=timeout_s, progress=progress)
            return SwitchResult(stopped=stopped, started=started)
        except LlamaPilotError as exc:
            restored = []
            for previous in occupying:
                try:
                    restored.append(self.start_model(previous.profile, backend=previous.backend, port=previous.port))
                except LlamaPilotError as again:
                    exc = LlamaPilotError(f"{exc}\nRollback of {previous.profile} also failed: {again}")
            note = f" Rolled back to {', '.join(v.profile for v in restored)}." if restored else ""
            raise SwitchFailed(SwitchResult(stopped=stopped, started=None, rolled_back=restored,
                                            error=f"{exc}{note}")) from exc

    def tail_logs(self, target: str, lines: int = 200) -> "LogTail":
        record = self._latest(target)
        text = strip_ansi(self.backend(record.backend).read_log(record)) if record else _read_profile_log(target)
        all_lines = text.splitlines()
        return LogTail(profile=record.profile if record else target, instance=record.id if record else None,
                       log_path=record.log_path if record else str(paths.logs_dir() / f"{target}.log"),
                       lines=all_lines[-lines:] if lines > 0 else all_lines, total_lines=len(all_lines))

    def load_report(self, target: str) -> LoadReport:
        record = self._latest(target)
        if record is None:
            raise NotRunning(f"{target} has no instance yet: start it first")
        report = parse_load_report(self.backend(record.backend).read_log(record))
        if record.ready_at:
            report.load_seconds = round(record.ready_at - record.started_at, 3)
        return report

    def _latest(self, target: str) -> InstanceRecord | None:
        matches = [r for r in self._records() if target in (r.profile, r.id)]
        live = [r for r in matches if r.is_live]
        pool = live or matches
        return max(pool, key=lambda r: r.started_at) if pool else None

    # -- orphans -------------------------------------------------------------------------

    def orphans(self) -> list[Unmanaged]:
        """llama-server processes and llama-pilot containers that no record of this home owns.

        Each says whose it is (``owner``): only this home's (and a vanished home's, for processes of
        the same user) may be adopted or stopped by ``adopt``/``stop``; the rest are listed as
        foreign and are stopped only by :meth:`stop_foreign` with ``force``."""
        with self.registry.lock():
            known = [self._refresh(r) for r in self.registry.all()]
        return self._unmanaged(known, tolerant=False)

    def elsewhere(self) -> list[Unmanaged]:
        """llama-servers that llama-pilot started from another home that still exists: not ours to manage,
        but worth saying, since they hold ports and GPU memory."""
        return [o for o in self.orphans() if o.owner == "other-home"]

    def adopt(self, orphan: Unmanaged) -> InstanceView:
        """Make one of this home's orphans a managed instance again (by its marks, else its model file)."""
        if not orphan.is_own:
            raise ForeignServer(orphan)
        with self.registry.lock():
            record = self._record_orphan(orphan, note="adopted by `orphans --adopt`; its earlier output was "
                                                      "not captured")
        return _view(record)

    def _record_orphan(self, orphan: Unmanaged, note: str) -> InstanceRecord:
        """A record for a live orphan of this home, saved. Call under the lock."""
        for existing in self.registry.all():
            # Another process may have recorded it since the orphan was listed: one record per server.
            if existing.is_live and ((orphan.pid and existing.pid == orphan.pid)
                                     or (orphan.container_id and existing.container_id == orphan.container_id)):
                return existing
        profile_id = orphan.profile or self._profile_for(orphan)
        instance_id = orphan.instance if orphan.instance and not self.registry.get(orphan.instance) \
            else new_instance_id(profile_id)
        keeper = _keeper_of(orphan.pid) if orphan.backend == "native" else None
        record = InstanceRecord(
            id=instance_id, profile=profile_id, backend=orphan.backend,  # type: ignore[arg-type]
            status=InstanceStatus.LOADING, host=argv_value(orphan.argv, "--host") or "127.0.0.1",
            port=orphan.port or 8080, argv=orphan.argv,
            env=owner_marks(paths.home(), instance_id, profile_id),
            log_path=str(paths.logs_dir() / f"{profile_id}.log"), model_path=orphan.model_path or "",
            pid=orphan.pid, container_id=orphan.container_id, started_at=orphan.started_at, adopted=True,
            pid_create_time=create_time(orphan.pid), supervisor_pid=keeper[0] if keeper else None,
            exit_file=keeper[1] if keeper else None, note=note)
        append_separator(Path(record.log_path), f"{orphan.backend} pid {orphan.pid} taken back as {record.id}: {note}")
        record = self._refresh(record)
        self.registry.save(record)
        return record

    def stop_foreign(self, pid: int, *, force: bool, grace_s: float = 10.0) -> Unmanaged:
        """Stop one llama-server that is not this home's, named by pid; refused without ``force``."""
        match = next((o for o in self.orphans() if o.backend == "native" and o.pid == pid), None)
        if match is None:
            raise NotRunning(f"pid {pid} is not an unmanaged llama-server process (see `llama-pilot orphans`)")
        if match.is_own:
            raise LifecycleError(f"pid {pid} is this home's own server: use `llama-pilot orphans --stop` "
                                 "(or adopt it and stop its profile)")
        if not force:
            raise ForeignServer(match)
        try:
            proc = psutil.Process(pid)
            proc.terminate()
            if not wait_ended([pid], grace_s):
                proc.kill()
                if not wait_ended([pid], 10):
                    raise LifecycleError(f"pid {pid} did not end within {grace_s + 10:g} s of SIGTERM and SIGKILL")
        except psutil.NoSuchProcess:
            pass
        except psutil.Error as exc:
            raise LifecycleError(f"cannot stop pid {pid}: {exc}") from exc
        return match

    def _profile_for(self, orphan: Unmanaged) -> str:
        model = orphan.model_path
        for profile in self.config.profiles.values():
            path = self.config.model_path(profile)
            if model and path and (str(path) == model or model.endswith("/" + (profile.model or "\0"))):
                return profile.id
        return "unknown"


class ForeignServer(LifecycleError):
    """An unmanaged server that is not this home's: listed, never adopted, stopped only when forced."""

    def __init__(self, orphan: Unmanaged) -> None:
        self.orphan = orphan
        whose = {"other-home": f"it was started by another llama-pilot home ({orphan.home})",
                 "unmarked": "it carries no llama-pilot mark (started by hand or by another tool)",
                 "unreadable": "its environment cannot be read (another user's process)"}.get(orphan.owner, orphan.owner)
        super().__init__(f"pid {orphan.pid or orphan.container_id} is not this home's server: {whose}. It is left "
                         f"alone; to stop it anyway: llama-pilot orphans --stop-pid {orphan.pid} --force")


def _recovered_note(orphan: Unmanaged) -> str:
    if orphan.owner == "home-gone":
        return (f"recovered: started by the llama-pilot home {orphan.home}, which no longer exists (moved or "
                "deleted); found by its marks")
    return "recovered: its instance record was lost (state folder deleted?); found by its marks"


def _keeper_of(pid: int | None) -> tuple[int, str] | None:
    """(keeper pid, exit file) when the process's parent is a llama-pilot keeper."""
    if not pid:
        return None
    try:
        parent = psutil.Process(pid).parent()
        cmd = parent.cmdline() if parent else []
    except psutil.Error:
        return None
    if "mcp_server.runtime.keeper" not in cmd or "--" not in cmd:
        return None
    head = cmd[cmd.index("mcp_server.runtime.keeper") + 1:cmd.index("--")]
    if head[:1] == ["--hold-fd"]:
        head = head[2:]
    return (parent.pid, head[1]) if len(head) == 2 else None


class SwitchFailed(LifecycleError):
    def __init__(self, result: SwitchResult) -> None:
        self.result = result
        super().__init__(result.error or "switch failed")


class LogTail(BaseModel):
    profile: str
    instance: str | None
    log_path: str
    lines: list[str]
    total_lines: int


def _read_profile_log(profile: str) -> str:
    try:
        return (paths.logs_dir() / f"{profile}.log").read_text(errors="replace")
    except FileNotFoundError:
        raise NotRunning(f"no log for {profile}: it has not been started") from None


def _shards(model_path: Path) -> list[Path]:
    from mcp_server.model_files.reader import shard_paths

    return [p for p in shard_paths(model_path) if p.is_file()]


def _devices(profile: Profile) -> list[int] | None:
    raw = profile.get("VISIBLE_DEVICES")
    return [int(x) for x in raw.split(",")] if raw else None


def _overlap(a: list[int] | None, b: list[int] | None) -> bool:
    """Instances without explicit devices may use every GPU, so they overlap everything."""
    return a is None or b is None or bool(set(a) & set(b))


def _wait_port_free(port: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not port_is_free(port):
        time.sleep(0.05)


def _wait_gpu_release(pid: int | None, timeout_s: float) -> None:
    """The driver frees memory a moment after the process exits; wait until NVML stops listing it."""
    if not pid:
        return
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # no driver, no GPU: nothing to wait for
        return
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            holders = set()
            for i in range(pynvml.nvmlDeviceGetCount()):
                handle = pynvml.nvmlDeviceGetHandleByIndex(i)
                holders |= {p.pid for p in pynvml.nvmlDeviceGetComputeRunningProcesses(handle)}
            if pid not in holders:
                return
            time.sleep(0.1)
    finally:
        pynvml.nvmlShutdown()
