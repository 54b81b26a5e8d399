"""MCP tools for placement: estimate_fit and plan_placement (thin: validate, call placement, return)."""

from __future__ import annotations

from typing import Annotated

import anyio
from mcp.server import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations
from pydantic import Field

from mcp_server.errors import LlamaPilotError
from mcp_server.placement.calibration import Measurement
from mcp_server.placement.operations import PlanResult, ProfileEstimate, calibrate as core_calibrate, estimate_profile, plan
from mcp_server.profiles.config import KV_CACHE_TYPES, PROFILE_ID_PATTERN, load_config, model_path_inside

KV_TYPE_PATTERN = "^(" + "|".join(KV_CACHE_TYPES) + ")$"
ProfileId = Annotated[str, Field(pattern=PROFILE_ID_PATTERN, description="profile id: a [section] of models.conf")]
GpuSizes = Annotated[str | None, Field(
    pattern=r"^[0-9A-Za-z., ]{0,80}$",
    description="declared GPU sizes in CUDA order, e.g. '24GiB,16GiB', or 'none' for CPU only; "
                "omit to use the free memory of the GPUs NVML sees now")]
READ_ONLY = ToolAnnotations(read_only_hint=True, destructive_hint=False, idempotent_hint=True, open_world_hint=False)
# calibrate appends a measurement to llama-pilot's own store; nothing of the user's changes.
RECORDS = ToolAnnotations(read_only_hint=False, destructive_hint=False, idempotent_hint=False, open_world_hint=False)
# With write_profile, plan_placement overwrites placement keys of that profile (a backup is kept).
PLANS = ToolAnnotations(read_only_hint=False, destructive_hint=True, idempotent_hint=True, open_world_hint=False)


def register_placement_tools(mcp: MCPServer, config_path: str | None) -> None:
    @mcp.tool(annotations=READ_ONLY)
    async def estimate_fit(profile: ProfileId, gpus: GpuSizes = None, oracle: bool = False) -> ProfileEstimate:
        """Predict a profile's memory before starting it: per GPU and host RAM, weights, KV cache, recurrent state, compute buffers, runtime overhead, total, free after load, fits or not, with an uncertainty band; replays llama-server's default --fit when the profile leaves placement to it; shows the last real measurement of the same settings if `llama-pilot calibrate` recorded one. oracle=True also runs llama-fit-params (llama.cpp's dry run) for comparison."""
        try:
            config = load_config(config_path)
            return await anyio.to_thread.run_sync(lambda: estimate_profile(config, profile, gpus, oracle=oracle))
        except LlamaPilotError as exc:
            raise ToolError(str(exc)) from exc

    @mcp.tool(annotations=PLANS)
    async def plan_placement(
        model: Annotated[str, Field(description="GGUF path relative to the models directory (the first shard of a split model)")],
        ctx: Annotated[int, Field(ge=0, le=4_194_304, description="context tokens; 0 = the model's training context")] = 0,
        gpus: GpuSizes = None,
        kv_type: Annotated[str, Field(pattern=KV_TYPE_PATTERN)] = "f16",
        slots: Annotated[int, Field(ge=1, le=64)] = 1,
        reserve_mib: Annotated[float, Field(ge=0, le=16384, description="MiB kept free per GPU beyond the estimate")] = 384,
        write_profile: Annotated[str | None, Field(pattern=PROFILE_ID_PATTERN, description="an existing profile to write the settings into")] = None,
        dry_run: bool = False,
    ) -> PlanResult:
        """Choose placement settings for a model on the GPUs: the whole model on one GPU if it fits, else a layer split sized to each GPU, else (MoE) routed experts moved to the CPU layer by layer while attention, shared experts and KV cache stay on the GPUs, else (dense) layers on the CPU with a warning, reducing the context last. Returns models.conf settings, the predicted per-device use and what was traded. write_profile writes the settings into that profile (one edit, diff returned; dry_run previews)."""
        try:
            config = load_config(config_path)
            path = model_path_inside(config, model, key="model")
            return await anyio.to_thread.run_sync(lambda: plan(
                path, ctx, gpus, kv_type=kv_type, slots=slots, reserve_mib=reserve_mib, config=config,
                write_profile=write_profile, dry_run=dry_run))
        except LlamaPilotError as exc:
            raise ToolError(str(exc)) from exc

    @mcp.tool(annotations=RECORDS)
    async def calibrate(profile: ProfileId,
                        note: Annotated[str | None, Field(max_length=300)] = None) -> Measurement:
        """Measure a running, ready profile: per GPU what llama-pilot predicted, what llama.cpp logged (its buffers) and what NVML measures for the process, and the host buffers; the measurement is stored, later estimate_fit calls show it, and estimates on the same GPU model use the measured runtime overhead. Run it after a long prompt so the memory pool has grown."""
        try:
            config = load_config(config_path)
            return await anyio.to_thread.run_sync(lambda: core_calibrate(config, profile, note))
        except LlamaPilotError as exc:
            raise ToolError(str(exc)) from exc
