"""estimate_fit and plan_placement through the SDK's in-memory client."""

from __future__ import annotations

import pytest
from mcp import Client

from mcp_server.server.app import build_server
from mcp_server.model_files.synthetic import MoeShape, write_sparse_moe

pytestmark = pytest.mark.anyio

SHAPE = MoeShape(n_layer=48, n_embd=2048, n_head=32, n_head_kv=4, head_dim=128, n_expert=128, n_expert_used=8,
                 n_ff_expert=768, n_ctx_train=32768, n_vocab=151936)



@pytest.fixture
def project(write_conf):
    conf = write_conf("[global]\nMODELS_DIR=models\n\n[moe]\nMODEL=Qwen/moe-00001-of-00002.gguf\nCTX_SIZE=16384\n"
                      "PARALLEL=1\nFIT=off\n")
    write_sparse_moe(conf.parent / "models" / "Qwen" / "moe", SHAPE, n_shards=2)
    return conf


async def test_estimate_fit_and_plan_placement(project):
    async with Client(build_server(project), raise_exceptions=True) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
        assert tools["estimate_fit"].annotations.read_only_hint is True and tools["estimate_fit"].output_schema
        assert tools["plan_placement"].annotations.read_only_hint is True
        assert tools["apply_placement"].annotations.destructive_hint is True
        est = (await client.call_tool("estimate_fit", {"profile": "moe", "gpus": "16GiB"})).structured_content
        cuda0 = est["estimate"]["devices"][0]
        assert cuda0["device"] == "CUDA0" and cuda0["fits"] is False and cuda0["weights_mib"] > 16000
        before = project.read_text()
        planned = (await client.call_tool("apply_placement", {
            "profile": "moe", "ctx": 16384, "gpus": "16GiB", "dry_run": True})).structured_content
        assert planned["plan"]["strategy"] == "moe-experts-cpu"
        assert "+OVERRIDE_TENSORS=" in planned["edit"]["diff"] and project.read_text() == before
        read_only = (await client.call_tool("plan_placement", {"model": "Qwen/moe-00001-of-00002.gguf", "ctx": 16384,
                                                               "gpus": "16GiB"})).structured_content
        assert read_only["edit"] is None and project.read_text() == before
        assert read_only["plan"]["settings"] == planned["plan"]["settings"]
        await client.call_tool("apply_placement", {"profile": "moe", "ctx": 16384, "gpus": "16GiB"})
        after = (await client.call_tool("estimate_fit", {"profile": "moe", "gpus": "16GiB"})).structured_content
        assert after["estimate"]["devices"][0]["fits"] is True


async def test_placement_refusals(project):
    async with Client(build_server(project)) as client:
        escape = await client.call_tool("plan_placement", {"model": "../../etc/passwd"})
        assert escape.is_error and "'..'" in escape.content[0].text
        absolute = await client.call_tool("plan_placement", {"model": "/etc/passwd"})
        assert absolute.is_error and "relative to MODELS_DIR" in absolute.content[0].text
        sizes = await client.call_tool("estimate_fit", {"profile": "moe", "gpus": "24GiB,lots"})
        assert sizes.is_error and "'lots' is not a size" in sizes.content[0].text
        missing = await client.call_tool("estimate_fit", {"profile": "nope", "gpus": "8GiB"})
        assert missing.is_error and "nope" in missing.content[0].text
        idle = await client.call_tool("calibrate", {"profile": "moe"})
        assert idle.is_error and "not running" in idle.content[0].text
        unknown = await client.call_tool("apply_placement", {"profile": "nope", "gpus": "8GiB"})
        assert unknown.is_error and "nope" in unknown.content[0].text
