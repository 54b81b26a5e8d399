"""Host stats (``psutil``) and per-instance process stats; Docker instances add their container's.

CPU figures are rates, so they need two readings. :func:`system_stats` keeps what it needs between
calls in a :class:`StatsState` (the CPU time counters, one ``psutil.Process`` per instance and the
last container CPU counters): pass the same state on every call (the sampler keeps its own; calls
without one share a module-level state). A state's first call primes the counters, waits
``prime_s`` (0.2 s by default) and measures over that window, so a one-shot call (``llama-pilot
stats``, the MCP tool) reports real numbers instead of psutil's meaningless first 0.0. Later calls
measure since the previous call and never wait. An instance first seen by a later call has
``cpu_pct=None`` in that call (nothing to compare with yet).

Percentages: ``cpu_pct`` is the whole machine (100 = every core busy); a process's ``cpu_pct`` is
psutil's (100 = one core busy, so a multi-threaded llama-server can show 800); the container's
``container_cpu_pct`` is counted the same way, as ``docker stats`` does. Memory is in MiB
(2**20 bytes); ``container_mem_mib`` is usage minus inactive file cache, as ``docker stats`` shows.
"""

from __future__ import annotations

import os
import threading
import time
from typing import TYPE_CHECKING, Any, Iterable

import psutil
from pydantic import BaseModel, Field

if TYPE_CHECKING:
    from mcp_server.runtime.registry import InstanceRecord

MIB = 1024 * 1024
DOCKER_RETRY_S = 30.0


class InstanceStats(BaseModel):
    instance_id: str
    profile: str
    backend: str
    status: str
    pid: int | None
    rss_mib: float | None = Field(description="resident memory of llama-server (host view)")
    cpu_pct: float | None = Field(description="llama-server's CPU since the last reading; 100 = one core")
    threads: int | None = None
    container_id: str | None = None
    container_mem_mib: float | None = Field(default=None, description="Docker: the container's memory use")
    container_mem_limit_mib: float | None = None
    container_cpu_pct: float | None = Field(default=None, description="Docker: the container's CPU; 100 = one core")
    note: str | None = Field(default=None, description="why a figure is missing")


class SystemStats(BaseModel):
    at: float
    interval_s: float | None = Field(description="seconds the CPU figures cover")
    cpu_count: int
    cpu_pct: float = Field(description="whole machine, 0-100")
    per_core_pct: list[float]
    load_avg: list[float] = Field(description="1, 5 and 15 minute load averages")
    ram_total_mib: float
    ram_used_mib: float
    ram_available_mib: float
    swap_total_mib: float
    swap_used_mib: float
    instances: list[InstanceStats] = Field(default_factory=list)


class StatsState:
    """What :func:`system_stats` carries from one call to the next. Not shared between threads:
    one state per caller (the sampler serialises its own calls)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.cpu_times: list[Any] | None = None
        self.cpu_at: float | None = None
        self.procs: dict[tuple[int, float], tuple[psutil.Process, float, float]] = {}  # proc, cpu s, at
        self.containers: dict[str, tuple[float, float]] = {}  # id -> (total usage ns, system usage ns)
        self.docker: Any = None
        self.docker_failed: tuple[float, str] | None = None

    @property
    def fresh(self) -> bool:
        return self.cpu_times is None


def system_stats(instances: "Iterable[InstanceRecord] | None" = None, sampler_state: StatsState | None = None,
                 *, prime_s: float = 0.2) -> SystemStats:
    """Host CPU/RAM/swap/load, and per live instance its llama-server's RSS and CPU (plus the
    container's figures for Docker instances). ``instances`` default to the registry's live ones."""
    # A fresh state measures CPU over the last prime_s seconds; a kept one (the sampler, --watch) since its last call.
    state = sampler_state or StatsState()
    records = _live(instances)
    with state.lock:
        if state.fresh and prime_s > 0:
            _cpu(state)
            for record in records:
                _process_stats(state, record)
                if record.backend == "docker":
                    _container_stats(state, record)
            time.sleep(prime_s)
        interval, total, per_core = _cpu(state)
        mem, swap = psutil.virtual_memory(), psutil.swap_memory()
        try:
            load = [round(x, 2) for x in os.getloadavg()]
        except OSError:
            load = []
        stats = [_instance(state, r) for r in records]
        alive = {(s.pid) for s in stats if s.pid}
        for key in [k for k in state.procs if k[0] not in alive]:
            del state.procs[key]  # forget processes of instances that ended
        ids = {r.container_id for r in records if r.container_id}
        for cid in [c for c in state.containers if c not in ids]:
            del state.containers[cid]
    return SystemStats(at=time.time(), interval_s=interval, cpu_count=len(per_core) or (psutil.cpu_count() or 1),
                       cpu_pct=total, per_core_pct=per_core, load_avg=load,
                       ram_total_mib=_mib(mem.total), ram_used_mib=_mib(mem.used),
                       ram_available_mib=_mib(mem.available), swap_total_mib=_mib(swap.total),
                       swap_used_mib=_mib(swap.used), instances=stats)


def _live(instances: "Iterable[InstanceRecord] | None") -> "list[InstanceRecord]":
    from mcp_server.runtime.registry import live_records

    return live_records(instances)


def _mib(value: float) -> float:
    return round(value / MIB, 1)


def _busy(times: Any) -> tuple[float, float]:
    """(busy, total) seconds; idle and iowait count as idle, as psutil.cpu_percent does."""
    total = sum(times)
    idle = times.idle + getattr(times, "iowait", 0.0)
    return total - idle, total


def _cpu(state: StatsState) -> tuple[float | None, float, list[float]]:
    now = time.monotonic()
    times = psutil.cpu_times(percpu=True)
    previous, state.cpu_times = state.cpu_times, times
    interval = round(now - state.cpu_at, 3) if state.cpu_at is not None else None
    state.cpu_at = now
    if previous is None or len(previous) != len(times):
        return interval, 0.0, [0.0] * len(times)
    per_core, busy_sum, total_sum = [], 0.0, 0.0
    for old, new in zip(previous, times):
        b0, t0 = _busy(old)
        b1, t1 = _busy(new)
        db, dt = max(0.0, b1 - b0), max(0.0, t1 - t0)
        busy_sum, total_sum = busy_sum + db, total_sum + dt
        per_core.append(round(min(100.0, 100.0 * db / dt), 1) if dt > 0 else 0.0)
    total = round(min(100.0, 100.0 * busy_sum / total_sum), 1) if total_sum > 0 else 0.0
    return interval, total, per_core


def _process_stats(state: StatsState, record: "InstanceRecord") -> tuple[float | None, float | None, int | None, str | None]:
    """(rss MiB, cpu %, threads, note) for the record's server process."""
    if not record.pid:
        return None, None, None, "no host pid recorded"
    try:
        proc = psutil.Process(record.pid)
        created = proc.create_time()
        if record.pid_create_time is not None and abs(created - record.pid_create_time) >= 0.01:
            return None, None, None, "its pid now belongs to another program (record is stale)"
        with proc.oneshot():
            cpu = proc.cpu_times()
            used = cpu.user + cpu.system
            rss = _mib(proc.memory_info().rss)
            threads = proc.num_threads()
    except psutil.NoSuchProcess:
        return None, None, None, "process is gone"
    except psutil.AccessDenied:
        return None, None, None, "not allowed to read the process (another user's)"
    now = time.monotonic()
    key = (record.pid, created)
    pct = None
    if key in state.procs:
        _, used0, at0 = state.procs[key]
        if now > at0:
            pct = round(max(0.0, 100.0 * (used - used0) / (now - at0)), 1)
    state.procs[key] = (proc, used, now)
    return rss, pct, threads, None


def _docker_client(state: StatsState) -> tuple[Any, str | None]:
    if state.docker is not None:
        return state.docker, None
    if state.docker_failed and time.monotonic() - state.docker_failed[0] < DOCKER_RETRY_S:
        return None, state.docker_failed[1]
    try:
        import docker

        client = docker.from_env(timeout=5)
        client.ping()
    except Exception as exc:  # no SDK, no daemon, no permission: container figures are None
        note = f"Docker is not reachable ({type(exc).__name__})"
        state.docker_failed = (time.monotonic(), note)
        return None, note
    state.docker, state.docker_failed = client, None
    return client, None


def _container_stats(state: StatsState, record: "InstanceRecord") -> tuple[float | None, float | None, float | None, str | None]:
    """(mem MiB, mem limit MiB, cpu %, note) from one non-streaming Docker stats reading."""
    client, note = _docker_client(state)
    if client is None:
        return None, None, None, note
    ref = record.container_id or record.container_name
    if not ref:
        return None, None, None, "no container recorded"
    try:
        raw = client.containers.get(ref).stats(stream=False, one_shot=True)
    except Exception as exc:  # gone, daemon restarted, API error: figures are None this time
        return None, None, None, f"Docker stats failed ({type(exc).__name__})"
    memory = raw.get("memory_stats") or {}
    usage = memory.get("usage")
    mem_mib = limit_mib = cpu_pct = None
    if isinstance(usage, (int, float)):
        detail = memory.get("stats") or {}
        cache = detail.get("inactive_file", detail.get("total_inactive_file", 0)) or 0
        mem_mib = _mib(max(0, usage - cache))
    if isinstance(memory.get("limit"), (int, float)):
        limit_mib = _mib(memory["limit"])
    cpu = raw.get("cpu_stats") or {}
    total = (cpu.get("cpu_usage") or {}).get("total_usage")
    system = cpu.get("system_cpu_usage")
    online = cpu.get("online_cpus") or len((cpu.get("cpu_usage") or {}).get("percpu_usage") or []) or psutil.cpu_count()
    cid = record.container_id or ref
    if isinstance(total, (int, float)) and isinstance(system, (int, float)):
        previous = state.containers.get(cid)
        if previous is not None and system > previous[1]:
            cpu_pct = round(max(0.0, (total - previous[0]) / (system - previous[1]) * (online or 1) * 100.0), 1)
        state.containers[cid] = (float(total), float(system))
    return mem_mib, limit_mib, cpu_pct, None


def _instance(state: StatsState, record: "InstanceRecord") -> InstanceStats:
    rss, cpu, threads, note = _process_stats(state, record)
    stats = InstanceStats(instance_id=record.id, profile=record.profile, backend=record.backend,
                          status=str(record.status), pid=record.pid, rss_mib=rss, cpu_pct=cpu, threads=threads,
                          container_id=record.container_id, note=note)
    if record.backend == "docker":
        mem, limit, ccpu, cnote = _container_stats(state, record)
        stats.container_mem_mib, stats.container_mem_limit_mib, stats.container_cpu_pct = mem, limit, ccpu
        if cnote:
            stats.note = f"{stats.note}; {cnote}" if stats.note else cnote
    return stats
