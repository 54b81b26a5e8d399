"""Host and per-instance stats with psutil: real processes, a real llama-server, Docker's figures
through a stand-in client (the container path is the SDK's ``stats(stream=False)``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import types

import psutil
import pytest
from click.testing import CliRunner

from mcp_server.monitoring import system as sysstats
from mcp_server.cli.main import cli
from mcp_server.runtime.registry import InstanceRecord, InstanceStatus
from mcp_server.profiles.config import load_config
from mcp_server.profiles.edits import update_profile
from mcp_server.runtime.lifecycle import Runtime
from mcp_server.monitoring.system import StatsState, system_stats


def record(profile: str = "demo", *, pid: int | None = None, backend: str = "native", **extra) -> InstanceRecord:
    values = dict(id=f"{profile}-20250101-000000-abcd", profile=profile, backend=backend,
                  status=InstanceStatus.READY, host="127.0.0.1", port=8080, argv=["llama-server"],
                  log_path="/dev/null", model_path="/m.gguf", pid=pid, started_at=time.time())
    values.update(extra)
    return InstanceRecord(**values)


@pytest.fixture
def busy():
    """A process that burns CPU for a few seconds (niced: the machine is shared)."""
    proc = subprocess.Popen([sys.executable, "-c", "import os,time\nos.nice(10)\nt=time.time()\n"
                                                   "while time.time()-t<4: pass"])
    yield proc
    proc.kill()
    proc.wait()


def test_host_figures_and_first_call_primes():
    state = StatsState()
    started = time.monotonic()
    stats = system_stats(instances=[], sampler_state=state, prime_s=0.2)
    assert 0.15 <= time.monotonic() - started < 2 and stats.interval_s == pytest.approx(0.2, abs=0.15)
    assert stats.cpu_count == psutil.cpu_count() == len(stats.per_core_pct)
    assert 0 <= stats.cpu_pct <= 100 and all(0 <= p <= 100 for p in stats.per_core_pct)
    assert len(stats.load_avg) == 3
    assert stats.ram_total_mib > stats.ram_available_mib > 0 and stats.ram_used_mib > 0
    assert stats.swap_total_mib >= stats.swap_used_mib >= 0 and stats.instances == []
    time.sleep(0.3)
    started = time.monotonic()
    later = system_stats(instances=[], sampler_state=state)
    assert time.monotonic() - started < 0.15  # no priming once the state has a previous reading
    assert later.interval_s == pytest.approx(0.3, abs=0.2)


def test_process_rss_and_cpu_between_calls(busy):
    state = StatsState()
    inst = record("busy", pid=busy.pid, pid_create_time=psutil.Process(busy.pid).create_time())
    first = system_stats([inst], state, prime_s=0.3)
    (s,) = first.instances
    assert s.rss_mib and s.rss_mib > 1 and s.threads and s.cpu_pct is not None and s.note is None
    time.sleep(0.5)
    (s,) = system_stats([inst], state).instances
    assert s.cpu_pct is not None and s.cpu_pct > 5  # shared machine: well under one full core is possible
    assert (s.profile, s.backend, s.status, s.pid) == ("busy", "native", "ready", busy.pid)


def test_new_instance_has_no_cpu_until_the_next_call(busy):
    state = StatsState()
    system_stats([], state, prime_s=0.05)
    inst = record("late", pid=busy.pid)
    assert system_stats([inst], state).instances[0].cpu_pct is None
    time.sleep(0.2)
    assert system_stats([inst], state).instances[0].cpu_pct is not None


def test_stale_gone_and_stopped_records(busy):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    stale = record("stale", pid=busy.pid, pid_create_time=1.0)
    dead = record("dead", pid=gone.pid)
    stopped = record("stopped", pid=busy.pid, status=InstanceStatus.STOPPED)
    stats = system_stats([stale, dead, stopped], StatsState(), prime_s=0.05)
    by = {s.profile: s for s in stats.instances}
    assert set(by) == {"stale", "dead"}  # only live records are reported
    assert by["stale"].rss_mib is None and "stale" in by["stale"].note
    assert by["dead"].rss_mib is None and by["dead"].note == "process is gone"


class FakeContainer:
    def __init__(self, readings):
        self.readings = readings
        self.calls = []

    def stats(self, **kwargs):
        self.calls.append(kwargs)
        return self.readings.pop(0)


def docker_reading(total_ns, system_ns, usage, inactive, cpus=4):
    return {"cpu_stats": {"cpu_usage": {"total_usage": total_ns}, "system_cpu_usage": system_ns, "online_cpus": cpus},
            "precpu_stats": {}, "memory_stats": {"usage": usage, "limit": 8 << 30,
                                                 "stats": {"inactive_file": inactive}}}


def test_docker_container_figures(busy):
    cid = "c" * 64
    container = FakeContainer([docker_reading(1_000_000_000, 100_000_000_000, 900 << 20, 100 << 20),
                               docker_reading(1_500_000_000, 102_000_000_000, 1000 << 20, 100 << 20)])
    state = StatsState()
    state.docker = types.SimpleNamespace(containers=types.SimpleNamespace(get=lambda ref: container))
    inst = record("boxed", backend="docker", pid=busy.pid, container_id=cid)
    (first,) = system_stats([inst], state, prime_s=0.01).instances
    assert first.container_mem_mib == 900.0 and first.container_mem_limit_mib == 8192.0
    assert first.container_cpu_pct == pytest.approx(0.5 / 2 * 4 * 100)  # 0.5 s of CPU over 2 s of 4 CPUs
    assert container.calls[0] == {"stream": False, "one_shot": True}
    assert first.rss_mib and first.container_id == cid  # the container's main process, seen from the host


def test_docker_failures_leave_figures_empty(monkeypatch, busy):
    broken = types.ModuleType("docker")

    def from_env(**kwargs):
        raise RuntimeError("no daemon")

    broken.from_env = from_env
    monkeypatch.setitem(sys.modules, "docker", broken)
    inst = record("boxed", backend="docker", pid=busy.pid, container_id="d" * 64)
    state = StatsState()
    (s,) = system_stats([inst], state, prime_s=0.01).instances
    assert s.container_mem_mib is None and s.container_cpu_pct is None and "Docker is not reachable" in s.note
    assert s.rss_mib  # the host process figures are still there

    def missing(ref):
        raise LookupError("No such container")

    state.docker, state.docker_failed = types.SimpleNamespace(containers=types.SimpleNamespace(get=missing)), None
    (s,) = system_stats([inst], state).instances
    assert s.container_mem_mib is None and "Docker stats failed" in s.note


@pytest.mark.engine
def test_real_instance_rss_and_cpu(engine_path, demo_project):
    from mcp_server.runtime.server_api import chat

    update_profile(load_config(demo_project), "global", set={"PORT": "18395", "PARALLEL": "1"})
    runtime = Runtime(load_config(demo_project))
    view = runtime.start_model("demo")
    try:
        state = StatsState()
        (first,) = system_stats(sampler_state=state, prime_s=0.1).instances  # from the registry
        assert (first.profile, first.pid, first.backend) == ("demo", view.pid, "native")
        assert first.rss_mib and first.rss_mib > 50  # the model is mapped and touched
        chat(view.url, "Say hi.", max_tokens=8, temperature=0)
        (second,) = system_stats(sampler_state=state).instances
        assert second.cpu_pct is not None and second.cpu_pct > 0 and second.threads and second.threads > 1
        result = CliRunner().invoke(cli, ["stats"], catch_exceptions=False)
        row = next(line for line in result.output.splitlines() if line.startswith("demo"))
        assert str(view.pid) in row and "native" in row and "ready" in row
    finally:
        runtime.stop_model("all", grace_s=3)


def test_cli_stats_json_and_table():
    result = subprocess.run([sys.executable, "-m", "mcp_server", "cli", "stats", "--json"], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["cpu_count"] == len(data["per_core_pct"]) and data["ram_total_mib"] > 0
    assert data["instances"] == []
    table = CliRunner().invoke(cli, ["stats"], catch_exceptions=False)
    assert table.exit_code == 0 and table.output.startswith("CPU ") and "no llama-pilot instance running" in table.output


def test_cli_stats_watch(monkeypatch):
    frames = []
    real_sleep = time.sleep

    def sleep(seconds):
        if seconds < 0.5:  # system_stats's first, priming wait
            return real_sleep(seconds)
        frames.append(seconds)  # the watch loop's wait for the next redraw
        if len(frames) == 2:
            raise KeyboardInterrupt
        real_sleep(0.05)

    monkeypatch.setattr(sysstats.time, "sleep", sleep)
    result = CliRunner().invoke(cli, ["stats", "--watch", "--json"], catch_exceptions=False)
    assert result.exit_code == 0
    lines = [json.loads(line) for line in result.output.splitlines()]
    assert len(lines) == 2 and lines[1]["interval_s"] is not None



@pytest.mark.anyio
async def test_mcp_system_stats_tool(write_conf):
    from mcp import Client

    from mcp_server.server.app import build_server

    conf = write_conf("[global]\nMODELS_DIR=models\n\n[alpha]\nMODEL=a.gguf\n")
    async with Client(build_server(conf), raise_exceptions=True) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
        assert tools["system_stats"].annotations.read_only_hint is True and tools["system_stats"].output_schema
        data = (await client.call_tool("system_stats", {})).structured_content
        assert data["cpu_count"] == os.cpu_count() and data["interval_s"] and data["instances"] == []
