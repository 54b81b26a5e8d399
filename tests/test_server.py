"""The MCP front door, through the SDK's in-memory client and once over real stdio."""

from __future__ import annotations

import os
import sys

import pytest
from mcp import Client, StdioServerParameters

from mcp_server.server.app import build_server

pytestmark = pytest.mark.anyio

CONF = "[global]\nMODELS_DIR=models\n\n[alpha]\nNAME=Alpha\nMODEL=a.gguf\nCTX_SIZE=8192\n"



async def test_list_and_get_model_have_structured_output(write_conf):
    conf = write_conf(CONF)
    async with Client(build_server(conf), raise_exceptions=True) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
        assert {"list_profiles", "get_profile", "lint_profiles"} <= set(tools)
        assert all(t.output_schema for t in tools.values())
        assert tools["list_profiles"].annotations.read_only_hint is True
        listed = await client.call_tool("list_profiles", {})
        assert listed.structured_content["profiles"][0]["profile"] == "alpha"
        detail = await client.call_tool("get_profile", {"profile": "alpha"})
        assert detail.structured_content["ctx_size"] == 8192
        assert "--ctx-size" in detail.structured_content["argv"]


async def test_unknown_profile_is_a_readable_tool_error(write_conf):
    async with Client(build_server(write_conf(CONF))) as client:
        result = await client.call_tool("get_profile", {"profile": "nope"})
        assert result.is_error and "No profile named 'nope'" in result.content[0].text
        bad = await client.call_tool("get_profile", {"profile": "../etc/passwd"})
        assert bad.is_error and "pattern" in bad.content[0].text


async def test_lint_counts(write_conf):
    async with Client(build_server(write_conf(CONF))) as client:
        report = (await client.call_tool("lint_profiles", {})).structured_content
        assert report["errors"] == 1 and report["findings"][0]["code"] == "model-missing"


async def test_stdio_server_starts_and_answers(write_conf):
    conf = write_conf(CONF)
    params = StdioServerParameters(command=sys.executable, args=["-m", "mcp_server", "--config", str(conf)],
                                   env={**os.environ})
    async with Client(params) as client:
        result = await client.call_tool("list_profiles", {})
        assert result.structured_content["profiles"][0]["name"] == "Alpha"
