"""What a benchmark ran on: the GGUF file (name, size, sha256), the llama.cpp build, the full argv,
the GPUs (name, driver, memory), the CPU, and the date.

A sha256 of a 60 GB model takes minutes, so it is cached per (path, size, mtime) under
``$LLAMA_PILOT_HOME/cache/sha256.json``; a changed file is hashed again.
"""

from __future__ import annotations

import json
import os
import platform
import socket
from pathlib import Path
from typing import Any

from mcp_server import __version__, paths
from mcp_server.files import sha256_of
from mcp_server.profiles.config import Config, Profile
from mcp_server.bench import now_iso, write_json


def sha256_file(path: Path, chunk: int = 8 << 20) -> str:
    """sha256 of a file, cached by (resolved path, size, mtime_ns)."""
    real = path.resolve()
    st = real.stat()
    key = f"{real}|{st.st_size}|{st.st_mtime_ns}"
    cache_path = paths.cache_dir() / "sha256.json"
    try:
        cache = json.loads(cache_path.read_text())
        if not isinstance(cache, dict):
            cache = {}
    except (OSError, ValueError):
        cache = {}
    if key in cache:
        return cache[key]
    value = sha256_of(real, chunk)
    cache = {k: v for k, v in cache.items() if not k.startswith(f"{real}|")}
    cache[key] = value
    try:
        write_json(cache_path, cache)
    except OSError:
        pass  # a cache we cannot write only costs time next run
    return value


def model_files(config: Config, profile: Profile) -> list[dict[str, Any]]:
    """Name, path, size and sha256 of the profile's GGUF (every shard of a split file)."""
    from mcp_server.model_files.reader import shard_paths

    first = config.model_path(profile)
    if first is None:
        return []
    out = []
    for shard in shard_paths(first):
        if not shard.is_file():
            out.append({"file": shard.name, "path": str(shard), "size_bytes": None, "sha256": None, "missing": True})
            continue
        out.append({"file": shard.name, "path": str(shard), "size_bytes": shard.stat().st_size,
                    "sha256": sha256_file(shard)})
    return out


def gpus(visible_devices: str | None = None) -> list[dict[str, Any]]:
    """Each NVIDIA GPU NVML sees (index, name, driver, memory); [] without a driver."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # no package, no libnvidia-ml, no driver: a CPU-only host
        return []
    try:
        driver = pynvml.nvmlSystemGetDriverVersion()
        driver = driver.decode() if isinstance(driver, bytes) else driver
        try:
            cuda = pynvml.nvmlSystemGetCudaDriverVersion_v2()
            cuda_text = f"{cuda // 1000}.{(cuda % 1000) // 10}"
        except Exception:
            cuda_text = None
        wanted = {int(x) for x in visible_devices.split(",")} if visible_devices else None
        found = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            name = pynvml.nvmlDeviceGetName(handle)
            name = name.decode() if isinstance(name, bytes) else name
            mem = pynvml.nvmlDeviceGetMemoryInfo(handle)
            found.append({"index": i, "name": name, "driver": driver, "cuda_driver": cuda_text,
                          "memory_total_mib": round(mem.total / 2**20), "memory_used_mib": round(mem.used / 2**20),
                          "used_by_profile": wanted is None or i in wanted})
        return found
    except Exception:
        return []
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass


def cpu_model() -> str | None:
    """The CPU's marketing name (Linux /proc/cpuinfo), else what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def machine_summary() -> str:
    """One line for benchmark write-ups: CPU model, CPU count, Python version."""
    return f"{cpu_model() or platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"


def cpu() -> dict[str, Any]:
    model = cpu_model()
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    mem = None
    try:
        import psutil

        mem = round(psutil.virtual_memory().total / 2**30, 1)
    except Exception:
        pass
    return {"model": model, "logical_cpus": os.cpu_count(), "usable_cpus": usable, "memory_gib": mem,
            "load_avg": load_avg()}


def load_avg() -> list[float] | None:
    """1, 5 and 15 minute load averages: other work on the host slows a benchmark down."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def server_manifest(config: Config, profile: Profile, *, argv: list[str], env: dict[str, str] | None,
                    props: dict[str, Any] | None, backend: str) -> dict[str, Any]:
    """The manifest part that describes the model, the engine and the machine."""
    from mcp_server.engine.binary import locate_engine
    from mcp_server.errors import EngineNotFound

    engine: dict[str, Any] = {}
    if backend == "native":
        try:
            info = locate_engine(config.host.engine)
            engine = {"path": info.path, "build_number": info.build_number, "build_commit": info.build_commit,
                      "backend": info.backend, "version_text": info.version_text}
        except EngineNotFound as exc:
            engine = {"error": str(exc)}
    else:
        engine = {"image": config.host.docker_image}
    props = props or {}
    engine["server_build_info"] = props.get("build_info")
    return {
        "profile_settings": {"id": profile.id, "name": profile.name, "values": dict(profile.values),
                    "defaults_from_global": {k: v for k, v in profile.defaults.items() if k not in profile.values}},
        "model": {"files": model_files(config, profile), "ftype": props.get("model_ftype"),
                  "server_model_path": props.get("model_path")},
        "engine": engine,
        "backend": backend,
        "argv": list(argv),
        "env": dict(env or {}),
        "server": {"total_slots": props.get("total_slots"),
                   "n_ctx_per_slot": (props.get("default_generation_settings") or {}).get("n_ctx"),
                   "chat_template_caps": props.get("chat_template_caps")},
        "gpus": gpus((env or {}).get("CUDA_VISIBLE_DEVICES") or profile.get("VISIBLE_DEVICES")),
        "cpu": cpu(),
        "host": {"hostname": socket.gethostname(), "os": platform.platform(), "python": platform.python_version()},
        "llama_pilot": __version__,
        "date": now_iso(),
    }
