"""Benchmarks: run_benchmark, get_job, list_jobs, cancel_job, bench_results, and the report resources.

``run_benchmark`` starts a detached background job and returns at once. Resources: ``reports://evalplus/REPORT.md`` (the Markdown report,
rendered from the runs on disk at each read) and ``reports://evalplus/humaneval-plus.png`` (its
chart). Tools take profile ids and job ids, never paths: the dataset and results folders come from
the server's environment (docs/benchmarks.md).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated, Literal

from mcp.server import MCPServer
from mcp.server.mcpserver.exceptions import ResourceNotFoundError
from pydantic import Field

from mcp_server.bench.jobs import Job, JobList
from mcp_server.bench.results import RunList
from mcp_server.server.conventions import (READ_ONLY, STARTS_JOB, STOPS_JOB, JobId, ProfileId, RunId, TaskList,
                                           config_or_none, in_thread)


def register(mcp: MCPServer, config_path: str | Path | None) -> None:
    from mcp_server.bench import jobs, results

    @mcp.tool(annotations=STARTS_JOB)
    async def run_benchmark(
        profile: ProfileId,
        kind: Literal["evalplus", "speed"] = "evalplus",
        limit: Annotated[int | None, Field(ge=1, le=10000, description="evalplus: only the first N problems")] = None,
        tasks: TaskList | None = None,
        mini: Annotated[bool, Field(description="evalplus: the Mini dataset (faster evaluation)")] = False,
        resume: RunId | None = None,
        create_bench: Annotated[bool, Field(description="evalplus: create bench-<profile> if missing")] = False,
        max_tokens: Annotated[int | None, Field(ge=16, le=131072, description="evalplus: override MAX_TOKENS")] = None,
        concurrency: Annotated[int | None, Field(ge=1, le=256, description="evalplus: requests in flight")] = None,
        prompt_tokens: Annotated[list[Annotated[int, Field(ge=1, le=1048576)]] | None,
                                 Field(max_length=8, description="speed: prompt lengths")] = None,
        gen_tokens: Annotated[list[Annotated[int, Field(ge=1, le=65536)]] | None,
                              Field(max_length=8, description="speed: generation lengths")] = None,
        reps: Annotated[int, Field(ge=1, le=20, description="speed: repetitions")] = 3,
        update_profile: Annotated[bool, Field(description="speed: write the result into the profile's SPEED")] = False,
    ) -> Job:
        """Start a benchmark as a background job and return its id at once: 'evalplus' (HumanEval+ pass@1 on the profile's bench- twin; resumable) or 'speed' (prompt/generation tokens/s, time to first token, concurrent throughput). The model is started if needed. Poll get_job for progress (problems done / total) and the result; cancel_job stops it. One benchmark job runs at a time."""
        return await in_thread(lambda: jobs.run_benchmark(
            config_path, profile, kind, limit=limit, tasks=tasks, mini=mini, resume=resume, create_bench=create_bench,
            max_tokens=max_tokens, concurrency=concurrency, prompt_tokens=prompt_tokens, gen_tokens=gen_tokens,
            reps=reps, update_profile=update_profile))

    @mcp.tool(annotations=READ_ONLY)
    async def get_job(job_id: JobId) -> Job:
        """A background benchmark job: status (queued/running/done/failed/cancelled), progress (done/total and the current step), recent messages, the result (run folder, scores or speeds) or the error."""
        return await in_thread(lambda: jobs.get_job(job_id))

    @mcp.tool(annotations=READ_ONLY)
    async def list_jobs(limit: Annotated[int, Field(ge=1, le=200)] = 20) -> JobList:
        """Recent background benchmark jobs, newest first, with status and progress."""
        return await in_thread(lambda: jobs.list_jobs(limit))

    @mcp.tool(annotations=STOPS_JOB)
    async def cancel_job(job_id: JobId) -> Job:
        """Stop a background benchmark job (its process group gets SIGTERM, then SIGKILL). An EvalPlus run keeps every finished problem and can be resumed with run_benchmark(resume='latest')."""
        return await in_thread(lambda: jobs.cancel_job(job_id))

    @mcp.tool(annotations=READ_ONLY)
    async def bench_results(profile: ProfileId | None = None, kind: Literal["evalplus", "speed"] | None = None,
                            limit: Annotated[int, Field(ge=1, le=500)] = 50) -> RunList:
        """Benchmark runs on disk, newest first: profile, run id, status, HumanEval/HumanEval+ pass@1 or generation/prompt tokens/s, wall times, run folder. The full report is the resource reports://evalplus/REPORT.md."""
        return await in_thread(lambda: results.bench_results(profile=profile, kind=kind, limit=limit))

    @mcp.resource("reports://evalplus/REPORT.md", mime_type="text/markdown")
    def evalplus_report() -> str:
        """The EvalPlus HumanEval+ report: local runs vs published reference scores (rendered from the runs on disk)."""
        from mcp_server.bench.report import collect, render_markdown

        report = collect(config_or_none(config_path))
        chart = "reports://evalplus/humaneval-plus.png" if (report.rows or report.references) else None
        return render_markdown(report, chart)

    @mcp.resource("reports://evalplus/humaneval-plus.png", mime_type="image/png")
    def evalplus_chart() -> bytes:
        """Bar chart of HumanEval+ pass@1 per model, local runs and reference scores in two colours."""
        from mcp_server.bench.report import collect, render_chart

        report = collect(config_or_none(config_path))
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "chart.png"
            if not render_chart(report, path):
                raise ResourceNotFoundError("no chart: no results or reference scores yet (or matplotlib missing)")
            return path.read_bytes()
