"""Issue 13's findings on the add-model path, one test each: a truncated download is caught from the
header everywhere (listing, inspection, lint, plan, and a start's diagnosis), a context above the
trained one and a mistyped key are linted, and an unknown profile id is named as such."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from mcp import Client

from mcp_server.model_files.synthetic import DenseShape, write_dense
from mcp_server.profiles.config import load_config
from mcp_server.profiles.lint import lint_profiles
from mcp_server.runtime.server_log import explain_exit
from mcp_server.server.app import build_server

pytestmark = pytest.mark.anyio

CONF = """\
[global]
MODELS_DIR=models

[tiny]
MODEL=tiny/tiny.gguf
CTX_SIZE=4096
CTXSIZE=8192
"""


@pytest.fixture
def conf(write_conf) -> Path:
    path = write_conf(CONF)
    write_dense(path.parent / "models" / "tiny" / "tiny.gguf", DenseShape(n_ctx_train=2048), seed=5)
    return path


def _truncate(conf: Path) -> None:
    model = conf.parent / "models" / "tiny" / "tiny.gguf"
    with open(model, "r+b") as f:
        f.truncate(os.path.getsize(model) - 4096)


def _text(result) -> str:  # type: ignore[no-untyped-def]
    return result.content[0].text


async def test_a_truncated_download_is_caught_everywhere(conf: Path):
    async with Client(build_server(conf)) as client:
        whole = (await client.call_tool("list_model_files", {})).structured_content["files"][0]
        assert whole["complete"] is True
        _truncate(conf)
        cut = (await client.call_tool("list_model_files", {})).structured_content["files"][0]
        assert cut["complete"] is False
        info = (await client.call_tool("inspect_model_file", {"path": "tiny/tiny.gguf"})).structured_content
        assert info["complete"] is False and info["missing_bytes"] == 4096
        planned = await client.call_tool("plan_placement", {"model": "tiny/tiny.gguf", "gpus": "none"})
        assert planned.is_error and "model-file: tiny/tiny.gguf is incomplete" in _text(planned)
        assert "4,096 missing" in _text(planned)
        missing = await client.call_tool("plan_placement", {"model": "tiny/nope.gguf", "gpus": "none"})
        assert missing.is_error and "model-file: tiny/nope.gguf: no such file" in _text(missing)
    findings = {f.code: f for f in lint_profiles(load_config(conf), "tiny").findings}
    assert findings["model-incomplete"].severity == "error"


def test_a_start_on_a_truncated_file_is_diagnosed_as_incomplete():
    log = ("llama_model_load: error loading model: tensor 'blk.1.ffn_down.weight' data is not within the file "
           "bounds, model is corrupted or incomplete\nmain: exiting due to model loading error\n")
    diagnosis = explain_exit(log, 1)
    assert diagnosis.cause == "model-incomplete" and "download the file again" in diagnosis.fix


def test_context_above_training_and_a_mistyped_key_are_warnings(conf: Path):
    findings = {f.code: f for f in lint_profiles(load_config(conf), "tiny").findings}
    ctx = findings["ctx-above-training"]
    assert ctx.severity == "warning" and "4096" in ctx.message and "2048" in ctx.message
    typo = findings["unknown-key"]
    assert typo.severity == "warning" and "did you mean CTX_SIZE?" in typo.message


async def test_an_unknown_profile_is_named_not_called_not_running(conf: Path):
    async with Client(build_server(conf)) as client:
        for tool in ("tail_logs", "load_report", "stop_model", "test_completion"):
            result = await client.call_tool(tool, {"profile": "nope"})
            assert result.is_error and "profile-not-found: No profile named 'nope'" in _text(result), tool
        # A known profile that never ran is "not running", with the tool that starts it.
        known = await client.call_tool("load_report", {"profile": "tiny"})
        assert known.is_error and "not-running" in _text(known) and "start_model tiny" in _text(known)


async def test_fixes_name_the_tools_parameters_and_bad_timeouts_are_refused(conf: Path):
    timed_out = explain_exit("load_tensors: loading model tensors\n", None, timed_out=True)
    assert "start_model timeout_s" in timed_out.fix
    async with Client(build_server(conf)) as client:
        negative = await client.call_tool("start_model", {"profile": "tiny", "timeout_s": -5})
    assert negative.is_error and "timeout_s" in _text(negative) and "greater than 0" in _text(negative)
