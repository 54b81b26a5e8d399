"""The ``llama-pilot`` command: each subcommand parses its input, calls one core function, renders.

Exit codes: 0 success; 1 the operation failed (the message says why and what to do); 2 the
command line itself was wrong (click's usage errors). Heavy modules are imported inside the
commands that need them, so ``llama-pilot list`` does not pay for MCP, NVML or Docker.
"""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from typing import Any, Iterator

import click

from .errors import LlamaPilotError


@contextmanager
def cli_errors() -> Iterator[None]:
    """Domain errors become one clean message and exit code 1."""
    try:
        yield
    except LlamaPilotError as exc:
        raise click.ClickException(str(exc)) from exc


def _dump(value: Any) -> Any:
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if isinstance(value, list):
        return [_dump(v) for v in value]
    if isinstance(value, dict):
        return {k: _dump(v) for k, v in value.items()}
    return value


def emit_json(value: Any) -> None:
    click.echo(json.dumps(_dump(value), indent=2))


def _table(rows: list[list[str]], headers: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    lines = ["  ".join(str(h).ljust(w) for h, w in zip(headers, widths)).rstrip()]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(lines)


json_option = click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", type=click.Path(dir_okay=False), envvar="LLAMA_PILOT_CONFIG",
              help="models.conf to use (default: $LLAMA_PILOT_CONFIG, else ./models.conf).")
@click.version_option(package_name="llama-pilot")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None) -> None:
    """Run, place, switch and benchmark llama.cpp models. Same operations as the MCP server."""
    ctx.obj = {"config": config_path}


def _config(ctx: click.Context):  # type: ignore[no-untyped-def]
    from .profiles import load_config

    return load_config(ctx.obj["config"])


# --- profiles --------------------------------------------------------------------------------


@cli.command("list")
@click.option("--bench/--no-bench", default=True, help="Include bench- profiles.")
@json_option
@click.pass_context
def list_cmd(ctx: click.Context, bench: bool, as_json: bool) -> None:
    """List profiles: id, name, speed, context, model file present."""
    from .catalog import list_models

    with cli_errors():
        models = list_models(_config(ctx), include_bench=bench)
    if as_json:
        return emit_json(models)
    rows = [[m.profile, m.name, m.speed or "", m.context, "yes" if m.file_present else "MISSING",
             "bench" if m.is_bench else ""] for m in models]
    click.echo(_table(rows, ["PROFILE", "NAME", "SPEED", "CONTEXT", "FILE", ""]) if rows else "no profiles")


@cli.command()
@click.argument("profile")
@json_option
@click.pass_context
def show(ctx: click.Context, profile: str, as_json: bool) -> None:
    """Show one profile: every key, where each value comes from, and the argv."""
    from .catalog import get_model

    with cli_errors():
        detail = get_model(_config(ctx), profile)
    if as_json:
        return emit_json(detail)
    click.echo(f"[{detail.profile}]  {detail.name}  (line {detail.line} of {detail.config_path})")
    if detail.description:
        click.echo(f"  {detail.description}")
    rows = [[k.key, k.value, k.source] for k in detail.keys]
    click.echo(_table(rows, ["KEY", "VALUE", "FROM"]))
    click.echo(f"model file: {detail.model_path} ({'present' if detail.file_present else 'MISSING'})")
    click.echo("argv: " + " ".join(_shell_quote(a) for a in detail.argv))


def _shell_quote(arg: str) -> str:
    import shlex

    return shlex.quote(arg)


@cli.command()
@click.argument("profile")
@click.option("--port", type=int, help="Port to put in the argv (default: the profile's or [global]'s).")
@json_option
@click.pass_context
def args(ctx: click.Context, profile: str, port: int | None, as_json: bool) -> None:
    """Print the exact llama-server argv for PROFILE, one argument per line."""
    from .argv import launch_spec
    from .engine import EngineNotFound, locate_engine

    with cli_errors():
        config = _config(ctx)
        prof = config.profile(profile)
        try:
            engine = locate_engine(config.host.engine).path
        except EngineNotFound:
            engine = config.host.engine or "llama-server"
        spec = launch_spec(prof, config, engine=engine, port=port)
    if as_json:
        return emit_json(spec)
    for key, value in spec.env.items():
        click.echo(f"# env {key}={value}")
    for arg in spec.argv:
        click.echo(arg)


@cli.command()
@click.argument("profile", required=False)
@json_option
@click.pass_context
def lint(ctx: click.Context, profile: str | None, as_json: bool) -> None:
    """Check profiles; exits 1 when any finding is an error."""
    from .lint import lint_config

    with cli_errors():
        findings = lint_config(_config(ctx), profile)
    if as_json:
        emit_json(findings)
    elif not findings:
        click.echo("no findings")
    else:
        for f in findings:
            click.echo(f"line {f.line}: [{f.profile}] {f.severity} {f.code}: {f.message}")
    if any(f.severity == "error" for f in findings):
        sys.exit(1)


def _parse_assignments(pairs: tuple[str, ...]) -> dict[str, str]:
    updates: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise click.UsageError(f"{pair!r} is not KEY=VALUE")
        updates[key.strip()] = value.strip()
    return updates


def _render_edit(result: Any, as_json: bool) -> None:
    if as_json:
        return emit_json(result)
    if not result.changed:
        click.echo("no change")
        return
    click.echo(result.diff, nl=False)
    if result.dry_run:
        click.echo("(dry run: nothing written)")
    elif result.backup:
        click.echo(f"saved {result.path} (previous version: {result.backup})")


dry_run_option = click.option("--dry-run", is_flag=True, help="Show the diff without writing.")


@cli.command("set")
@click.argument("profile")
@click.argument("assignments", nargs=-1, required=True)
@dry_run_option
@json_option
@click.pass_context
def set_cmd(ctx: click.Context, profile: str, assignments: tuple[str, ...], dry_run: bool, as_json: bool) -> None:
    """Set KEY=VALUE pairs in PROFILE (or in 'global'); changes only those lines."""
    from .profiles import set_values

    updates = _parse_assignments(assignments)
    with cli_errors():
        result = set_values(_config(ctx), profile, updates, dry_run=dry_run)
    _render_edit(result, as_json)


@cli.command()
@click.argument("profile")
@click.argument("keys", nargs=-1, required=True)
@dry_run_option
@json_option
@click.pass_context
def unset(ctx: click.Context, profile: str, keys: tuple[str, ...], dry_run: bool, as_json: bool) -> None:
    """Remove KEYS from PROFILE."""
    from .profiles import unset_values

    with cli_errors():
        result = unset_values(_config(ctx), profile, list(keys), dry_run=dry_run)
    _render_edit(result, as_json)


@cli.command()
@click.argument("profile")
@click.argument("assignments", nargs=-1, required=True)
@click.option("--comment", "comments", multiple=True, help="Comment line to put above the section.")
@dry_run_option
@json_option
@click.pass_context
def create(ctx: click.Context, profile: str, assignments: tuple[str, ...], comments: tuple[str, ...],
           dry_run: bool, as_json: bool) -> None:
    """Append a new profile: create PROFILE MODEL=dir/file.gguf NAME=... [KEY=VALUE...]."""
    from .profiles import create_profile

    values = _parse_assignments(assignments)
    with cli_errors():
        result = create_profile(_config(ctx), profile, values, comments=list(comments), dry_run=dry_run)
    _render_edit(result, as_json)


@cli.command()
@click.argument("profile")
@click.option("--note", help="Why it was retired (written as a comment above it).")
@dry_run_option
@json_option
@click.pass_context
def retire(ctx: click.Context, profile: str, note: str | None, dry_run: bool, as_json: bool) -> None:
    """Comment PROFILE out of models.conf (kept in the file, no longer active)."""
    from .profiles import retire_profile

    with cli_errors():
        result = retire_profile(_config(ctx), profile, note=note, dry_run=dry_run)
    _render_edit(result, as_json)


# --- engine, setup, demo ---------------------------------------------------------------------


@cli.group()
def engine() -> None:
    """Find or build llama.cpp's llama-server."""


@engine.command("status")
@json_option
@click.pass_context
def engine_status_cmd(ctx: click.Context, as_json: bool) -> None:
    """Which llama-server would be used, and its build."""
    from .engine import locate_engine

    with cli_errors():
        config_engine = None
        try:
            config_engine = _config(ctx).host.engine
        except LlamaPilotError:
            pass  # no models.conf is fine here: the engine does not depend on it
        info = locate_engine(config_engine)
    if as_json:
        return emit_json(info)
    click.echo(f"{info.path}\n  found via: {info.source}\n  build: {info.build_number} ({info.build_commit})"
               f"\n  backend: {info.backend or 'unknown'}")
    for name, path in info.tools.items():
        click.echo(f"  {name}: {path}")


@engine.command("build")
@click.option("--source", type=click.Path(file_okay=False), help="A llama.cpp checkout (default: pinned sdist).")
@click.option("--backend", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--cuda-arch", help="CUDA architectures, e.g. '89;120' (default: the GPUs present).")
@click.option("--cmake-arg", "cmake_args", multiple=True, help="Extra cmake argument (repeatable; wins).")
@click.option("--jobs", type=int, help="Parallel compile jobs (default: CPU count).")
@click.option("--force", is_flag=True, help="Rebuild even if an identical build exists.")
@json_option
def engine_build_cmd(source: str | None, backend: str, cuda_arch: str | None, cmake_args: tuple[str, ...],
                     jobs: int | None, force: bool, as_json: bool) -> None:
    """Build llama-server, llama-bench, llama-fit-params and the RPC server into the cache."""
    from .engine import build_engine, plan_build

    def progress(step: str, fraction: float | None) -> None:
        msg = f"{step}" + (f" {fraction:.0%}" if fraction is not None else "")
        click.echo(msg, err=True)

    with cli_errors():
        plan = plan_build(source, backend=backend, cuda_architectures=cuda_arch,
                          extra_cmake_args=list(cmake_args), jobs=jobs)
        info = build_engine(plan, progress=progress, force=force)
    if as_json:
        return emit_json(info)
    click.echo(f"built {info.path} (build {info.build_number})")


@cli.command("setup")
@click.option("--source", type=click.Path(file_okay=False), help="llama.cpp checkout to build from.")
@json_option
@click.pass_context
def setup_cmd(ctx: click.Context, source: str | None, as_json: bool) -> None:
    """Make everything ready: the engine (built if missing) and the demo model. Safe to re-run."""
    from .bootstrap import setup

    with cli_errors():
        report = setup(ctx.obj["config"], progress=lambda m: click.echo(m, err=True), source=source)
    if as_json:
        return emit_json(report)
    click.echo(f"engine: {report.engine_path} (build {report.engine_build}"
               f"{', built now' if report.engine_built_now else ''})")
    click.echo(f"demo model: {report.demo_model.path}")
    click.echo(f"ready in {report.seconds:.1f} s; try `llama-pilot demo`")


@cli.command("demo")
@click.option("--profile", default="demo", show_default=True)
@click.option("--prompt", default="In one sentence, what is a GPU?", show_default=True)
@json_option
@click.pass_context
def demo_cmd(ctx: click.Context, profile: str, prompt: str, as_json: bool) -> None:
    """Start the demo profile, ask one question, print the answer, stop."""
    from .bootstrap import demo

    with cli_errors():
        result = demo(ctx.obj["config"], profile_id=profile, prompt=prompt,
                      progress=lambda m: click.echo(m, err=True))
    if as_json:
        return emit_json(result)
    click.echo(f"Q: {result.prompt}\nA: {result.answer}")
    speed = f", {result.generation_tokens_per_s:.1f} t/s" if result.generation_tokens_per_s else ""
    click.echo(f"(ready in {result.ready_s:.1f} s, answered in {result.answer_s:.1f} s{speed}; "
               f"{result.total_s:.1f} s in all; server stopped)", err=True)


def main(argv: list[str] | None = None) -> None:
    cli.main(args=argv, prog_name="llama-pilot")


if __name__ == "__main__":
    main()
