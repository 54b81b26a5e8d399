"""Hugging Face: search_models, list_quants, check_fit (read-only; the hub is the open world),
download_model (a background job) and draft_hub_profile (a models.conf edit, dry_run first).

No tool takes a URL or a path: a repo id, a quant from its listing, and the files the listing names
land under MODELS_DIR only."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from mcp.server import MCPServer
from pydantic import Field

from mcp_server.hub.client import REPO_RE, SearchResult
from mcp_server.hub.draft import HubDraft
from mcp_server.hub.fit import RemoteFit
from mcp_server.hub.quants import RepoQuants
from mcp_server.jobs import Job
from mcp_server.server.conventions import (EDITS, DryRun, GpuSizes, KvCacheType, ProfileIdStr, Slots, _hints,
                                           in_thread)

HUB_READS = _hints(read_only=True, destructive=False, idempotent=True, open_world=True)
_REPO = REPO_RE.pattern.strip("^$")
RepoSpec = Annotated[str, Field(pattern=rf"^{_REPO}(@[A-Za-z0-9._/-]{{1,200}})?$",
                                description="a Hugging Face repo id, owner/name, optionally @revision")]
FitSpec = Annotated[str, Field(pattern=rf"^{_REPO}(@[A-Za-z0-9._/-]{{1,200}})?(:[A-Za-z0-9_.-]{{1,64}})?$",
                               description="owner/name[@revision][:QUANT]; without a quant every quant is checked")]


QuantSpec = Annotated[str, Field(pattern=rf"^{_REPO}(@[A-Za-z0-9._/-]{{1,200}})?:[A-Za-z0-9_.-]{{1,64}}$",
                                 description="owner/name[@revision]:QUANT, the quant as list_quants names it")]
# Downloading writes files under MODELS_DIR and uses the network; running it twice continues the same files.
DOWNLOADS = _hints(read_only=False, destructive=False, idempotent=True, open_world=True)


def register(mcp: MCPServer, config_path: str | Path | None) -> None:
    @mcp.tool(annotations=HUB_READS)
    async def search_models(query: Annotated[str, Field(min_length=1, max_length=200,
                                                        description="words to search repo names for")],
                            limit: Annotated[int, Field(ge=1, le=100, description="most repos to return")] = 20
                            ) -> SearchResult:
        """Search Hugging Face for GGUF repos (most downloaded first, with the date each was updated). Then list_quants shows a repo's files; check_fit says which quant fits these GPUs before any download. HF_ENDPOINT and HF_TOKEN (gated repos) are honoured."""
        from mcp_server.hub.client import search_models as core

        return await in_thread(lambda: core(query, limit))

    @mcp.tool(annotations=HUB_READS)
    async def list_quants(repo: RepoSpec) -> RepoQuants:
        """Every GGUF file of a Hugging Face repo, grouped into quant sets (shards -00001-of-0000N together, with the total size of each set and any shard missing on the hub), with mmproj, imatrix and draft files marked and the model card named. Sizes only: check_fit reads the headers and plans placement."""
        from mcp_server.hub.quants import list_quants as core

        return await in_thread(lambda: core(repo))

    @mcp.tool(annotations=HUB_READS)
    async def check_fit(repo: FitSpec, ctx: Annotated[int, Field(ge=0, le=1 << 24, description=
                        "context tokens; 0 = the model's training context")] = 0,
                        gpus: GpuSizes = None, kv_type: KvCacheType = "f16", slots: Slots = 1) -> RemoteFit:
        """Which quant of a Hugging Face repo fits, before downloading: reads each shard's GGUF header over HTTP Range (a few MiB per shard, whatever the model's size) and runs the same estimate and planner as plan_placement does for a local file. Per quant: fits or not, placement (one GPU, split, experts on the CPU), GPU and RAM need, what was traded; plus a recommended quant (largest that fits, UD preferred) and advice."""
        from mcp_server.hub.fit import check_fit as core

        return await in_thread(lambda: core(repo, ctx, gpus, kv_type=kv_type, slots=slots))

    @mcp.tool(annotations=DOWNLOADS)
    async def download_model(repo: QuantSpec) -> Job:
        """Start downloading one quant set (every shard) from Hugging Face into MODELS_DIR/<owner>/<repo>/ as a background job and return the job at once; the repo, the quant, every shard and the free disk space are checked first. Poll get_job: progress is bytes done/total with rate and time left; the result gives MODEL, the value for the profile. cancel_job stops it, and the partial file is kept: a later download_model continues from it. Each file is verified against the hub's sha256 (a bad one is fetched again). Check the fit with check_fit first, and ask the user before a large download."""
        from mcp_server.hub.download import download_model as core
        from mcp_server.profiles.config import load_config

        return await in_thread(lambda: core(load_config(config_path), repo))

    @mcp.tool(annotations=EDITS)
    async def draft_hub_profile(repo: QuantSpec, profile: Annotated[ProfileIdStr | None, Field(
                                    description="the new profile's id (default: from the repo name and quant)")] = None,
                                ctx: Annotated[int, Field(ge=0, le=1 << 24, description=
                                               "context tokens; 0 = the model's training context")] = 0,
                                gpus: GpuSizes = None, kv_type: KvCacheType = "f16", slots: Slots = 1,
                                dry_run: DryRun = True) -> HubDraft:
        """Draft the profile for a Hugging Face quant: MODEL where download_model puts it, the planner's placement settings (from the downloaded file, or from the hub's headers before the download), the sampler defaults the model card recommends (each with the card line it came from), and a comment block ending in NOT YET TESTED. Returns the diff; dry_run (the default) writes nothing. Without dry_run it adds the profile and saves the card as documentation/CANDIDATES/<repo name>.md (never over an existing card). Then lint_profiles, start_model, test_completion."""
        from mcp_server.hub.draft import draft_hub_profile as core
        from mcp_server.profiles.config import load_config

        return await in_thread(lambda: core(load_config(config_path), repo, profile, ctx, gpus, kv_type=kv_type,
                                            slots=slots, dry_run=dry_run, agent=True))
