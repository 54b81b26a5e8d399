"""Edits to models.conf: create, update and retire profiles, under the file's edit lock.

Every edit re-reads the file under :func:`~mcp_server.profiles.conffile.edit_lock`, checks each value
(and, for agents, the stricter rules of :func:`~mcp_server.profiles.config.check_agent_edit`), applies
the change to a copy of the document, re-validates the whole file and only then writes it. A dry
run computes the same diff and leaves both the file and the caller's ``Config`` untouched.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

from pydantic import BaseModel

from mcp_server import paths
from mcp_server.errors import ProfileNotFound, ValidationError
from mcp_server.profiles.conffile import HEADER_RE, KEY_RE, ConfDocument, edit_lock, fingerprint_of, unified_diff
from mcp_server.profiles.config import (GLOBAL_SECTION, KEYS, Config, check_agent_edit, check_not_a_flag,
                                        check_profile_id, config_from_document, load_config, validate_value)


class EditResult(BaseModel):
    """What an edit changed (or would change, with dry_run)."""

    path: str
    profile: str
    diff: str
    changed: bool
    dry_run: bool
    backup: str | None = None


def _check_key(key: str) -> None:
    if not KEY_RE.match(key):
        raise ValidationError(key, "", "keys are letters, digits and _ and start with a letter or _")


@contextmanager
def _editing(config: Config) -> Iterator[Config]:
    """Hold the file's edit lock and yield the config as it is on disk now.

    Every edit reads, checks, changes and saves inside this block. A writer that waited for the
    lock sees the file its predecessor wrote and applies its own edit on top of it, so parallel
    edits all land (or fail with a reason), and none reports "saved" for a write that was lost.
    """
    with edit_lock(config.path):
        current = config
        if config.document.fingerprint is not None and fingerprint_of(config.path) != config.document.fingerprint:
            current = load_config(config.path)
        yield current


def _apply(config: Config, profile_id: str, mutate: Any, dry_run: bool) -> EditResult:
    """Run ``mutate`` on a copy of the loaded document, re-validate the whole file, then save.

    The copy keeps the caller's ``Config`` exactly as loaded: a dry run changes nothing anywhere,
    and a real edit leaves the old ``Config`` stale, which the next :func:`_editing` notices (the
    fingerprint on disk moved) and reloads."""
    document = config.document.copy()
    before = document.render()
    mutate(document)
    after = document.render()
    # Re-validate what we would write: an edit can never leave a file the next load rejects. The
    # document re-classified its lines after the edit, exactly as a parse of ``after`` would.
    config_from_document(document, config.path)
    diff = unified_diff(before, after, config.path.name)
    backup = None
    if after != before and not dry_run:
        saved = document.save(backup_dir=paths.backups_dir())
        backup = str(saved) if saved else None
    return EditResult(path=str(config.path), profile=profile_id, diff=diff, changed=after != before,
                      dry_run=dry_run, backup=backup)


MAX_COMMENT_LINES = 40
MAX_COMMENT_CHARS = 300


def update_profile(config: Config, profile_id: str, set: dict[str, str] | None = None,
                   unset: list[str] | None = None, dry_run: bool = False, agent: bool = False, *,
                   comments: list[str] | None = None, replace_comments: dict[str, str] | None = None) -> EditResult:
    """Set some keys, remove others and rewrite the comment block above the section, in one edit (one
    diff, one write): what ``update_profile`` does.

    ``comments`` replaces the whole block (``[]`` removes it); ``replace_comments`` maps a text found
    in exactly one line of the block to that line's new text ('' drops the line), for the usual
    "NOT YET TESTED" -> "tested 2026-12-02: 42 t/s" edit without restating the rest."""
    updates, removals = dict(set or {}), list(unset or [])
    if not updates and not removals and comments is None and not replace_comments:
        raise ValidationError("set/unset/comments", "", "nothing to change: give keys to set or to unset, or "
                              "comments / replace_comments for the comment lines above the section")
    if both := sorted(updates.keys() & removals):
        raise ValidationError(both[0], "", "is both set and unset; pick one")
    if comments is not None and replace_comments:
        raise ValidationError("comments", "", "give either comments (the whole block) or replace_comments "
                              "(some of its lines), not both")
    with _editing(config) as current:
        return _update(current, profile_id, updates, removals, dry_run, agent, comments, replace_comments or {})


def check_comments(comments: list[str], name: str = "comments") -> None:
    """Comment lines fit on one line each and never read as a section header (``# [id]`` would start a
    retired profile of that id)."""
    if len(comments) > MAX_COMMENT_LINES:
        raise ValidationError(name, f"{len(comments)} lines", f"at most {MAX_COMMENT_LINES} comment lines")
    for text in comments:
        if "\n" in text or "\r" in text or "\0" in text:
            raise ValidationError(name, text, "a comment must fit on one line")
        if len(text) > MAX_COMMENT_CHARS:
            raise ValidationError(name, text[:40] + "...", f"a comment line has at most {MAX_COMMENT_CHARS} "
                                  "characters; split it")
        if HEADER_RE.fullmatch(text.lstrip("#").strip()):
            raise ValidationError(name, text, "reads as a retired section header; reword it (e.g. 'old profile: x')")


def _new_block(old: list[str], replacements: dict[str, str], where: str) -> list[str]:
    """``old`` with each line that contains a key of ``replacements`` replaced by its value."""
    block = list(old)
    for find, new in replacements.items():
        hits = [i for i, line in enumerate(block) if find and find in line]
        if len(hits) != 1:
            shown = "; ".join(old) if old else "(no comment lines above the section)"
            raise ValidationError("replace_comments", find, f"{'matches no' if not hits else f'matches {len(hits)}'} "
                                  f"comment line above {where}, where exactly one is needed. The lines are: {shown}")
        block[hits[0]] = new
    return [line for line in block if line != ""]


def _update(config: Config, profile_id: str, updates: dict[str, str], removals: list[str], dry_run: bool,
            agent: bool, comments: list[str] | None = None, replacements: dict[str, str] | None = None) -> EditResult:
    section_id = _editable_section(config, profile_id)
    where = f"[{section_id}]"
    block: list[str] | None = None
    if comments is not None or replacements:
        if config.document.section(section_id) is None:
            raise ValidationError("comments", "", f"{where} is not written in the file yet; set a key first")
        _, old = config.document.comment_block(section_id)
        block = list(comments) if comments is not None else _new_block(old, replacements or {}, where)
        check_comments(block, "comments" if comments is not None else "replace_comments")
    for key, value in updates.items():
        _check_key(key)
        validate_value(key, value, where)
        check_not_a_flag(key, value, where)
        if agent:
            check_agent_edit(config, key, value, where)
    section = config.document.section(section_id)
    missing = [k for k in removals if section is None or section.get(k) is None]
    if missing:
        raise ValidationError(missing[0], "", f"not set in {where}; set keys: "
                              f"{', '.join(e.key for e in section.entries) if section else 'none'}")
    if "MODEL" in removals and section_id != GLOBAL_SECTION:
        raise ValidationError("MODEL", "", "is required; retire the profile instead of removing its model")
    for key in removals:
        if agent:
            check_agent_edit(config, key, None, where)

    def mutate(doc: ConfDocument) -> None:
        if doc.section(section_id) is None:
            doc.add_section(section_id, [])
        for key, value in updates.items():
            doc.set(section_id, key, value)
        for key in removals:
            doc.unset(section_id, key)
        if block is not None:
            doc.set_comments(section_id, block)

    return _apply(config, section_id, mutate, dry_run)


def create_profile(config: Config, profile_id: str, values: dict[str, str], comments: list[str] | None = None,
                   dry_run: bool = False, agent: bool = False) -> EditResult:
    """Append a new ``[profile_id]`` section at the end of the file."""
    with _editing(config) as current:
        return _create(current, profile_id, values, comments, dry_run, agent)


def _create(config: Config, profile_id: str, values: dict[str, str], comments: list[str] | None, dry_run: bool,
            agent: bool) -> EditResult:
    check_profile_id(profile_id)
    if profile_id in config.profiles:
        raise ValidationError("profile", profile_id, "already exists; use set to change it")
    if "MODEL" not in values:
        raise ValidationError("MODEL", "", "is required for a new profile")
    for key, value in values.items():
        _check_key(key)
        if KEYS.get(key) and KEYS[key].scope == "host":
            raise ValidationError(key, value, "is a host setting; it belongs in [global]")
        validate_value(key, value, f"[{profile_id}]")
        check_not_a_flag(key, value, f"[{profile_id}]")
        if agent:
            check_agent_edit(config, key, value, f"[{profile_id}]")
    check_comments(list(comments or []))

    def mutate(doc: ConfDocument) -> None:
        doc.add_section(profile_id, list(values.items()), comments=list(comments or []))

    return _apply(config, profile_id, mutate, dry_run)


DRAFT_ID = "draft"


def draft_profile(config: Config, profile_id: str | None, values: dict[str, str], model: str | None = None,
                  agent: bool = False) -> tuple[Config, str, bool]:
    """A Config in memory with a profile as it would be after an edit: nothing is written.

    Lets the memory tools answer "what would this use?" before a profile exists or before a change
    is made. An existing ``profile_id`` gets ``values`` (and MODEL=``model``) on top of its own; a new
    id (or none: ``draft``) becomes a section with MODEL=``model`` and ``values``, inheriting [global]
    like any profile. Every value passes the same checks as create_profile / update_profile.
    Returns (config, profile id, whether it is a draft that differs from the file)."""
    changes = {**values, **({"MODEL": model} if model is not None else {})}
    profile_id = profile_id or DRAFT_ID
    exists = profile_id in config.profiles
    if not exists:
        check_profile_id(profile_id)
        if "MODEL" not in changes:
            raise ProfileNotFound(profile_id, list(config.profiles), "To size a model file before its profile "
                                  "exists, give the model file (model / --model) too.")
    where = f"[{profile_id}]"
    for key, value in changes.items():
        _check_key(key)
        if KEYS.get(key) and KEYS[key].scope == "host":
            raise ValidationError(key, value, "is a host setting; a profile draft takes profile keys only", where)
        validate_value(key, value, where)
        check_not_a_flag(key, value, where)
        if agent:
            check_agent_edit(config, key, value, where)
    if not changes:
        return config, profile_id, False
    document = config.document.copy()
    if exists:
        for key, value in changes.items():
            document.set(profile_id, key, value)
    else:
        document.add_section(profile_id, list(changes.items()))
    return config_from_document(document, config.path), profile_id, True


def retire_profile(config: Config, profile_id: str, note: str | None = None, dry_run: bool = False) -> EditResult:
    """Comment the profile out (the original's convention) instead of deleting it."""
    if note is not None and ("\n" in note or "\r" in note or "\0" in note):
        raise ValidationError("note", note, "a note must fit on one line")

    def mutate(doc: ConfDocument) -> None:
        doc.retire_section(profile_id, note=note)

    with _editing(config) as current:
        current.profile(profile_id)
        return _apply(current, profile_id, mutate, dry_run)


def _editable_section(config: Config, profile_id: str) -> str:
    if profile_id == GLOBAL_SECTION:
        return GLOBAL_SECTION
    config.profile(profile_id)
    return profile_id
