"""The machine and llama-pilot itself: gpu-stats, system-stats, dashboard, engine, build-engine, docker, setup, demo, install-claude."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from mcp_server.cli.common import cli_errors, config_of, emit_json, json_option, table
from mcp_server.errors import LlamaPilotError

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
        return "\n".join([f"no GPUs: {report.reason}"] + _workers_text(report))
    rows, lines = [], []
    for g in report.gpus:
        mem = f"{_num(g.memory_used_mib)}/{_num(g.memory_total_mib)}"
        power = f"{_num(g.power_w, '{:.0f}')}/{_num(g.power_limit_w, '{:.0f}')}"
        clocks = f"{_num(g.sm_clock_mhz)}/{_num(g.mem_clock_mhz)}"
        rows.append([str(g.nvml_index), _num(g.cuda_index, none="hidden"), g.name or "?", g.compute_capability or "-",
                     mem, _num(g.gpu_util_pct, "{}%"), _num(g.mem_util_pct, "{}%"), _num(g.temperature_c, "{}C"),
                     power, clocks, _num(g.fan_pct, "{}%"), g.pci_bus_id or "-"])
    lines.append(table(rows, ["NVML", "CUDA", "NAME", "CC", "MEM USED/TOTAL MiB", "GPU", "MEM", "TEMP",
                               "POWER/LIMIT W", "SM/MEM MHz", "FAN", "PCI BUS"]))
    procs = [[str(g.nvml_index), _num(g.cuda_index, none="hidden"), str(p.pid), p.name or "?", _num(p.used_mib),
              p.profile or "-", _num(p.cuda_index, "CUDA{}", none="-"), p.instance_id or "(not llama-pilot)"]
             for g in report.gpus for p in g.processes]
    if procs:
        lines.append("")
        lines.append(table(procs, ["NVML", "CUDA", "PID", "PROCESS", "MiB", "PROFILE", "IN INSTANCE", "INSTANCE"]))
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
    return "\n".join(lines + _workers_text(report))


def _workers_text(report: Any) -> list[str]:
    lines = ["\nworkers (RPC devices lent to this machine):"] if report.workers or report.worker_errors else []
    for d in report.workers:
        total = f" of {d.total_mib / 1024:.1f}" if d.total_mib else ""
        lines.append(f"  {d.worker}  {d.device}  {d.name} ({d.description or '?'})  {d.free_mib / 1024:.1f}{total} GiB free")
    lines += [f"  {e}" for e in report.worker_errors]
    return lines


@click.command("gpu-stats")
@json_option
@watch_option
@click.pass_context
def gpu_stats_cmd(ctx: click.Context, as_json: bool, watch_s: float | None) -> None:
    """GPUs (NVML and CUDA index, memory, load, power, clocks) and who holds memory on them; with
    RPC workers in models.conf, the devices they lend too."""
    from mcp_server.cli.common import config_or_none
    from mcp_server.workers.operations import gpu_stats_with_workers

    config = config_or_none(ctx)

    def render(pretty: bool) -> None:
        report = gpu_stats_with_workers(config)
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
        lines += ["", table(rows, ["PROFILE", "BACKEND", "STATUS", "PID", "RSS MiB", "CPU%", "THREADS",
                                    "CTR MiB", "CTR CPU%", ""])]
    else:
        lines.append("\nno llama-pilot instance running")
    return "\n".join(lines)


@click.command("system-stats")
@json_option
@watch_option
def system_stats_cmd(as_json: bool, watch_s: float | None) -> None:
    """Host CPU (total, per core), load, RAM and swap, and each running instance's RSS and CPU."""
    from mcp_server.monitoring.system import StatsState, system_stats

    state = StatsState()

    def render(pretty: bool) -> None:
        stats = system_stats(sampler_state=state)
        if as_json:
            click.echo(stats.model_dump_json(indent=2 if pretty else None))
        else:
            click.echo(_stats_text(stats))

    _watch(render, watch_s, as_json)


@click.command("dashboard")
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




@click.group()
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
            config_engine = config_of(ctx).host.engine
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


@click.group("docker")
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
            config = config_of(ctx)
            tag = tag or config.host.docker_image
            engine = config.host.engine
        except LlamaPilotError:
            pass  # no models.conf: defaults are fine
        from mcp_server.engine.binary import locate_engine

        image = build_local_image(tag or "llama-pilot/llama-server:cpu", engine_path=locate_engine(engine).path,
                                  force=force)
    click.echo(f"{tag or 'llama-pilot/llama-server:cpu'}: {image}")


@click.command("setup")
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


@click.command("demo")
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
    if result.mode == "completion":
        click.echo("(a base model without a chat template: it was asked to continue the text "
                   f"{result.sent!r}, so the answer is its continuation)", err=True)
    speed = f", {result.generation_tokens_per_s:.1f} t/s" if result.generation_tokens_per_s else ""
    click.echo(f"(ready in {result.ready_s:.1f} s, answered in {result.answer_s:.1f} s{speed}; "
               f"{result.total_s:.1f} s in all; server stopped)", err=True)





@click.command("install-claude")
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


# The commands this module adds to `llama-pilot` (cli.main loads the module when one is called).
COMMANDS: dict[str, click.Command] = {
    gpu_stats_cmd.name: gpu_stats_cmd,
    system_stats_cmd.name: system_stats_cmd,
    dashboard_cmd.name: dashboard_cmd,
    engine.name: engine,
    docker_group.name: docker_group,
    setup_cmd.name: setup_cmd,
    demo_cmd.name: demo_cmd,
    install_claude_cmd.name: install_claude_cmd,
    "build-engine": engine_build_cmd,  # `engine build` is its listed alias
}
