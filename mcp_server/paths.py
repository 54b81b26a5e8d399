"""Where llama-pilot keeps things: one function per place, each movable by an environment variable.

- the profiles file: ``--config PATH``, else ``LLAMA_PILOT_CONFIG``, else ``./models.conf``;
- everything llama-pilot writes (instance state, logs, backups, built engines, the demo model):
  under ``LLAMA_PILOT_HOME``, else ``$XDG_DATA_HOME/llama-pilot``, else
  ``~/.local/share/llama-pilot``. Tests and side-by-side installs set ``LLAMA_PILOT_HOME`` so
  they never collide.
"""

from __future__ import annotations

import os
from pathlib import Path

CONFIG_ENV = "LLAMA_PILOT_CONFIG"
HOME_ENV = "LLAMA_PILOT_HOME"


def config_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The models.conf to use: an explicit path wins, then the environment, then ./models.conf."""
    if explicit:
        return Path(explicit).expanduser()
    env = os.environ.get(CONFIG_ENV)
    if env:
        return Path(env).expanduser()
    return Path.cwd() / "models.conf"


def home() -> Path:
    """Root of everything llama-pilot writes."""
    env = os.environ.get(HOME_ENV)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".local" / "share"
    return base / "llama-pilot"


def _sub(name: str) -> Path:
    path = home() / name
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        from mcp_server.errors import StorageError

        raise StorageError.from_os_error(exc, "create", path, fix=home_fix(exc)) from None
    return path


def home_fix(exc: OSError) -> str:
    """What to do when llama-pilot's home cannot be written, by the kind of failure."""
    import errno

    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return (f"free space on the disk holding {home()}, or point {HOME_ENV} at a folder on another disk "
                "(instances already running keep running)")
    return (f"point {HOME_ENV} at a folder you can write (it holds llama-pilot's state, logs and backups), "
            f"or make {home()} writable")


def state_dir() -> Path:
    """Instance records and the lock that guards them."""
    return _sub("state")


def logs_dir() -> Path:
    """Per-instance llama-server logs."""
    return _sub("logs")


def backups_dir() -> Path:
    """Copies of models.conf taken before each save."""
    return _sub("backups")


def engines_dir() -> Path:
    """llama.cpp builds, one folder per (version, backend)."""
    return _sub("engines")


def cache_dir() -> Path:
    """Downloads (llama.cpp source) and the assembled demo model."""
    return _sub("cache")
