"""The agent allow-list for EXTRA_ARGS (issue 11, item 1).

- Every spelling the pinned llama-server's --help lists is classified, and nothing else is: a new
  build with a new flag fails here until the flag is put in one of the two groups.
- The reported exploit (--mcp-servers-json with a command) and every alias it listed are refused
  through MCP, and nothing runs.
- A fuzz test: random token sequences through the guard; none that passes names a people-only flag,
  a path, a URL or a program.
- Flags agents may set really start the real server (the arity and value rules match the engine).
"""

from __future__ import annotations

import json
import shlex
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mcp import Client

from mcp_server.engine import binary as engine

from mcp_server.engine import flags as server_flags
from mcp_server.profiles.config import load_config
from mcp_server.server.app import build_server
from mcp_server.engine.flags import BY_NAME, FLAGS, ArgsError, check_agent_args, parse_help
from mcp_server.model_files.synthetic import DenseShape, write_dense

HELP_SNAPSHOT = Path(__file__).parent / "data" / f"llama-server-help-b{server_flags.CLASSIFIED_FOR_BUILD}.txt"


def _unclassified(entries: list[server_flags.HelpEntry]) -> dict[str, list[str]]:
    listed = {name: entry for entry in entries for name in entry.names}
    classified = set(BY_NAME)
    wrong_arity = [f"{name} (help: {entry.hint!r} = {entry.arity} value(s); table: {BY_NAME[name].arity})"
                   for name, entry in listed.items() if name in BY_NAME and BY_NAME[name].arity != entry.arity]
    return {"not classified": sorted(set(listed) - classified), "not in the build": sorted(classified - set(listed)),
            "value count differs": wrong_arity}


def test_the_table_is_for_the_pinned_engine():
    # Bumping the engine pin means re-reading --help: this fails until the table says it was done.
    assert server_flags.CLASSIFIED_FOR_BUILD == engine.LLAMA_CPP_BUILD_NUMBER, (
        "the engine pin changed: run the new llama-server --help, classify every new flag in "
        "mcp_server/engine/flags.py, save the help as tests/data/, then bump CLASSIFIED_FOR_BUILD")


def test_every_flag_of_the_help_snapshot_is_classified():
    entries = parse_help(HELP_SNAPSHOT.read_text())
    assert len(entries) > 200
    assert _unclassified(entries) == {"not classified": [], "not in the build": [], "value count differs": []}


@pytest.mark.engine
def test_every_flag_of_the_real_engine_is_classified(engine_path):
    out = subprocess.run([engine_path, "--help"], capture_output=True, text=True, timeout=60)
    entries = parse_help(out.stdout + out.stderr)
    assert _unclassified(entries) == {"not classified": [], "not in the build": [], "value count differs": []}
    version = subprocess.run([engine_path, "--version"], capture_output=True, text=True, timeout=60)
    assert f"build {server_flags.CLASSIFIED_FOR_BUILD}" in version.stdout + version.stderr


def test_no_flag_is_both_agent_and_people_only():
    assert not server_flags.AGENT_FLAGS & server_flags.PEOPLE_FLAGS
    spellings = [name for flag in FLAGS for name in flag.names]
    assert len(spellings) == len(set(spellings))


def test_help_parser_reads_names_hints_and_two_value_flags():
    text = ("-ot,   --override-tensor <tensor name pattern>=<buffer type>,...\n"
            "                                        override tensor buffer type\n"
            "--ui,  --webui, --no-ui, --no-webui     whether to enable the Web UI\n"
            "--control-vector-layer-range START END\n"
            "--fim-qwen-1.5b-default                 use default Qwen\n")
    entries = parse_help(text)
    assert [(e.names, e.arity) for e in entries] == [
        (("-ot", "--override-tensor"), 1), (("--ui", "--webui", "--no-ui", "--no-webui"), 0),
        (("--control-vector-layer-range",), 2), (("--fim-qwen-1.5b-default",), 0)]


EXPLOIT = ("--mcp-servers-json '{\"mcpServers\":{\"x\":{\"command\":\"/bin/sh\",\"args\":[\"-c\","
           "\"id > pwned.txt\"]}}}'")
REFUSED = [EXPLOIT, "-mm x.gguf", "-mmu https://h/x.gguf", "--spec-draft-model d.gguf", "--spec-draft-hf a/b",
           "-jf schema.json", "--log-prompts-dir logs", "--ui-config-file ui.json", "--video-ffmpeg-dir bin",
           "--mcp-servers-config m.json", "--tools-runtime docker", "--ui-mcp-proxy", "--cors-origins *",
           "--mcp_servers_json {}",  # llama.cpp reads '_' as '-' in long names
           "--mmproj=x.gguf", "--tools all", "-ag", "--rpc 10.0.0.1:50052", "--host 0.0.0.0",
           "--a-flag-from-a-future-build 1", "positional", "--threads two", "-fa maybe", "--alias a/b",
           "-ot blk=RPC0[10.0.0.1:50052]", "--grammar-file g.gbnf", "--slot-save-path s", "--lora l.gguf",
           "--threads"]


@pytest.mark.parametrize("extra", REFUSED)
def test_guard_refuses(extra):
    with pytest.raises(ArgsError):
        check_agent_args(shlex.split(extra))


@pytest.mark.parametrize("extra", ["--threads 8 -fa on --jinja --no-context-shift", "-ot blk\\.1[0-9]\\.ffn_.*=CPU",
                                   "--alias my-model --reasoning-format deepseek --temp 0.6 -ngl auto",
                                   "--override-kv tokenizer.ggml.add_bos_token=bool:false --seed -1",
                                   "--control-vector-layer-range 1 20 --cache-type-k q8_0"])
def test_guard_accepts(extra):
    check_agent_args(shlex.split(extra))



@pytest.fixture
def conf(write_conf) -> Path:
    path = write_conf("[global]\nPORT=18480\n\n[p1]\nMODEL=tiny.gguf\nCTX_SIZE=256\n")
    write_dense(path.parent / "models" / "tiny.gguf", DenseShape(), seed=2)
    return path


@pytest.mark.anyio
async def test_exploit_and_aliases_are_refused_over_mcp_and_file_untouched(conf):
    before = conf.read_bytes()
    async with Client(build_server(conf)) as client:
        for extra in REFUSED:
            result = await client.call_tool("update_profile", {"profile": "p1", "set": {"EXTRA_ARGS": extra}})
            assert result.is_error, extra
            assert "EXTRA_ARGS" in result.content[0].text
        created = await client.call_tool("create_profile", {"profile": "p2", "values": {
            "MODEL": "tiny.gguf", "EXTRA_ARGS": EXPLOIT}})
        assert created.is_error and "can start programs" in created.content[0].text
        ot = await client.call_tool("update_profile", {"profile": "p1", "set": {
            "OVERRIDE_TENSORS": "blk=RPC0[10.0.0.1:50052]"}})
        assert ot.is_error and "local buffer" in ot.content[0].text
    assert conf.read_bytes() == before


@pytest.mark.engine
@pytest.mark.anyio
async def test_allowed_flags_start_the_real_server_and_the_exploit_runs_nothing(conf, engine_path, tmp_path,
                                                                                monkeypatch):
    monkeypatch.chdir(tmp_path)  # where the exploit would have written pwned.txt
    async with Client(build_server(conf)) as client:
        refused = await client.call_tool("update_profile", {"profile": "p1", "set": {"EXTRA_ARGS": EXPLOIT}})
        assert refused.is_error
        allowed = "--threads 2 -fa off --no-warmup --jinja --alias tiny --seed 7 --no-context-shift -cram 0"
        ok = await client.call_tool("update_profile", {"profile": "p1", "set": {"EXTRA_ARGS": allowed}})
        assert not ok.is_error, ok.content[0].text
        started = await client.call_tool("start_model", {"profile": "p1", "timeout_s": 120})
        try:
            assert not started.is_error, started.content[0].text
            assert started.structured_content["status"] == "ready"
        finally:
            await client.call_tool("stop_model", {"profile": "all"})
    assert not (tmp_path / "pwned.txt").exists()
    assert "--mcp-servers-json" not in load_config(conf).profile("p1").values["EXTRA_ARGS"]


# --- fuzz --------------------------------------------------------------------------------------

_HELP_ARITY = {name: entry.arity for entry in parse_help(HELP_SNAPSHOT.read_text()) for name in entry.names}
_PEOPLE = server_flags.PEOPLE_FLAGS
_SPELLINGS = sorted(_HELP_ARITY)
_VALUES = ["8", "-1", "0", "1.5", "on", "off", "auto", "q8_0", "CUDA0", "CPU", "none", "x.gguf", "/etc/passwd",
           "../../x", "https://evil.example/x", "file:///x", "/bin/sh", "sh -c id", "10.0.0.1:50052",
           '{"mcpServers":{"x":{"command":"/bin/sh"}}}', "exps=CPU", "blk\\.0\\.=CUDA0", "a=RPC0[h:1]",
           "tokenizer.x=str:y", "deepseek", "chatml", "0-3", "ff", "1,2", "C:\\x", "~/x", "$(id)", "`id`"]


def _token():
    spelling = st.sampled_from(_SPELLINGS)
    underscored = spelling.map(lambda s: s.replace("-", "_").replace("__", "--", 1) if s.startswith("--") else s)
    return st.one_of(spelling, underscored, st.sampled_from(_VALUES), st.text(max_size=12))


def _independent_walk(args: list[str]) -> list[tuple[str, list[str]]]:
    """The flags and their values, by the help's arity alone (not by the guard's own table)."""
    found, i = [], 0
    while i < len(args):
        name = args[i].replace("_", "-") if args[i].startswith("--") else args[i]
        assert name in _HELP_ARITY, f"the guard let an unknown token through: {args[i]!r}"
        n = _HELP_ARITY[name]
        found.append((name, args[i + 1:i + 1 + n]))
        i += 1 + n
    return found


@settings(max_examples=4000, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_token(), min_size=1, max_size=8))
def test_fuzz_nothing_that_passes_names_a_file_url_or_program(tokens):
    try:
        check_agent_args(tokens)
    except ArgsError:
        return
    for name, values in _independent_walk(tokens):
        assert name not in _PEOPLE, (tokens, name)
        for value in values:
            assert "://" not in value and "\0" not in value, (tokens, value)
            if name not in ("-ot", "--override-tensor", "-otd", "--spec-draft-override-tensor",
                            "--override-tensor-draft"):
                assert "\\" not in value, (tokens, value)
            assert "/" not in value, (tokens, value)
            assert value not in ("sh", "bash") and not value.startswith(("~", "$(", "`")) or name in (
                "--alias", "-a", "--tags", "-r", "--reverse-prompt", "--grammar", "-j", "--json-schema",
                "--dry-sequence-breaker", "--samplers", "--chat-template-kwargs", "--reasoning-budget-message",
                "--reasoning-effort", "--sampler-seq", "--sampling-seq", "--chat-template"), (tokens, value)


@pytest.mark.anyio
async def test_fuzzed_sequences_through_update_model_match_the_guard(conf):
    # The MCP door applies exactly the core guard: the same verdict for a sample of sequences.
    import random

    rng = random.Random(11)
    async with Client(build_server(conf)) as client:
        for _ in range(60):
            tokens = [rng.choice(_SPELLINGS + _VALUES) for _ in range(rng.randint(1, 5))]
            try:
                check_agent_args(tokens)
                expected_ok = True
            except ArgsError:
                expected_ok = False
            extra = shlex.join(tokens)
            result = await client.call_tool("update_profile", {"profile": "p1", "set": {"EXTRA_ARGS": extra},
                                                              "dry_run": True})
            assert result.is_error != expected_ok, (tokens, result.content[0].text)
    assert json.dumps(load_config(conf).profile("p1").values)  # untouched by dry runs
