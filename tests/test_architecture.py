"""The shape of the code cannot drift: the module map, the core's boundary, the error tree, the
verb table (tool = core function = CLI command), and the README's tool table."""

from __future__ import annotations

import ast
import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mcp_server.cli.verbs import ALIASES, VERBS, markdown_table

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "mcp_server"
CORE = ("profiles", "engine", "runtime", "model_files", "placement", "monitoring", "checks", "bench", "setup", "serve", "hub", "tune")
# The endpoint's HTTP door lives beside the scheduler it serves; nothing in the core imports it.
DOORS_IN_CORE = ("serve/proxy.py",)
FRONT_DOOR_LIBRARIES = ("mcp", "click", "textual", "starlette", "uvicorn", "rich")


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if p.name not in ("__init__.py", "__main__.py"))


def test_every_module_is_on_the_architecture_map():
    text = (ROOT / "docs" / "architecture.md").read_text()
    missing = [str(m.relative_to(PACKAGE)) for m in _modules() if f"`{m.relative_to(PACKAGE).as_posix()}`" not in text]
    assert missing == [], f"add these modules to docs/architecture.md's module table: {missing}"


def test_the_map_names_no_module_that_is_gone():
    text = (ROOT / "docs" / "architecture.md").read_text()
    named = {n for n in re.findall(r"`((?:[a-z_]+/)*[a-z_]+\.py)`", text) if not n.startswith(("tests/", "benchmarks/"))}
    present = {m.relative_to(PACKAGE).as_posix() for m in _modules()} | {"__main__.py", "__init__.py"}
    assert named - present == set()


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
            if node.module.startswith("mcp_server."):
                found.add(node.module)
    return found


def test_core_packages_import_no_front_door():
    """The core never imports an MCP, CLI or TUI library, nor a front door of its own (anywhere in
    the file, lazy imports included): those depend on the core, never the other way round."""
    offenders = []
    for package in CORE:
        for path in sorted((PACKAGE / package).rglob("*.py")):
            if path.relative_to(PACKAGE).as_posix() in DOORS_IN_CORE:
                continue
            imported = _imports(path)
            bad = [name for name in imported if name in FRONT_DOOR_LIBRARIES
                   or name.startswith(("mcp_server.server", "mcp_server.cli", "mcp_server.dashboard"))
                   or name in ("mcp_server.serve.proxy",)]
            if bad:
                offenders.append(f"{path.relative_to(PACKAGE)}: {sorted(bad)}")
    assert offenders == []


def test_importing_the_package_loads_nothing_heavy():
    code = ("import sys, mcp_server; heavy = [m for m in ('pydantic', 'click', 'mcp', 'psutil', 'httpx') "
            "if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_library_surface_resolves():
    import mcp_server

    for name in mcp_server.__all__:
        assert getattr(mcp_server, name) is not None, name
    with pytest.raises(AttributeError):
        mcp_server.no_such_thing  # noqa: B018


def _error_classes() -> list[type]:
    for module in _modules():
        rel = module.relative_to(PACKAGE).with_suffix("").as_posix().replace("/", ".")
        if rel.startswith(("dashboard", "server.app")):
            continue
        importlib.import_module(f"mcp_server.{rel}")
    from mcp_server.errors import LlamaPilotError

    found, todo = [], [LlamaPilotError]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo += cls.__subclasses__()
    return [c for c in found if c.__module__.startswith("mcp_server")]


def test_every_error_is_in_the_drawn_tree_with_a_unique_code():
    import mcp_server.errors as errors

    classes = _error_classes()
    drawn = errors.__doc__ or ""
    missing = [c.__name__ for c in classes if not re.search(rf"\b{c.__name__} \[", drawn)]
    assert missing == [], f"draw these in errors.py's tree: {missing}"
    own = {c.__name__: c.__dict__.get("code") for c in classes}
    assert [name for name, code in own.items() if not code] == [], "every error class sets its own code"
    codes = [code for code in own.values()]
    assert len(codes) == len(set(codes)), f"codes must be unique: {sorted(codes)}"
    for c in classes:
        if "<cause>" not in drawn.split(c.__name__ + " [", 1)[1].split("]")[0]:
            assert f"{c.__name__} [{own[c.__name__]}]" in drawn


def test_verbs_name_one_operation_across_the_layers():
    """Each tool exists with its name; its core function has the same name; the CLI command is the
    tool's name with dashes; every alias resolves to it."""
    from mcp_server.cli.main import cli
    from mcp_server.server.app import build_server
    import anyio
    from mcp import Client

    async def names() -> set[str]:
        async with Client(build_server(None)) as client:
            return {t.name for t in (await client.list_tools()).tools}

    tools = anyio.run(names)
    assert tools == {v.tool for v in VERBS}, "VERBS lists every MCP tool, and only tools"
    for verb in VERBS:
        module, _, attr = verb.core.partition(":")
        target = importlib.import_module(f"mcp_server.{module}")
        for part in attr.split("."):
            target = getattr(target, part)
        assert attr.split(".")[-1] == verb.tool, f"{verb.core} should be named {verb.tool}"
        assert cli.get_command(None, verb.command) is not None, f"no CLI command {verb.command}"  # type: ignore[arg-type]
    for alias, command in ALIASES.items():
        assert cli.get_command(None, alias) is cli.get_command(None, command)  # type: ignore[arg-type]
    engine = cli.get_command(None, "engine")  # type: ignore[arg-type]
    assert engine.commands["build"] is cli.get_command(None, "build-engine")  # type: ignore[union-attr,arg-type]


def test_the_user_guide_shows_the_verb_table():
    assert markdown_table() in (ROOT / "docs" / "user-guide.md").read_text(), (
        "docs/user-guide.md must contain mcp_server.cli.verbs.markdown_table() verbatim: paste its output")


def test_readme_tool_table_lists_every_tool_once():
    text = (ROOT / "README.md").read_text()
    section = text.split("| group | tools |", 1)[1].split("\n\n", 1)[0]
    listed = re.findall(r"`([a-z_]+)`", section)
    assert sorted(listed) == sorted(v.tool for v in VERBS), "README's tool table must list each tool exactly once"
    count = re.search(r"All (\d+) tools", text)
    assert count and int(count.group(1)) == len(VERBS)


def test_the_lazy_command_table_names_every_command_where_it_is_defined():
    """cli/main.py knows which module holds each command without importing them; each module's own
    COMMANDS must agree, or a command is unreachable (or listed but missing)."""
    from mcp_server.cli import main

    defined: dict[str, str] = {}
    for module in sorted(set(main.COMMANDS.values())):
        for name in importlib.import_module(f"mcp_server.cli.{module}").COMMANDS:
            assert name not in defined, f"{name} defined in both cli/{defined.get(name)}.py and cli/{module}.py"
            defined[name] = module
    assert defined == main.COMMANDS
