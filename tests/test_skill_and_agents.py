"""SKILL.md and agents/*.md name only tools and parameters that exist.

The skill and the agents are instructions an agent follows literally: a tool that was renamed, or a
parameter it does not take, is a step that fails. Calls are written ``tool(param=value, ...)``;
frontmatter lists the tools each may use (``mcp__llama-pilot__<tool>``), and every tool a body calls
must be among them, or the host would refuse the call.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from mcp import Client

from mcp_server.server.app import build_server

pytestmark = pytest.mark.anyio

CLAUDE = Path(__file__).resolve().parent.parent / "mcp_server" / "claude"
DOCS = sorted([CLAUDE / "skills" / "add-model" / "SKILL.md", *(CLAUDE / "agents").glob("*.md")])
PREFIX = "mcp__llama-pilot__"
CALL = re.compile(r"`([a-z][a-z0-9]*(?:_[a-z0-9]+)+)\((.*?)\)`", re.S)
MENTION = re.compile(r"`([a-z][a-z0-9]*(?:_[a-z0-9]+)+)`")


def _frontmatter(text: str) -> tuple[dict[str, str], str]:
    assert text.startswith("---\n")
    head, body = text[4:].split("\n---\n", 1)
    fields = dict(line.split(": ", 1) for line in head.splitlines() if ": " in line)
    return fields, body


def _keywords(arguments: str) -> list[str]:
    """The ``name=`` words at the top level of a call's argument text (not inside {...}, [...] or quotes)."""
    names, depth, quote, word = [], 0, None, ""
    for ch in arguments:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch in "{[(":
            depth += 1
        elif ch in "}])":
            depth -= 1
        elif ch == "=" and depth == 0:
            names.append(word.strip().split()[-1] if word.strip() else "")
        if ch in ",(" and depth == 0:
            word = ""
        elif ch != "=":
            word += ch
    return names


def test_the_argument_reader_reads_what_the_docs_write():
    assert _keywords('profile=<id>, set={"SPEED": "~<n> t/s"}, replace_comments={"A=B": "x"}, dry_run=true') == \
        ["profile", "set", "replace_comments", "dry_run"]
    assert _keywords("") == []


@pytest.fixture(scope="module")
def schemas() -> dict[str, set[str]]:
    import anyio

    async def read() -> dict[str, set[str]]:
        async with Client(build_server(None)) as client:
            return {t.name: set(t.input_schema.get("properties", {})) for t in (await client.list_tools()).tools}

    return anyio.run(read)


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_tool_and_parameter_named_exists(doc: Path, schemas: dict[str, set[str]]):
    fields, body = _frontmatter(doc.read_text(encoding="utf-8"))
    listed = fields.get("allowed-tools") or fields.get("tools") or ""
    allowed = {word.strip(",").removeprefix(PREFIX) for word in listed.split() if word.strip(",").startswith(PREFIX)}
    assert allowed, f"{doc.name} lists no llama-pilot tools"
    assert allowed <= set(schemas), f"{doc.name} lists tools that do not exist: {sorted(allowed - set(schemas))}"

    calls = CALL.findall(body)
    assert calls, f"{doc.name} names no tool with its arguments"
    problems = []
    for tool, arguments in calls:
        if tool not in schemas:
            problems.append(f"{tool}(...) is not a tool")
            continue
        if tool not in allowed:
            problems.append(f"{tool} is called but not in the frontmatter's tools")
        problems += [f"{tool} has no parameter {name!r}" for name in _keywords(arguments) if name not in schemas[tool]]
    # A tool mentioned by name alone must exist too (a renamed tool would read as a plain word).
    problems += [f"`{word}` looks like a tool but is none" for word in MENTION.findall(body)
                 if word not in schemas and word.split("_")[0] in {t.split("_")[0] for t in schemas}
                 and word not in KNOWN_WORDS]
    assert problems == [], f"{doc.name}: " + "; ".join(problems)


# Backticked snake_case words in the docs that are fields or values, not tools.
KNOWN_WORDS = {"list_model_files", "generation_tokens_per_s", "still_running", "speed_label", "dry_run",
               "replace_comments", "create_bench"}


async def test_a_misnamed_tool_or_parameter_is_caught(tmp_path: Path):
    """The checks above can fail: a doc with a bad tool and a bad parameter trips both."""
    async with Client(build_server(None)) as client:
        schemas = {t.name: set(t.input_schema.get("properties", {})) for t in (await client.list_tools()).tools}
    bad = "`estimate_fit(profile=<id>, ctx=4096)` then `estimate_model(path=x)`"
    found = [(tool, _keywords(args)) for tool, args in CALL.findall(bad)]
    assert found == [("estimate_fit", ["profile", "ctx"]), ("estimate_model", ["path"])]
    assert "ctx" not in schemas["estimate_fit"] and "estimate_model" not in schemas
