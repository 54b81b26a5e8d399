"""Claude Code integration (install-claude, the shipped skill and agents, .mcp.json) and the CLI
mirror of every MCP tool."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from mcp_server.setup.claude import bundled_files
from mcp_server.cli.main import cli
from mcp_server.cli.verbs import VERBS

REPO = Path(__file__).resolve().parent.parent
AGENTS = ("gpu-optimizer", "model-manager", "benchmark", "diagnose", "doc-keeper")


def run(*args: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def _frontmatter(text: str) -> dict[str, str]:
    match = re.match(r"^---\n(.*?)\n---\n", text, re.S)
    assert match, "no YAML frontmatter"
    fields = {}
    for line in match.group(1).splitlines():
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    return fields


def _tool_names() -> set[str]:
    import anyio
    from mcp import Client

    from mcp_server.server.app import build_server

    async def names() -> set[str]:
        async with Client(build_server(REPO / "models.conf")) as client:
            return {t.name for t in (await client.list_tools()).tools}

    return anyio.run(names)


def test_skill_and_agents_name_only_real_tools():
    files = bundled_files()
    tools = _tool_names()
    assert set(files) == {"skills/add-model/SKILL.md", *(f"agents/{a}.md" for a in AGENTS)}
    for rel, data in files.items():
        text = data.decode()
        meta = _frontmatter(text)
        assert meta["description"], rel
        used = set(re.findall(r"mcp__llama-pilot__([a-z_]+)", text))
        assert used, f"{rel} names no llama-pilot tool"
        assert used <= tools, f"{rel} names unknown tools {used - tools}"
        if rel.startswith("agents/"):
            assert meta["name"] == Path(rel).stem
            assert set(re.findall(r"mcp__llama-pilot__([a-z_]+)", meta["tools"])) == used, rel
    skill = files["skills/add-model/SKILL.md"].decode()
    phases = re.findall(r"^## Phase (\d): (.+)$", skill, re.M)
    assert [p[0] for p in phases] == [str(i) for i in range(1, 9)]
    assert "/work" not in skill and "/root" not in skill


def test_repo_mcp_json_and_links():
    config = json.loads((REPO / ".mcp.json").read_text())
    assert config["mcpServers"]["llama-pilot"] == {"type": "stdio", "command": "python", "args": ["-m", "mcp_server"]}
    assert (REPO / "skills" / "add-model" / "SKILL.md").read_bytes() == bundled_files()["skills/add-model/SKILL.md"]
    assert sorted(p.stem for p in (REPO / "agents").glob("*.md")) == sorted(AGENTS)


def test_install_claude_twice_and_merge(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    other = {"type": "stdio", "command": "npx", "args": ["some-server"]}
    (project / ".mcp.json").write_text(json.dumps({"mcpServers": {"other": other}, "extra": 1}))
    first = run("install-claude", str(project), "--json")
    assert first.exit_code == 0, first.output
    report = json.loads(first.output)
    assert report["other_servers"] == ["other"]
    actions = {f["path"]: f["action"] for f in report["files"]}
    assert actions[".mcp.json"] == "updated"
    assert actions[".claude/skills/add-model/SKILL.md"] == "created"
    assert {f".claude/agents/{a}.md" for a in AGENTS} <= set(actions)
    merged = json.loads((project / ".mcp.json").read_text())
    assert merged["extra"] == 1 and merged["mcpServers"]["other"] == other
    assert merged["mcpServers"]["llama-pilot"] == {"type": "stdio", "command": sys.executable,
                                                   "args": ["-m", "mcp_server"]}
    for rel, data in bundled_files().items():
        assert (project / ".claude" / rel).read_bytes() == data

    snapshot = {p: p.read_bytes() for p in project.rglob("*") if p.is_file()}
    second = json.loads(run("install-claude", str(project), "--json").output)
    assert {f["action"] for f in second["files"]} == {"unchanged"}
    assert {p: p.read_bytes() for p in project.rglob("*") if p.is_file()} == snapshot


def test_install_claude_fresh_dir_with_config_and_table(tmp_path):
    conf = tmp_path / "models.conf"
    conf.write_text("[global]\n")
    result = run("install-claude", str(tmp_path), "--python", "/usr/bin/python3", "--server-config", str(conf))
    assert result.exit_code == 0 and "created   .mcp.json" in result.output
    entry = json.loads((tmp_path / ".mcp.json").read_text())["mcpServers"]["llama-pilot"]
    assert entry == {"type": "stdio", "command": "/usr/bin/python3",
                     "args": ["-m", "mcp_server", "--config", str(conf.resolve())]}


def test_install_claude_refuses_invalid_json(tmp_path):
    (tmp_path / ".mcp.json").write_text("{not json")
    result = run("install-claude", str(tmp_path))
    assert result.exit_code == 1 and str(tmp_path / ".mcp.json") in result.output and "not valid JSON" in result.output
    assert (tmp_path / ".mcp.json").read_text() == "{not json" and not (tmp_path / ".claude").exists()
    (tmp_path / ".mcp.json").write_text('{"mcpServers": []}')
    assert run("install-claude", str(tmp_path)).exit_code == 1
    assert run("install-claude", str(tmp_path / "missing")).exit_code == 1


@pytest.mark.timeout(300)
def test_wheel_ships_skill_and_agents(tmp_path):
    pytest.importorskip("wheel", reason="building a wheel needs the wheel package")
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "mcp_server", src / "mcp_server", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path / "dist"), str(src)], check=True, capture_output=True, timeout=280)
    [wheel] = (tmp_path / "dist").glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"mcp_server/claude/{rel}" for rel in bundled_files()} <= names
    # The docs:// resources come from the package's docs/, so a regular install serves them too.
    docs = {f"mcp_server/docs/{p.relative_to(REPO / 'docs').as_posix()}" for p in (REPO / "docs").rglob("*.md")}
    assert docs and docs <= names, sorted(docs - names)[:5]


# --- the CLI mirror ---------------------------------------------------------------------------

def test_every_tool_has_a_command():
    """Each tool's command is its name with dashes (cli/verbs.py), and takes --json."""
    tools = _tool_names()
    assert tools == {v.tool for v in VERBS}
    for verb in VERBS:
        result = CliRunner().invoke(cli, [verb.command, "--help"])
        assert result.exit_code == 0, (verb.tool, result.output)
        assert "--json" in result.output, verb.tool


def test_new_commands_json_and_exit_codes(write_conf):
    from mcp_server.model_files.synthetic import DenseShape, write_dense

    conf = write_conf("[global]\nMODELS_DIR=models\n\n[alpha]\nMODEL=a.gguf\nTEMP=0.7\n")
    write_dense(conf.parent / "models" / "t" / "tiny.gguf", DenseShape(), seed=2)
    c = str(conf)
    local = json.loads(run("--config", c, "list-model-files", "--json").output)
    assert [m["path"] for m in local["files"]] == ["t/tiny.gguf"]
    assert "t/tiny.gguf" in run("--config", c, "list-model-files").output
    info = json.loads(run("--config", c, "inspect-model-file", "t/tiny.gguf", "--json").output)
    assert info["architecture"] == "llama" and info["relative_path"] == "t/tiny.gguf"
    assert run("--config", c, "inspect-model-file", "../models.conf").exit_code == 1
    report = json.loads(run("--config", c, "diagnose", "alpha", "--json").output)
    assert report["findings"][0]["code"] == "model-missing"
    assert "will not start" in run("--config", c, "diagnose", "alpha").output
    assert run("--config", c, "diagnose", "nope").exit_code == 1
    failed = run("--config", c, "test-completion", "alpha")
    assert failed.exit_code == 1 and "not ready" in failed.output
    assert run("--config", c, "test-completion").exit_code == 2
    dry = json.loads(run("--config", c, "update-profile", "alpha", "CTX_SIZE=1024", "--unset", "TEMP", "--dry-run",
                         "--json").output)
    assert "+CTX_SIZE=1024" in dry["diff"] and "-TEMP=0.7" in dry["diff"]
    assert run("--config", c, "update-profile", "alpha").exit_code == 2
    assert run("--config", c, "update-profile", "alpha", "PORT=8080 --foo").exit_code == 1
    assert run("--config", c, "update-profile", "alpha", "MODEL=x.gguf --rpc evil").exit_code == 1
    assert run("--config", c, "update-profile", "alpha", "CTX_SIZE=1024").exit_code == 0
    assert "CTX_SIZE=1024" in conf.read_text()


def test_readme_and_user_guide_list_every_tool():
    tools = _tool_names()
    readme = (REPO / "README.md").read_text()
    guide = (REPO / "docs" / "user-guide.md").read_text()
    assert f"All {len(tools)} tools" in readme
    for tool in tools:
        assert f"`{tool}`" in readme, tool
        assert f"`{tool}`" in guide, tool
