"""Where llama-server is, without running it: the ENGINE setting, $LLAMA_SERVER, PATH, llama-pilot's
builds. Kept apart from ``binary`` (which also asks a binary its build, and builds one) because
every start needs this and nothing more: it imports no pydantic and runs no process.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from mcp_server.errors import EngineNotFound
from mcp_server.paths import engines_dir

LLAMA_CPP_BUILD_NUMBER = 11434  # the pinned llama.cpp build (engine.binary builds exactly this one)
SERVER_ENV = "LLAMA_SERVER"


def engine_path(explicit: str | None = None) -> str:
    """Where :func:`locate_engine` finds llama-server, without running it: what a start needs (a
    ``--version`` run would add tens of milliseconds to every start)."""
    return str(Path(find_engine(explicit)[0]).absolute())


def find_engine(explicit: str | None) -> tuple[str | Path, str]:
    if explicit:
        return _checked_binary(explicit, "The ENGINE setting"), "explicit"
    env = os.environ.get(SERVER_ENV)
    if env:
        return _checked_binary(env, f"${SERVER_ENV}"), "env"
    on_path = shutil.which("llama-server")
    if on_path:
        return on_path, "path"
    builds = _cached_builds()
    if builds:
        return builds[0], "cache"
    raise EngineNotFound(
        "No llama-server found. Looked at: the ENGINE setting (not set), "
        f"${SERVER_ENV} (not set), PATH (no llama-server), and llama-pilot's builds in "
        f"{engines_dir()} (none). Run `llama-pilot engine build` to build llama.cpp "
        f"b{LLAMA_CPP_BUILD_NUMBER} there, or set {SERVER_ENV} to an existing llama-server.")


def _checked_binary(value: str, origin: str) -> Path:
    """Resolve an explicit/env setting; a bad one is an error, never a silent fall-through."""
    if os.sep not in value and not value.startswith(("~", ".")):
        found = shutil.which(value)
        if not found:
            raise EngineNotFound(f"{origin} names {value!r}, which is not on PATH.")
        return Path(found)
    path = Path(value).expanduser()
    if path.is_dir():  # a folder holding the binary (an install dir or its bin/) is accepted
        path = next((p for p in (path / "llama-server", path / "bin" / "llama-server")
                     if p.is_file()), path / "llama-server")
    if not path.exists():
        raise EngineNotFound(f"{origin} points to {str(path)!r}, which does not exist.")
    if not path.is_file() or not os.access(path, os.X_OK):
        raise EngineNotFound(f"{origin} points to {str(path)!r}, which is not an executable file.")
    return path


def _cached_builds() -> list[Path]:
    """Our own installs that hold a runnable llama-server, most recently built first."""
    found = [p for p in engines_dir().glob("*/bin/llama-server")
             if p.is_file() and os.access(p, os.X_OK)]
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)
