"""list-workers, worker-status, start-worker, stop-worker, and `worker serve` (the agent on a worker host)."""

from __future__ import annotations

import click

from mcp_server.cli.common import cli_errors, config_of, emit_json, json_option


def _render(view) -> None:  # type: ignore[no-untyped-def]
    state = ("RPC running" + (f", {view.rpc_clients} client(s)" if view.rpc_clients else "")) if view.rpc_running \
        else "RPC stopped"
    if not view.reachable:
        click.echo(f"{view.id}  {view.url}  UNREACHABLE  {view.error}")
        return
    build = f"build {view.build_number}" + ("" if view.same_build in (True, None) else " (NOT this machine's build)")
    users = f"  used by {', '.join(view.used_by)}" if view.used_by else ""
    click.echo(f"{view.id}  {view.url}  rpc {view.endpoint}  {build}  {state}{users}")
    for d in view.devices:
        total = f" of {d.total_mib / 1024:.1f}" if d.total_mib else ""
        click.echo(f"    {d.device}  {d.name} ({d.description or '?'})  {d.free_mib / 1024:.1f}{total} GiB free")


@click.command("list-workers")
@json_option
@click.pass_context
def list_workers_cmd(ctx: click.Context, as_json: bool) -> None:
    """The RPC workers [global] names, each asked now: build, devices, RPC server, users."""
    from mcp_server.workers.operations import list_workers

    with cli_errors():
        result = list_workers(config_of(ctx))
    if as_json:
        return emit_json(result)
    if not result.workers:
        click.echo("no workers: add WORKER_<id>=http://host:8765 to [global] (docs/workers.md)")
    for view in result.workers:
        _render(view)


@click.command("worker-status")
@click.argument("worker")
@json_option
@click.pass_context
def worker_status_cmd(ctx: click.Context, worker: str, as_json: bool) -> None:
    """One worker: what its agent reports."""
    from mcp_server.workers.operations import worker_status

    with cli_errors():
        view = worker_status(config_of(ctx), worker)
    if as_json:
        return emit_json(view)
    _render(view)


@click.command("start-worker")
@click.argument("worker")
@json_option
@click.pass_context
def start_worker_cmd(ctx: click.Context, worker: str, as_json: bool) -> None:
    """Start WORKER's RPC server (its llama.cpp build must be this machine's)."""
    from mcp_server.workers.operations import start_worker

    with cli_errors():
        view = start_worker(config_of(ctx), worker)
    if as_json:
        return emit_json(view)
    _render(view)


@click.command("stop-worker")
@click.argument("worker")
@click.option("--force", is_flag=True, help="Even while a running profile uses it.")
@json_option
@click.pass_context
def stop_worker_cmd(ctx: click.Context, worker: str, force: bool, as_json: bool) -> None:
    """Stop WORKER's RPC server."""
    from mcp_server.workers.operations import stop_worker

    with cli_errors():
        view = stop_worker(config_of(ctx), worker, force)
    if as_json:
        return emit_json(view)
    _render(view)


@click.group("worker")
def worker() -> None:
    """On a worker host: the agent that lends this machine's devices."""


@worker.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Loopback, or one private address of this host (WireGuard/LAN); never 0.0.0.0.")
@click.option("--port", type=click.IntRange(1024, 65535), default=8765, show_default=True)
@click.option("--token-env", default="LLAMA_PILOT_WORKER_TOKEN", show_default=True,
              help="Environment variable holding the bearer token (required, 16+ characters).")
@click.pass_context
def serve_cmd(ctx: click.Context, host: str, port: int, token_env: str) -> None:
    """Run the worker agent: MCP over HTTP with a bearer token, owning this host's ggml-rpc-server
    (bound to the same address)."""
    import logging

    from mcp_server.workers.agent import serve

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    with cli_errors():
        serve(host, port, token_env, ctx.obj.get("config") if ctx.obj else None)


COMMANDS = {"list-workers": list_workers_cmd, "worker-status": worker_status_cmd, "start-worker": start_worker_cmd,
            "stop-worker": stop_worker_cmd, "worker": worker}
