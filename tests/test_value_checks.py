"""Each key has a type and a range in one place (profiles.KEYS), used by the CLI, MCP and lint
(issue 11, item 7): NUL bytes, odd ids, absurd numbers and non-positive timeouts are refused with a
reason, and nothing on disk changes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from mcp import Client

from mcp_server.errors import ValidationError
from mcp_server.profiles.lint import lint_profiles
from mcp_server.profiles.config import load_config, validate_value
from mcp_server.profiles.edits import update_profile
from mcp_server.runtime.lifecycle import Runtime
from mcp_server.server.app import build_server

CONF = "[global]\nPORT=18580\n\n[p1]\nMODEL=a.gguf\n"


def cli(conf: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mcp_server", "cli", "--config", str(conf), *args],
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("key, value, reason", [
    ("CTX_SIZE", "99999999999999999999999999", "at most"),
    ("CTX_SIZE", "-5", "at least 0"),
    ("PORT", "22", "at least 1024"),
    ("PORT", "70000", "at most 65535"),
    ("PARALLEL", "100000", "at most 256"),
    ("MAIN_GPU", "64", "at most 63"),
    ("VISIBLE_DEVICES", "0,99", "from 0 to 63"),
    ("TEMP", "1e9", "at most 100"),
    ("NAME", "a\0b", "NUL byte"),
    ("SOME_UNKNOWN_KEY", "x\0", "NUL byte"),
    ("EXTRA_ARGS", "--jinja\0", "NUL byte"),
])
def test_out_of_range_and_nul_values_are_refused(write_conf, key, value, reason):
    conf = write_conf(CONF)
    before = conf.read_bytes()
    with pytest.raises(ValidationError, match=reason):
        validate_value(key, value)
    with pytest.raises(ValidationError, match=reason):
        update_profile(load_config(conf), "p1", set={key: value})
    assert conf.read_bytes() == before


def test_nul_byte_through_the_cli_is_refused_before_any_record(write_conf):
    conf = write_conf(CONF)
    # A NUL cannot travel in argv; through --config's file it can: a hand edit with one fails to load.
    conf.write_bytes(conf.read_bytes() + b"NAME=x\x00y\n")
    out = cli(conf, "start", "p1")
    assert out.returncode == 1 and "NUL byte" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize("profile_id", [".", "..", "-rf", "a" * 65, "a" * 240, "global", "bad id", "/etc"])
def test_odd_ids_are_refused_by_the_cli(write_conf, profile_id):
    conf = write_conf(CONF)
    before = conf.read_bytes()
    out = cli(conf, "create", "--", profile_id, "MODEL=a.gguf")
    assert out.returncode == 1, out.stdout
    assert "ids start with a letter" in out.stderr and "Traceback" not in out.stderr
    assert conf.read_bytes() == before


def test_a_hand_written_long_id_is_a_lint_error(write_conf):
    long_id = "x" * 80
    conf = write_conf(CONF + f"\n[{long_id}]\nMODEL=a.gguf\n")
    findings = [f for f in lint_profiles(load_config(conf)).findings if f.code == "bad-id"]
    assert [f.profile for f in findings] == [long_id] and findings[0].severity == "error"


@pytest.mark.parametrize("timeout", [-5, 0, 1e9])
def test_bad_timeouts_are_refused_in_core_and_cli(write_conf, timeout):
    conf = write_conf(CONF)
    with pytest.raises(ValidationError, match="more than 0"):
        Runtime(load_config(conf)).start_model("p1", timeout_s=timeout)
    out = cli(conf, "start", "p1", "--timeout", str(timeout))
    assert out.returncode == 2 and "--timeout" in out.stderr



@pytest.mark.anyio
@pytest.mark.parametrize("timeout", [-5, 0])
async def test_bad_timeouts_are_refused_by_the_mcp_schema(write_conf, timeout):
    conf = write_conf(CONF)
    async with Client(build_server(conf)) as client:
        for tool in ("start_model", "switch_model"):
            result = await client.call_tool(tool, {"profile": "p1", "timeout_s": timeout})
            assert result.is_error and "timeout_s" in result.content[0].text, result.content[0].text
