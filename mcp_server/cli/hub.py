"""The hub: search-models, list-quants, check-fit, download-model (also `hub search`, `quants`, `fit`,
`download`). download-model has no MCP tool yet (it will be a background job)."""

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


@click.command("download-model")
@click.argument("spec", metavar="REPO[@REVISION]:QUANT")
@click.option("--to", "to", type=click.Path(file_okay=False), help="Models folder (default: MODELS_DIR of models.conf).")
@json_option
@click.pass_context
def download_model_cmd(ctx: click.Context, spec: str, to: str | None, as_json: bool) -> None:
    """Download one quant set into MODELS_DIR/OWNER/REPO/: resumable (run it again after a cut or a kill),
    one writer per file, each file checked against the hub's sha256, disk space checked first."""
    from pathlib import Path

    from mcp_server.cli.common import config_or_none
    from mcp_server.hub.download import download_model

    def show(p):  # type: ignore[no-untyped-def]
        eta = f", {p.eta_s:.0f} s left" if p.eta_s is not None else ""
        click.echo(f"\r  {p.file}: {p.done_bytes / 2**20:,.0f} / {p.total_bytes / 2**20:,.0f} MiB, "
                   f"{p.rate_bps / 2**20:.1f} MiB/s{eta}   ", nl=False, err=True)

    with cli_errors():
        if to is None:
            config = config_or_none(ctx)
            if config is None:
                raise click.UsageError("no models.conf here: give --to DIR")
            to = config.host.models_dir
        result = download_model(spec, Path(to), progress=None if as_json else show)
    if as_json:
        return emit_json(result)
    click.echo("", err=True)
    for f in result.files:
        how = "already there" if f.fetched_bytes == 0 else (f"continued from {f.resumed_from:,} bytes" if f.resumed_from
                                                            else "fetched")
        click.echo(f"{f.path}: {_gib(f.size)}, {how}{', sha256 ok' if f.verified else ''}"
                   f"{' (fetched again after a bad sha256)' if f.refetched else ''}")
    click.echo(f"MODEL={result.model}  ({result.fetched_bytes / 2**20:,.0f} MiB in {result.seconds:.1f} s)")


@click.group("hub")
def hub_group() -> None:
    """Hugging Face: search, list quants, check fit before downloading."""


hub_group.add_command(search_models_cmd, "search")
hub_group.add_command(list_quants_cmd, "quants")
hub_group.add_command(check_fit_cmd, "fit")
hub_group.add_command(download_model_cmd, "download")

COMMANDS = {"search-models": search_models_cmd, "list-quants": list_quants_cmd, "check-fit": check_fit_cmd,
            "download-model": download_model_cmd, "hub": hub_group}
