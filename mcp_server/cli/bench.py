"""``llama-pilot bench ...``: the benchmark commands (registered on the main CLI in cli.py).

Heavy modules (httpx, evalplus, matplotlib) are imported inside the commands that need them.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import click

from mcp_server.cli.common import cli_errors, config_of, emit_json, fail, json_option, table
from mcp_server.errors import LlamaPilotError

results_option = click.option("--results", "results", type=click.Path(file_okay=False),
                              help="Results folder (default: $LLAMA_PILOT_BENCH_DIR, else $LLAMA_PILOT_HOME/bench).")


def _ints(value: str | None, what: str) -> list[int] | None:
    if not value:
        return None
    try:
        numbers = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"{what} must be whole numbers separated by commas, e.g. 512,4096") from None
    if not numbers or min(numbers) < 1:
        raise click.BadParameter(f"{what} must be positive")
    return numbers


def _progress(done: int, total: int, message: str) -> None:
    click.echo(f"[{done}/{total}] {message}", err=True)


def _say(message: str) -> None:
    click.echo(message, err=True)


@click.group("bench")
def bench() -> None:
    """Benchmarks: speed, EvalPlus HumanEval+, report, background jobs."""


@click.command("create-bench-profile")
@click.argument("profile")
@click.option("--ctx-per-slot", type=int, default=10240, show_default=True,
              help="Context per server slot (HumanEval's worst case is about 8.4K tokens).")
@click.option("--parallel", type=int, help="Server slots (default: the production profile's, else 1).")
@click.option("--dry-run", is_flag=True, help="Show the diff without writing.")
@json_option
@click.pass_context
def create_bench_profile_cmd(ctx: click.Context, profile: str, ctx_per_slot: int, parallel: int | None,
                             dry_run: bool, as_json: bool) -> None:
    """Create bench-PROFILE from PROFILE: benchmark context, no server samplers, reasoning kept parseable."""
    from mcp_server.bench.evalplus_run import create_bench_profile

    with cli_errors():
        result = create_bench_profile(config_of(ctx), profile, ctx_per_slot=ctx_per_slot, parallel=parallel,
                                      dry_run=dry_run)
    if as_json:
        return emit_json(result)
    click.echo(result.diff, nl=False)
    click.echo("(dry run: nothing written)" if dry_run else f"saved {result.path}")


@bench.command("speed")
@click.argument("profile")
@click.option("--prompt-tokens", default="512,4096", show_default=True, help="Prompt lengths, comma separated.")
@click.option("--gen-tokens", default="128", show_default=True, help="Generation lengths, comma separated.")
@click.option("--reps", type=int, default=3, show_default=True, help="Repetitions of each measurement.")
@click.option("--concurrency", help="Concurrent request counts (default: 1..server slots), e.g. 1,2,4.")
@click.option("--update-profile", is_flag=True, help="Write the measured generation speed into the profile's SPEED.")
@click.option("--keep-running", is_flag=True, help="Leave the model running if this command started it.")
@click.option("--switch", is_flag=True, help="Start the profile with switch (stops what holds its GPUs).")
@click.option("--background", is_flag=True, help="Run as a background job; prints its id.")
@results_option
@json_option
@click.pass_context
def speed_cmd(ctx: click.Context, profile: str, prompt_tokens: str, gen_tokens: str, reps: int,
              concurrency: str | None, update_profile: bool, keep_running: bool, switch: bool, background: bool,
              results: str | None, as_json: bool) -> None:
    """Prompt and generation tokens/s (server timings), time to first token, concurrent throughput."""
    params: dict[str, Any] = {"prompt_tokens": _ints(prompt_tokens, "--prompt-tokens"),
                              "gen_tokens": _ints(gen_tokens, "--gen-tokens"), "reps": reps,
                              "concurrency": _ints(concurrency, "--concurrency"), "update_profile": update_profile,
                              "keep_running": keep_running, "switch": switch, "results": results}
    if background:
        return _start_job(ctx, "speed", profile, params, as_json)
    from mcp_server.bench.speed import run_speed

    with cli_errors():
        run = run_speed(config_of(ctx), profile, progress=None if as_json else _progress,
                        say=(lambda _m: None) if as_json else _say, **params)
    if as_json:
        return emit_json(run)
    rows = [[str(c.prompt_tokens), str(c.gen_tokens), f"{c.prompt_tps.median:.1f}",
             f"{c.generation_tps.median:.1f} ({c.generation_tps.min:.1f}-{c.generation_tps.max:.1f})",
             f"{c.ttft_ms.median:.0f}"] for c in run.cases]
    click.echo(table(rows, ["PROMPT", "GEN", "PROMPT t/s", "GEN t/s median (min-max)", "TTFT ms"]))
    if run.concurrency:
        rows = [[str(p.concurrency), f"{p.aggregate_tps.median:.1f}", f"{p.per_request_tps.median:.1f}",
                 f"x{p.speedup_vs_1:.2f}" if p.speedup_vs_1 else ""] for p in run.concurrency]
        click.echo(table(rows, ["CONCURRENT", "AGGREGATE t/s", "PER REQUEST t/s", "VS 1"]))
    for note in run.skipped:
        click.echo(f"skipped: {note}")
    if run.profile_update is not None:
        click.echo(run.profile_update.diff if run.profile_update.changed else "SPEED unchanged", nl=False)
    click.echo(f"\nresults: {run.run_dir}")


@bench.command("evalplus")
@click.argument("profiles", nargs=-1, required=True)
@click.option("--create-bench", is_flag=True, help="Create bench-PROFILE from PROFILE if it does not exist.")
@click.option("--limit", type=int, help="Only the first N problems (a quick run).")
@click.option("--tasks", help="Only these problems: ids or numbers, ranges allowed (e.g. 0-9,17,HumanEval/42).")
@click.option("--mini", is_flag=True, help="The Mini dataset (fewer extra tests, faster evaluation).")
@click.option("--dataset", type=click.Path(), help="Local HumanEval+ file or folder (else see docs/benchmarks.md).")
@click.option("--resume", is_flag=False, flag_value="latest", default=None,
              help="Continue an interrupted run: RUN_ID, or the newest unfinished one when no value is given.")
@click.option("--concurrency", type=int, help="Requests in flight (default: the server's slots).")
@click.option("--max-tokens", type=int, help="Override bench-client.conf's MAX_TOKENS.")
@click.option("--client-conf", type=click.Path(dir_okay=False), help="bench-client.conf to use.")
@click.option("--keep-running", is_flag=True, help="Leave the model running if this command started it.")
@click.option("--switch", is_flag=True, help="Start the profile with switch (stops what holds its GPUs).")
@click.option("--eval-parallel", type=int, help="evalplus worker processes (default: CPU count).")
@click.option("--eval-timeout", type=float, help="Seconds the whole evaluation may take (default 300 + 10/problem).")
@click.option("--min-time-limit", type=float, default=1.0, show_default=True,
              help="evalplus: seconds each test may take at least.")
@click.option("--gt-time-limit-factor", type=float, default=4.0, show_default=True,
              help="evalplus: a test may take this many times the reference solution's time.")
@click.option("--report", "make_report", is_flag=True, help="Write the report afterwards.")
@click.option("--background", is_flag=True, help="Run as a background job (one profile); prints its id.")
@results_option
@json_option
@click.pass_context
def evalplus_cmd(ctx: click.Context, profiles: tuple[str, ...], create_bench: bool, limit: int | None,
                 tasks: str | None, mini: bool, dataset: str | None, resume: str | None, concurrency: int | None,
                 max_tokens: int | None, client_conf: str | None, keep_running: bool, switch: bool,
                 eval_parallel: int | None, eval_timeout: float | None, min_time_limit: float,
                 gt_time_limit_factor: float, make_report: bool, background: bool,
                 results: str | None, as_json: bool) -> None:
    """HumanEval+ pass@1 of each PROFILE (its bench- twin) through the server's OpenAI API, scored by evalplus."""
    params: dict[str, Any] = {"dataset": dataset, "mini": mini, "limit": limit, "tasks": tasks, "resume": resume,
                              "concurrency": concurrency, "max_tokens": max_tokens, "client_conf": client_conf,
                              "create_bench": create_bench, "keep_running": keep_running, "switch": switch,
                              "eval_parallel": eval_parallel, "eval_timeout_s": eval_timeout, "results": results,
                              "min_time_limit": min_time_limit, "gt_time_limit_factor": gt_time_limit_factor}
    if resume and len(profiles) > 1:
        raise click.UsageError("--resume takes one profile")
    if background:
        if len(profiles) > 1:
            raise click.UsageError("--background takes one profile (a job runs one benchmark)")
        return _start_job(ctx, "evalplus", profiles[0], params, as_json)
    from mcp_server.bench import BenchCancelled
    from mcp_server.bench.evalplus_run import run_evalplus

    runs = []
    failed = []
    for profile in profiles:
        try:
            run = run_evalplus(config_of(ctx), profile, progress=None if as_json else _progress,
                               say=(lambda _m: None) if as_json else _say, **params)
        except BenchCancelled as exc:
            click.echo(str(exc), err=True)
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(130)  # request threads still waiting on the server must not hold the exit
        except LlamaPilotError as exc:
            if len(profiles) == 1:
                fail(exc)
            click.echo(f"{profile}: {exc}", err=True)
            failed.append(profile)
            continue
        runs.append(run)
        if not as_json and run.scores:
            s = run.scores
            click.echo(f"{run.profile}: HumanEval {s.humaneval:.1f}% ({s.base_passed}/{s.problems}), "
                       f"HumanEval+ {s.humaneval_plus:.1f}% ({s.plus_passed}/{s.problems}); generation "
                       f"{run.generation_s:.1f} s ({run.concurrency} in flight), evaluation {run.evaluation_s:.1f} s"
                       f"\nresults: {run.run_dir}")
    report = None
    if make_report and runs:
        from mcp_server.bench.report import write_report

        with cli_errors():
            report = write_report(config_of(ctx), results=results, client_conf=client_conf)
        if not as_json:
            click.echo(f"report: {report.path}")
    if as_json:
        emit_json({"runs": runs, "failed": failed, "report": report.path if report else None})
    if failed:
        sys.exit(1)


@bench.command("report")
@click.option("--output", type=click.Path(dir_okay=False), help="Report file (default: RESULTS/REPORT.md); "
              "the chart is written beside it.")
@click.option("--reference", type=click.Path(dir_okay=False), help="reference-scores.json to compare with.")
@click.option("--client-conf", type=click.Path(dir_okay=False), help="bench-client.conf (REFERENCE, DISPLAY_NAME).")
@click.option("--all-runs", is_flag=True, help="One row per finished run instead of one per profile.")
@click.option("--profile", "profiles", multiple=True, help="Only these bench profiles (repeatable).")
@click.option("--no-chart", is_flag=True, help="Skip the chart image.")
@results_option
@json_option
@click.pass_context
def report_cmd(ctx: click.Context, output: str | None, reference: str | None, client_conf: str | None,
               all_runs: bool, profiles: tuple[str, ...], no_chart: bool, results: str | None, as_json: bool) -> None:
    """Write the Markdown report (local runs vs reference scores) and its chart."""
    from mcp_server.bench.report import write_report

    config = None
    try:
        config = config_of(ctx)
    except LlamaPilotError:
        pass  # no models.conf: names come from the run manifests
    with cli_errors():
        report = write_report(config, output=output, results=results, reference=reference, client_conf=client_conf,
                              all_runs=all_runs, profiles=list(profiles) or None, chart=not no_chart)
    if as_json:
        return emit_json(report.model_dump(mode="json", exclude={"markdown"}))
    click.echo(f"report: {report.path}" + (f"\nchart: {report.chart}" if report.chart else ""))


def _start_job(ctx: click.Context, kind: str, profile: str, params: dict[str, Any], as_json: bool) -> None:
    """`bench speed/evalplus --background`: the same job run_benchmark starts."""
    from mcp_server.jobs import run_benchmark

    with cli_errors():
        job = run_benchmark(ctx.obj["config"] if ctx.obj else None, profile, kind, **params)  # type: ignore[arg-type]
    if as_json:
        return emit_json(job)
    click.echo(f"started job {job.id} (log: {job.log_path}); follow it with `llama-pilot get-job {job.id}`")


# --- the benchmark tools as commands: run-benchmark, get-job, list-jobs, cancel-job, bench-results ---------


@click.command("run-benchmark")
@click.argument("profile")
@click.option("--kind", type=click.Choice(["evalplus", "speed"]), default="evalplus", show_default=True)
@click.option("--limit", type=click.IntRange(1, 10000), help="evalplus: only the first N problems.")
@click.option("--tasks", help="evalplus: problem ids or numbers, ranges allowed (0-9,17,HumanEval/42).")
@click.option("--mini", is_flag=True, help="evalplus: the Mini dataset.")
@click.option("--resume", help="evalplus: 'latest' or a run id.")
@click.option("--create-bench", is_flag=True, help="evalplus: create bench-PROFILE if missing.")
@click.option("--max-tokens", type=click.IntRange(16, 131072), help="evalplus: override MAX_TOKENS.")
@click.option("--concurrency", type=click.IntRange(1, 256), help="evalplus: requests in flight.")
@click.option("--prompt-tokens", help="speed: prompt lengths, comma separated.")
@click.option("--gen-tokens", help="speed: generation lengths, comma separated.")
@click.option("--reps", type=click.IntRange(1, 20), default=3, show_default=True, help="speed: repetitions.")
@click.option("--update-profile", is_flag=True, help="speed: write the result into the profile's SPEED.")
@json_option
@click.pass_context
def run_benchmark_cmd(ctx: click.Context, profile: str, kind: str, limit: int | None, tasks: str | None, mini: bool,
                      resume: str | None, create_bench: bool, max_tokens: int | None, concurrency: int | None,
                      prompt_tokens: str | None, gen_tokens: str | None, reps: int, update_profile: bool,
                      as_json: bool) -> None:
    """Start a benchmark as a background job and print its id (poll with get-job, stop with cancel-job)."""
    from mcp_server.jobs import run_benchmark

    with cli_errors():
        job = run_benchmark(ctx.obj["config"] if ctx.obj else None, profile, kind, limit=limit,  # type: ignore[arg-type]
                            tasks=tasks, mini=mini, resume=resume, create_bench=create_bench, max_tokens=max_tokens,
                            concurrency=concurrency, prompt_tokens=_ints(prompt_tokens, "--prompt-tokens"),
                            gen_tokens=_ints(gen_tokens, "--gen-tokens"), reps=reps, update_profile=update_profile)
    if as_json:
        return emit_json(job)
    click.echo(f"started job {job.id} (log: {job.log_path}); follow it with `llama-pilot get-job {job.id}`")


@click.command("get-job")
@click.argument("job_id")
@json_option
def get_job_cmd(job_id: str, as_json: bool) -> None:
    """One background benchmark job: status, progress, recent messages, result or error."""
    from mcp_server.jobs import get_job

    with cli_errors():
        job = get_job(job_id)
    if as_json:
        return emit_json(job)
    click.echo(f"{job.id}: {job.status}, {job.progress.done}/{job.progress.total} {job.progress.message}")
    for line in job.messages[-5:]:
        click.echo(f"  {line}")
    if job.error:
        click.echo(f"error: {job.error}")
    if job.result:
        emit_json(job.result)


@click.command("list-jobs")
@click.option("--limit", type=click.IntRange(1, 200), default=20, show_default=True)
@json_option
def list_jobs_cmd(limit: int, as_json: bool) -> None:
    """Recent background benchmark jobs, newest first."""
    from mcp_server.jobs import list_jobs

    listed = list_jobs(limit)
    if as_json:
        return emit_json(listed)
    rows = [[j.id, j.status, f"{j.progress.done}/{j.progress.total}", j.created_at] for j in listed.jobs]
    click.echo(table(rows, ["JOB", "STATUS", "PROGRESS", "CREATED"]) if rows else "no jobs")


@click.command("cancel-job")
@click.argument("job_id")
@json_option
def cancel_job_cmd(job_id: str, as_json: bool) -> None:
    """Stop a background benchmark job (its run stays resumable)."""
    from mcp_server.jobs import cancel_job

    with cli_errors():
        job = cancel_job(job_id)
    if as_json:
        return emit_json(job)
    click.echo(f"{job.id}: {job.status}")


@click.command("bench-results")
@click.option("--profile", help="Only this profile's runs.")
@click.option("--kind", type=click.Choice(["speed", "evalplus"]), help="Only this kind of run.")
@click.option("--limit", type=click.IntRange(1, 500), default=50, show_default=True)
@results_option
@json_option
def bench_results_cmd(profile: str | None, kind: str | None, limit: int, results: str | None, as_json: bool) -> None:
    """Benchmark runs on disk (newest first): status, scores or speed, folder."""
    from mcp_server.bench.results import bench_results

    listed = bench_results(profile=profile, kind=kind, limit=limit, results=results)
    if as_json:
        return emit_json(listed)
    rows = [[r.profile, r.run_id, r.status, r.problems or "", r.headline or "", r.date or ""] for r in listed.runs]
    click.echo(table(rows, ["PROFILE", "RUN", "STATUS", "PROBLEMS", "RESULT", "DATE"]) if rows else "no runs")


# The commands this module adds to `llama-pilot` (cli.main loads the module when one is called).
bench.add_command(create_bench_profile_cmd, "profile")  # the older spelling, kept as an alias

COMMANDS: dict[str, click.Command] = {
    bench.name: bench,
    create_bench_profile_cmd.name: create_bench_profile_cmd,
    run_benchmark_cmd.name: run_benchmark_cmd,
    get_job_cmd.name: get_job_cmd,
    list_jobs_cmd.name: list_jobs_cmd,
    cancel_job_cmd.name: cancel_job_cmd,
    bench_results_cmd.name: bench_results_cmd,
}
