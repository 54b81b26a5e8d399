"""tune (here, with its progress) and tune-profile (the same as a background job, as the MCP tool)."""

from __future__ import annotations

import click

from mcp_server.cli.common import cli_errors, config_of, emit_json, json_option

_GOALS = click.Choice(["generation", "prompt", "balanced"])


def _options(f):  # type: ignore[no-untyped-def]
    for option in reversed([
        click.option("--goal", type=_GOALS, default="generation", show_default=True,
                     help="What to make fastest (balanced: the geometric mean of the two)."),
        click.option("--minutes", type=click.FloatRange(0.1, 600), default=10.0, show_default=True,
                     help="Time for the search (the paired comparison with --fit comes after)."),
        click.option("--ctx-depth", "depth", type=click.IntRange(0, 1 << 24), default=2048, show_default=True,
                     help="Tokens already in the context when speed is measured."),
        click.option("--allow-kv-quant", is_flag=True, help="Also try a q8_0 KV cache (a quality trade)."),
        click.option("--write", is_flag=True, help="Put the winner, SPEED and a tuned-date comment into the profile."),
    ]):
        f = option(f)
    return f


@click.command("tune")
@click.argument("profile")
@_options
@click.option("--source", type=click.Choice(["server", "llama-bench"]), default="server", show_default=True,
              help="Measure through llama-server's timings, or with llama-bench where it can express a candidate.")
@click.option("--gpus", help="GPU sizes for the estimator (default: the GPUs NVML sees).")
@click.option("--background", is_flag=True, help="Start it as a background job instead (as tune-profile does).")
@json_option
@click.pass_context
def tune_cmd(ctx: click.Context, profile: str, goal: str, minutes: float, depth: int, allow_kv_quant: bool,
             write: bool, source: str, gpus: str | None, background: bool, as_json: bool) -> None:
    """Find the fastest safe settings for PROFILE here: candidates around the planner's placement
    (threads, batch, load mode, flash attention, expert layers), each checked by the estimator at
    full context before it is loaded, measured, and the winner compared with --fit in paired loads."""
    from mcp_server.tune.operations import run_tune

    if background:
        return ctx.invoke(tune_profile_cmd, profile=profile, goal=goal, minutes=minutes, depth=depth,
                          allow_kv_quant=allow_kv_quant, write=write, as_json=as_json)
    with cli_errors():
        result = run_tune(config_of(ctx), profile, goal, minutes, depth, allow_kv_quant, write, gpus=gpus,  # type: ignore[arg-type]
                          source=source, say=lambda line: click.echo(f"  {line}", err=True))  # type: ignore[arg-type]
    if as_json:
        return emit_json(result)
    click.echo(f"winner: {', '.join(f'{k}={v}' for k, v in result.winner.items()) or '(engine defaults)'}")
    if result.paired:
        p = result.paired
        click.echo(f"vs --fit: generation {p.gen_ratio:.2f}x ({p.gen_ratio_range[0]:.2f}-{p.gen_ratio_range[1]:.2f}), "
                   f"prompt {p.prompt_ratio:.2f}x, {p.rounds} paired rounds; noise {result.search.noise:.1%}")
    if result.memory_mib:
        click.echo("winner holds: " + ", ".join(f"{d} {mib / 1024:.2f} GiB" for d, mib in result.memory_mib.items()))
    pruned = [t for t in result.search.tried if t.pruned]
    click.echo(f"{result.measured} loads measured, {len(pruned)} candidates pruned, {result.estimator_calls} estimates, "
               f"{result.seconds:.0f} s; full context: {result.full_context or 'not checked'}")
    if result.edit:
        click.echo(result.edit.diff)


@click.command("tune-profile")
@click.argument("profile")
@_options
@json_option
@click.pass_context
def tune_profile_cmd(ctx: click.Context, profile: str, goal: str, minutes: float, depth: int, allow_kv_quant: bool,
                     write: bool, as_json: bool) -> None:
    """Start tuning PROFILE as a background job (follow it with get-job, stop it with cancel-job)."""
    from mcp_server.tune.operations import tune_profile

    with cli_errors():
        job = tune_profile(config_of(ctx), profile, goal, minutes, depth, allow_kv_quant, write)  # type: ignore[arg-type]
    if as_json:
        return emit_json(job)
    click.echo(f"started job {job.id} (log: {job.log_path}); follow it with `llama-pilot get-job {job.id}`")


COMMANDS = {"tune": tune_cmd, "tune-profile": tune_profile_cmd}
