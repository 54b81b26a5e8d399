"""A worker as ``[global]`` names it: ``WORKER_<id>=<agent URL> [option=value ...]``.

    WORKER_box2=http://10.0.0.2:8765 token_env=BOX2_TOKEN rpc_port=50052 cache=on

Options: ``token_env`` (the environment variable holding the agent's bearer token; default
``LLAMA_PILOT_WORKER_TOKEN``), ``rpc_port`` (where the worker's ggml-rpc-server listens; default
50052), ``rpc_via`` (``host:port`` this machine reaches that RPC server at, when it differs: an SSH
tunnel's local end; default the URL's host and ``rpc_port``), ``cache`` (on|off: the RPC server's
tensor cache, which makes a second load of the same model read the worker's disk instead of the
network; default on), ``threads`` (CPU threads of the RPC server) and ``devices`` (the worker's
devices to lend, e.g. ``CUDA0``; default all).
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from pydantic import BaseModel, Field

from mcp_server.errors import ValidationError

WORKER_KEY_PREFIX = "WORKER_"
WORKER_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$")
DEFAULT_TOKEN_ENV = "LLAMA_PILOT_WORKER_TOKEN"
DEFAULT_RPC_PORT = 50052
DEFAULT_AGENT_PORT = 8765
_DEVICE_RE = re.compile(r"^[A-Za-z]+[0-9]*$")
_OPTIONS = ("token_env", "rpc_port", "rpc_via", "cache", "threads", "devices")


class WorkerSpec(BaseModel):
    id: str
    url: str = Field(description="the worker agent's MCP endpoint (…/mcp)")
    token_env: str = DEFAULT_TOKEN_ENV
    rpc_port: int = DEFAULT_RPC_PORT
    rpc_via: str | None = Field(None, description="host:port this machine reaches the RPC server at, if not the "
                                                  "URL's host and rpc_port")
    cache: bool = True
    threads: int | None = None
    devices: list[str] | None = None

    @property
    def endpoint(self) -> str:
        """What llama-server's --rpc gets for this worker."""
        if self.rpc_via:
            return self.rpc_via
        host = urlsplit(self.url).hostname or ""
        return f"[{host}]:{self.rpc_port}" if ":" in host else f"{host}:{self.rpc_port}"


def is_worker_key(key: str) -> bool:
    return key.startswith(WORKER_KEY_PREFIX) and len(key) > len(WORKER_KEY_PREFIX)


def parse_worker(key: str, value: str, where: str = "") -> WorkerSpec:
    """``WORKER_<id>`` and its value as a spec; a clear error names the part that is wrong."""
    worker_id = key[len(WORKER_KEY_PREFIX):]
    if not WORKER_ID_RE.match(worker_id):
        raise ValidationError(key, value, "a worker id is a letter or digit, then up to 31 letters, digits, '-' "
                              "or '_' (WORKER_box2=http://10.0.0.2:8765)", where)
    words = value.split()
    if not words:
        raise ValidationError(key, value, "expected the worker agent's URL, e.g. http://10.0.0.2:8765", where)
    url = words[0]
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValidationError(key, value, f"{url!r} is not an http(s) URL with a host (http://10.0.0.2:8765)", where)
    try:
        parts.port
    except ValueError:
        raise ValidationError(key, value, f"{url!r} has a port that is not a number", where) from None
    if parts.path in ("", "/"):
        url = url.rstrip("/") + ("" if parts.port else f":{DEFAULT_AGENT_PORT}") + "/mcp"
    options: dict[str, object] = {}
    for word in words[1:]:
        name, sep, raw = word.partition("=")
        if not sep or name not in _OPTIONS or not raw:
            raise ValidationError(key, value, f"{word!r}: options are name=value with a name among "
                                  f"{', '.join(_OPTIONS)}", where)
        options[name] = _option(key, value, name, raw, where)
    return WorkerSpec(id=worker_id, url=url, **options)  # type: ignore[arg-type]


def _option(key: str, value: str, name: str, raw: str, where: str) -> object:
    if name in ("rpc_port", "threads"):
        if not raw.isdigit() or not (1 <= int(raw) <= (65535 if name == "rpc_port" else 1024)):
            raise ValidationError(key, value, f"{name}={raw}: expected a whole number "
                                  f"{'from 1 to 65535' if name == 'rpc_port' else 'from 1 to 1024'}", where)
        return int(raw)
    if name == "cache":
        if raw not in ("on", "off"):
            raise ValidationError(key, value, f"cache={raw}: expected on or off", where)
        return raw == "on"
    if name == "devices":
        devices = raw.split(",")
        if not all(_DEVICE_RE.match(d) for d in devices):
            raise ValidationError(key, value, f"devices={raw}: expected device names such as CUDA0,CUDA1", where)
        return devices
    if name == "rpc_via":
        host, sep, port = raw.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValidationError(key, value, f"rpc_via={raw}: expected host:port, e.g. 127.0.0.1:50052", where)
        return raw
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", raw):  # token_env
        raise ValidationError(key, value, f"token_env={raw}: expected an environment variable name", where)
    return raw


class WorkerUse(BaseModel):
    """A worker an instance uses: recorded with the instance, so its stop knows what to stop."""

    id: str
    endpoint: str
    started: bool = Field(description="this instance's start brought the RPC server up (so its end stops it)")
    build_number: int | None = None
    devices: list[str] = Field(default_factory=list)
