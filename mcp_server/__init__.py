"""llama-pilot: run, place, switch, watch and benchmark llama.cpp models, driven through MCP.

The package is a core library (``profiles``, ``engine``, ``runtime``, ``model_files``,
``placement``, ``monitoring``, ``checks``, ``bench``) with three front doors over it: ``cli``,
``server`` (MCP) and ``dashboard``. The names below are the library's surface; each is the core
function behind the MCP tool and CLI command of the same name, and is imported only when first
used, so ``import mcp_server`` costs nothing::

    import mcp_server as lp

    config = lp.load_config("models.conf")
    for profile in lp.list_profiles(config).profiles:
        print(profile.profile, profile.context, profile.file_present)
    runtime = lp.Runtime(config)
    view = runtime.start_model("demo")            # waits until ready
    print(lp.test_completion(runtime, "demo", prompt="Hello").text)
    runtime.stop_model("demo")
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# name -> module that defines it (relative to this package)
_SURFACE = {
    "load_config": "profiles.config",
    "Config": "profiles.config",
    "Profile": "profiles.config",
    "list_profiles": "profiles.listing",
    "get_profile": "profiles.listing",
    "lint_profiles": "profiles.lint",
    "create_profile": "profiles.edits",
    "update_profile": "profiles.edits",
    "retire_profile": "profiles.edits",
    "list_model_files": "model_files.local",
    "inspect_model_file": "model_files.local",
    "estimate_fit": "placement.operations",
    "plan_placement": "placement.operations",
    "calibrate": "placement.operations",
    "Runtime": "runtime.lifecycle",
    "diagnose": "checks.diagnosis",
    "test_completion": "checks.completion",
    "gpu_stats": "monitoring.gpu",
    "system_stats": "monitoring.system",
    "locate_engine": "engine.binary",
    "build_engine": "engine.binary",
    "run_benchmark": "jobs",
    "get_job": "jobs",
    "list_jobs": "jobs",
    "cancel_job": "jobs",
    "bench_results": "bench.results",
    "build_server": "server.app",
    "LlamaPilotError": "errors",
}

__all__ = ["__version__", *_SURFACE]


def __getattr__(name: str) -> Any:
    module = _SURFACE.get(name)
    if module is None:
        raise AttributeError(f"module 'mcp_server' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_SURFACE))
