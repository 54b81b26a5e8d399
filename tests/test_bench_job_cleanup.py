"""cancel_job and the benchmark's model: a runner killed before its own cleanup (SIGKILL after
cancel_job's timeout) must not leave behind the llama-server it started, and a model that was
running before the job must be left running. Real llama-server, real demo model, real runner.

The runner is made to outlive SIGTERM honestly: a speed job's request is a long generation
(ignore_eos), and the speed runner looks at its cancel flag only between requests, so with a 1 s
timeout the SIGKILL lands while the request is in flight. Each test checks that this path was
really taken (the job says it killed the runner) before it checks the cleanup."""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

from mcp_server.jobs import Job, cancel_job, get_job, run_benchmark
from mcp_server.profiles.config import load_config
from mcp_server.runtime.lifecycle import Runtime, port_is_free
from mcp_server.runtime.registry import LIVE

pytestmark = pytest.mark.engine

LONG_GEN = 1900  # the demo profile has 2048 tokens per slot; 16 + 1900 fit, and take seconds even on a GPU


@pytest.fixture
def runtime(demo_project: Path, engine_path: str):  # type: ignore[no-untyped-def]
    runtime = Runtime(load_config(demo_project))
    yield runtime
    runtime.stop_model("all", grace_s=2)  # whatever a failed test left behind


def _wait(job_id: str, until, timeout_s: float = 120.0) -> Job:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = get_job(job_id)
        if until(job):
            return job
        assert job.status in ("queued", "running"), f"job ended before the state was reached: {job}"
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} never reached the state: {get_job(job_id)}")


def _long_job(demo_project: Path) -> Job:
    return run_benchmark(demo_project, "demo", "speed", prompt_tokens=[16], gen_tokens=[LONG_GEN], reps=1)


def _wait_long_request(url: str, timeout_s: float = 120.0) -> None:
    """Until the server is generating the long request (not the short warm-up before it)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/slots", timeout=5) as resp:
                slots = json.loads(resp.read())
        except OSError:  # 503 while the model loads (HTTPError is an OSError too)
            slots = []
        if any(s.get("is_processing") and (s.get("params") or {}).get("n_predict") == LONG_GEN for s in slots):
            return
        time.sleep(0.05)
    raise AssertionError(f"{url} never started the {LONG_GEN}-token request")


def _live(runtime: Runtime, profile: str) -> list:  # type: ignore[type-arg]
    return [v for v in runtime.status().instances if v.profile == profile and v.status in LIVE]


def _killed(job: Job) -> bool:
    return any("killed it (SIGKILL)" in m for m in job.messages)


def test_cancel_after_sigkill_stops_the_model_the_job_started(demo_project: Path, runtime: Runtime):
    assert _live(runtime, "demo") == []
    job = _long_job(demo_project)
    running = _wait(job.id, lambda j: j.started_instance is not None)
    assert running.serving_profile == "demo" and running.serving_instance == running.started_instance
    (view,) = _live(runtime, "demo")
    assert view.id == running.started_instance  # the job recorded the instance it launched
    _wait_long_request(view.url)
    server = psutil.Process(view.pid)

    cancelled = cancel_job(job.id, timeout_s=1.0)

    assert _killed(cancelled), cancelled.messages  # the runner did not get to its own cleanup
    assert cancelled.status == "cancelled"
    assert _live(runtime, "demo") == []  # cancel_job stopped it instead
    assert port_is_free(view.port)
    assert not server.is_running() or server.status() == psutil.STATUS_ZOMBIE
    assert cancelled.still_running == []
    assert f"stopped demo (instance {view.id}), which this job started" in cancelled.messages
    assert get_job(job.id) == cancelled  # what it answered is what the job file says


def test_cancel_leaves_a_model_that_ran_before_the_job(demo_project: Path, runtime: Runtime):
    before = runtime.start_model("demo")
    job = _long_job(demo_project)
    running = _wait(job.id, lambda j: j.serving_instance is not None)
    assert running.serving_instance == before.id and running.started_instance is None
    _wait_long_request(before.url)

    cancelled = cancel_job(job.id, timeout_s=1.0)

    assert _killed(cancelled), cancelled.messages
    assert cancelled.status == "cancelled"
    assert [v.id for v in _live(runtime, "demo")] == [before.id]  # the same server, still up
    assert psutil.Process(before.pid).is_running()
    with urllib.request.urlopen(f"{before.url}/health", timeout=5) as resp:
        assert resp.status == 200
    assert cancelled.still_running == ["demo"]
    assert not any(m.startswith("stopped demo") for m in cancelled.messages)


def test_a_runner_that_died_reports_its_model_and_cancel_stops_it(demo_project: Path, runtime: Runtime):
    job = _long_job(demo_project)
    running = _wait(job.id, lambda j: j.started_instance is not None)
    (view,) = _live(runtime, "demo")
    _wait_long_request(view.url)
    os.killpg(running.pid, signal.SIGKILL)  # not through cancel_job: the runner just dies

    deadline = time.monotonic() + 10
    while (died := get_job(job.id)).status == "running" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert died.status == "failed" and "ended without reporting" in (died.error or "")
    assert died.still_running == ["demo"]  # get_job only reports: it is a read
    assert f"cancel_job {job.id} stops it" in (died.error or "")
    assert [v.id for v in _live(runtime, "demo")] == [view.id]

    cleaned = cancel_job(job.id)  # on an ended job: only the cleanup

    assert cleaned.status == "failed"
    assert _live(runtime, "demo") == [] and port_is_free(view.port)
    assert cleaned.still_running == []
