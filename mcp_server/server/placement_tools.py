"""Model files and memory: list_model_files, inspect_model_file, estimate_fit, plan_placement, calibrate."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from mcp.server import MCPServer
from pydantic import Field

from mcp_server.model_files.local import ModelFileInspection, ModelFileList
from mcp_server.placement.calibration import Measurement
from mcp_server.placement.operations import PlanResult, ProfileEstimate
from mcp_server.profiles.config import load_config
from mcp_server.server.conventions import (OVERWRITES, READ_ONLY, RECORDS, GpuSizes, KvCacheType, ModelFilePath, Note,
                                           ProfileId, in_thread)


def register(mcp: MCPServer, config_path: str | Path | None) -> None:
    from mcp_server.model_files import local
    from mcp_server.placement import operations

    @mcp.tool(annotations=READ_ONLY)
    async def list_model_files() -> ModelFileList:
        """Every GGUF model file under the models directory (split models once, by their first shard): path to use as MODEL, size, shards present/expected, architecture, quantization, kind (model or mmproj), and which profiles use it. Use it to find a downloaded file before create_profile."""
        return await in_thread(lambda: local.list_model_files(load_config(config_path)))

    @mcp.tool(annotations=READ_ONLY)
    async def inspect_model_file(path: ModelFilePath, tensors: bool = False) -> ModelFileInspection:
        """What a GGUF model file under the models directory is, from its headers only (all shards, fast): architecture, layers, context length, heads and KV heads, sliding-window and MLA layout, experts (MoE), parameters, bytes by tensor kind, metadata; tensors=True adds the tensor table. `path` is relative to the models directory; absolute paths, '..' and symlinks leading out are refused."""
        return await in_thread(lambda: local.inspect_model_file(load_config(config_path), path, tensors=tensors))

    @mcp.tool(annotations=READ_ONLY)
    async def estimate_fit(profile: ProfileId, gpus: GpuSizes = None, oracle: bool = False) -> ProfileEstimate:
        """Predict a profile's memory before starting it: per GPU and host RAM, weights, KV cache, recurrent state, compute buffers, runtime overhead, total, free after load, fits or not, with an uncertainty band; replays llama-server's default --fit when the profile leaves placement to it; shows the last real measurement of the same settings if calibrate recorded one. oracle=True also runs llama-fit-params (llama.cpp's dry run) for comparison."""
        return await in_thread(lambda: operations.estimate_fit(load_config(config_path), profile, gpus, oracle=oracle))

    @mcp.tool(annotations=OVERWRITES)
    async def plan_placement(
        model: ModelFilePath,
        ctx: Annotated[int, Field(ge=0, le=4_194_304, description="context tokens; 0 = the model's training context")] = 0,
        gpus: GpuSizes = None,
        kv_type: KvCacheType = "f16",
        slots: Annotated[int, Field(ge=1, le=64)] = 1,
        reserve_mib: Annotated[float, Field(ge=0, le=16384, description="MiB kept free per GPU beyond the estimate")] = 384,
        write_profile: Annotated[ProfileId | None, Field(description="an existing profile to write the settings into; "
                                                                     "its MODEL must be this file (or set_model)")] = None,
        set_model: Annotated[bool, Field(description="with write_profile: also point the profile's MODEL at this "
                                                     "file (the diff shows it)")] = False,
        dry_run: bool = False,
    ) -> PlanResult:
        """Choose placement settings for a model file on the GPUs: the whole model on one GPU if it fits, else a layer split sized to each GPU, else (MoE) routed experts moved to the CPU layer by layer while attention, shared experts and KV cache stay on the GPUs, else (dense) layers on the CPU with a warning, reducing the context last. Returns models.conf settings, the predicted per-device use and what was traded. write_profile writes the settings into that profile (one edit, diff returned; dry_run previews); it is refused when that profile's MODEL is another file, unless set_model."""
        return await in_thread(lambda: operations.plan_placement(
            load_config(config_path), model, ctx, gpus, kv_type=kv_type, slots=slots, reserve_mib=reserve_mib,
            write_profile=write_profile, set_model=set_model, dry_run=dry_run, agent=True))

    @mcp.tool(annotations=RECORDS)
    async def calibrate(profile: ProfileId, note: Note = None) -> Measurement:
        """Measure a running, ready profile: per GPU what llama-pilot predicted, what llama.cpp logged (its buffers) and what NVML measures for the process, and the host buffers; the measurement is stored, later estimate_fit calls show it, and estimates on the same GPU model use the measured runtime overhead. Run it after a long prompt so the memory pool has grown."""
        return await in_thread(lambda: operations.calibrate(load_config(config_path), profile, note))
