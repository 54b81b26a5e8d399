"""The hub: search-models, list-quants, check-fit, download-model, draft-hub-profile (also `hub search`,
`quants`, `fit`, `draft`), and `hub download`, the download in the foreground with a progress bar."""

from __future__ import annotations

import click

from mcp_server.cli.common import cli_errors, emit_json, json_option, table


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB"


@click.command("search-models")
@click.argument("query")
@click.option("--limit", type=click.IntRange(1, 100), default=20, show_default=True)
@json_option
def search_models_cmd(query: str, limit: int, as_json: bool) -> None:
    """GGUF repos on Hugging Face matching QUERY, most downloaded first (HF_ENDPOINT, HF_TOKEN apply)."""
    from mcp_server.hub.client import search_models

    with cli_errors():
        result = search_models(query, limit)
    if as_json:
        return emit_json(result)
    rows = [[h.repo, str(h.downloads or 0), (h.updated or "")[:10]] for h in result.repos]
    click.echo(table(rows, ["REPO", "DOWNLOADS", "UPDATED"]) if rows else f"nothing on {result.endpoint} for {query!r}")


@click.command("list-quants")
@click.argument("repo")
@json_option
def list_quants_cmd(repo: str, as_json: bool) -> None:
    """Every GGUF of REPO[@REVISION], grouped into quant and shard sets, with sizes; mmproj, imatrix and
    draft files marked; the model card named."""
    from mcp_server.hub.quants import list_quants

    with cli_errors():
        result = list_quants(repo)
    if as_json:
        return emit_json(result)
    rows = [[s.tag, s.kind, _gib(s.total_bytes), str(s.shards), ("missing " + ", ".join(s.missing)) if s.missing
             else ""] for s in result.sets]
    click.echo(f"{result.repo}@{result.revision} ({(result.commit or '')[:12]}); card: {result.card or 'none'}")
    click.echo(table(rows, ["QUANT", "KIND", "SIZE", "FILES", ""]))


@click.command("check-fit")
@click.argument("spec", metavar="REPO[@REVISION][:QUANT]")
@click.option("--ctx", type=click.IntRange(0, 1 << 24), default=0, help="Context tokens (0: the model's training context).")
@click.option("--gpus", help="GPU sizes such as 24GiB,16GiB (default: the GPUs NVML sees; 'none' for CPU only).")
@click.option("--kv", "kv_type", default="f16", show_default=True, help="KV cache type.")
@click.option("--slots", type=click.IntRange(1, 64), default=1, show_default=True)
@json_option
def check_fit_cmd(spec: str, ctx: int, gpus: str | None, kv_type: str, slots: int, as_json: bool) -> None:
    """Which quant fits, before downloading: each shard's GGUF header is read over HTTP Range and planned."""
    from mcp_server.hub.fit import check_fit

    with cli_errors():
        result = check_fit(spec, ctx, gpus, kv_type=kv_type, slots=slots)
    if as_json:
        return emit_json(result)
    rows = []
    for q in result.quants:
        where = ", ".join(f"{m / 1024:.1f}" for m in q.gpu_mib) or "-"
        verdict = q.error or ("fits" if q.fits else "does not fit")
        rows.append([q.tag, _gib(q.total_bytes), verdict, q.strategy or "-", where,
                     f"{(q.host_mib or 0) / 1024:.1f}", "; ".join(q.traded)])
    click.echo(f"{result.repo} at {result.ctx or 'training'} context on GPUs of "
               f"{', '.join(f'{g / 1024:.1f}' for g in result.gpus) or 'none'} GiB free")
    click.echo(table(rows, ["QUANT", "SIZE", "", "PLACEMENT", "GPU GiB", "RAM GiB", "TRADED"]))
    click.echo(f"read {result.header_bytes / 2**20:.1f} MiB of headers for {_gib(result.model_bytes)} of model in "
               f"{result.seconds:.1f} s; recommended: {result.recommended or 'none'}")
    for line in result.advice:
        click.echo(f"  {line}")


def _bar(p) -> str:  # type: ignore[no-untyped-def]
    """One progress line: the set's bytes, a bar, the rate and the time left."""
    share = p.set_done_bytes / p.set_total_bytes if p.set_total_bytes else 1.0
    filled = int(share * 24)
    eta = f", {p.eta_s / 60:.0f} min left" if p.eta_s is not None and p.eta_s >= 60 else (
        f", {p.eta_s:.0f} s left" if p.eta_s is not None else "")
    return (f"\r[{'#' * filled}{'.' * (24 - filled)}] {share:6.1%} {p.set_done_bytes / 2**30:,.2f} / "
            f"{p.set_total_bytes / 2**30:,.2f} GiB, {p.rate_bps / 2**20:.1f} MiB/s{eta}  {p.file.rsplit('/', 1)[-1]}   ")


def _models_dir(ctx: click.Context, to: str | None) -> str:
    from mcp_server.cli.common import config_or_none

    if to is not None:
        return to
    config = config_or_none(ctx)
    if config is None:
        raise click.UsageError("no models.conf here: give --to DIR")
    return config.host.models_dir


@click.command("hub-download")
@click.argument("spec", metavar="REPO[@REVISION]:QUANT")
@click.option("--to", "to", type=click.Path(file_okay=False), help="Models folder (default: MODELS_DIR of models.conf).")
@click.option("--background", is_flag=True, help="Start it as a background job instead (as download-model does).")
@json_option
@click.pass_context
def hub_download_cmd(ctx: click.Context, spec: str, to: str | None, background: bool, as_json: bool) -> None:
    """Download one quant set into MODELS_DIR/OWNER/REPO/ here, with a progress bar: resumable (run it
    again after a cut, Ctrl-C or a kill), one writer per file, each file checked against the hub's sha256,
    disk space checked first."""
    from pathlib import Path

    from mcp_server.hub.download import download_quant

    if background:
        return ctx.invoke(download_model_cmd, spec=spec, as_json=as_json)
    with cli_errors():
        folder = _models_dir(ctx, to)
        show = None if as_json else (lambda p: click.echo(_bar(p), nl=False, err=True))
        try:
            result = download_quant(spec, Path(folder), progress=show)
        finally:
            if show:
                click.echo("", err=True)
    if as_json:
        return emit_json(result)
    for f in result.files:
        how = "already there" if f.fetched_bytes == 0 else (f"continued from {f.resumed_from:,} bytes" if f.resumed_from
                                                            else "fetched")
        click.echo(f"{f.path}: {_gib(f.size)}, {how}{', sha256 ok' if f.verified else ''}"
                   f"{' (fetched again after a bad sha256)' if f.refetched else ''}")
    click.echo(f"MODEL={result.model}  ({result.fetched_bytes / 2**20:,.0f} MiB in {result.seconds:.1f} s)")
    click.echo(f"next: llama-pilot draft-hub-profile {spec} --dry-run")


@click.command("download-model")
@click.argument("spec", metavar="REPO[@REVISION]:QUANT")
@json_option
@click.pass_context
def download_model_cmd(ctx: click.Context, spec: str, as_json: bool) -> None:
    """Start downloading one quant set into MODELS_DIR as a background job (follow it with get-job, stop
    it with cancel-job; a cancelled download continues where it stopped). `hub download` does it here."""
    from mcp_server.cli.common import config_of
    from mcp_server.hub.download import download_model

    with cli_errors():
        job = download_model(config_of(ctx), spec)
    if as_json:
        return emit_json(job)
    click.echo(f"started job {job.id} (log: {job.log_path}); follow it with `llama-pilot get-job {job.id}`")


@click.command("draft-hub-profile")
@click.argument("spec", metavar="REPO[@REVISION]:QUANT")
@click.option("--profile", "profile_id", help="The new profile's id (default: from the repo name and quant).")
@click.option("--ctx", "n_ctx", type=click.IntRange(0, 1 << 24), default=0,
              help="Context tokens (0: the model's training context).")
@click.option("--gpus", help="GPU sizes such as 24GiB,16GiB (default: the GPUs NVML sees; 'none' for CPU only).")
@click.option("--kv", "kv_type", default="f16", show_default=True, help="KV cache type.")
@click.option("--slots", type=click.IntRange(1, 64), default=1, show_default=True)
@click.option("--dry-run/--write", default=True, show_default=True,
              help="Show the diff only (default), or add the profile and save the card.")
@json_option
@click.pass_context
def draft_hub_profile_cmd(ctx: click.Context, spec: str, profile_id: str | None, n_ctx: int, gpus: str | None,
                          kv_type: str, slots: int, dry_run: bool, as_json: bool) -> None:
    """Draft the profile for a hub quant: MODEL where the download puts it, the planner's settings, the card's
    samplers, and `# NOT YET TESTED`; a diff (--write adds it and saves the card under documentation/CANDIDATES/)."""
    from mcp_server.cli.common import config_of
    from mcp_server.hub.draft import draft_hub_profile

    with cli_errors():
        result = draft_hub_profile(config_of(ctx), spec, profile_id, n_ctx, gpus, kv_type=kv_type, slots=slots,
                                   dry_run=dry_run)
    if as_json:
        return emit_json(result)
    click.echo(result.edit.diff.rstrip() or "(no change)")
    for hint in result.samplers:
        click.echo(f"  {hint.key}={hint.value}  <- card: {hint.line}")
    click.echo(f"placement from the {result.plan_from}; fits: {result.fits}")
    if result.edit.dry_run:
        click.echo(f"dry run: nothing written; --write adds [{result.profile}]"
                   + (f" and saves the card as {result.card}" if result.card else ""))
    else:
        click.echo(f"added [{result.profile}]" + (f"; card saved as {result.card}" if result.card_saved else ""))


@click.group("hub")
def hub_group() -> None:
    """Hugging Face: search, list quants, check fit before downloading, download, draft the profile."""


hub_group.add_command(search_models_cmd, "search")
hub_group.add_command(list_quants_cmd, "quants")
hub_group.add_command(check_fit_cmd, "fit")
hub_group.add_command(hub_download_cmd, "download")
hub_group.add_command(draft_hub_profile_cmd, "draft")

COMMANDS = {"search-models": search_models_cmd, "list-quants": list_quants_cmd, "check-fit": check_fit_cmd,
            "download-model": download_model_cmd, "draft-hub-profile": draft_hub_profile_cmd, "hub": hub_group}
