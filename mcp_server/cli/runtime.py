"""Running models: start-model, stop-model, switch-model, status, tail-logs, load-report, orphans, diagnose, test-completion."""

from __future__ import annotations

from typing import Any

import click

from mcp_server.cli.common import cli_errors, config_of, emit_json, json_option, runtime_of, table
from mcp_server.runtime.registry import InstanceStatus

def _print_progress(progress: Any) -> None:
    click.echo(f"  {progress.stage} {progress.fraction:.0%}", err=True)


def _instance_rows(views: list[Any]) -> str:
    rows = []
    for v in views:
        detail = ""
        if v.status == InstanceStatus.LOADING and v.progress:
            detail = f"{v.progress.stage} {v.progress.fraction:.0%}"
        elif v.status == InstanceStatus.READY:
            detail = f"up {_duration(v.uptime_s)}"
        elif v.diagnosis:
            detail = f"{v.diagnosis.cause}: {v.diagnosis.summary}"
        elif v.exit_code is not None:
            detail = f"exit {v.exit_code}"
        rows.append([v.profile, v.status, v.backend, str(v.port), str(v.pid or (v.container_id or "")[:12]), detail])
    return table(rows, ["PROFILE", "STATUS", "BACKEND", "PORT", "PID", ""])


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


backend_option = click.option("--backend", type=click.Choice(["native", "docker"]),
                              help="Override the profile's BACKEND.")
timeout_option = click.option("--timeout", "timeout_s", type=click.FloatRange(0, 86400, min_open=True),
                              help="Seconds a load may go without a new log line before it counts as stuck "
                                   "(default grows with model size).")


@click.command("start-model")
@click.argument("profile")
@backend_option
@click.option("--port", type=int, help="Port to use (default: the profile's, else the first free from [global]).")
@timeout_option
@click.option("--no-wait", is_flag=True, help="Return as soon as the process is started.")
@json_option
@click.pass_context
def start_model_cmd(ctx: click.Context, profile: str, backend: str | None, port: int | None,
                    timeout_s: float | None, no_wait: bool, as_json: bool) -> None:
    """Start PROFILE and wait until it is ready (progress on stderr)."""
    with cli_errors():
        view = runtime_of(ctx).start_model(profile, backend=backend, port=port, timeout_s=timeout_s,
                                   progress=None if as_json else _print_progress, wait=not no_wait)
    if as_json:
        return emit_json(view)
    click.echo(f"{view.profile} {view.status} at {view.url} (pid {view.pid or view.container_id}"
               + (f", loaded in {view.load_seconds:.1f} s)" if view.load_seconds else ")"))


@click.command("stop-model")
@click.argument("target", default="all")
@click.option("--grace", "grace_s", type=float, default=10.0, show_default=True,
              help="Seconds between SIGTERM and SIGKILL.")
@json_option
@click.pass_context
def stop_model_cmd(ctx: click.Context, target: str, grace_s: float, as_json: bool) -> None:
    """Stop a profile (or instance id), or 'all' (the default)."""
    with cli_errors():
        stopped = runtime_of(ctx).stop_model(target, grace_s=grace_s)
    if as_json:
        return emit_json(stopped)
    views = stopped.instances
    for v in views:
        click.echo(f"stopped {v.profile} (port {v.port} free)")
    if not views:
        click.echo("nothing was running")


@click.command("switch-model")
@click.argument("profile")
@backend_option
@timeout_option
@json_option
@click.pass_context
def switch_model_cmd(ctx: click.Context, profile: str, backend: str | None, timeout_s: float | None,
                     as_json: bool) -> None:
    """Stop what occupies the GPUs and start PROFILE; restores the previous model if it fails."""
    with cli_errors():
        result = runtime_of(ctx).switch_model(profile, backend=backend, timeout_s=timeout_s,
                                            progress=None if as_json else _print_progress)
    if as_json:
        return emit_json(result)
    for v in result.stopped:
        click.echo(f"stopped {v.profile}")
    if result.started:
        click.echo(f"{result.started.profile} ready at {result.started.url}")


@click.command("status")
@json_option
@click.pass_context
def status_cmd(ctx: click.Context, as_json: bool) -> None:
    """Every instance: loading / ready / failed / stopped, port, pid, uptime, and the cause of a failure."""
    with cli_errors():
        report = runtime_of(ctx).status()
    if as_json:
        return emit_json(report)
    views = report.instances
    click.echo(_instance_rows(views) if views else "nothing running")
    for v in views:
        if v.note:
            click.echo(f"note: {v.profile}: {v.note}")
        for w in v.workers:
            click.echo(f"  {v.profile} uses worker {w.id} at {w.endpoint}: {', '.join(w.devices) or 'its devices'}")
    for o in report.elsewhere:
        click.echo(f"also running, started by another llama-pilot home ({o.home}): {o.profile} pid {o.pid} port "
                   f"{o.port}; manage it with LLAMA_PILOT_HOME={o.home} llama-pilot ...")


@click.command("tail-logs")
@click.argument("target")
@click.option("-n", "--lines", type=click.IntRange(1, 2000), default=100, show_default=True,
              help="How many of the last lines.")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines (Ctrl-C to end).")
@json_option
@click.pass_context
def tail_logs_cmd(ctx: click.Context, target: str, lines: int, follow: bool, as_json: bool) -> None:
    """Show a profile's llama-server log (ANSI stripped; kept across restarts)."""
    import time

    with cli_errors():
        runtime = runtime_of(ctx)
        tail = runtime.tail_logs(target, lines=lines)
    if as_json:
        return emit_json(tail)
    for line in tail.lines:
        click.echo(line)
    seen = tail.total_lines
    try:
        while follow:
            time.sleep(0.5)
            tail = runtime.tail_logs(target, lines=0)
            for line in tail.lines[seen:]:
                click.echo(line)
            seen = tail.total_lines
    except KeyboardInterrupt:
        pass


@click.command("load-report")
@click.argument("target")
@json_option
@click.pass_context
def load_report_cmd(ctx: click.Context, target: str, as_json: bool) -> None:
    """What llama.cpp logged about the last load: buffers per device, layers, splits, context, slots."""
    with cli_errors():
        report = runtime_of(ctx).load_report(target)
    if as_json:
        return emit_json(report)
    click.echo(f"build {report.build_number} ({report.build_commit}), {report.architecture}, "
               f"layers on GPU {report.layers_offloaded}/{report.layers_total}, graph splits {report.graph_splits}")
    click.echo(f"context {report.n_ctx} ({report.n_ctx_seq} per slot, {report.slots} slots), "
               f"batch {report.n_batch}/{report.n_ubatch}, flash attention {report.flash_attn}, "
               f"loaded in {report.load_seconds} s")
    rows = [[d.device, f"{d.weights_mib:.1f}", f"{d.kv_cache_mib:.1f}", f"{d.recurrent_state_mib:.1f}",
             f"{d.compute_mib:.1f}", f"{d.output_mib:.1f}", f"{d.total_mib:.1f}"] for d in report.devices]
    click.echo(table(rows, ["DEVICE", "WEIGHTS", "KV", "RECURRENT", "COMPUTE", "OUTPUT", "TOTAL MiB"]))


@click.command("orphans")
@click.option("--adopt", "adopt_all", is_flag=True, help="Take this home's orphans back under management.")
@click.option("--stop", "stop_all", is_flag=True, help="Stop this home's orphans.")
@click.option("--stop-pid", "stop_pid", type=int, help="Stop one foreign llama-server by pid (needs --force).")
@click.option("--force", is_flag=True, help="With --stop-pid: stop it although it is not this home's.")
@json_option
@click.pass_context
def orphans(ctx: click.Context, adopt_all: bool, stop_all: bool, stop_pid: int | None, force: bool,
            as_json: bool) -> None:
    """llama-server processes or containers no record owns; only this home's are adopted or stopped.

    Servers started by another LLAMA_PILOT_HOME, by hand or by another tool are listed as foreign and
    left alone; --stop-pid PID --force stops one of them.
    """
    if force and stop_pid is None:
        raise click.UsageError("--force only goes with --stop-pid PID")
    with cli_errors():
        runtime = runtime_of(ctx)
        if stop_pid is not None:
            stopped = runtime.stop_foreign(stop_pid, force=force)
            if as_json:
                return emit_json({"orphans": [stopped], "handled": []})
            click.echo(f"stopped pid {stopped.pid} ({stopped.owner})")
            return
        found = runtime.orphans()
        own = [o for o in found if o.is_own]
        handled = [runtime.adopt(o) for o in own] if adopt_all or stop_all else []
        if stop_all:
            handled = [v for a in handled for v in runtime.stop_model(a.id).instances]
    if as_json:
        return emit_json({"orphans": found, "handled": handled})
    for o in found:
        whose = "this home's" if o.owner == "ours" else o.owner + (f" ({o.home})" if o.home else "")
        click.echo(f"{o.backend} pid {o.pid or ''} {o.container_id or ''} port {o.port} model {o.model_path}: {whose}")
    if not found:
        click.echo("no orphans")
    for v in handled:
        click.echo(f"{'stopped' if stop_all else 'adopted'} {v.profile} ({v.id})")
    if (adopt_all or stop_all) and len(own) < len(found):
        click.echo(f"left alone: {len(found) - len(own)} foreign server(s); stop one with --stop-pid PID --force")




@click.command("diagnose")
@click.argument("profile", required=False)
@click.option("-n", "--lines", "log_lines", type=click.IntRange(0, 500), default=30, show_default=True,
              help="Log lines to include.")
@json_option
@click.pass_context
def diagnose_cmd(ctx: click.Context, profile: str | None, log_lines: int, as_json: bool) -> None:
    """Why PROFILE failed (or will fail) to start, plus engine, GPUs, instances and ports."""
    from mcp_server.checks.diagnosis import diagnose

    with cli_errors():
        report = diagnose(config_of(ctx), profile, log_lines=log_lines)
    if as_json:
        return emit_json(report)
    click.echo(report.verdict)
    if report.diagnosis:
        for line in report.diagnosis.evidence:
            click.echo(f"  evidence: {line}")
    for f in report.findings:
        click.echo(f"  line {f.line}: {f.severity} {f.code}: {f.message}")
    h = report.health
    click.echo(f"engine: {h.engine.path} (build {h.engine.build_number}, {h.engine.backend})" if h.engine.found
               else f"engine: {h.engine.error}")
    click.echo(f"GPUs: {'; '.join(h.gpus.gpus)}" if h.gpus.gpus else f"GPUs: none ({h.gpus.reason})")
    if h.instances:
        click.echo(_instance_rows(h.instances))
    for p in h.ports:
        click.echo(f"port {p.port} ({', '.join(p.used_by)}): {'free' if p.free else 'held by ' + str(p.held_by)}")
    if report.log_tail:
        click.echo(f"last {len(report.log_tail)} log lines:")
        for line in report.log_tail:
            click.echo(f"  {line}")


@click.command("test-completion")
@click.argument("profile")
@click.option("--prompt", default="Write one sentence about the sea.", show_default=True)
@click.option("--max-tokens", type=click.IntRange(1, 4096), default=64, show_default=True)
@click.option("--temperature", type=click.FloatRange(0, 5), default=None)
@json_option
@click.pass_context
def test_completion_cmd(ctx: click.Context, profile: str, prompt: str, max_tokens: int, temperature: float | None,
                        as_json: bool) -> None:
    """Ask a running PROFILE one question; print the answer and the server's measured speeds."""
    from mcp_server.checks.completion import test_completion

    with cli_errors():
        check = test_completion(runtime_of(ctx), profile, prompt=prompt, max_tokens=max_tokens,
                                temperature=temperature)
    if as_json:
        return emit_json(check)
    click.echo(check.text)
    speed = (f", prompt {check.prompt_tokens_per_s:.1f} t/s, generation {check.generation_tokens_per_s:.1f} t/s"
             if check.prompt_tokens_per_s and check.generation_tokens_per_s else "")
    click.echo(f"({check.generated_tokens} tokens in {check.wall_s:.2f} s{speed}; finish: {check.finish_reason})",
               err=True)


# The commands this module adds to `llama-pilot` (cli.main loads the module when one is called).
COMMANDS: dict[str, click.Command] = {
    start_model_cmd.name: start_model_cmd,
    stop_model_cmd.name: stop_model_cmd,
    switch_model_cmd.name: switch_model_cmd,
    status_cmd.name: status_cmd,
    tail_logs_cmd.name: tail_logs_cmd,
    load_report_cmd.name: load_report_cmd,
    orphans.name: orphans,
    diagnose_cmd.name: diagnose_cmd,
    test_completion_cmd.name: test_completion_cmd,
}
