"""Run the endpoint, and reach a running one: the core functions behind the serve CLI and tools.

One endpoint per llama-pilot home: it holds ``state_dir()/serve.lock`` for its whole life and
writes ``serve.json`` (its pid and URL) for the other doors to find it. When it ends, on a
signal or killed, the models it loaded keep running under their keepers; the next ``serve``
adopts them (no second load, no port fight).
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from mcp_server import paths
from mcp_server.files import atomic_write
from mcp_server.profiles.config import Config
from mcp_server.serve.policy import ServeNotRunning, ServeRefused, ServeSettings, check_bind, serve_settings


class ServedModel(BaseModel):
    profile: str
    state: str = Field(description="absent | loading | ready | unloading")
    aliases: list[str] = Field(default_factory=list)
    pinned: bool
    priority: int
    idle_ttl_s: int
    samplers: str
    in_flight: int
    queued: int
    oldest_wait_s: float | None = None
    draining: bool = False
    instance: str | None = None
    url: str | None = None
    memory_mib: dict[str, float] | None = Field(default=None, description="device -> MiB (estimated or measured)")
    memory_source: str | None = None
    idle_s: float | None = None
    served: int = 0
    progress: str | None = None
    last_error: dict[str, Any] | None = None


class Swap(BaseModel):
    at: float
    action: str
    profile: str
    reason: str
    unloaded: list[str] = Field(default_factory=list)
    waited_s: float | None = None
    victims_idle: bool | None = None
    load_s: float | None = None
    detail: str | None = None


class ServeStatus(BaseModel):
    running: bool
    url: str
    pid: int | None = None
    started_at: float | None = None
    max_wait_s: float | None = None
    queue_limit: int | None = None
    budget_mib: float | None = Field(default=None, description="host memory budget (no GPU, or SERVE_MEMORY_BUDGET)")
    gpus: list[dict[str, Any]] = Field(default_factory=list)
    room_mib: dict[str, float] = Field(default_factory=dict, description="device -> MiB free for one more model")
    models: list[ServedModel] = Field(default_factory=list)
    counters: dict[str, int] = Field(default_factory=dict)
    swaps: list[Swap] = Field(default_factory=list, description="loads and unloads, oldest first, with reasons")
    busy: bool = False
    note: str | None = None


class ServeAction(BaseModel):
    profile: str
    action: str
    seconds: float
    status: ServeStatus


def _state_file() -> Path:
    return paths.state_dir() / "serve.json"


def _lock_file() -> Path:
    return paths.state_dir() / "serve.lock"


def _read_state() -> dict[str, Any] | None:
    try:
        return json.loads(_state_file().read_text())
    except (OSError, ValueError):
        return None


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# --- run ----------------------------------------------------------------------------------


def hold_endpoint_lock(settings: ServeSettings, config_path: Path) -> int:
    """Take this home's endpoint lock and write serve.json; the fd is held for the endpoint's life.

    Refuses a second endpoint for the same home, and a port another program holds."""
    from mcp_server.runtime.lifecycle import port_is_free

    check_bind(settings)
    paths.state_dir().mkdir(parents=True, exist_ok=True)
    lock = os.open(_lock_file(), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(lock)
        other = _read_state() or {}
        raise ServeRefused(f"an endpoint already serves this llama-pilot home at {other.get('url', '?')} "
                           f"(pid {other.get('pid', '?')}); use it, or stop it first (serve_stop)") from None
    probe = settings.host if settings.host not in ("0.0.0.0", "::") else "127.0.0.1"
    if not port_is_free(settings.port, probe):
        os.close(lock)
        raise ServeRefused(f"port {settings.port} on {settings.host} is taken by another program: choose another "
                           "with --port or SERVE_PORT in [global]")
    atomic_write(_state_file(), json.dumps({"pid": os.getpid(), "url": settings.url, "host": settings.host,
                                            "port": settings.port, "config": str(config_path),
                                            "started_at": time.time()}))
    return lock


def release_endpoint_lock(lock: int) -> None:
    state = _read_state()
    if state and state.get("pid") == os.getpid():
        _state_file().unlink(missing_ok=True)
    os.close(lock)


def serve_start(config: Config, *, host: str | None = None, port: int | None = None,
                wait_s: float = 30.0) -> ServeStatus:
    """Start the endpoint in the background (detached, logging to logs/serve.log); returns once it answers."""
    settings = serve_settings(config, host=host, port=port)
    check_bind(settings)
    current = _read_state()
    if current and _alive(current.get("pid")):
        return serve_status(config)
    log_path = paths.logs_dir() / "serve.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "mcp_server", "cli", "--config", str(config.path), "serve",
            "--host", settings.host, "--port", str(settings.port)]
    with open(log_path, "ab") as log:
        log.write(f"\n--- serve starting at {time.strftime('%Y-%m-%d %H:%M:%S')} ---\n".encode())
        log.flush()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, close_fds=True)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace").strip().splitlines()[-3:]
            raise ServeRefused(f"serve exited at start (code {proc.returncode}): {' | '.join(tail)}")
        try:
            return _ask(settings, "GET", "/llama-pilot/status", timeout=1.0, parse=ServeStatus)
        except ServeNotRunning:
            time.sleep(0.1)
    raise ServeRefused(f"serve did not answer on {settings.url} within {wait_s:.0f} s; see {log_path}")


def serve_stop(config: Config, timeout_s: float = 15.0) -> ServeStatus:
    """Stop the endpoint (it finishes what is in flight); the models it loaded keep running."""
    settings = serve_settings(config)
    state = _read_state()
    if not state or not _alive(state.get("pid")):
        return ServeStatus(running=False, url=settings.url, note="serve was not running")
    pid = int(state["pid"])
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.05)
        _reap(pid)
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)
    return ServeStatus(running=False, url=state.get("url", settings.url),
                       note="stopped; models it loaded keep running (status lists them, stop_model stops them)")


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


# --- ask a running endpoint ---------------------------------------------------------------------


def _endpoint(config: Config) -> ServeSettings:
    settings = serve_settings(config)
    state = _read_state()
    if state and _alive(state.get("pid")):
        settings = settings.model_copy(update={"host": state.get("host", settings.host),
                                               "port": state.get("port", settings.port)})
    return settings


def _ask(settings: ServeSettings, method: str, path: str, *, body: dict[str, Any] | None = None,
         timeout: float = 600.0, parse: type[BaseModel]) -> Any:
    import httpx

    headers = {"Authorization": f"Bearer {settings.api_key}"} if settings.api_key else {}
    try:
        answer = httpx.request(method, settings.url + path, json=body, headers=headers, timeout=timeout)
    except httpx.TransportError as exc:
        raise ServeNotRunning(f"no endpoint answers at {settings.url} ({type(exc).__name__}): start it with "
                              "serve_start (`llama-pilot serve --background`)") from exc
    if answer.status_code >= 400:
        try:
            detail = answer.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            detail = answer.text[:300]
        from mcp_server.serve.policy import ServeError

        raise ServeError(f"{settings.url}{path} answered {answer.status_code}: {detail}")
    return parse.model_validate(answer.json())


def serve_status(config: Config) -> ServeStatus:
    """What the endpoint holds: resident profiles, memory, queues, swaps and their reasons."""
    settings = _endpoint(config)
    try:
        return _ask(settings, "GET", "/llama-pilot/status", timeout=5.0, parse=ServeStatus)
    except ServeNotRunning:
        return ServeStatus(running=False, url=settings.url,
                           note="not running: serve_start (`llama-pilot serve --background`) starts it")


def serve_load(config: Config, profile: str) -> ServeAction:
    """Load a profile through the running endpoint (same queue and memory rules as a request)."""
    return _ask(_endpoint(config), "POST", "/llama-pilot/load", body={"profile": profile}, parse=ServeAction)


def serve_unload(config: Config, profile: str) -> ServeAction:
    """Unload a profile once its requests in flight finish."""
    return _ask(_endpoint(config), "POST", "/llama-pilot/unload", body={"profile": profile}, parse=ServeAction)


def serve_pin(config: Config, profile: str, pinned: bool = True) -> ServeAction:
    """Pin (never unloaded to make room) or unpin a profile until the endpoint restarts (PIN=on in
    models.conf makes it lasting)."""
    return _ask(_endpoint(config), "POST", "/llama-pilot/pin", body={"profile": profile, "pinned": pinned},
                parse=ServeAction)
