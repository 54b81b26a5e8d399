"""What every MCP tool module shares: argument types, annotations, the error map, the progress relay.

A tool module imports these instead of defining its own, so a profile id is checked the same way
by every tool, an error reaches the client the same way from every tool, and an annotation means
the same thing everywhere.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, TypeVar

import anyio
from mcp.server import MCPServer
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations
from pydantic import Field
from pydantic import ValidationError as PydanticValidationError

from mcp_server.errors import LlamaPilotError, storage_errors
from mcp_server.profiles.config import KV_CACHE_TYPES, PROFILE_ID_PATTERN

T = TypeVar("T")

# --- argument types ------------------------------------------------------------------------------

# An optional argument carries its description on the outside (``Annotated[X | None, Field(description=...)]``):
# inside, it would sit in one branch of the schema's anyOf, where clients do not show it.
ProfileIdStr = Annotated[str, Field(pattern=PROFILE_ID_PATTERN)]
ProfileId = Annotated[str, Field(pattern=PROFILE_ID_PATTERN, description="profile id: a [section] of models.conf")]
ProfileOrGlobal = Annotated[str, Field(pattern=PROFILE_ID_PATTERN,
                                       description="profile id, or 'global' for defaults every profile inherits")]
KeyName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$", description="a models.conf key, e.g. CTX_SIZE")]
KeyValue = Annotated[str, Field(max_length=4000, description="the value as written after KEY=")]
ModelFilePath = Annotated[str, Field(min_length=1, max_length=1000,
                                     description="a .gguf model file relative to the models directory (MODELS_DIR), "
                                                 "as list_model_files shows it, e.g. Qwen3/Qwen3-8B-Q6_K.gguf")]
LoadTimeout = Annotated[float | None, Field(gt=0, le=86400, description="seconds a load may go without a new "
                                                                        "log line before it counts as stuck (above 0); "
                                                                        "default grows with the model's size")]
GpuSizes = Annotated[str | None, Field(
    pattern=r"^[0-9A-Za-z., ]{0,80}$",
    description="declared GPU sizes in CUDA order, e.g. '24GiB,16GiB', or 'none' for CPU only; "
                "omit to use the free memory of the GPUs NVML sees now")]
KvCacheType = Annotated[str, Field(pattern="^(" + "|".join(KV_CACHE_TYPES) + ")$", description="KV cache type")]
JobId = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,160}$", description="a job id from run_benchmark")]
RUN_ID_PATTERN = r"^(latest|evalplus-[0-9]{8}-[0-9]{6}(-[0-9]+)?)$"
RUN_ID_HELP = ("evalplus: continue an interrupted run: 'latest' (the newest unfinished one) or a run id such as "
               "evalplus-20260101-120000 (bench_results lists them)")
TASK_LIST_PATTERN = r"^[A-Za-z0-9/,\- ]{1,400}$"
TASK_LIST_HELP = "evalplus: only these problems, by id or number, ranges allowed: '0-9,17,HumanEval/42'"
Note = Annotated[str | None, Field(max_length=300, description="one line kept with the record (why, what changed)")]
DryRun = Annotated[bool, Field(description="true: compute and return the diff, write nothing")]
Slots = Annotated[int, Field(ge=1, le=64, description="parallel requests (llama-server slots), each with its "
                                                      "own KV cache")]
ReserveMib = Annotated[float, Field(ge=0, le=16384, description="MiB kept free per GPU beyond the estimate")]

# --- annotations (hints for the client; the core enforces every rule itself) ---------------------


def _hints(*, read_only: bool, destructive: bool, idempotent: bool, open_world: bool = False) -> ToolAnnotations:
    return ToolAnnotations(read_only_hint=read_only, destructive_hint=destructive, idempotent_hint=idempotent,
                           open_world_hint=open_world)


READ_ONLY = _hints(read_only=True, destructive=False, idempotent=True)
# test_completion sends one request to a running model: nothing on disk changes, the answer varies.
ASKS = _hints(read_only=True, destructive=False, idempotent=False)
# Starting is additive (nothing is lost) and a second call refuses rather than duplicates.
STARTS = _hints(read_only=False, destructive=False, idempotent=False)
# Stopping or switching ends whatever clients are using the running model.
STOPS = _hints(read_only=False, destructive=True, idempotent=True)
# Creating a profile adds a section and keeps every other line; a second call finds the id taken.
EDITS = _hints(read_only=False, destructive=False, idempotent=False)
# update_profile overwrites or removes values (the backup keeps the old file); twice = same file.
OVERWRITES = _hints(read_only=False, destructive=True, idempotent=True)
# retire_profile takes a profile out of use (commented out, not deleted); a second call finds none.
RETIRES = _hints(read_only=False, destructive=True, idempotent=False)
# Moving a model card keeps its text and never replaces another; a second call finds nothing to move.
MOVES = _hints(read_only=False, destructive=False, idempotent=False)
# calibrate appends a measurement; nothing is overwritten.
RECORDS = _hints(read_only=False, destructive=False, idempotent=False)
# A build adds an engine to llama-pilot's cache and removes nothing; an identical build is reused.
BUILDS = _hints(read_only=False, destructive=False, idempotent=True, open_world=True)
# A benchmark job runs in the background and writes a new results folder.
STARTS_JOB = _hints(read_only=False, destructive=False, idempotent=False)
STOPS_JOB = _hints(read_only=False, destructive=True, idempotent=True)

# --- errors --------------------------------------------------------------------------------------


def error_text(exc: LlamaPilotError) -> str:
    """What the client reads: the stable code first (to match on), then the message (to act on)."""
    return f"{exc.code}: {exc}"


@contextmanager
def tool_errors() -> Iterator[None]:
    """Domain errors reach the model as tool errors with their code; anything else stays a sanitized crash."""
    try:
        with storage_errors("write"):  # a storage failure no core function named yet
            yield
    except LlamaPilotError as exc:
        raise ToolError(error_text(exc)) from exc


async def in_thread(fn: Callable[[], T], *, cancellable: bool = False) -> T:
    """Run blocking core work off the event loop, with domain errors mapped like every tool's."""
    with tool_errors():
        return await anyio.to_thread.run_sync(fn, abandon_on_cancel=cancellable)


def config_or_none(config_path: str | Path | None):  # type: ignore[no-untyped-def]
    """The models.conf a resource reads, or None when there is none: a resource answers "not found",
    where a tool would report the error."""
    from mcp_server.profiles.config import load_config

    try:
        return load_config(config_path)
    except LlamaPilotError:
        return None


# --- strict arguments ----------------------------------------------------------------------------


def forbid_unknown_arguments(mcp: MCPServer) -> None:
    """Every tool refuses arguments it does not take: a misspelt ``dry_run`` must not turn a preview into a
    write, and an agent should learn its mistake, not have it ignored. The schema says so
    (``additionalProperties: false``) and validation enforces it (``extra="forbid"``). A rejected
    argument is reported in the tool's own terms (:class:`ArgumentError`), without pydantic's model
    names and links.

    The SDK builds each tool's argument model from its signature and offers no switch for this, so the
    models are swapped after registration; ``tests/test_mcp_tools.py`` checks it still holds."""
    from pydantic import ConfigDict

    for tool in mcp._tool_manager.list_tools():
        base = tool.fn_metadata.arg_model
        names = sorted(tool.parameters.get("properties", {}))
        strict = type(base.__name__, (base,), {"model_config": ConfigDict(**base.model_config, extra="forbid"),
                                               "__module__": base.__module__,
                                               "model_validate": _reporting(tool.name, names)})
        tool.fn_metadata.arg_model = strict
        tool.parameters = {**tool.parameters, "additionalProperties": False}


def _reporting(tool: str, names: list[str]):  # type: ignore[no-untyped-def]
    @classmethod  # type: ignore[misc]
    def model_validate(cls, obj, *args, **kwargs):  # type: ignore[no-untyped-def]
        try:
            return super(cls, cls).model_validate(obj, *args, **kwargs)
        except PydanticValidationError as exc:
            raise ArgumentError.from_exception_data(f"{tool} arguments", exc.errors(),
                                                    hide_input=False) from None

    ArgumentError.parameters[tool] = names
    return model_validate


class ArgumentError(PydanticValidationError):
    """A tool's arguments did not validate, told as ``invalid-argument: PARAM: what is wrong (got X)``,
    with the tool's parameters named when one was unknown. The SDK prefixes the tool's name."""

    parameters: dict[str, list[str]] = {}

    def __str__(self) -> str:
        tool = self.title.removesuffix(" arguments")
        known = self.parameters.get(tool, [])
        parts = []
        for err in self.errors():
            where = ".".join(str(p) for p in err["loc"]) or "(arguments)"
            if err["type"] == "extra_forbidden":
                parts.append(f"{where}: not a parameter of {tool} (its parameters: {', '.join(known) or 'none'})")
            elif err["type"] == "missing":
                parts.append(f"{where}: required")
            else:
                got = repr(err.get("input"))
                parts.append(f"{where}: {err['msg']} (got {got[:80] + '...' if len(got) > 80 else got})")
        return "invalid-argument: " + "; ".join(parts) + ". The tool's input schema describes each parameter."


# --- progress ------------------------------------------------------------------------------------


def progress_relay(ctx: Context) -> Callable[..., None]:
    """A callback for core code running in a worker thread: each load-progress report (anything with
    ``fraction`` and ``stage``) becomes an MCP progress notification on the client's request."""

    def report(progress) -> None:  # type: ignore[no-untyped-def]
        anyio.from_thread.run(ctx.report_progress, progress.fraction, 1.0, progress.stage)

    return report
