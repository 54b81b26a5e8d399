"""The ``llama-pilot`` command: each subcommand parses its input, calls one core function, renders.

Exit codes: 0 success; 1 the operation failed (the message says why and what to do); 2 the
command line itself was wrong (click's usage errors). Heavy modules are imported inside the
commands that need them, so ``llama-pilot list`` does not pay for MCP, NVML or Docker.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from contextlib import contextmanager
from typing import Any, Iterator

import click

from mcp_server.errors import LlamaPilotError, storage_errors


@contextmanager
def cli_errors() -> Iterator[None]:
    """Domain errors become one clean message and exit code 1."""
    try:
        # A read-only, full or foreign folder that no core function named yet: still one sentence.
        with storage_errors("write"):
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
    from mcp_server.profiles.config import load_config

    return load_config(ctx.obj["config"])


# --- profiles --------------------------------------------------------------------------------


@cli.command("list")
@click.option("--bench/--no-bench", default=True, help="Include bench- profiles.")
@json_option
@click.pass_context
def list_cmd(ctx: click.Context, bench: bool, as_json: bool) -> None:
    """List profiles: id, name, speed, context, model file present."""
    from mcp_server.profiles.listing import list_models

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
    from mcp_server.profiles.listing import get_model

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
@click.option("--docker", is_flag=True, help="The argv inside llama-pilot's image (model under /models).")
@json_option
@click.pass_context
def args(ctx: click.Context, profile: str, port: int | None, docker: bool, as_json: bool) -> None:
    """Print the exact llama-server argv for PROFILE, one argument per line."""
    from mcp_server.engine.argv import launch_spec
    from mcp_server.engine.binary import EngineNotFound, locate_engine

    with cli_errors():
        config = _config(ctx)
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


@cli.command()
@click.argument("profile", required=False)
@json_option
@click.pass_context
def lint(ctx: click.Context, profile: str | None, as_json: bool) -> None:
    """Check profiles; exits 1 when any finding is an error."""
    from mcp_server.profiles.lint import lint_config

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
    from mcp_server.profiles.edits import update_profile

    updates = _parse_assignments(assignments)
    with cli_errors():
        result = update_profile(_config(ctx), profile, set=updates, dry_run=dry_run)
    _render_edit(result, as_json)


@cli.command()
@click.argument("profile")
@click.argument("keys", nargs=-1, required=True)
@dry_run_option
@json_option
@click.pass_context
def unset(ctx: click.Context, profile: str, keys: tuple[str, ...], dry_run: bool, as_json: bool) -> None:
    """Remove KEYS from PROFILE."""
    from mcp_server.profiles.edits import update_profile

    with cli_errors():
        result = update_profile(_config(ctx), profile, unset=list(keys), dry_run=dry_run)
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
    from mcp_server.profiles.edits import create_profile

    values = _parse_assignments(assignments)
    with cli_errors():
        result = create_profile(_config(ctx), profile, values, comments=list(comments), dry_run=dry_run)
    _render_edit(result, as_json)


@cli.command("update-model")
@click.argument("profile")
@click.argument("assignments", nargs=-1)
@click.option("--unset", "unset_keys", multiple=True, metavar="KEY", help="Key to remove (repeatable).")
@dry_run_option
@json_option
@click.pass_context
def update_model_cmd(ctx: click.Context, profile: str, assignments: tuple[str, ...], unset_keys: tuple[str, ...],
                     dry_run: bool, as_json: bool) -> None:
    """Set KEY=VALUE pairs and remove --unset KEYs in PROFILE, as one edit (the MCP tool update_model)."""
    from mcp_server.profiles.edits import update_profile

    if not assignments and not unset_keys:
        raise click.UsageError("give KEY=VALUE pairs to set and/or --unset KEY")
    updates = _parse_assignments(assignments)
    with cli_errors():
        result = update_profile(_config(ctx), profile, set=updates, unset=list(unset_keys), dry_run=dry_run)
    _render_edit(result, as_json)


@cli.command()
@click.argument("profile")
@click.option("--note", help="Why it was retired (written as a comment above it).")
@dry_run_option
@json_option
@click.pass_context
def retire(ctx: click.Context, profile: str, note: str | None, dry_run: bool, as_json: bool) -> None:
    """Comment PROFILE out of models.conf (kept in the file, no longer active)."""
    from mcp_server.profiles.edits import retire_profile

    with cli_errors():
        result = retire_profile(_config(ctx), profile, note=note, dry_run=dry_run)
    _render_edit(result, as_json)


# --- lifecycle -------------------------------------------------------------------------------


def _runtime(ctx: click.Context):  # type: ignore[no-untyped-def]
    from mcp_server.runtime.lifecycle import Runtime

    return Runtime(_config(ctx))


def _print_progress(progress: Any) -> None:
    click.echo(f"  {progress.stage} {progress.fraction:.0%}", err=True)


def _instance_rows(views: list[Any]) -> str:
    rows = []
    for v in views:
        detail = ""
        if v.status == "loading" and v.progress:
            detail = f"{v.progress.stage} {v.progress.fraction:.0%}"
        elif v.status == "ready":
            detail = f"up {_duration(v.uptime_s)}"
        elif v.diagnosis:
            detail = f"{v.diagnosis.cause}: {v.diagnosis.summary}"
        elif v.exit_code is not None:
            detail = f"exit {v.exit_code}"
        rows.append([v.profile, v.status, v.backend, str(v.port), str(v.pid or (v.container_id or "")[:12]), detail])
    return _table(rows, ["PROFILE", "STATUS", "BACKEND", "PORT", "PID", ""])


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
                              help="Seconds to wait for the model to load (default grows with model size).")


@cli.command()
@click.argument("profile")
@backend_option
@click.option("--port", type=int, help="Port to use (default: the profile's, else the first free from [global]).")
@timeout_option
@click.option("--no-wait", is_flag=True, help="Return as soon as the process is started.")
@json_option
@click.pass_context
def start(ctx: click.Context, profile: str, backend: str | None, port: int | None, timeout_s: float | None,
          no_wait: bool, as_json: bool) -> None:
    """Start PROFILE and wait until it is ready (progress on stderr)."""
    with cli_errors():
        view = _runtime(ctx).start_model(profile, backend=backend, port=port, timeout_s=timeout_s,
                                   progress=None if as_json else _print_progress, wait=not no_wait)
    if as_json:
        return emit_json(view)
    click.echo(f"{view.profile} {view.status} at {view.url} (pid {view.pid or view.container_id}"
               + (f", loaded in {view.load_seconds:.1f} s)" if view.load_seconds else ")"))


@cli.command()
@click.argument("target", default="all")
@click.option("--grace", "grace_s", type=float, default=10.0, show_default=True,
              help="Seconds between SIGTERM and SIGKILL.")
@json_option
@click.pass_context
def stop(ctx: click.Context, target: str, grace_s: float, as_json: bool) -> None:
    """Stop a profile (or instance id), or 'all' (the default)."""
    with cli_errors():
        views = _runtime(ctx).stop_model(target, grace_s=grace_s)
    if as_json:
        return emit_json(views)
    for v in views:
        click.echo(f"stopped {v.profile} (port {v.port} free)")
    if not views:
        click.echo("nothing was running")


@cli.command()
@click.argument("profile")
@backend_option
@timeout_option
@json_option
@click.pass_context
def switch(ctx: click.Context, profile: str, backend: str | None, timeout_s: float | None, as_json: bool) -> None:
    """Stop what occupies the GPUs and start PROFILE; restores the previous model if it fails."""
    from mcp_server.runtime.lifecycle import SwitchFailed

    try:
        result = _runtime(ctx).switch_model(profile, backend=backend, timeout_s=timeout_s,
                                      progress=None if as_json else _print_progress)
    except SwitchFailed as exc:
        if as_json:
            emit_json(exc.result)
            sys.exit(1)
        raise click.ClickException(str(exc)) from exc
    except LlamaPilotError as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        return emit_json(result)
    for v in result.stopped:
        click.echo(f"stopped {v.profile}")
    if result.started:
        click.echo(f"{result.started.profile} ready at {result.started.url}")


@cli.command()
@json_option
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """Every instance: loading / ready / failed / stopped, port, pid, uptime, and the cause of a failure."""
    with cli_errors():
        runtime = _runtime(ctx)
        views = runtime.status()
        others = [] if as_json else runtime.elsewhere()
    if as_json:
        return emit_json(views)
    click.echo(_instance_rows(views) if views else "nothing running")
    for v in views:
        if v.note:
            click.echo(f"note: {v.profile}: {v.note}")
    for o in others:
        click.echo(f"also running, started by another llama-pilot home ({o.home}): {o.profile} pid {o.pid} port "
                   f"{o.port}; manage it with LLAMA_PILOT_HOME={o.home} llama-pilot ...")


@cli.command()
@click.argument("target")
@click.option("-n", "--lines", type=int, default=50, show_default=True, help="How many of the last lines.")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines (Ctrl-C to end).")
@json_option
@click.pass_context
def logs(ctx: click.Context, target: str, lines: int, follow: bool, as_json: bool) -> None:
    """Show a profile's llama-server log (ANSI stripped; kept across restarts)."""
    import time

    with cli_errors():
        runtime = _runtime(ctx)
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


@cli.command("load-report")
@click.argument("target")
@json_option
@click.pass_context
def load_report_cmd(ctx: click.Context, target: str, as_json: bool) -> None:
    """What llama.cpp logged about the last load: buffers per device, layers, splits, context, slots."""
    with cli_errors():
        report = _runtime(ctx).load_report(target)
    if as_json:
        return emit_json(report)
    click.echo(f"build {report.build_number} ({report.build_commit}), {report.architecture}, "
               f"layers on GPU {report.layers_offloaded}/{report.layers_total}, graph splits {report.graph_splits}")
    click.echo(f"context {report.n_ctx} ({report.n_ctx_seq} per slot, {report.slots} slots), "
               f"batch {report.n_batch}/{report.n_ubatch}, flash attention {report.flash_attn}, "
               f"loaded in {report.load_seconds} s")
    rows = [[d.device, f"{d.weights_mib:.1f}", f"{d.kv_cache_mib:.1f}", f"{d.recurrent_state_mib:.1f}",
             f"{d.compute_mib:.1f}", f"{d.output_mib:.1f}", f"{d.total_mib:.1f}"] for d in report.devices]
    click.echo(_table(rows, ["DEVICE", "WEIGHTS", "KV", "RECURRENT", "COMPUTE", "OUTPUT", "TOTAL MiB"]))


@cli.command()
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
        runtime = _runtime(ctx)
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
            handled = [v for a in handled for v in runtime.stop_model(a.id)]
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


# --- placement -------------------------------------------------------------------------------


@cli.command("inspect")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--tensors", "show_tensors", is_flag=True, help="List every tensor.")
@json_option
def inspect_cmd(file: str, show_tensors: bool, as_json: bool) -> None:
    """Inspect a GGUF from its headers (every shard): layout, experts, attention, sizes by kind."""
    from mcp_server.model_files.reader import GGUFFormatError
    from mcp_server.model_files.layout import read_layout

    try:
        info = read_layout(file)
    except (GGUFFormatError, OSError) as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        data = info.model_dump(mode="json")
        if not show_tensors:
            data.pop("tensors")
        data["metadata"] = {k: v for k, v in data["metadata"].items() if not isinstance(v, list) or len(v) <= 64}
        return emit_json(data)
    _print_inspection(info, file, show_tensors)


def _print_inspection(info: Any, file: str, show_tensors: bool) -> None:
    gib = 1024**3
    click.echo(f"{info.name or Path(file).name}: {info.architecture}, {info.n_layer} layers, "
               f"{info.parameters / 1e9:.2f} B parameters, {info.total_bytes / gib:.2f} GiB in {len(info.shards)} file(s)")
    click.echo(f"context {info.n_ctx_train}, embedding {info.n_embd}, vocab {info.n_vocab}, heads {max(info.n_head or [0])}"
               f", KV heads {sorted(set(info.n_head_kv))}, head size K {info.key_length} / V {info.value_length}")
    if info.expert_count:
        click.echo(f"experts: {info.expert_count} routed ({info.expert_used_count} used), {info.expert_shared_count} shared")
    if info.swa_layers:
        click.echo(f"sliding window {info.sliding_window} on {len(info.swa_layers)} of {info.n_layer} layers")
    if info.is_mla:
        click.echo(f"MLA attention (KV LoRA rank {info.kv_lora_rank})")
    if info.recurrent_layers:
        click.echo(f"recurrent layers: {len(info.recurrent_layers)} of {info.n_layer}")
    rows = [[k, f"{v / gib:.3f}"] for k, v in sorted(info.bytes_by_kind.items(), key=lambda kv: -kv[1])]
    click.echo(_table(rows, ["KIND", "GiB"]))
    if show_tensors:
        click.echo(_table([[t.name, t.type, "x".join(map(str, t.shape)), str(t.bytes)] for t in info.tensors],
                          ["TENSOR", "TYPE", "SHAPE", "BYTES"]))


def _device_rows(devices: list[Any]) -> str:
    rows = [[d.device, f"{d.weights_mib:.0f}", f"{d.kv_cache_mib:.0f}", f"{d.recurrent_mib:.0f}",
             f"{d.compute_mib:.0f}", f"{d.overhead_mib:.0f}", f"{d.total_mib:.0f} ±{d.uncertainty_mib:.0f}",
             f"{d.capacity_mib:.0f}" if d.capacity_mib else "",
             "yes" if d.fits else ("NO" if d.fits is False else "")] for d in devices]
    return _table(rows, ["DEVICE", "WEIGHTS", "KV", "RECURRENT", "COMPUTE", "OVERHEAD", "TOTAL MiB", "SIZE", "FITS"])


def _inventory_line(inv: Any) -> str:
    if not inv.gpus:
        return f"GPUs: none{f' ({inv.note})' if inv.note else ''}: CPU only"
    return "GPUs (" + inv.source + "): " + ", ".join(
        f"{g.device} {g.name + ' ' if g.name else ''}{g.free_mib:.0f} MiB free" for g in inv.gpus)


@cli.command("estimate")
@click.argument("profile")
@click.option("--gpus", help="Declared GPU sizes, e.g. 24GiB,16GiB, or 'none' (default: the GPUs NVML sees).")
@click.option("--oracle", is_flag=True, help="Also ask llama-fit-params (llama.cpp's dry run) and show both.")
@click.option("--no-fit", "no_fit", is_flag=True, help="Do not replay llama-server's --fit.")
@json_option
@click.pass_context
def estimate_cmd(ctx: click.Context, profile: str, gpus: str | None, oracle: bool, no_fit: bool,
                 as_json: bool) -> None:
    """Predict per-device memory for PROFILE: weights, KV cache, compute, overhead, fits or not."""
    from mcp_server.placement.operations import estimate_profile

    with cli_errors():
        result = estimate_profile(_config(ctx), profile, gpus, oracle=oracle, replay_fit=not no_fit)
    if as_json:
        return emit_json(result)
    est = result.estimate
    click.echo(_inventory_line(result.inventory))
    click.echo(f"context {est.n_ctx}, {est.slots} slots ({'unified' if est.unified_kv else 'per slot'} KV); "
               f"overhead per GPU {result.overhead_mib:.0f} MiB: {result.overhead_source}")
    if result.fit and result.fit.changed:
        f = result.fit
        what = []
        if f.n_ctx:
            what.append(f"-c {f.n_ctx}")
        if f.n_gpu_layers is not None:
            what.append(f"-ngl {f.n_gpu_layers} -ts {','.join(map(str, f.tensor_split))}")
        if f.experts_on_cpu_layers:
            what.append(f"experts of {len(f.experts_on_cpu_layers)} layers on the CPU")
        click.echo(f"--fit (on) would choose: {'; '.join(what) or 'nothing new'} (replayed)")
    click.echo(_device_rows([*est.devices, est.host]))
    for note in [*est.notes, *(result.fit.notes if result.fit else [])]:
        click.echo(f"note: {note}")
    if result.measured:
        m = result.measured
        click.echo(f"measured {m.at} (build {m.build}):")
        rows = [[d.device, f"{d.predicted_mib:.0f}" if d.predicted_mib is not None else "",
                 f"{d.logged_mib:.0f}" if d.logged_mib is not None else "",
                 f"{d.nvml_mib:.0f}" if d.nvml_mib is not None else "",
                 f"{d.error_mib:+.0f}" if d.error_mib is not None else ""] for d in m.devices]
        click.echo(_table(rows, ["DEVICE", "PREDICTED", "LOGGED", "NVML", "ERROR"]))
    if result.oracle:
        rows = [[dev, str(v["model"]), str(v["context"]), str(v["compute"])] for dev, v in result.oracle.items()]
        click.echo("llama-fit-params (llama.cpp's own dry run, MiB):")
        click.echo(_table(rows, ["DEVICE", "MODEL", "CONTEXT", "COMPUTE"]))


@cli.command("plan")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--ctx", "n_ctx", type=click.IntRange(0), default=0, show_default=True, help="Context tokens (0: training context).")
@click.option("--gpus", help="Declared GPU sizes, e.g. 24GiB,16GiB (default: free memory NVML sees now).")
@click.option("--kv", "kv_type", default="f16", show_default=True, help="KV cache type (f16, q8_0, q4_0, ...).")
@click.option("--slots", type=click.IntRange(1), default=1, show_default=True, help="Parallel requests.")
@click.option("--reserve", "reserve_mib", type=click.FloatRange(0), default=384, show_default=True,
              help="MiB to keep free per GPU beyond the estimate.")
@click.option("--write", "write_profile", help="Write the settings into this profile (shows the diff).")
@dry_run_option
@json_option
@click.pass_context
def plan_cmd(ctx: click.Context, file: str, n_ctx: int, gpus: str | None, kv_type: str, slots: int,
             reserve_mib: float, write_profile: str | None, dry_run: bool, as_json: bool) -> None:
    """Propose placement settings for a GGUF FILE on the GPUs, and optionally write them into a profile."""
    from mcp_server.placement.operations import plan

    with cli_errors():
        config = _config(ctx) if write_profile else None
        result = plan(file, n_ctx, gpus, kv_type=kv_type, slots=slots, reserve_mib=reserve_mib, config=config,
                      write_profile=write_profile, dry_run=dry_run)
    if as_json:
        return emit_json(result)
    p = result.plan
    click.echo(_inventory_line(result.inventory))
    click.echo(f"strategy: {p.strategy}; {p.gpu_weight_fraction:.0%} of the weights on the GPUs; context {p.ctx}")
    for key, value in p.settings.items():
        click.echo(f"  {key}={value}")
    click.echo(_device_rows([*p.estimate.devices, p.estimate.host]))
    for t in p.traded:
        click.echo(f"traded: {t}")
    for n in p.notes:
        click.echo(f"note: {n}")
    for w in p.warnings:
        click.echo(f"warning: {w}", err=True)
    if result.edit is not None:
        _render_edit(result.edit, False)


@cli.command("calibrate")
@click.argument("profile")
@click.option("--note", help="Free text stored with the measurement.")
@json_option
@click.pass_context
def calibrate_cmd(ctx: click.Context, profile: str, note: str | None, as_json: bool) -> None:
    """Measure running PROFILE (llama.cpp's log, NVML) against the estimate; later estimates use it."""
    from mcp_server.placement.operations import calibrate

    with cli_errors():
        m = calibrate(_config(ctx), profile, note)
    if as_json:
        return emit_json(m)
    rows = [[d.device, f"{d.predicted_mib:.0f}" if d.predicted_mib is not None else "",
             f"{d.logged_mib:.0f}" if d.logged_mib is not None else "",
             f"{d.nvml_mib:.0f}" if d.nvml_mib is not None else "",
             f"{d.unaccounted_mib:.0f}" if d.unaccounted_mib is not None else "",
             f"{d.error_mib:+.0f}" if d.error_mib is not None else ""] for d in m.devices]
    click.echo(_table(rows, ["DEVICE", "PREDICTED", "LOGGED", "NVML", "UNACCOUNTED", "ERROR"]))
    if m.note:
        click.echo(f"note: {m.note}")


@cli.command("inspect-gguf")
@click.argument("path")
@click.option("--tensors", "show_tensors", is_flag=True, help="List every tensor.")
@json_option
@click.pass_context
def inspect_gguf_cmd(ctx: click.Context, path: str, show_tensors: bool, as_json: bool) -> None:
    """Inspect a GGUF named relative to MODELS_DIR (what the MCP tool inspect_gguf takes)."""
    from mcp_server.model_files.local import inspect_model_file

    with cli_errors():
        info = inspect_model_file(_config(ctx), path, tensors=show_tensors)
    if as_json:
        return emit_json(info)
    _print_inspection(info, path, show_tensors)


@cli.command("list-local-models")
@json_option
@click.pass_context
def list_local_models_cmd(ctx: click.Context, as_json: bool) -> None:
    """Every GGUF under MODELS_DIR: path for MODEL=, size, shards, architecture, quantization, users."""
    from mcp_server.model_files.local import list_local_models

    with cli_errors():
        config = _config(ctx)
        models = list_local_models(config)
    if as_json:
        return emit_json({"models_dir": config.host.models_dir, "models": models})
    rows = [[m.path, f"{m.size_bytes / 1024**3:.2f}", f"{m.shards_present}/{m.shards}", m.architecture or "?",
             m.quantization or "?", m.kind, ", ".join(m.used_by) or "-"] for m in models]
    click.echo(_table(rows, ["PATH", "GiB", "SHARDS", "ARCH", "QUANT", "KIND", "PROFILES"]) if rows
               else f"no .gguf files under {config.host.models_dir}")


# --- checks ----------------------------------------------------------------------------------


@cli.command("diagnose")
@click.argument("profile", required=False)
@click.option("-n", "--lines", "log_lines", type=click.IntRange(0, 500), default=30, show_default=True,
              help="Log lines to include.")
@json_option
@click.pass_context
def diagnose_cmd(ctx: click.Context, profile: str | None, log_lines: int, as_json: bool) -> None:
    """Why PROFILE failed (or will fail) to start, plus engine, GPUs, instances and ports."""
    from mcp_server.checks.diagnosis import diagnose

    with cli_errors():
        report = diagnose(_config(ctx), profile, log_lines=log_lines)
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


@cli.command("test-completion")
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
        check = test_completion(_runtime(ctx), profile, prompt=prompt, max_tokens=max_tokens,
                                temperature=temperature)
    if as_json:
        return emit_json(check)
    click.echo(check.text)
    speed = (f", prompt {check.prompt_tokens_per_s:.1f} t/s, generation {check.generation_tokens_per_s:.1f} t/s"
             if check.prompt_tokens_per_s and check.generation_tokens_per_s else "")
    click.echo(f"({check.generated_tokens} tokens in {check.wall_s:.2f} s{speed}; finish: {check.finish_reason})",
               err=True)


# --- Claude Code -----------------------------------------------------------------------------


@cli.command("install-claude")
@click.argument("directory", default=".", type=click.Path(file_okay=False))
@click.option("--python", "python", help="Python that runs the server (default: this one, "
              "which has llama-pilot installed).")
@click.option("--server-config", "server_config", type=click.Path(dir_okay=False),
              help="models.conf the server should use (default: the project's ./models.conf).")
@json_option
def install_claude_cmd(directory: str, python: str | None, server_config: str | None, as_json: bool) -> None:
    """Copy the add-model skill and the subagents into DIRECTORY/.claude/ and register the server in .mcp.json."""
    from mcp_server.setup.claude import install_claude

    with cli_errors():
        report = install_claude(directory, python=python,
                                config=str(Path(server_config).resolve()) if server_config else None)
    if as_json:
        return emit_json(report)
    for f in report.files:
        click.echo(f"{f.action:9} {f.path}")
    kept = f"; kept {', '.join(report.other_servers)}" if report.other_servers else ""
    click.echo(f"server 'llama-pilot': {report.server['command']} {' '.join(report.server['args'])}{kept}")


# --- engine, setup, demo ---------------------------------------------------------------------


@cli.group()
def engine() -> None:
    """Find or build llama.cpp's llama-server."""


@engine.command("status")
@json_option
@click.pass_context
def engine_status_cmd(ctx: click.Context, as_json: bool) -> None:
    """Which llama-server would be used, and its build."""
    from mcp_server.engine.binary import locate_engine

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
    from mcp_server.engine.binary import build_engine, plan_build

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


@cli.group("docker")
def docker_group() -> None:
    """llama-pilot's Docker image."""


@docker_group.command("build")
@click.option("--tag", default=None, help="Image tag (default: DOCKER_IMAGE from [global]).")
@click.option("--force", is_flag=True, help="Rebuild even if the image matches the engine.")
@click.pass_context
def docker_build_cmd(ctx: click.Context, tag: str | None, force: bool) -> None:
    """Build the CPU image from the local engine, offline (no registry needed)."""
    from mcp_server.runtime.docker_image import build_local_image

    with cli_errors():
        engine = None
        try:
            config = _config(ctx)
            tag = tag or config.host.docker_image
            engine = config.host.engine
        except LlamaPilotError:
            pass  # no models.conf: defaults are fine
        from mcp_server.engine.binary import locate_engine

        image = build_local_image(tag or "llama-pilot/llama-server:cpu", engine_path=locate_engine(engine).path,
                                  force=force)
    click.echo(f"{tag or 'llama-pilot/llama-server:cpu'}: {image}")


@cli.command("setup")
@click.option("--source", type=click.Path(file_okay=False), help="llama.cpp checkout to build from.")
@json_option
@click.pass_context
def setup_cmd(ctx: click.Context, source: str | None, as_json: bool) -> None:
    """Make everything ready: the engine (built if missing) and the demo model. Safe to re-run."""
    from mcp_server.setup.bootstrap import setup

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
    from mcp_server.setup.bootstrap import demo

    with cli_errors():
        result = demo(ctx.obj["config"], profile_id=profile, prompt=prompt,
                      progress=lambda m: click.echo(m, err=True))
    if as_json:
        return emit_json(result)
    click.echo(f"Q: {result.prompt}\nA: {result.answer}")
    speed = f", {result.generation_tokens_per_s:.1f} t/s" if result.generation_tokens_per_s else ""
    click.echo(f"(ready in {result.ready_s:.1f} s, answered in {result.answer_s:.1f} s{speed}; "
               f"{result.total_s:.1f} s in all; server stopped)", err=True)



# --- monitoring ------------------------------------------------------------------------------


watch_option = click.option("--watch", "watch_s", type=float, is_flag=False, flag_value=1.0, default=None,
                            metavar="[SECONDS]", help="Redraw every SECONDS (default 1) until Ctrl-C.")


def _watch(render: Any, watch_s: float | None, as_json: bool) -> None:
    """Render once, or every ``watch_s`` seconds until Ctrl-C (JSON: one object per line)."""
    import time

    if watch_s is None:
        return render(pretty=True)
    if watch_s <= 0:
        raise click.UsageError("--watch needs a positive number of seconds")
    try:
        while True:
            started = time.monotonic()
            if not as_json:
                click.clear()
            render(pretty=False)
            time.sleep(max(0.0, watch_s - (time.monotonic() - started)))
    except KeyboardInterrupt:
        pass


def _num(value: Any, fmt: str = "{}", none: str = "-") -> str:
    return none if value is None else fmt.format(value)


def _gpu_text(report: Any) -> str:
    if not report.gpus:
        return f"no GPUs: {report.reason}"
    rows, lines = [], []
    for g in report.gpus:
        mem = f"{_num(g.memory_used_mib)}/{_num(g.memory_total_mib)}"
        power = f"{_num(g.power_w, '{:.0f}')}/{_num(g.power_limit_w, '{:.0f}')}"
        clocks = f"{_num(g.sm_clock_mhz)}/{_num(g.mem_clock_mhz)}"
        rows.append([str(g.nvml_index), _num(g.cuda_index, none="hidden"), g.name or "?", g.compute_capability or "-",
                     mem, _num(g.gpu_util_pct, "{}%"), _num(g.mem_util_pct, "{}%"), _num(g.temperature_c, "{}C"),
                     power, clocks, _num(g.fan_pct, "{}%"), g.pci_bus_id or "-"])
    lines.append(_table(rows, ["NVML", "CUDA", "NAME", "CC", "MEM USED/TOTAL MiB", "GPU", "MEM", "TEMP",
                               "POWER/LIMIT W", "SM/MEM MHz", "FAN", "PCI BUS"]))
    procs = [[str(g.nvml_index), _num(g.cuda_index, none="hidden"), str(p.pid), p.name or "?", _num(p.used_mib),
              p.profile or "-", _num(p.cuda_index, "CUDA{}", none="-"), p.instance_id or "(not llama-pilot)"]
             for g in report.gpus for p in g.processes]
    if procs:
        lines.append("")
        lines.append(_table(procs, ["NVML", "CUDA", "PID", "PROCESS", "MiB", "PROFILE", "IN INSTANCE", "INSTANCE"]))
    else:
        lines.append("\nno processes on the GPUs")
    order = {"cuda-driver": "as the CUDA driver enumerates them", "pci-bus-id": "PCI bus order, exact",
             "heuristic": "estimated (compute capability, cores, bus); set CUDA_DEVICE_ORDER=PCI_BUS_ID to be sure"}
    lines.append(f"\ndriver {report.driver_version or '?'}, CUDA {report.cuda_driver_version or '?'}; "
                 f"CUDA index: CUDA_DEVICE_ORDER={report.cuda_device_order}"
                 + (f", CUDA_VISIBLE_DEVICES={report.cuda_visible_devices}" if report.cuda_visible_devices is not None else "")
                 + f" ({order.get(report.cuda_order_source or '', 'unknown')})")
    if report.reason:
        lines.append(f"note: {report.reason}")
    return "\n".join(lines)


@cli.command("gpu")
@json_option
@watch_option
def gpu_cmd(as_json: bool, watch_s: float | None) -> None:
    """GPUs (NVML and CUDA index, memory, load, power, clocks) and who holds memory on them."""
    from mcp_server.monitoring.gpu import read_gpus

    def render(pretty: bool) -> None:
        report = read_gpus()
        if as_json:
            click.echo(report.model_dump_json(indent=2 if pretty else None))
        else:
            click.echo(_gpu_text(report))

    _watch(render, watch_s, as_json)


def _stats_text(stats: Any) -> str:
    cores = " ".join(f"{p:.0f}" for p in stats.per_core_pct)
    load = " ".join(f"{x:.2f}" for x in stats.load_avg) or "-"
    lines = [f"CPU {stats.cpu_pct:.1f}% of {stats.cpu_count} cores (over {_num(stats.interval_s, '{:.1f}')} s), "
             f"load {load}",
             f"per core %: {cores}",
             f"RAM {stats.ram_used_mib:.0f} MiB used of {stats.ram_total_mib:.0f}, {stats.ram_available_mib:.0f} available; "
             f"swap {stats.swap_used_mib:.0f} of {stats.swap_total_mib:.0f} MiB"]
    if stats.instances:
        rows = [[i.profile, i.backend, i.status, _num(i.pid), _num(i.rss_mib, "{:.0f}"), _num(i.cpu_pct, "{:.1f}"),
                 _num(i.threads), _num(i.container_mem_mib, "{:.0f}"), _num(i.container_cpu_pct, "{:.1f}"), i.note or ""]
                for i in stats.instances]
        lines += ["", _table(rows, ["PROFILE", "BACKEND", "STATUS", "PID", "RSS MiB", "CPU%", "THREADS",
                                    "CTR MiB", "CTR CPU%", ""])]
    else:
        lines.append("\nno llama-pilot instance running")
    return "\n".join(lines)


@cli.command("stats")
@json_option
@watch_option
def stats_cmd(as_json: bool, watch_s: float | None) -> None:
    """Host CPU (total, per core), load, RAM and swap, and each running instance's RSS and CPU."""
    from mcp_server.monitoring.system import StatsState, read_system

    state = StatsState()

    def render(pretty: bool) -> None:
        stats = read_system(sampler_state=state)
        if as_json:
            click.echo(stats.model_dump_json(indent=2 if pretty else None))
        else:
            click.echo(_stats_text(stats))

    _watch(render, watch_s, as_json)


@cli.command("dashboard")
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              help="models.conf to use (same as the option before the command).")
@click.option("--interval", "interval_s", type=click.FloatRange(min=0.1), default=1.0, show_default=True,
              help="Seconds between GPU/system samples and status checks.")
@click.pass_context
def dashboard_cmd(ctx: click.Context, config_path: str | None, interval_s: float) -> None:
    """Live terminal dashboard: the model, GPUs, system, server log; pick, switch, stop (needs the tui extra)."""
    try:
        import textual  # noqa: F401
    except ImportError:
        click.echo("The dashboard needs Textual: pip install 'llama-pilot[tui]'", err=True)
        sys.exit(1)
    from mcp_server.dashboard.app import run_dashboard
    from mcp_server.profiles.config import load_config

    with cli_errors():
        farewell = run_dashboard(load_config(config_path or ctx.obj["config"]), interval_s=interval_s)
    if farewell:
        click.echo(farewell)


# --- benchmarks (the commands live in mcp_server/bench/cli.py) --------------------------------

from mcp_server.cli.bench import bench as _bench_group  # noqa: E402

cli.add_command(_bench_group)


# The MCP tool names as commands too (hidden from --help), so a tool name always works on the
# command line: `llama-pilot start-model demo` is `llama-pilot start demo`.
TOOL_ALIASES = {"list-models": "list", "get-model": "show", "lint-models": "lint", "create-model": "create",
                "retire-model": "retire", "start-model": "start", "stop-model": "stop", "switch-model": "switch",
                "tail-logs": "logs", "gpu-stats": "gpu", "system-stats": "stats", "estimate-fit": "estimate",
                "plan-placement": "plan", "build-engine": "engine build"}


def _add_aliases() -> None:
    import copy

    for alias, path in TOOL_ALIASES.items():
        command: Any = cli
        for name in path.split():
            command = command.commands[name]
        command = copy.copy(command)
        command.hidden = True
        cli.add_command(command, alias)


_add_aliases()


def main(argv: list[str] | None = None) -> None:
    cli.main(args=argv, prog_name="llama-pilot")


if __name__ == "__main__":
    main()
