"""The comment block above a profile: read by get_profile, rewritten by update_profile (whole, or one
line by what it contains), byte-exact everywhere else, previewed by dry_run, guarded for agents."""

from __future__ import annotations

from pathlib import Path

import pytest
from mcp import Client

from mcp_server.errors import ValidationError
from mcp_server.profiles.config import load_config
from mcp_server.profiles.edits import update_profile
from mcp_server.profiles.listing import get_profile
from mcp_server.server.app import build_server

pytestmark = pytest.mark.anyio

CONF = (
    "[global]\r\n"
    "MODELS_DIR=models\r\n"
    "\r\n"
    "# [old-tiny]\r\n"
    "# MODEL=old.gguf\r\n"
    "\r\n"
    "# Architecture source: model card (models/documentation/Tiny.md)\r\n"
    "# VRAM: 0.3 GiB weights + 0.1 GiB KV at 4096\r\n"
    "# NOT YET TESTED\r\n"
    "[tiny]\r\n"
    "MODEL=tiny.gguf\r\n"
    "\r\n"
    "# trailing remark, no newline at the end\r\n"
    "[other]\r\n"
    "MODEL=other.gguf"
)


@pytest.fixture
def conf(write_conf) -> Path:
    return write_conf(CONF)


def test_get_profile_shows_the_comment_block_and_stops_at_a_blank_line(conf: Path):
    detail = get_profile(load_config(conf), "tiny")
    assert detail.comments == ["# Architecture source: model card (models/documentation/Tiny.md)",
                               "# VRAM: 0.3 GiB weights + 0.1 GiB KV at 4096", "# NOT YET TESTED"]
    assert get_profile(load_config(conf), "other").comments == ["# trailing remark, no newline at the end"]


def test_replace_one_line_by_what_it_contains_changes_only_that_line(conf: Path):
    before = conf.read_bytes()
    result = update_profile(load_config(conf), "tiny", replace_comments={"NOT YET TESTED": "tested 2026-12-02: 42 t/s"})
    after = conf.read_bytes()
    assert result.changed and "-# NOT YET TESTED" in result.diff and "+# tested 2026-12-02: 42 t/s" in result.diff
    assert after == before.replace(b"# NOT YET TESTED\r\n", b"# tested 2026-12-02: 42 t/s\r\n")
    # the retired block above is untouched, the file still has no final newline
    assert b"# [old-tiny]\r\n# MODEL=old.gguf\r\n" in after and after.endswith(b"MODEL=other.gguf")


def test_replace_the_whole_block_with_keys_in_the_same_edit(conf: Path):
    result = update_profile(load_config(conf), "tiny", set={"SPEED": "~42 t/s"},
                            comments=["Architecture source: model card", "tested 2026-12-02: 42 t/s, 1 graph split"])
    text = conf.read_bytes().decode("utf-8")
    assert ("# Architecture source: model card\r\n# tested 2026-12-02: 42 t/s, 1 graph split\r\n[tiny]\r\n"
            "MODEL=tiny.gguf\r\nSPEED=~42 t/s\r\n") in text
    assert result.diff.count("\n+") >= 3
    assert load_config(conf).profile("tiny").speed == "~42 t/s"


def test_an_empty_list_removes_the_block_and_a_profile_without_one_gains_one(conf: Path):
    update_profile(load_config(conf), "tiny", comments=[])
    assert get_profile(load_config(conf), "tiny").comments == []
    update_profile(load_config(conf), "global", comments=["llama-pilot profiles"])
    text = conf.read_bytes().decode("utf-8")
    assert text.startswith("# llama-pilot profiles\r\n[global]\r\n")


def test_dry_run_shows_the_diff_and_writes_nothing(conf: Path):
    before = conf.read_bytes()
    result = update_profile(load_config(conf), "tiny", replace_comments={"NOT YET": ""}, dry_run=True)
    assert result.dry_run and "-# NOT YET TESTED" in result.diff
    assert conf.read_bytes() == before


@pytest.mark.parametrize(("kwargs", "says"), [
    ({"replace_comments": {"no such text": "x"}}, "matches no comment line above [tiny]"),
    ({"replace_comments": {"# ": "x"}}, "matches 3"),
    ({"comments": ["two\nlines"]}, "one line"),
    ({"comments": ["[tiny2]"]}, "retired section header"),
    ({"comments": ["x" * 301]}, "at most 300"),
    ({"comments": ["ok"], "replace_comments": {"a": "b"}}, "not both"),
])
def test_bad_comment_edits_are_refused_with_the_reason_and_nothing_changes(conf: Path, kwargs, says):
    before = conf.read_bytes()
    with pytest.raises(ValidationError) as info:
        update_profile(load_config(conf), "tiny", agent=True, **kwargs)
    assert says in str(info.value)
    assert conf.read_bytes() == before


async def test_the_mcp_tool_edits_comments_and_get_profile_reads_them_back(conf: Path):
    async with Client(build_server(conf)) as client:
        done = await client.call_tool("update_profile", {
            "profile": "tiny", "replace_comments": {"NOT YET TESTED": "tested: 42 t/s"}})
        assert not done.is_error, done.content
        shown = await client.call_tool("get_profile", {"profile": "tiny"})
    assert shown.structured_content["comments"][-1] == "# tested: 42 t/s"
