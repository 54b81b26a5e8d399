"""Profile tools: list_profiles, get_profile, lint_profiles, create_profile, update_profile, retire_profile."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from mcp.server import MCPServer
from pydantic import Field

from mcp_server.profiles.config import load_config
from mcp_server.profiles.edits import EditResult
from mcp_server.profiles.lint import LintReport
from mcp_server.profiles.listing import ProfileDetail, ProfileList
from mcp_server.server.conventions import (EDITS, OVERWRITES, READ_ONLY, RETIRES, DryRun, KeyName, KeyValue, Note,
                                           ProfileId, ProfileIdStr, ProfileOrGlobal, tool_errors)

Comments = Annotated[list[Annotated[str, Field(max_length=300)]], Field(
    max_length=40, description="comment lines written above the new section (why, VRAM math, sources)")]


def register(mcp: MCPServer, config_path: str | Path | None) -> None:
    from mcp_server.profiles import edits, lint, listing

    @mcp.tool(annotations=READ_ONLY)
    def list_profiles(include_bench: Annotated[bool, Field(description="include bench- profiles (benchmark "
                                                                      "twins)")] = True) -> ProfileList:
        """List profiles in models.conf: id, name, description, speed, context size, and whether the model file is present. Start here; get_profile shows one profile in full."""
        with tool_errors():
            return listing.list_profiles(load_config(config_path), include_bench=include_bench)

    @mcp.tool(annotations=READ_ONLY)
    def get_profile(profile: ProfileId) -> ProfileDetail:
        """One profile in full: each key with where its value comes from (profile or [global]), the comment lines above it, the model file, the exact llama-server argv. What a running instance uses is status; what it loaded is load_report."""
        with tool_errors():
            return listing.get_profile(load_config(config_path), profile)

    @mcp.tool(annotations=READ_ONLY)
    def lint_profiles(profile: Annotated[ProfileIdStr | None, Field(
            description="the profile to check; omit to check every profile")] = None) -> LintReport:
        """Check profiles before starting them: missing or incomplete model files and shards, unknown or mistyped keys (with the closest known key), a context above the model's training context, bad -ot rules, conflicting settings, known pitfalls. It reads the file only; why a start already failed is diagnose."""
        with tool_errors():
            return lint.lint_profiles(load_config(config_path), profile)

    @mcp.tool(annotations=EDITS)
    def create_profile(
        profile: ProfileId,
        values: Annotated[dict[KeyName, KeyValue], Field(description="KEY: VALUE pairs with models.conf key names; "
                                                                     "MODEL (relative to the models directory) "
                                                                     "is required, NAME recommended")],
        comments: Comments = [],
        dry_run: DryRun = False,
    ) -> EditResult:
        """Add a new profile ([profile] section) at the end of models.conf and return the unified diff; dry_run=True only shows it. Refuses an existing id, a MODEL outside the models directory, values that would be read as llama-server flags, and host settings. Size it first with estimate_fit (model + values) or take plan_placement's settings; for a bench- twin use create_bench_profile. Run lint_profiles on it next, then start_model."""
        with tool_errors():
            return edits.create_profile(load_config(config_path), profile, dict(values), comments=list(comments),
                                        dry_run=dry_run, agent=True)

    @mcp.tool(annotations=OVERWRITES)
    def update_profile(
        profile: ProfileOrGlobal,
        set: Annotated[dict[KeyName, KeyValue], Field(description="keys to set (added or changed in place)")] = {},
        unset: Annotated[list[KeyName], Field(description="keys to remove from the profile")] = [],
        comments: Annotated[list[Annotated[str, Field(max_length=300)]] | None, Field(
            max_length=40, description="replace the whole comment block above the section with these lines "
                                       "([] removes it); get_profile shows the current block")] = None,
        replace_comments: Annotated[dict[Annotated[str, Field(min_length=1, max_length=300)],
                                         Annotated[str, Field(max_length=300)]], Field(
            description="change single comment lines above the section: each key is text found in exactly one "
                        "line, its value that line's new text ('' drops the line), e.g. "
                        "{\"NOT YET TESTED\": \"tested 2026-12-02: 42 t/s\"}")] = {},
        dry_run: DryRun = False,
    ) -> EditResult:
        """Change one profile in models.conf: set keys, remove keys and rewrite the comment lines above the section in one edit, only those lines change; returns the unified diff (dry_run=True previews without writing; a backup of the old file is kept). Keys are models.conf names (CTX_SIZE, N_GPU_LAYERS, TEMP, SPEED, EXTRA_ARGS...; get_profile shows the current ones and the comments). This is the one way to record a measured SPEED. For placement keys chosen by the planner use apply_placement. A running model keeps its old settings until restarted."""
        with tool_errors():
            return edits.update_profile(load_config(config_path), profile, set=dict(set), unset=list(unset),
                                        dry_run=dry_run, agent=True,
                                        comments=list(comments) if comments is not None else None,
                                        replace_comments=dict(replace_comments))

    @mcp.tool(annotations=RETIRES)
    def retire_profile(profile: ProfileId, note: Note = None, dry_run: DryRun = False) -> EditResult:
        """Take a profile out of use by commenting its section out of models.conf (kept in the file and revivable, not deleted), with an optional note above it; returns the diff. Does not stop a running model (stop_model does) and does not delete the model file."""
        with tool_errors():
            return edits.retire_profile(load_config(config_path), profile, note=note, dry_run=dry_run)
