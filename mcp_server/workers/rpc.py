"""This host's ``ggml-rpc-server``: started, found again, measured and stopped by the worker agent.

The agent is the one owner. What runs is written to ``$LLAMA_PILOT_HOME/worker/rpc.json`` under a
lock, with the pid and its start time (so a reused pid is never taken for ours): an agent that
restarts finds its RPC server again instead of starting a second one on a taken port.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

from pydantic import BaseModel, Field

from mcp_server import paths
from mcp_server.errors import LlamaPilotError
from mcp_server.files import atomic_write, exclusive_lock

_DEVICE_LINE = re.compile(r"^\s+(\S+): (.*) \((\d+) MiB, (\d+) MiB free\)\s*$")


class RpcError(LlamaPilotError):
    code = "rpc-server"


class RpcSettings(BaseModel):
    host: str
    port: int
    cache: bool = True
    threads: int | None = None
    devices: list[str] | None = None


class RpcDevice(BaseModel):
    name: str = Field(description="the device's name on the worker (CPU, CUDA0, ...)")
    description: str
    total_mib: int
    free_mib: int = Field(description="free when the RPC server started (what it reports to llama-server)")


class RpcState(BaseModel):
    settings: RpcSettings
    pid: int
    create_time: float
    argv: list[str]
    log_path: str
    started_at: float


class RpcStatus(BaseModel):
    running: bool
    endpoint: str | None = None
    settings: RpcSettings | None = None
    pid: int | None = None
    uptime_s: float | None = None
    devices: list[RpcDevice] = Field(default_factory=list, description="what the RPC server lends")
    rss_mib: float | None = Field(None, description="the RPC server's resident memory: a CPU device's buffers")
    gpu_used_mib: dict[str, float] = Field(default_factory=dict, description="NVML memory of the RPC server's "
                                                                             "process, per GPU")
    clients: int = Field(0, description="connections open to it now (a llama-server using it)")
    last_exit: str | None = Field(None, description="how the previous RPC server ended, when it ended on its own")


def _folder() -> Path:
    return paths.home() / "worker"


def _state_path() -> Path:
    return _folder() / "rpc.json"


def _lock():  # type: ignore[no-untyped-def]
    return exclusive_lock(_folder() / "rpc.lock")


def _read_state() -> RpcState | None:
    try:
        return RpcState.model_validate_json(_state_path().read_text())
    except (OSError, ValueError):
        return None


def _alive(state: RpcState) -> bool:
    import psutil

    try:
        proc = psutil.Process(state.pid)
        return abs(proc.create_time() - state.create_time) < 1.0 and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _devices(log_path: str) -> list[RpcDevice]:
    """The 'Devices:' block ggml-rpc-server prints when it starts."""
    try:
        text = Path(log_path).read_text(errors="replace")
    except OSError:
        return []
    found = []
    for line in text.split("Devices:", 1)[-1].splitlines()[1:]:
        m = _DEVICE_LINE.match(line)
        if not m:
            break
        found.append(RpcDevice(name=m.group(1), description=m.group(2), total_mib=int(m.group(3)),
                               free_mib=int(m.group(4))))
    return found


def _measure(state: RpcState) -> tuple[float | None, dict[str, float], int]:
    import psutil

    try:
        proc = psutil.Process(state.pid)
        rss = round(proc.memory_info().rss / 2**20, 1)
        clients = sum(1 for c in proc.net_connections(kind="tcp") if c.status == psutil.CONN_ESTABLISHED)
    except psutil.Error:
        return None, {}, 0
    gpu: dict[str, float] = {}
    try:
        from mcp_server.monitoring.gpu import gpu_stats

        for i, g in enumerate(gpu_stats().in_cuda_order()):
            for p in g.processes:
                if p.pid == state.pid and p.used_mib is not None:
                    gpu[f"CUDA{i}"] = float(p.used_mib)
    except Exception:  # noqa: BLE001 - a report without NVML figures is still a report
        pass
    return rss, gpu, clients


def rpc_status() -> RpcStatus:
    state = _read_state()
    if state is None:
        return RpcStatus(running=False)
    if not _alive(state):
        return RpcStatus(running=False, settings=state.settings, last_exit=_last_words(state.log_path))
    rss, gpu, clients = _measure(state)
    return RpcStatus(running=True, endpoint=f"{state.settings.host}:{state.settings.port}", settings=state.settings,
                     pid=state.pid, uptime_s=round(time.time() - state.started_at, 1),
                     devices=_devices(state.log_path), rss_mib=rss, gpu_used_mib=gpu, clients=clients)


def _last_words(log_path: str) -> str | None:
    try:
        lines = [x for x in Path(log_path).read_text(errors="replace").splitlines() if x.strip()]
    except OSError:
        return None
    return lines[-1][:300] if lines else None


def start_rpc(settings: RpcSettings, binary: str) -> RpcStatus:
    """Start the RPC server with ``settings``; one already running with the same settings is kept
    (started by hand, or by a start whose instance ended without stopping it), one with other
    settings is refused. It serves one llama-server at a time: the main side refuses a second."""
    with _lock():
        state = _read_state()
        if state is not None and _alive(state):
            if state.settings == settings:
                return rpc_status()
            raise RpcError(f"an RPC server with other settings already runs here ({state.settings.host}:"
                           f"{state.settings.port}, pid {state.pid}); stop_worker first")
        argv = [binary, "-H", settings.host, "-p", str(settings.port)]
        if settings.cache:
            argv.append("-c")
        if settings.threads:
            argv += ["-t", str(settings.threads)]
        if settings.devices:
            argv += ["-d", ",".join(settings.devices)]
        _folder().mkdir(parents=True, exist_ok=True)
        log = _folder() / "rpc-server.log"
        env = dict(os.environ)
        # The tensor cache (-c) lives with this agent's state unless the user chose a place.
        env.setdefault("LLAMA_CACHE", str(_folder() / "cache"))
        with open(log, "wb") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                    start_new_session=True)
        import psutil

        state = RpcState(settings=settings, pid=proc.pid, create_time=psutil.Process(proc.pid).create_time(),
                         argv=argv, log_path=str(log), started_at=time.time())
        atomic_write(_state_path(), state.model_dump_json())
        _wait_listening(proc, settings, log)
    return rpc_status()


def _wait_listening(proc: subprocess.Popen[bytes], settings: RpcSettings, log: Path, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = " | ".join(log.read_text(errors="replace").strip().splitlines()[-3:])
            raise RpcError(f"ggml-rpc-server exited ({proc.returncode}) at start on {settings.host}:{settings.port}: "
                           f"{tail}")
        # The log says the endpoint before the socket listens: only a connection proves it.
        with socket.socket(socket.AF_INET6 if ":" in settings.host else socket.AF_INET) as probe:
            probe.settimeout(0.5)
            if probe.connect_ex((settings.host, settings.port)) == 0:
                return
        time.sleep(0.05)
    proc.kill()
    raise RpcError(f"ggml-rpc-server did not listen on {settings.host}:{settings.port} within {timeout_s:.0f} s")


def stop_rpc(grace_s: float = 5.0) -> RpcStatus:
    """Stop the RPC server this agent started (nothing running: nothing to do)."""
    import psutil

    with _lock():
        state = _read_state()
        if state is not None and _alive(state):
            try:
                proc = psutil.Process(state.pid)
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(grace_s)
                except psutil.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
            except psutil.NoSuchProcess:
                pass
        _state_path().unlink(missing_ok=True)
    return RpcStatus(running=False, settings=state.settings if state else None)


def rpc_log(lines: int = 100) -> list[str]:
    state = _read_state()
    log = Path(state.log_path) if state else _folder() / "rpc-server.log"
    try:
        return log.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return []
