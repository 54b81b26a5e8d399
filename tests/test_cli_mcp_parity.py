"""Every tool both ways: the MCP tool's structured output equals `llama-pilot <command> --json` on the
same state (the real engine, the demo model, one home), and an error carries the same code.

Fields that change between two calls by themselves (pids, clocks, uptimes, measured speeds, CPU
load) are compared by kind, not by value; everything else must be equal.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import anyio
import pytest
from click.testing import CliRunner
from mcp import Client

from mcp_server.cli.main import cli
from mcp_server.cli.verbs import VERBS
from mcp_server.server.app import build_server

from .conftest import REAL_ENGINE

pytestmark = pytest.mark.anyio

# Values that differ between two calls a moment apart, whoever makes them (prompt_tokens: the second
# request reuses the server's prompt cache, so it evaluates fewer tokens).
VOLATILE = {"prompt_tokens", "pid", "id", "instance", "started_at", "ready_at", "ended_at", "uptime_s", "load_seconds", "wall_s",
            "prompt_tokens_per_s", "generation_tokens_per_s", "at", "cpu_pct", "per_core_pct", "load_avg",
            "ram_used_mib", "ram_available_mib", "swap_used_mib", "rss_mib", "threads", "interval_s",
            "sampled_at", "decided_at", "instance_id", "container_id", "seconds", "created_at", "total_lines", "lines",
            "progress", "idle_s", "oldest_wait_s", "free_mib", "free", "host_free_mib", "available_mib", "note", "exit_code"}


def _shape(value: Any, key: str = "") -> Any:
    """The value with volatile leaves replaced by their type, so equal shapes compare equal."""
    if key in VOLATILE:
        return type(value).__name__ if not isinstance(value, (list, dict)) else type(value).__name__
    if isinstance(value, dict):
        return {k: _shape(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_shape(v) for v in value]
    return value


def _differences(a: Any, b: Any, where: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b)) for d in _differences(a.get(k), b.get(k), f"{where}.{k}")]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _differences(x, y, f"{where}[{i}]")]
    return [] if a == b else [f"{where}: {a!r} != {b!r}"[:300]]


@pytest.fixture
def project(demo_project: Path, engine_path: str, isolated_home: Path) -> Path:
    """The demo project, and this home holding an install of the pinned build (the real binaries,
    linked in, with the build record of this home's plan), so build_engine answers from it at once."""
    from mcp_server.engine.binary import plan_build

    plan = plan_build(None, backend="auto")
    real_bin = Path(REAL_ENGINE or engine_path).resolve().parent
    install = Path(plan.install_dir)
    (install / "bin").mkdir(parents=True)
    for target in plan.targets:
        os.symlink(real_bin / target, install / "bin" / target)
    (install / "build.json").write_text(json.dumps({"plan": plan.model_dump(), "seconds": {}, "date": "-",
                                                    "version_text": ""}))
    candidates = demo_project.parent / "models" / "documentation" / "CANDIDATES"
    candidates.mkdir(parents=True, exist_ok=True)
    (candidates / "Gemma.md").write_text("# Gemma 3 270M\n")
    return demo_project


def _cli(conf: Path, *args: str) -> tuple[int, Any]:
    result = CliRunner().invoke(cli, ["--config", str(conf), *args, "--json"], catch_exceptions=False)
    return result.exit_code, json.loads(result.stdout)


async def _both(client: Client, conf: Path, tool: str, arguments: dict[str, Any], *cli_args: str,
                exact: bool = False) -> Any:
    called = await client.call_tool(tool, arguments)
    assert not called.is_error, called.content[0].text
    code, printed = _cli(conf, tool.replace("_", "-"), *cli_args)
    assert code == 0, printed
    mcp_out = called.structured_content
    if exact:
        assert printed == mcp_out, tool
    else:
        assert _shape(printed) == _shape(mcp_out), (tool, _differences(_shape(printed), _shape(mcp_out)))
    return mcp_out


async def test_every_tool_prints_the_same_object_both_ways(project: Path, monkeypatch: pytest.MonkeyPatch):
    conf = project
    covered: set[str] = set()

    async def both(tool: str, arguments: dict[str, Any], *cli_args: str, exact: bool = False) -> Any:
        covered.add(tool)
        return await _both(client, conf, tool, arguments, *cli_args, exact=exact)

    async with Client(build_server(conf)) as client:
        # Nothing runs yet: reads and dry-run edits are exactly equal.
        await both("list_profiles", {}, exact=True)
        await both("get_profile", {"profile": "demo"}, "demo", exact=True)
        await both("lint_profiles", {"profile": "demo"}, "demo", exact=True)
        await both("create_profile", {"profile": "twin", "values": {"MODEL": "gemma-3-270m/gemma-3-270m-q4_k_m.gguf",
                                                                     "NAME": "Twin"}, "dry_run": True},
                   "twin", "MODEL=gemma-3-270m/gemma-3-270m-q4_k_m.gguf", "NAME=Twin", "--dry-run", exact=True)
        await both("update_profile", {"profile": "demo", "set": {"TEMP": "0.5"}, "unset": ["TOP_K"], "dry_run": True},
                   "demo", "TEMP=0.5", "--unset", "TOP_K", "--dry-run", exact=True)
        await both("retire_profile", {"profile": "demo", "note": "old", "dry_run": True},
                   "demo", "--note", "old", "--dry-run", exact=True)
        files = await both("list_model_files", {}, exact=True)
        path = files["files"][0]["path"]
        await both("inspect_model_file", {"path": path}, path, exact=True)
        await both("estimate_fit", {"profile": "demo", "gpus": "none"}, "demo", "--gpus", "none", exact=True)
        await both("plan_placement", {"model": path, "ctx": 2048, "gpus": "none"}, path, "--ctx", "2048", "--gpus",
                   "none")
        await both("apply_placement", {"profile": "demo", "ctx": 2048, "gpus": "none", "dry_run": True},
                   "demo", "--ctx", "2048", "--gpus", "none", "--dry-run")
        await both("estimate_fit", {"model": path, "values": {"CTX_SIZE": "2048"}, "gpus": "none"},
                   "--model", path, "--set", "CTX_SIZE=2048", "--gpus", "none", exact=True)
        # demo has its twin already; a profile without one shows the create both ways.
        from mcp_server.profiles.config import load_config
        from mcp_server.profiles.edits import create_profile

        create_profile(load_config(conf), "solo", {"MODEL": "gemma-3-270m/gemma-3-270m-q4_k_m.gguf"})
        await both("create_bench_profile", {"profile": "solo", "dry_run": True}, "solo", "--dry-run", exact=True)
        await both("promote_model_card", {"name": "Gemma", "dry_run": True}, "Gemma", "--dry-run", exact=True)
        await both("gpu_stats", {})
        await both("diagnose", {"profile": "demo"}, "demo")
        await both("bench_results", {}, exact=True)
        await both("list_jobs", {}, exact=True)
        await both("build_engine", {}, exact=True)

        # Lifecycle: each way starts and stops the same profile with the same result.
        started = (await client.call_tool("start_model", {"profile": "demo"})).structured_content
        covered.add("start_model")
        stopped_cli = _cli(conf, "stop-model", "demo")
        assert stopped_cli[0] == 0
        code, started_cli = _cli(conf, "start-model", "demo")
        assert code == 0 and _shape(started_cli) == _shape(started)
        await both("status", {})
        await both("switch_model", {"profile": "demo"}, "demo")  # already ready: nothing to stop
        await both("load_report", {"profile": "demo"}, "demo", exact=True)
        await both("tail_logs", {"profile": "demo", "lines": 5}, "demo", "-n", "5")
        await both("test_completion", {"profile": "demo", "prompt": "The sky is", "max_tokens": 4, "temperature": 0},
                   "demo", "--prompt", "The sky is", "--max-tokens", "4", "--temperature", "0")
        await both("calibrate", {"profile": "demo"}, "demo")
        await both("system_stats", {})
        stopped = (await client.call_tool("stop_model", {"profile": "demo"})).structured_content
        covered.add("stop_model")
        assert _shape(stopped) == _shape({"instances": [stopped_cli[1]["instances"][0]],
                                          "elsewhere": stopped_cli[1]["elsewhere"]})

        # Jobs: a speed benchmark started both ways gives the same job (then cancelled).
        job = (await client.call_tool("run_benchmark", {"profile": "demo", "kind": "speed", "reps": 1,
                                                         "prompt_tokens": [16], "gen_tokens": [4]})).structured_content
        covered.add("run_benchmark")
        await both("get_job", {"job_id": job["id"]}, job["id"])
        await both("cancel_job", {"job_id": job["id"]}, job["id"])
        code, job_cli = _cli(conf, "run-benchmark", "demo", "--kind", "speed", "--reps", "1", "--prompt-tokens", "16",
                             "--gen-tokens", "4")
        assert code == 0 and set(job_cli) == set(job) and job_cli["params"] == job["params"]
        _cli(conf, "cancel-job", job_cli["id"])

        # Hugging Face, through a fake hub on loopback (HF_ENDPOINT).
        from .fake_hub import FakeHub, FakeRepo, Running

        gguf = conf.parent / "models" / "gemma-3-270m" / "gemma-3-270m-q4_k_m.gguf"
        hub = FakeHub(repos={"org/Gemma-GGUF": FakeRepo(files={"gemma-Q4_K_M.gguf": gguf}, downloads=3)})
        served = Running(hub)
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        try:
            await both("search_models", {"query": "gemma"}, "gemma", exact=True)
            await both("list_quants", {"repo": "org/Gemma-GGUF"}, "org/Gemma-GGUF", exact=True)
            await both("check_fit", {"repo": "org/Gemma-GGUF:Q4_K_M", "ctx": 2048, "gpus": "none"},
                       "org/Gemma-GGUF:Q4_K_M", "--ctx", "2048", "--gpus", "none")
            await both("draft_hub_profile", {"repo": "org/Gemma-GGUF:Q4_K_M", "ctx": 2048, "gpus": "none"},
                       "org/Gemma-GGUF:Q4_K_M", "--ctx", "2048", "--gpus", "none", exact=True)
            # A download is a job, as run_benchmark is: the same object, then the same again from the CLI.
            from mcp_server.jobs import get_job

            fetch = (await client.call_tool("download_model", {"repo": "org/Gemma-GGUF:Q4_K_M"})).structured_content
            covered.add("download_model")
            for _ in range(600):
                if get_job(fetch["id"]).status not in ("queued", "running"):
                    break
                await anyio.sleep(0.05)
            assert get_job(fetch["id"]).status == "done"
            code, fetch_cli = _cli(conf, "download-model", "org/Gemma-GGUF:Q4_K_M")
            assert code == 0 and set(fetch_cli) == set(fetch) and fetch_cli["params"] == fetch["params"]
            # The tuner, a job too: started both ways (one at a time), then cancelled.
            tune = (await client.call_tool("tune_profile", {"profile": "demo", "minutes": 1})).structured_content
            covered.add("tune_profile")
            _cli(conf, "cancel-job", tune["id"])
            code, tune_cli = _cli(conf, "tune-profile", "demo", "--minutes", "1")
            assert code == 0 and set(tune_cli) == set(tune) and tune_cli["params"] == tune["params"]
            _cli(conf, "cancel-job", tune_cli["id"])
        finally:
            served.stop()

        # The endpoint: started, asked, loaded, pinned, unloaded and stopped both ways.
        from mcp_server.profiles.edits import update_profile

        from .serve_helpers import free_port

        update_profile(load_config(conf), "global", set={"SERVE_PORT": str(free_port())})
        await both("serve_status", {}, exact=True)  # not running
        await both("serve_start", {})  # the second finds it running
        await both("serve_status", {})
        await both("serve_load", {"profile": "demo"}, "demo")
        await both("serve_pin", {"profile": "demo", "pinned": False}, "demo", "--unpin")
        await both("serve_unload", {"profile": "demo"}, "demo")
        await both("serve_stop", {})

    # The worker tools need worker agents running: tests/test_workers.py compares them both ways.
    covered |= {"list_workers", "worker_status", "start_worker", "stop_worker"}
    assert covered == {v.tool for v in VERBS}, f"not compared: {sorted({v.tool for v in VERBS} - covered)}"


async def test_an_error_has_the_same_code_both_ways(project: Path):
    async with Client(build_server(project)) as client:
        for tool, arguments, cli_args, code in [
            ("get_profile", {"profile": "nope"}, ["nope"], "profile-not-found"),
            ("stop_model", {"profile": "demo"}, ["demo"], "not-running"),
            ("inspect_model_file", {"path": "missing.gguf"}, ["missing.gguf"], "model-file"),
            ("get_job", {"job_id": "no-such-job"}, ["no-such-job"], "job"),
        ]:
            called = await client.call_tool(tool, arguments)
            # The SDK puts "Error executing tool NAME: " before the text; ours starts with the code.
            text = called.content[0].text.removeprefix(f"Error executing tool {tool}: ")
            assert called.is_error and text.startswith(f"{code}: "), text
            exit_code, printed = _cli(project, tool.replace("_", "-"), *cli_args)
            assert exit_code == 1
            assert printed["error"] == {"code": code, "message": text.removeprefix(f"{code}: ")}
