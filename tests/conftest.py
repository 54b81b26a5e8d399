"""Shared fixtures: every test gets its own LLAMA_PILOT_HOME; the real engine and demo model are
found once, before that override, in the places `llama-pilot setup` put them."""

from __future__ import annotations

import os
import shutil
import textwrap
from pathlib import Path

import pytest

from mcp_server import paths

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
REPO = Path(__file__).resolve().parent.parent


def _find_engine() -> str | None:
    from mcp_server.engine.binary import locate_engine
    from mcp_server.errors import EngineNotFound

    try:
        return locate_engine().path
    except EngineNotFound:
        return None


def _find_demo_model() -> Path | None:
    from mcp_server.setup.bootstrap import DEMO_RELPATH, demo_model_cache_path

    for candidate in (demo_model_cache_path(), REPO / "models" / DEMO_RELPATH):
        if candidate.is_file():
            return candidate
    return None


REAL_ENGINE = _find_engine()
REAL_DEMO_MODEL = _find_demo_model()


def need(thing: object, what: str, how: str) -> None:
    """Skip with a reason that says how to provide ``what``; in CI a missing prerequisite fails."""
    if thing:
        return
    message = f"{what} not available: {how}"
    if IN_CI:
        pytest.fail(message + " (CI must provide it: see .ci/run)")
    pytest.skip(message)


@pytest.fixture(autouse=True)
def isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv(paths.HOME_ENV, str(home))
    monkeypatch.delenv(paths.CONFIG_ENV, raising=False)
    if REAL_ENGINE:
        monkeypatch.setenv("LLAMA_SERVER", REAL_ENGINE)
    return home


@pytest.fixture
def engine_path() -> str:
    need(REAL_ENGINE, "llama-server", "run `llama-pilot engine build` (or `llama-pilot setup`)")
    assert REAL_ENGINE
    return REAL_ENGINE


@pytest.fixture
def demo_gguf() -> Path:
    need(REAL_DEMO_MODEL, "the demo model", "run `llama-pilot setup`")
    assert REAL_DEMO_MODEL
    return REAL_DEMO_MODEL


@pytest.fixture
def write_conf(tmp_path: Path):  # type: ignore[no-untyped-def]
    """Write a models.conf (dedented) into a fresh folder with a models/ dir; returns its path."""

    def write(text: str, name: str = "models.conf") -> Path:
        folder = tmp_path / "proj"
        (folder / "models").mkdir(parents=True, exist_ok=True)
        path = folder / name
        path.write_text(textwrap.dedent(text).lstrip("\n"))
        return path

    return write


@pytest.fixture
def demo_project(write_conf, demo_gguf: Path) -> Path:  # type: ignore[no-untyped-def]
    """A models.conf with the repo's demo profiles and the demo model linked into its models dir."""
    conf = write_conf((REPO / "models.conf").read_text())
    target = conf.parent / "models" / "gemma-3-270m" / demo_gguf.name
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(demo_gguf, target)
    except OSError:
        shutil.copyfile(demo_gguf, target)
    return conf


@pytest.fixture
def anyio_backend() -> str:
    """The event loop for every `pytest.mark.anyio` test (the MCP SDK's client runs on asyncio)."""
    return "asyncio"
