"""The build_engine tool: progress, the cached answer, and a cancelled build that stops compiling.

The pinned llama.cpp takes about 15 minutes to build, so these runs build a tiny C project shaped
like llama.cpp (the same one tests/test_engine.py builds) through the real build steps: cmake
configure, compile, install, with the real progress and kill paths.
"""

from __future__ import annotations

import time
from pathlib import Path

import anyio
import psutil
import pytest
from mcp import Client

from mcp_server.engine import binary as engine
from mcp_server.server.app import build_server

from .test_engine import FAKE_MAIN, NO_GPU, make_source, needs_toolchain

pytestmark = [pytest.mark.anyio, needs_toolchain]

# Many small files before the four programs, so the compile step lasts long enough to cancel.
SLOW_CMAKE = """\
    cmake_minimum_required(VERSION 3.14)
    project(fake_llama C)
    set(CMAKE_RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/bin)
    file(GLOB FILLER ${CMAKE_SOURCE_DIR}/filler/*.c)
    add_library(filler STATIC ${FILLER})
    foreach(t llama-server llama-bench llama-fit-params ggml-rpc-server)
        add_executable(${t} main.c)
        target_link_libraries(${t} filler)
    endforeach()
"""



@pytest.fixture
def fake_pinned(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """build_engine's plan points at a fake llama.cpp checkout instead of the pinned release."""
    src = make_source(tmp_path / "llama.cpp", SLOW_CMAKE, FAKE_MAIN)
    (src / "filler").mkdir()
    for i in range(400):
        (src / "filler" / f"f{i}.c").write_text(f"int filler_{i}(int x) {{ return x * {i} + {i % 7}; }}\n")
    real = engine.plan_build
    plans = []

    def plan_build(source=None, **kwargs):  # type: ignore[no-untyped-def]
        plans.append(real(str(src), nvml=NO_GPU))
        return plans[-1]

    monkeypatch.setattr(engine, "plan_build", plan_build)
    return plans


async def test_build_engine_reports_progress_then_answers_from_cache(fake_pinned, write_conf):
    async with Client(build_server(write_conf("[global]\n")), raise_exceptions=True) as client:
        tool = {t.name: t for t in (await client.list_tools()).tools}["build_engine"]
        assert tool.output_schema and tool.annotations.idempotent_hint and not tool.annotations.destructive_hint
        seen: list[tuple[float, str | None]] = []

        async def on_progress(done: float, total: float | None, message: str | None) -> None:
            seen.append((done, message))

        built = await client.call_tool("build_engine", {}, progress_callback=on_progress,
                                       read_timeout_seconds=280)
        assert not built.is_error, built.content[0].text
        info = built.structured_content
        assert info["build_number"] == 11434 and info["source"] == "cache" and info["backend"] == "cpu"
        assert [d for d, _ in seen] == sorted(d for d, _ in seen) and {"configure", "compile", "install"} <= {
            m for _, m in seen}
        seen.clear()
        again = await client.call_tool("build_engine", {}, progress_callback=on_progress)
        assert again.structured_content == info and seen == []
        bad = await client.call_tool("build_engine", {"cuda_arch": "89; rm -rf /"})
        assert bad.is_error and "pattern" in bad.content[0].text


async def test_cancelled_build_stops_compiling(fake_pinned, write_conf):
    me = psutil.Process()
    async with Client(build_server(write_conf("[global]\n")), raise_exceptions=True) as client:
        scope = anyio.CancelScope()

        async def on_progress(done: float, total: float | None, message: str | None) -> None:
            if message == "compile" and done > 4 / 6:  # compiling, a few files in
                scope.cancel()

        with scope:
            await client.call_tool("build_engine", {}, progress_callback=on_progress, read_timeout_seconds=280)
        assert scope.cancelled_caught, "the build finished before it could be cancelled"
        # The worker notices at its next progress line and kills the build tool; nothing is installed.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(p.name() in ("ninja", "make", "gmake", "cmake")
                                                  for p in me.children(recursive=True)):
            await anyio.sleep(0.1)
        assert not [p.name() for p in me.children(recursive=True) if p.name() in ("ninja", "make", "gmake", "cmake")]
        install = Path(fake_pinned[-1].install_dir)
        assert not (install / "bin" / "llama-server").exists() and not (install / "build.json").exists()
        assert "===== compile" in (install / "build.log").read_text()
