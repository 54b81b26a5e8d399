"""``install_claude``: put llama-pilot's Claude Code skill and subagents into a project.

The skill and agents ship inside the package (``mcp_server/claude/``, package data, so a wheel
has them too; the repository's top-level ``skills/`` and ``agents/`` point there). Installing
copies them to ``DIR/.claude/skills`` and ``DIR/.claude/agents`` and registers the MCP server in
``DIR/.mcp.json`` under the name ``llama-pilot``, keeping every other server already there.
Running it again changes nothing.
"""

from __future__ import annotations

import json
import sys
from importlib import resources
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from mcp_server.errors import LlamaPilotError
from mcp_server.files import atomic_write

SERVER_NAME = "llama-pilot"


class InstalledFile(BaseModel):
    path: str = Field(description="relative to the target directory")
    action: Literal["created", "updated", "unchanged"]


class ClaudeInstall(BaseModel):
    target: str
    files: list[InstalledFile]
    server: dict = Field(description="the .mcp.json entry written for llama-pilot")
    other_servers: list[str] = Field(description="servers already in .mcp.json, kept as they were")


def bundled_files() -> dict[str, bytes]:
    """``{"skills/add-model/SKILL.md": b"...", "agents/diagnose.md": ...}`` from the package."""
    root = resources.files("mcp_server") / "claude"
    found: dict[str, bytes] = {}

    def walk(node, prefix: str) -> None:  # type: ignore[no-untyped-def]
        for child in node.iterdir():
            name = f"{prefix}{child.name}"
            if child.is_dir():
                walk(child, name + "/")
            elif child.name.endswith(".md"):
                found[name] = child.read_bytes()

    walk(root, "")
    if not any(k.startswith("skills/") for k in found) or not any(k.startswith("agents/") for k in found):
        raise LlamaPilotError(f"the skill and agent files are missing from this install ({root}); reinstall llama-pilot")
    return dict(sorted(found.items()))


def server_entry(python: str | None = None, config: str | None = None) -> dict:
    args = ["-m", "mcp_server"] + (["--config", config] if config else [])
    return {"type": "stdio", "command": python or sys.executable, "args": args}


def _write(path: Path, data: bytes) -> Literal["created", "updated", "unchanged"]:
    if path.is_file() and path.read_bytes() == data:
        return "unchanged"
    action: Literal["created", "updated"] = "updated" if path.exists() else "created"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, data)
    return action


def install_claude(target: str | Path, python: str | None = None, config: str | None = None) -> ClaudeInstall:
    """Copy skills and agents into ``target/.claude/`` and register the server in ``target/.mcp.json``."""
    target = Path(target)
    if not target.is_dir():
        raise LlamaPilotError(f"{target} is not a directory; create it first or pass the project folder")
    mcp_json = target / ".mcp.json"
    existing: dict = {}
    if mcp_json.exists():
        try:
            existing = json.loads(mcp_json.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise LlamaPilotError(f"{mcp_json} is not valid JSON ({exc}); fix or move it, then run "
                                  "install-claude again (nothing was changed)") from exc
        if not isinstance(existing, dict) or not isinstance(existing.get("mcpServers", {}), dict):
            raise LlamaPilotError(f"{mcp_json} has no \"mcpServers\" object at the top; fix it, then run "
                                  "install-claude again (nothing was changed)")
    files = bundled_files()  # before writing anything: a broken install fails cleanly
    report = []
    for rel, data in files.items():
        dest = Path(".claude") / rel
        report.append(InstalledFile(path=str(dest), action=_write(target / dest, data)))
    servers = dict(existing.get("mcpServers", {}))
    others = [name for name in servers if name != SERVER_NAME]
    entry = server_entry(python, config)
    servers[SERVER_NAME] = entry
    merged = {**existing, "mcpServers": servers}
    text = json.dumps(merged, indent=2) + "\n"
    report.append(InstalledFile(path=".mcp.json", action=_write(mcp_json, text.encode())))
    return ClaudeInstall(target=str(target.resolve()), files=report, server=entry, other_servers=others)
