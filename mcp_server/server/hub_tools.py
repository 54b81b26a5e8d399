"""Hugging Face: search_models, list_quants, check_fit (read-only; the hub is the open world)."""

from __future__ import annotations

from typing import Annotated

from mcp.server import MCPServer
from pydantic import Field

from mcp_server.hub.client import REPO_RE, SearchResult
from mcp_server.hub.fit import RemoteFit
from mcp_server.hub.quants import RepoQuants
from mcp_server.server.conventions import GpuSizes, KvCacheType, Slots, _hints, in_thread

HUB_READS = _hints(read_only=True, destructive=False, idempotent=True, open_world=True)
_REPO = REPO_RE.pattern.strip("^$")
RepoSpec = Annotated[str, Field(pattern=rf"^{_REPO}(@[A-Za-z0-9._/-]{{1,200}})?$",
                                description="a Hugging Face repo id, owner/name, optionally @revision")]
FitSpec = Annotated[str, Field(pattern=rf"^{_REPO}(@[A-Za-z0-9._/-]{{1,200}})?(:[A-Za-z0-9_.-]{{1,64}})?$",
                               description="owner/name[@revision][:QUANT]; without a quant every quant is checked")]


def register(mcp: MCPServer) -> None:
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
