"""Model files and memory: inspect-model-file, list-model-files, estimate-fit, plan-placement, calibrate."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from mcp_server.cli.common import (cli_errors, config_of, config_or_none, dry_run_option, emit_json, json_option,
                                   parse_assignments, render_edit, table)

@click.command("inspect-model-file")
@click.argument("path")
@click.option("--tensors", "show_tensors", is_flag=True, help="List every tensor.")
@json_option
@click.pass_context
def inspect_model_file_cmd(ctx: click.Context, path: str, show_tensors: bool, as_json: bool) -> None:
    """Inspect a GGUF from its headers (every shard): layout, experts, attention, sizes by kind.

    PATH is a file (absolute or relative to here) or a path under MODELS_DIR, as MCP's inspect_model_file takes."""
    from mcp_server.model_files.local import inspect_model_file

    with cli_errors():
        info = inspect_model_file(config_or_none(ctx), path, tensors=show_tensors, agent=False)
    if as_json:
        return emit_json(info)
    _print_inspection(info, path, show_tensors)


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
    click.echo(table(rows, ["KIND", "GiB"]))
    if show_tensors:
        click.echo(table([[t.name, t.type, "x".join(map(str, t.shape)), str(t.bytes)] for t in info.tensors],
                          ["TENSOR", "TYPE", "SHAPE", "BYTES"]))


def _device_rows(devices: list[Any]) -> str:
    rows = [[d.device, f"{d.weights_mib:.0f}", f"{d.kv_cache_mib:.0f}", f"{d.recurrent_mib:.0f}",
             f"{d.compute_mib:.0f}", f"{d.overhead_mib:.0f}", f"{d.total_mib:.0f} ±{d.uncertainty_mib:.0f}",
             f"{d.capacity_mib:.0f}" if d.capacity_mib else "",
             "yes" if d.fits else ("NO" if d.fits is False else "")] for d in devices]
    return table(rows, ["DEVICE", "WEIGHTS", "KV", "RECURRENT", "COMPUTE", "OVERHEAD", "TOTAL MiB", "SIZE", "FITS"])


def _inventory_line(inv: Any) -> str:
    if not inv.gpus:
        return f"GPUs: none{f' ({inv.note})' if inv.note else ''}: CPU only"
    return "GPUs (" + inv.source + "): " + ", ".join(
        f"{g.device} {g.name + ' ' if g.name else ''}{g.free_mib:.0f} MiB free" for g in inv.gpus)


@click.command("estimate-fit")
@click.argument("profile", required=False)
@click.option("--model", help="A model file under MODELS_DIR: estimate it as a draft profile (nothing is written).")
@click.option("--set", "assignments", multiple=True, metavar="KEY=VALUE",
              help="A draft setting on top of the profile (repeatable), e.g. --set CTX_SIZE=32768.")
@click.option("--gpus", help="Declared GPU sizes, e.g. 24GiB,16GiB, or 'none' (default: the GPUs NVML sees).")
@click.option("--oracle", is_flag=True, help="Also ask llama-fit-params (llama.cpp's dry run) and show both.")
@click.option("--no-fit", "no_fit", is_flag=True, help="Do not replay llama-server's --fit.")
@json_option
@click.pass_context
def estimate_fit_cmd(ctx: click.Context, profile: str | None, model: str | None, assignments: tuple[str, ...],
                     gpus: str | None, oracle: bool, no_fit: bool, as_json: bool) -> None:
    """Predict per-device memory for PROFILE (or a --model file, or --set changes): weights, KV, compute, fits or not."""
    from mcp_server.placement.operations import estimate_fit

    if profile is None and model is None:
        raise click.UsageError("give a PROFILE, or --model FILE to estimate a model file before its profile exists")
    with cli_errors():
        result = estimate_fit(config_of(ctx), profile, gpus, oracle=oracle, replay_fit=not no_fit, model=model,
                              values=parse_assignments(assignments))
    if as_json:
        return emit_json(result)
    est = result.estimate
    if result.draft:
        click.echo(f"draft [{result.profile}] (not written): " + " ".join(f"{k}={v}" for k, v in result.changes.items()))
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
        click.echo(table(rows, ["DEVICE", "PREDICTED", "LOGGED", "NVML", "ERROR"]))
    if result.oracle:
        rows = [[dev, str(v["model"]), str(v["context"]), str(v["compute"])] for dev, v in result.oracle.items()]
        click.echo("llama-fit-params (llama.cpp's own dry run, MiB):")
        click.echo(table(rows, ["DEVICE", "MODEL", "CONTEXT", "COMPUTE"]))


@click.command("plan-placement")
@click.argument("model")
@click.option("--ctx", "n_ctx", type=click.IntRange(0), default=0, show_default=True, help="Context tokens (0: training context).")
@click.option("--gpus", help="Declared GPU sizes, e.g. 24GiB,16GiB (default: free memory NVML sees now).")
@click.option("--kv", "kv_type", default="f16", show_default=True, help="KV cache type (f16, q8_0, q4_0, ...).")
@click.option("--slots", type=click.IntRange(1), default=1, show_default=True, help="Parallel requests.")
@click.option("--reserve", "reserve_mib", type=click.FloatRange(0), default=384, show_default=True,
              help="MiB to keep free per GPU beyond the estimate.")
@click.option("--workers", help="Also place on these RPC workers' devices (comma separated ids from list-workers).")
@json_option
@click.pass_context
def plan_placement_cmd(ctx: click.Context, model: str, n_ctx: int, gpus: str | None, kv_type: str, slots: int,
                       reserve_mib: float, workers: str | None, as_json: bool) -> None:
    """Propose placement settings for a GGUF MODEL file on the GPUs (writes nothing: apply-placement does).

    MODEL is a file (absolute or relative to here) or a path under MODELS_DIR."""
    from mcp_server.placement.operations import plan_placement

    with cli_errors():
        result = plan_placement(config_or_none(ctx), model, n_ctx, gpus, kv_type=kv_type, slots=slots,
                                reserve_mib=reserve_mib, agent=False,
                                workers=[w.strip() for w in workers.split(",")] if workers else None)
    _render_plan(result, as_json)


@click.command("apply-placement")
@click.argument("profile")
@click.option("--model", help="Plan this file instead of the profile's MODEL, and point MODEL at it (the diff shows it).")
@click.option("--ctx", "n_ctx", type=click.IntRange(0), help="Context tokens (default: the profile's CTX_SIZE).")
@click.option("--gpus", help="Declared GPU sizes, e.g. 24GiB,16GiB (default: free memory NVML sees now).")
@click.option("--kv", "kv_type", help="KV cache type (default: the profile's KV_CACHE_TYPE_K, else f16).")
@click.option("--slots", type=click.IntRange(1), help="Parallel requests (default: the profile's PARALLEL, else 1).")
@click.option("--reserve", "reserve_mib", type=click.FloatRange(0), default=384, show_default=True,
              help="MiB to keep free per GPU beyond the estimate.")
@dry_run_option
@json_option
@click.pass_context
def apply_placement_cmd(ctx: click.Context, profile: str, model: str | None, n_ctx: int | None, gpus: str | None,
                        kv_type: str | None, slots: int | None, reserve_mib: float, dry_run: bool,
                        as_json: bool) -> None:
    """Plan placement for PROFILE's model file and write the settings into PROFILE (one edit, diff shown)."""
    from mcp_server.placement.operations import apply_placement

    with cli_errors():
        result = apply_placement(config_of(ctx), profile, model, n_ctx, gpus, kv_type=kv_type, slots=slots,
                                 reserve_mib=reserve_mib, dry_run=dry_run, agent=False)
    _render_plan(result, as_json)


def _render_plan(result, as_json: bool) -> None:  # type: ignore[no-untyped-def]
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
        render_edit(result.edit, False)


@click.command("calibrate")
@click.argument("profile")
@click.option("--note", help="Free text stored with the measurement.")
@json_option
@click.pass_context
def calibrate_cmd(ctx: click.Context, profile: str, note: str | None, as_json: bool) -> None:
    """Measure running PROFILE (llama.cpp's log, NVML) against the estimate; later estimates use it."""
    from mcp_server.placement.operations import calibrate

    with cli_errors():
        m = calibrate(config_of(ctx), profile, note)
    if as_json:
        return emit_json(m)
    rows = [[d.device, f"{d.predicted_mib:.0f}" if d.predicted_mib is not None else "",
             f"{d.logged_mib:.0f}" if d.logged_mib is not None else "",
             f"{d.nvml_mib:.0f}" if d.nvml_mib is not None else "",
             f"{d.unaccounted_mib:.0f}" if d.unaccounted_mib is not None else "",
             f"{d.error_mib:+.0f}" if d.error_mib is not None else ""] for d in m.devices]
    click.echo(table(rows, ["DEVICE", "PREDICTED", "LOGGED", "NVML", "UNACCOUNTED", "ERROR"]))
    if m.note:
        click.echo(f"note: {m.note}")


@click.command("promote-model-card")
@click.argument("name")
@dry_run_option
@json_option
@click.pass_context
def promote_model_card_cmd(ctx: click.Context, name: str, dry_run: bool, as_json: bool) -> None:
    """Move documentation/CANDIDATES/NAME.md up to documentation/ (never overwrites a card)."""
    from mcp_server.model_files.cards import promote_model_card

    with cli_errors():
        result = promote_model_card(config_of(ctx), name, dry_run=dry_run)
    if as_json:
        return emit_json(result)
    click.echo(f"{'would move' if dry_run else 'moved'} {result.source} -> {result.target}")


@click.command("list-model-files")
@json_option
@click.pass_context
def list_model_files_cmd(ctx: click.Context, as_json: bool) -> None:
    """Every GGUF under MODELS_DIR: path for MODEL=, size, shards, architecture, quantization, users."""
    from mcp_server.model_files.local import list_model_files

    with cli_errors():
        listed = list_model_files(config_of(ctx))
    if as_json:
        return emit_json(listed)
    rows = [[m.path, f"{m.size_bytes / 1024**3:.2f}", f"{m.shards_present}/{m.shards}", m.architecture or "?",
             m.quantization or "?", m.kind, ", ".join(m.used_by) or "-"] for m in listed.files]
    click.echo(table(rows, ["PATH", "GiB", "SHARDS", "ARCH", "QUANT", "KIND", "PROFILES"]) if rows
               else f"no .gguf files under {listed.models_dir}")


# The commands this module adds to `llama-pilot` (cli.main loads the module when one is called).
COMMANDS: dict[str, click.Command] = {
    inspect_model_file_cmd.name: inspect_model_file_cmd,
    estimate_fit_cmd.name: estimate_fit_cmd,
    plan_placement_cmd.name: plan_placement_cmd,
    apply_placement_cmd.name: apply_placement_cmd,
    calibrate_cmd.name: calibrate_cmd,
    list_model_files_cmd.name: list_model_files_cmd,
    promote_model_card_cmd.name: promote_model_card_cmd,
}
