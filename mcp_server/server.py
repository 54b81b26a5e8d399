"""The MCP front door: ``build_server()`` wires core functions as tools; nothing here decides anything.

Every tool validates its input (pydantic, through the signature), calls one core function, and
turns a LlamaPilotError into a ToolError whose text says what to do next. Tools take profile ids,
never paths or shell strings.
"""

from __future__ import annotations

import argparse
import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Iterator

from mcp.server import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations
from pydantic import BaseModel, Field

from . import __version__
from .catalog import ModelDetail, ModelSummary, get_model as core_get_model, list_models as core_list_models
from .errors import LlamaPilotError
from .lint import Finding, lint_config
from .profiles import load_config

ProfileId = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="profile id: a [section] of models.conf")]

READ_ONLY = ToolAnnotations(read_only_hint=True, destructive_hint=False, idempotent_hint=True, open_world_hint=False)

INSTRUCTIONS = (
    "llama-pilot manages local llama.cpp models (llama-server) described as profiles in models.conf. "
    "Start with list_models to see profiles; get_model shows one profile's settings and exact argv; "
    "lint_models checks profiles for mistakes before starting them."
)


@contextmanager
def tool_errors() -> Iterator[None]:
    """Domain errors reach the model as readable tool errors; anything else stays a sanitized crash."""
    try:
        yield
    except LlamaPilotError as exc:
        raise ToolError(str(exc)) from exc


class ModelList(BaseModel):
    models: list[ModelSummary]


class LintReport(BaseModel):
    findings: list[Finding]
    errors: int
    warnings: int


def build_server(config_path: str | Path | None = None) -> MCPServer:
    mcp = MCPServer("llama-pilot", version=__version__, instructions=INSTRUCTIONS)

    @mcp.tool(annotations=READ_ONLY)
    def list_models(include_bench: bool = True) -> ModelList:
        """List profiles in models.conf: id, name, description, speed, context size, and whether the GGUF file is present."""
        with tool_errors():
            return ModelList(models=core_list_models(load_config(config_path), include_bench=include_bench))

    @mcp.tool(annotations=READ_ONLY)
    def get_model(profile: ProfileId) -> ModelDetail:
        """One profile in full: each key with where its value comes from (profile or [global]), the model file, the exact llama-server argv."""
        with tool_errors():
            return core_get_model(load_config(config_path), profile)

    @mcp.tool(annotations=READ_ONLY)
    def lint_models(profile: ProfileId | None = None) -> LintReport:
        """Check one profile (or all) for problems: missing model files or shards, bad -ot rules, conflicting settings, known pitfalls."""
        with tool_errors():
            findings = lint_config(load_config(config_path), profile)
        return LintReport(findings=findings, errors=sum(f.severity == "error" for f in findings),
                          warnings=sum(f.severity == "warning" for f in findings))

    return mcp


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mcp_server", description="llama-pilot MCP server (stdio).")
    parser.add_argument("--config", help="models.conf to serve (default: $LLAMA_PILOT_CONFIG or ./models.conf)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")  # stderr only
    build_server(args.config).run()
