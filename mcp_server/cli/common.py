"""What every CLI command shares: the --json option, JSON output, the error exit, tables."""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from typing import Any, Iterator, NoReturn

import click

from mcp_server.errors import LlamaPilotError, storage_errors


@contextmanager
def cli_errors() -> Iterator[None]:
    """Domain errors become one clean message and exit code 1 (with --json: the error object)."""
    try:
        # A read-only, full or foreign folder that no core function named yet: still one sentence.
        with storage_errors("write"):
            yield
    except LlamaPilotError as exc:
        fail(exc)


def fail(exc: LlamaPilotError) -> NoReturn:
    ctx = click.get_current_context(silent=True)
    if ctx is not None and ctx.meta.get("llama_pilot.json"):
        click.echo(json.dumps({"error": {"code": exc.code, "message": str(exc)}}, indent=2))
        sys.exit(1)
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


def parse_assignments(pairs: tuple[str, ...]) -> dict[str, str]:
    """KEY=VALUE words of a command line as a dict (a usage error names the word that is not one)."""
    updates: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise click.UsageError(f"{pair!r} is not KEY=VALUE")
        updates[key.strip()] = value.strip()
    return updates


def table(rows: list[list[str]], headers: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    lines = ["  ".join(str(h).ljust(w) for h, w in zip(headers, widths)).rstrip()]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(lines)


def _note_json(ctx: click.Context, _param: click.Parameter, value: bool) -> bool:
    if value:
        ctx.meta["llama_pilot.json"] = True  # errors, too, are printed as JSON
    return value


json_option = click.option("--json", "as_json", is_flag=True, callback=_note_json,
                           help="Print the MCP tool's structured output as JSON.")


dry_run_option = click.option("--dry-run", is_flag=True, help="Show the diff without writing.")


def config_of(ctx: click.Context):  # type: ignore[no-untyped-def]
    """The models.conf of this invocation (--config, $LLAMA_PILOT_CONFIG, ./models.conf)."""
    from mcp_server.profiles.config import load_config

    return load_config(ctx.obj["config"] if ctx.obj else None)


def config_or_none(ctx: click.Context):  # type: ignore[no-untyped-def]
    """The models.conf if there is one: commands that take a file path work without it."""
    from mcp_server.errors import ConfigError

    try:
        return config_of(ctx)
    except ConfigError:
        return None


def runtime_of(ctx: click.Context):  # type: ignore[no-untyped-def]
    from mcp_server.runtime.lifecycle import Runtime

    return Runtime(config_of(ctx))


def render_edit(result: Any, as_json: bool) -> None:
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
