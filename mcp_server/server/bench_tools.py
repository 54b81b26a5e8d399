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

from mcp_server.jobs import Job, JobList
from mcp_server.bench.results import RunList
from mcp_server.profiles.edits import EditResult
from mcp_server.server.conventions import (EDITS, READ_ONLY, RUN_ID_HELP, RUN_ID_PATTERN, STARTS_JOB, STOPS_JOB,
                                           TASK_LIST_HELP, TASK_LIST_PATTERN, DryRun, JobId, ProfileIdStr,
                                           config_or_none, in_thread)


def register(mcp: MCPServer, config_path: str | Path | None) -> None:
    from mcp_server import jobs
    from mcp_server.bench import results

    @mcp.tool(annotations=EDITS)
    async def create_bench_profile(
        profile: Annotated[ProfileIdStr, Field(description="the production profile to derive bench-<profile> from")],
        ctx_per_slot: Annotated[int, Field(ge=2048, le=131072, description="context per server slot (HumanEval's "
                                                                           "longest needs about 8.4K tokens)")] = 10240,
        parallel: Annotated[int | None, Field(ge=1, le=64, description="server slots; default the production "
                                                                       "profile's PARALLEL, else 1")] = None,
        dry_run: DryRun = False,
    ) -> EditResult:
        """Create the benchmark twin [bench-<profile>] of a production profile: same MODEL and placement, context per slot for HumanEval, no server-side samplers (the benchmark client decodes greedily), --reasoning-format none so thinking stays parseable; returns the diff (dry_run previews). run_benchmark with kind 'evalplus' needs it. Use this rather than create_profile for a bench- profile: it derives every key from the production one."""
        from mcp_server.bench.evalplus_run import create_bench_profile as core
        from mcp_server.profiles.config import load_config

        return await in_thread(lambda: core(load_config(config_path), profile, ctx_per_slot=ctx_per_slot,
                                            parallel=parallel, dry_run=dry_run))

    @mcp.tool(annotations=STARTS_JOB)
    async def run_benchmark(
        profile: Annotated[ProfileIdStr, Field(description="evalplus: the production profile (its bench- twin "
                                                           "runs) or the bench- profile itself; speed: any profile")],
        kind: Annotated[Literal["evalplus", "speed"], Field(
            description="'evalplus': HumanEval+ pass@1; 'speed': prompt/generation tokens/s")] = "evalplus",
        limit: Annotated[int | None, Field(ge=1, le=10000, description="evalplus: only the first N problems "
                                                                       "(a quick check)")] = None,
        tasks: Annotated[str | None, Field(pattern=TASK_LIST_PATTERN, description=TASK_LIST_HELP)] = None,
        mini: Annotated[bool, Field(description="evalplus: the Mini dataset (faster evaluation)")] = False,
        resume: Annotated[str | None, Field(pattern=RUN_ID_PATTERN, description=RUN_ID_HELP)] = None,
        max_tokens: Annotated[int | None, Field(ge=16, le=131072, description="evalplus: override MAX_TOKENS "
                                                                              "per answer")] = None,
        concurrency: Annotated[int | None, Field(ge=1, le=256, description="evalplus: requests in flight")] = None,
        prompt_tokens: Annotated[list[Annotated[int, Field(ge=1, le=1048576)]] | None,
                                 Field(max_length=8, description="speed: prompt lengths to measure")] = None,
        gen_tokens: Annotated[list[Annotated[int, Field(ge=1, le=65536)]] | None,
                              Field(max_length=8, description="speed: generation lengths to measure")] = None,
        reps: Annotated[int, Field(ge=1, le=20, description="speed: repetitions of each measurement")] = 3,
    ) -> Job:
        """Start a benchmark as a background job and return its id at once: 'evalplus' (HumanEval+ pass@1 on the profile's bench- twin, which create_bench_profile makes; resumable) or 'speed' (prompt/generation tokens/s, time to first token, concurrent throughput). The model is started if needed and stopped afterwards if the job started it. Writes a results folder, never models.conf: to record a speed, pass the result's speed_label to update_profile as SPEED. Poll get_job for progress and the result; cancel_job stops it. One benchmark job runs at a time."""
        return await in_thread(lambda: jobs.run_benchmark(
            config_path, profile, kind, limit=limit, tasks=tasks, mini=mini, resume=resume,
            max_tokens=max_tokens, concurrency=concurrency, prompt_tokens=prompt_tokens, gen_tokens=gen_tokens,
            reps=reps))

    @mcp.tool(annotations=READ_ONLY)
    async def get_job(job_id: JobId) -> Job:
        """A background benchmark job: status (queued/running/done/failed/cancelled), progress (done/total and the current step), recent messages, the result (run folder, scores or speeds) or the error. Poll it after run_benchmark; for finished runs of any age use bench_results."""
        return await in_thread(lambda: jobs.get_job(job_id))

    @mcp.tool(annotations=READ_ONLY)
    async def list_jobs(limit: Annotated[int, Field(ge=1, le=200, description="most jobs to list")] = 20) -> JobList:
        """Recent background benchmark jobs, newest first, with status and progress: find a job id you lost, or see whether one is still running before starting another."""
        return await in_thread(lambda: jobs.list_jobs(limit))

    @mcp.tool(annotations=STOPS_JOB)
    async def cancel_job(job_id: JobId) -> Job:
        """Stop a background benchmark job (its process group gets SIGTERM, then SIGKILL) and stop the model the job started; the result's still_running names anything left running. An EvalPlus run keeps every finished problem and can be resumed with run_benchmark(resume='latest')."""
        return await in_thread(lambda: jobs.cancel_job(job_id))

    @mcp.tool(annotations=READ_ONLY)
    async def bench_results(profile: Annotated[ProfileIdStr | None, Field(description="only this profile's runs")] = None,
                            kind: Annotated[Literal["evalplus", "speed"] | None, Field(
                                description="only runs of this kind")] = None,
                            limit: Annotated[int, Field(ge=1, le=500, description="most runs to list")] = 50) -> RunList:
        """Benchmark runs on disk, newest first: profile, run id, status, HumanEval/HumanEval+ pass@1 or generation/prompt tokens/s, wall times, run folder. For a job still running use get_job; the comparison with published scores is the resource reports://evalplus/REPORT.md."""
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
