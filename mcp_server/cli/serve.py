"""The endpoint: serve (foreground, or --background / --status / --stop), serve-start, serve-stop,
serve-status, serve-load, serve-unload, serve-pin."""

from __future__ import annotations

import time
from typing import Any

import click

from mcp_server.cli.common import cli_errors, config_of, emit_json, json_option, table


def _render_status(status: Any) -> None:
    if not status.running:
        click.echo(f"serve: not running ({status.url}){'; ' + status.note if status.note else ''}")
        return
    room = ", ".join(f"{d} {mib:.0f} MiB" for d, mib in status.room_mib.items()) or "-"
    click.echo(f"serve at {status.url} (pid {status.pid}); room for one more: {room}; "
               f"max wait {status.max_wait_s:g} s, queue limit {status.queue_limit}")
    rows = []
    for m in status.models:
        mem = ", ".join(f"{d} {mib:.0f}" for d, mib in (m.memory_mib or {}).items()) or "-"
        flags = ",".join(f for f, on in (("pin", m.pinned), ("draining", m.draining)) if on)
        rows.append([m.profile, m.state, str(m.in_flight), str(m.queued), mem, flags, m.progress or ""])
    click.echo(table(rows, ["PROFILE", "STATE", "IN FLIGHT", "QUEUED", "MEMORY MiB", "", ""]))
    c = status.counters
    click.echo(f"requests {c.get('requests', 0)}, served {c.get('served', 0)}, 429 {c.get('rejected', 0)}, "
               f"left {c.get('abandoned', 0)}, failed {c.get('failed', 0)}, swaps {c.get('swaps', 0)}")
    for s in status.swaps[-8:]:
        when = time.strftime("%H:%M:%S", time.localtime(s.at))
        extra = f" (unloaded {', '.join(s.unloaded)})" if s.unloaded else ""
        timing = f" waited {s.waited_s:.1f}s, load {s.load_s:.1f}s" if s.load_s is not None else ""
        click.echo(f"  {when} {s.action} {s.profile}: {s.reason}{extra}{timing}{' - ' + s.detail if s.detail else ''}")


@click.command("serve")
@click.option("--port", type=click.IntRange(1024, 65535), help="Port (default: SERVE_PORT in [global], else 8000).")
@click.option("--host", help="Address to listen on (default: SERVE_HOST, else 127.0.0.1; others need an API key).")
@click.option("--background", is_flag=True, help="Start detached (logs in logs/serve.log) and return once it answers.")
@click.option("--status", "show_status", is_flag=True, help="Show the running endpoint (same as serve-status).")
@click.option("--stop", is_flag=True, help="Stop the running endpoint; the models it loaded keep running.")
@json_option
@click.pass_context
def serve_cmd(ctx: click.Context, port: int | None, host: str | None, background: bool, show_status: bool,
              stop: bool, as_json: bool) -> None:
    """One OpenAI/Anthropic endpoint for every profile: loads what requests name, by memory."""
    from mcp_server.serve import control

    with cli_errors():
        config = config_of(ctx)
        if show_status:
            result = control.serve_status(config)
        elif stop:
            result = control.serve_stop(config)
        elif background:
            result = control.serve_start(config, host=host, port=port)
        else:
            from mcp_server.serve.policy import serve_settings

            settings = serve_settings(config, host=host, port=port)
            click.echo(f"serving {len(config.profiles)} profiles at {settings.url} (Ctrl-C stops; models stay "
                       "loaded for the next serve)", err=True)
            from mcp_server.serve.proxy import serve

            serve(config, host=host, port=port)
            return
    if as_json:
        return emit_json(result)
    _render_status(result)


@click.command("serve-start")
@click.option("--port", type=click.IntRange(1024, 65535), help="Port (default: SERVE_PORT, else 8000).")
@click.option("--host", help="Address (default: SERVE_HOST, else 127.0.0.1).")
@json_option
@click.pass_context
def serve_start_cmd(ctx: click.Context, port: int | None, host: str | None, as_json: bool) -> None:
    """Start the endpoint in the background (same as serve --background)."""
    from mcp_server.serve import control

    with cli_errors():
        result = control.serve_start(config_of(ctx), host=host, port=port)
    emit_json(result) if as_json else _render_status(result)


@click.command("serve-stop")
@json_option
@click.pass_context
def serve_stop_cmd(ctx: click.Context, as_json: bool) -> None:
    """Stop the endpoint; the models it loaded keep running for the next one to adopt."""
    from mcp_server.serve import control

    with cli_errors():
        result = control.serve_stop(config_of(ctx))
    emit_json(result) if as_json else _render_status(result)


@click.command("serve-status")
@json_option
@click.pass_context
def serve_status_cmd(ctx: click.Context, as_json: bool) -> None:
    """Resident profiles, their memory, queues, and the swaps with their reasons."""
    from mcp_server.serve import control

    with cli_errors():
        result = control.serve_status(config_of(ctx))
    emit_json(result) if as_json else _render_status(result)


def _action(name: str, doc: str) -> click.Command:
    @click.command(f"serve-{name}", help=doc)
    @click.argument("profile")
    @json_option
    @click.pass_context
    def command(ctx: click.Context, profile: str, as_json: bool, **kw: Any) -> None:
        from mcp_server.serve import control

        with cli_errors():
            result = getattr(control, f"serve_{name}")(config_of(ctx), profile, **kw)
        if as_json:
            return emit_json(result)
        click.echo(f"{name} {result.profile}: done in {result.seconds:.1f} s")
        _render_status(result.status)

    return command


serve_load_cmd = _action("load", "Load PROFILE through the running endpoint (unloading by its memory rules).")
serve_unload_cmd = _action("unload", "Unload PROFILE once its requests in flight finish.")
serve_pin_cmd = click.option("--unpin", "pinned", flag_value=False, default=True,
                             help="Remove the pin instead.")(_action("pin", "Pin PROFILE: never unloaded to make room "
                                                                     "(until serve restarts; PIN=on lasts)."))

COMMANDS = {"serve": serve_cmd, "serve-start": serve_start_cmd, "serve-stop": serve_stop_cmd,
            "serve-status": serve_status_cmd, "serve-load": serve_load_cmd, "serve-unload": serve_unload_cmd,
            "serve-pin": serve_pin_cmd}
