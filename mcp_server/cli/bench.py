"""``llama-pilot bench ...``: the benchmark commands (registered on the main CLI in cli.py).

Heavy modules (httpx, evalplus, matplotlib) are imported inside the commands that need them.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import click

from mcp_server.errors import LlamaPilotError

json_option = click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
results_option = click.option("--results", "results", type=click.Path(file_okay=False),
                              help="Results folder (default: $LLAMA_PILOT_BENCH_DIR, else $LLAMA_PILOT_HOME/bench).")


def _config(ctx: click.Context):  # type: ignore[no-untyped-def]
    from mcp_server.profiles.config import load_config

    return load_config(ctx.obj["config"] if ctx.obj else None)


def _emit(value: Any) -> None:
    from mcp_server.cli.main import emit_json

    emit_json(value)


def _fail(exc: LlamaPilotError) -> None:
    raise click.ClickException(str(exc)) from exc


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


@bench.command("profile")
@click.argument("profile")
@click.option("--ctx-per-slot", type=int, default=10240, show_default=True,
              help="Context per server slot (HumanEval's worst case is about 8.4K tokens).")
@click.option("--parallel", type=int, help="Server slots (default: the production profile's, else 1).")
@click.option("--dry-run", is_flag=True, help="Show the diff without writing.")
@json_option
@click.pass_context
def profile_cmd(ctx: click.Context, profile: str, ctx_per_slot: int, parallel: int | None, dry_run: bool,
                as_json: bool) -> None:
    """Create bench-PROFILE from PROFILE: benchmark context, no server samplers, reasoning kept parseable."""
    from mcp_server.bench.evalplus_run import create_bench_profile

    try:
        result = create_bench_profile(_config(ctx), profile, ctx_per_slot=ctx_per_slot, parallel=parallel,
                                      dry_run=dry_run)
    except LlamaPilotError as exc:
        _fail(exc)
    if as_json:
        return _emit(result)
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

    try:
        run = run_speed(_config(ctx), profile, progress=None if as_json else _progress,
                        say=(lambda _m: None) if as_json else _say, **params)
    except LlamaPilotError as exc:
        _fail(exc)
    if as_json:
        return _emit(run)
    from mcp_server.cli.main import _table

    rows = [[str(c.prompt_tokens), str(c.gen_tokens), f"{c.prompt_tps.median:.1f}",
             f"{c.generation_tps.median:.1f} ({c.generation_tps.min:.1f}-{c.generation_tps.max:.1f})",
             f"{c.ttft_ms.median:.0f}"] for c in run.cases]
    click.echo(_table(rows, ["PROMPT", "GEN", "PROMPT t/s", "GEN t/s median (min-max)", "TTFT ms"]))
    if run.concurrency:
        rows = [[str(p.concurrency), f"{p.aggregate_tps.median:.1f}", f"{p.per_request_tps.median:.1f}",
                 f"x{p.speedup_vs_1:.2f}" if p.speedup_vs_1 else ""] for p in run.concurrency]
        click.echo(_table(rows, ["CONCURRENT", "AGGREGATE t/s", "PER REQUEST t/s", "VS 1"]))
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
            run = run_evalplus(_config(ctx), profile, progress=None if as_json else _progress,
                               say=(lambda _m: None) if as_json else _say, **params)
        except BenchCancelled as exc:
            click.echo(str(exc), err=True)
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(130)  # request threads still waiting on the server must not hold the exit
        except LlamaPilotError as exc:
            if len(profiles) == 1:
                _fail(exc)
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

        try:
            report = write_report(_config(ctx), results=results, client_conf=client_conf)
        except LlamaPilotError as exc:
            _fail(exc)
        if not as_json:
            click.echo(f"report: {report.path}")
    if as_json:
        _emit({"runs": runs, "failed": failed, "report": report.path if report else None})
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
        config = _config(ctx)
    except LlamaPilotError:
        pass  # no models.conf: names come from the run manifests
    try:
        report = write_report(config, output=output, results=results, reference=reference, client_conf=client_conf,
                              all_runs=all_runs, profiles=list(profiles) or None, chart=not no_chart)
    except LlamaPilotError as exc:
        _fail(exc)
    if as_json:
        return _emit(report.model_dump(mode="json", exclude={"markdown"}))
    click.echo(f"report: {report.path}" + (f"\nchart: {report.chart}" if report.chart else ""))


@bench.command("results")
@click.argument("profile", required=False)
@click.option("--kind", type=click.Choice(["speed", "evalplus"]), help="Only this kind of run.")
@results_option
@json_option
def results_cmd(profile: str | None, kind: str | None, results: str | None, as_json: bool) -> None:
    """List benchmark runs (newest first): status, scores or speed, folder."""
    from mcp_server.bench import results_root
    from mcp_server.bench.results import summarize_runs

    runs = summarize_runs(results_root(results), profile=profile, kind=kind)
    if as_json:
        return _emit(runs)
    from mcp_server.cli.main import _table

    rows = [[r.profile, r.run_id, r.status, r.problems or "", r.headline or "", r.date or ""] for r in runs]
    click.echo(_table(rows, ["PROFILE", "RUN", "STATUS", "PROBLEMS", "RESULT", "DATE"]) if rows else "no runs")


def _start_job(ctx: click.Context, kind: str, profile: str, params: dict[str, Any], as_json: bool) -> None:
    from mcp_server.paths import config_path
    from mcp_server.bench.jobs import start_job

    try:
        config = _config(ctx)
        config.profile(profile)  # unknown profile, missing dataset...: refuse now, not in the background
        if kind == "evalplus":
            from mcp_server.bench.evalplus_run import preflight

            preflight(config, profile, **params)
        conf = config_path(ctx.obj["config"] if ctx.obj else None)
        job = start_job(kind, profile, params, conf)  # type: ignore[arg-type]
    except LlamaPilotError as exc:
        _fail(exc)
    if as_json:
        return _emit(job)
    click.echo(f"started job {job.id} (log: {job.log_path}); follow it with `llama-pilot bench jobs {job.id}`")


@bench.command("jobs")
@click.argument("job_id", required=False)
@json_option
def jobs_cmd(job_id: str | None, as_json: bool) -> None:
    """Background benchmark jobs, or one job in full."""
    from mcp_server.bench.jobs import get_job, list_jobs

    try:
        jobs = [get_job(job_id)] if job_id else list_jobs()
    except LlamaPilotError as exc:
        _fail(exc)
    if as_json:
        return _emit(jobs[0] if job_id else jobs)
    if job_id:
        job = jobs[0]
        click.echo(f"{job.id}: {job.status}, {job.progress.done}/{job.progress.total} {job.progress.message}")
        for line in job.messages[-5:]:
            click.echo(f"  {line}")
        if job.error:
            click.echo(f"error: {job.error}")
        if job.result:
            _emit(job.result)
        return
    from mcp_server.cli.main import _table

    rows = [[j.id, j.status, f"{j.progress.done}/{j.progress.total}", j.created_at] for j in jobs]
    click.echo(_table(rows, ["JOB", "STATUS", "PROGRESS", "CREATED"]) if rows else "no jobs")


@bench.command("cancel")
@click.argument("job_id")
@json_option
def cancel_cmd(job_id: str, as_json: bool) -> None:
    """Stop a background job (its run stays resumable)."""
    from mcp_server.bench.jobs import cancel_job

    try:
        job = cancel_job(job_id)
    except LlamaPilotError as exc:
        _fail(exc)
    if as_json:
        return _emit(job)
    click.echo(f"{job.id}: {job.status}")
