"""The maps in the docs cannot drift from the code: every module of the package is named in
docs/architecture.md (a folder such as `bench/` names everything in it)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "mcp_server"


def test_every_module_is_on_the_architecture_map():
    text = (ROOT / "docs" / "architecture.md").read_text()
    missing = []
    for module in sorted(PACKAGE.rglob("*.py")):
        rel = module.relative_to(PACKAGE)
        if rel.name in ("__init__.py", "__main__.py"):
            continue
        folder_named = len(rel.parts) > 1 and f"`{rel.parts[0]}/`" in text
        if not folder_named and f"`{rel.name}`" not in text and f"{rel.name}" not in text:
            missing.append(str(rel))
    assert missing == [], f"add these modules to docs/architecture.md's module table: {missing}"
