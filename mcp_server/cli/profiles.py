"""Profile commands: list-profiles, get-profile, args, lint-profiles, create-profile, update-profile, retire-profile."""

from __future__ import annotations

import sys

import click

from mcp_server.cli.common import (cli_errors, config_of, dry_run_option, emit_json, json_option, parse_assignments,
                                   render_edit, table)

@click.command("list-profiles")
@click.option("--bench/--no-bench", default=True, help="Include bench- profiles.")
@json_option
@click.pass_context
def list_profiles_cmd(ctx: click.Context, bench: bool, as_json: bool) -> None:
    """List profiles: id, name, speed, context, model file present."""
    from mcp_server.profiles.listing import list_profiles

    with cli_errors():
        listed = list_profiles(config_of(ctx), include_bench=bench)
    if as_json:
        return emit_json(listed)
    rows = [[m.profile, m.name, m.speed or "", m.context, "yes" if m.file_present else "MISSING",
             "bench" if m.is_bench else ""] for m in listed.profiles]
    click.echo(table(rows, ["PROFILE", "NAME", "SPEED", "CONTEXT", "FILE", ""]) if rows else "no profiles")


@click.command("get-profile")
@click.argument("profile")
@json_option
@click.pass_context
def get_profile_cmd(ctx: click.Context, profile: str, as_json: bool) -> None:
    """Show one profile: every key, where each value comes from, and the argv."""
    from mcp_server.profiles.listing import get_profile

    with cli_errors():
        detail = get_profile(config_of(ctx), profile)
    if as_json:
        return emit_json(detail)
    click.echo(f"[{detail.profile}]  {detail.name}  (line {detail.line} of {detail.config_path})")
    if detail.description:
        click.echo(f"  {detail.description}")
    for comment in detail.comments:
        click.echo(f"  {comment}")
    rows = [[k.key, k.value, k.source] for k in detail.keys]
    click.echo(table(rows, ["KEY", "VALUE", "FROM"]))
    click.echo(f"model file: {detail.model_path} ({'present' if detail.file_present else 'MISSING'})")
    click.echo("argv: " + " ".join(_shell_quote(a) for a in detail.argv))


def _shell_quote(arg: str) -> str:
    import shlex

    return shlex.quote(arg)


@click.command("args")
@click.argument("profile")
@click.option("--port", type=int, help="Port to put in the argv (default: the profile's or [global]'s).")
@click.option("--docker", is_flag=True, help="The argv inside llama-pilot's image (model under /models).")
@json_option
@click.pass_context
def args(ctx: click.Context, profile: str, port: int | None, docker: bool, as_json: bool) -> None:
    """Print the exact llama-server argv for PROFILE, one argument per line."""
    from mcp_server.engine.argv import launch_spec
    from mcp_server.engine.binary import locate_engine
    from mcp_server.errors import EngineNotFound

    with cli_errors():
        config = config_of(ctx)
        prof = config.profile(profile)
        if docker:
            engine = "llama-server"
        else:
            try:
                engine = locate_engine(config.host.engine).path
            except EngineNotFound:
                engine = config.host.engine or "llama-server"
        spec = launch_spec(prof, config, engine=engine, port=port, model_root="/models" if docker else None)
    if as_json:
        return emit_json(spec)
    for key, value in spec.env.items():
        click.echo(f"# env {key}={value}")
    for arg in spec.argv:
        click.echo(arg)


@click.command("lint-profiles")
@click.argument("profile", required=False)
@json_option
@click.pass_context
def lint_profiles_cmd(ctx: click.Context, profile: str | None, as_json: bool) -> None:
    """Check profiles; exits 1 when any finding is an error."""
    from mcp_server.profiles.lint import lint_profiles

    with cli_errors():
        report = lint_profiles(config_of(ctx), profile)
    if as_json:
        emit_json(report)
    elif not report.findings:
        click.echo("no findings")
    else:
        for f in report.findings:
            click.echo(f"line {f.line}: [{f.profile}] {f.severity} {f.code}: {f.message}")
    if report.errors:
        sys.exit(1)


@click.command("create-profile")
@click.argument("profile")
@click.argument("assignments", nargs=-1, required=True)
@click.option("--comment", "comments", multiple=True, help="Comment line to put above the section.")
@dry_run_option
@json_option
@click.pass_context
def create_profile_cmd(ctx: click.Context, profile: str, assignments: tuple[str, ...], comments: tuple[str, ...],
           dry_run: bool, as_json: bool) -> None:
    """Append a new profile: create PROFILE MODEL=dir/file.gguf NAME=... [KEY=VALUE...]."""
    from mcp_server.profiles.edits import create_profile

    values = parse_assignments(assignments)
    with cli_errors():
        result = create_profile(config_of(ctx), profile, values, comments=list(comments), dry_run=dry_run)
    render_edit(result, as_json)


@click.command("update-profile")
@click.argument("profile")
@click.argument("assignments", nargs=-1)
@click.option("--unset", "unset_keys", multiple=True, metavar="KEY", help="Key to remove (repeatable).")
@click.option("--comment", "comment_lines", multiple=True, metavar="TEXT",
              help="Replace the comment lines above the section with these (repeatable, in order).")
@click.option("--no-comments", is_flag=True, help="Remove the comment lines above the section.")
@click.option("--replace-comment", "replacements", multiple=True, nargs=2, metavar="FIND NEW",
              help="Replace the one comment line above the section that contains FIND with NEW ('' drops it).")
@dry_run_option
@json_option
@click.pass_context
def update_profile_cmd(ctx: click.Context, profile: str, assignments: tuple[str, ...], unset_keys: tuple[str, ...],
                       comment_lines: tuple[str, ...], no_comments: bool, replacements: tuple[tuple[str, str], ...],
                       dry_run: bool, as_json: bool) -> None:
    """Set KEY=VALUE pairs, remove --unset KEYs and rewrite the comments above PROFILE (or 'global'), as one edit."""
    from mcp_server.profiles.edits import update_profile

    if not (assignments or unset_keys or comment_lines or no_comments or replacements):
        raise click.UsageError("give KEY=VALUE pairs to set, --unset KEY, --comment TEXT or --replace-comment FIND NEW")
    if no_comments and comment_lines:
        raise click.UsageError("--no-comments removes the comment lines; do not also give --comment")
    updates = parse_assignments(assignments)
    comments = [] if no_comments else (list(comment_lines) if comment_lines else None)
    with cli_errors():
        result = update_profile(config_of(ctx), profile, set=updates, unset=list(unset_keys), dry_run=dry_run,
                                comments=comments, replace_comments=dict(replacements) or None)
    render_edit(result, as_json)


@click.command("retire-profile")
@click.argument("profile")
@click.option("--note", help="Why it was retired (written as a comment above it).")
@dry_run_option
@json_option
@click.pass_context
def retire_profile_cmd(ctx: click.Context, profile: str, note: str | None, dry_run: bool, as_json: bool) -> None:
    """Comment PROFILE out of models.conf (kept in the file, no longer active)."""
    from mcp_server.profiles.edits import retire_profile

    with cli_errors():
        result = retire_profile(config_of(ctx), profile, note=note, dry_run=dry_run)
    render_edit(result, as_json)


# The commands this module adds to `llama-pilot` (cli.main loads the module when one is called).
COMMANDS: dict[str, click.Command] = {
    list_profiles_cmd.name: list_profiles_cmd,
    get_profile_cmd.name: get_profile_cmd,
    args.name: args,
    lint_profiles_cmd.name: lint_profiles_cmd,
    create_profile_cmd.name: create_profile_cmd,
    update_profile_cmd.name: update_profile_cmd,
    retire_profile_cmd.name: retire_profile_cmd,
}
