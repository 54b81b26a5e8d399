"""The tools the add-model path was missing: an estimate of a model file before its profile exists
(or of changed settings), and moving a model card out of CANDIDATES/ without a shell."""

from __future__ import annotations

from pathlib import Path

import pytest
from mcp import Client

from mcp_server.errors import ProfileNotFound, ValidationError
from mcp_server.model_files.cards import promote_model_card
from mcp_server.model_files.synthetic import DenseShape, write_dense
from mcp_server.placement.operations import estimate_fit
from mcp_server.profiles.config import load_config
from mcp_server.server.app import build_server

pytestmark = pytest.mark.anyio

CONF = "[global]\nMODELS_DIR=models\n\n[tiny]\nMODEL=tiny/tiny.gguf\nCTX_SIZE=1024\n"


@pytest.fixture
def conf(write_conf) -> Path:
    path = write_conf(CONF)
    write_dense(path.parent / "models" / "tiny" / "tiny.gguf", DenseShape(n_ctx_train=8192), seed=3)
    write_dense(path.parent / "models" / "new" / "new.gguf", DenseShape(n_ctx_train=8192), seed=4)
    return path


def test_a_file_is_estimated_as_a_draft_before_its_profile_exists_and_nothing_is_written(conf: Path):
    before = conf.read_bytes()
    small = estimate_fit(load_config(conf), "new-q4", "8GiB", model="new/new.gguf", values={"CTX_SIZE": "1024"})
    large = estimate_fit(load_config(conf), None, "8GiB", model="new/new.gguf", values={"CTX_SIZE": "8192"})
    assert small.draft and small.profile == "new-q4" and small.changes == {"CTX_SIZE": "1024", "MODEL": "new/new.gguf"}
    assert large.profile == "draft" and large.estimate.n_ctx == 8192 and small.estimate.n_ctx == 1024
    kv = [d.kv_cache_mib for d in large.estimate.devices]
    assert kv[0] > [d.kv_cache_mib for d in small.estimate.devices][0] * 4  # 8x the context, 8x the KV
    assert conf.read_bytes() == before and "new-q4" not in load_config(conf).profiles


def test_an_existing_profile_with_changed_values_is_estimated_without_an_edit(conf: Path):
    plain = estimate_fit(load_config(conf), "tiny", "8GiB")
    changed = estimate_fit(load_config(conf), "tiny", "8GiB", values={"CTX_SIZE": "4096"})
    assert not plain.draft and changed.draft and plain.estimate.n_ctx == 1024 and changed.estimate.n_ctx == 4096
    assert load_config(conf).profile("tiny").ctx_size == 1024


@pytest.mark.parametrize(("profile", "kwargs", "says"), [
    ("nope", {}, "give the model file (model / --model) too"),
    (None, {"model": "../outside.gguf"}, "'..'"),
    ("x", {"model": "new/new.gguf", "values": {"MODELS_DIR": "/"}}, "host setting"),
    ("x", {"model": "new/new.gguf", "values": {"EXTRA_ARGS": "--mmproj /etc/passwd"}}, "--mmproj"),
])
def test_draft_estimates_refuse_what_an_edit_would(conf: Path, profile, kwargs, says):
    with pytest.raises((ValidationError, ProfileNotFound)) as info:
        estimate_fit(load_config(conf), profile, "8GiB", agent=True, **kwargs)
    assert says in str(info.value)


async def test_estimate_fit_takes_a_model_file_over_mcp(conf: Path):
    async with Client(build_server(conf)) as client:
        result = await client.call_tool("estimate_fit", {"model": "new/new.gguf", "values": {"CTX_SIZE": "2048"},
                                                         "gpus": "8GiB"})
    assert not result.is_error, result.content
    assert result.structured_content["draft"] is True and result.structured_content["estimate"]["n_ctx"] == 2048


def _card(conf: Path, rel: str, text: str) -> Path:
    path = conf.parent / "models" / "documentation" / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_a_candidate_card_moves_up_and_an_existing_card_is_never_replaced(conf: Path):
    candidate = _card(conf, "CANDIDATES/Tiny.md", "# Tiny\nnew text\n")
    dry = promote_model_card(load_config(conf), "Tiny", dry_run=True)
    assert dry.target == "documentation/Tiny.md" and not dry.moved and candidate.is_file()
    moved = promote_model_card(load_config(conf), "Tiny.md")
    target = conf.parent / "models" / "documentation" / "Tiny.md"
    assert moved.moved and not candidate.exists() and target.read_text() == "# Tiny\nnew text\n"
    again = _card(conf, "CANDIDATES/Tiny.md", "# Tiny\nother\n")
    with pytest.raises(ValidationError, match="already exists; nothing was moved"):
        promote_model_card(load_config(conf), "Tiny")
    assert again.read_text() == "# Tiny\nother\n" and target.read_text() == "# Tiny\nnew text\n"
    with pytest.raises(ValidationError, match="candidates: Tiny"):
        promote_model_card(load_config(conf), "Nope")
    with pytest.raises(ValidationError, match="file name"):
        promote_model_card(load_config(conf), "../x")


async def test_the_moved_card_reads_as_a_resource(conf: Path):
    _card(conf, "CANDIDATES/Tiny.md", "# Tiny card\n")
    async with Client(build_server(conf)) as client:
        done = await client.call_tool("promote_model_card", {"name": "Tiny"})
        assert not done.is_error, done.content
        card = await client.read_resource("model-card://Tiny")
    assert "# Tiny card" in card.contents[0].text
