"""Benchmarks as MCP background jobs: a detached runner process, progress in a JSON file,
cancel_job, resume, bench_results and the report resource. Real llama-server, real evalplus."""

from __future__ import annotations

import json
import time
from pathlib import Path

import psutil
import pytest
from mcp import Client

from mcp_server.jobs import get_job
from mcp_server.server.app import build_server

from .conftest import need
from .test_bench_evalplus import MINI

pytestmark = [pytest.mark.engine, pytest.mark.anyio]



def _wait(job_id: str, until, timeout_s: float = 300.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = get_job(job_id)
        if until(job):
            return job
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} never reached the state: {get_job(job_id)}")


async def test_evalplus_job_cancel_resume_results_and_report(demo_project: Path, engine_path, monkeypatch):
    need(MINI.is_file(), "the HumanEval+ Mini dataset", "put ../shared/datasets/humanevalplus/ beside the checkout")
    monkeypatch.setenv("LLAMA_PILOT_HUMANEVAL", str(MINI))  # the runner process inherits it
    async with Client(build_server(demo_project), raise_exceptions=True) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
        assert {"run_benchmark", "get_job", "list_jobs", "cancel_job", "bench_results"} <= set(tools)
        assert tools["cancel_job"].annotations.destructive_hint is True

        started = (await client.call_tool("run_benchmark", {"profile": "bench-demo", "limit": 4, "max_tokens": 64,
                                                             "mini": True})).structured_content
        job_id = started["id"]
        busy = await client.call_tool("run_benchmark", {"profile": "demo", "kind": "speed"})
        assert busy.is_error and "busy" in busy.content[0].text  # one benchmark job at a time

        running = _wait(job_id, lambda j: j.progress.done >= 1)
        assert running.status == "running" and running.progress.total == 4
        runner = psutil.Process(running.pid)
        cancelled = (await client.call_tool("cancel_job", {"job_id": job_id})).structured_content
        assert cancelled["status"] == "cancelled" and "--resume" in cancelled["error"]
        assert not runner.is_running() or runner.status() == psutil.STATUS_ZOMBIE
        status = (await client.call_tool("status", {})).structured_content["instances"]
        assert [i["status"] for i in status if i["profile"] == "bench-demo"] == ["stopped"]  # the job's model
        runs = (await client.call_tool("bench_results", {"profile": "bench-demo"})).structured_content["runs"]
        assert [r["status"] for r in runs] == ["cancelled"]
        run_dir = Path(runs[0]["run_dir"])
        kept = len((run_dir / "raw.jsonl").read_text().splitlines())
        assert 1 <= kept < 4

        resumed = (await client.call_tool("run_benchmark", {"profile": "bench-demo", "resume": "latest"})
                   ).structured_content
        done = _wait(resumed["id"], lambda j: j.status not in ("queued", "running"))
        assert done.status == "done", done.error
        assert done.result["run_dir"] == str(run_dir) and done.result["generated_now"] == 4 - kept
        assert done.progress.done == done.progress.total == 4
        eval_results = json.loads((run_dir / "samples_eval_results.json").read_text())
        assert len(eval_results["eval"]) == 4

        listed = (await client.call_tool("list_jobs", {})).structured_content["jobs"]
        assert [j["id"] for j in listed[:2]] == [resumed["id"], job_id]
        runs = (await client.call_tool("bench_results", {"kind": "evalplus"})).structured_content["runs"]
        assert runs[0]["status"] == "done" and runs[0]["problems"] == "4/164"
        assert runs[0]["humaneval"] == done.result["scores"]["humaneval"]

        report = await client.read_resource("reports://evalplus/REPORT.md")
        text = report.contents[0].text
        assert "| 1 | Gemma 3 270M Q4_K_M | " in text and "4/164 (subset)" in text
        assert "reports://evalplus/humaneval-plus.png" in text
        chart = await client.read_resource("reports://evalplus/humaneval-plus.png")
        assert chart.contents[0].mime_type == "image/png"

        missing = await client.call_tool("get_job", {"job_id": "evalplus-nope"})
        assert missing.is_error and "no job" in missing.content[0].text
