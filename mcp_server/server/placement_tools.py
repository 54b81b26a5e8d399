"""Model files and memory: list_model_files, inspect_model_file, estimate_fit, plan_placement, calibrate."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from mcp.server import MCPServer
from pydantic import Field

from mcp_server.model_files.cards import CardMove
from mcp_server.model_files.local import ModelFileInspection, ModelFileList
from mcp_server.placement.calibration import Measurement
from mcp_server.placement.operations import PlanResult, ProfileEstimate
from mcp_server.profiles.config import load_config
from mcp_server.profiles.config import KV_CACHE_TYPES, PROFILE_ID_PATTERN
from mcp_server.server.conventions import (MOVES, OVERWRITES, READ_ONLY, RECORDS, DryRun, GpuSizes, KeyName, KeyValue,
                                           KvCacheType, ModelFilePath, Note, ProfileId, ReserveMib, Slots, in_thread)


def register(mcp: MCPServer, config_path: str | Path | None) -> None:
    from mcp_server.model_files import local
    from mcp_server.placement import operations

    @mcp.tool(annotations=READ_ONLY)
    async def list_model_files() -> ModelFileList:
        """Every GGUF model file under the models directory (split models once, by their first shard): path to use as MODEL, size, shards present/expected, architecture, quantization, kind (model or mmproj), and which profiles use it. Use it to find a downloaded file before create_profile."""
        return await in_thread(lambda: local.list_model_files(load_config(config_path)))

    @mcp.tool(annotations=READ_ONLY)
    async def inspect_model_file(path: ModelFilePath, tensors: Annotated[bool, Field(
            description="also return the tensor table (large for big models)")] = False) -> ModelFileInspection:
        """What a GGUF model file under the models directory is, from its headers only (all shards, fast): architecture, layers, context length, heads and KV heads, sliding-window and MLA layout, experts (MoE), parameters, bytes by tensor kind, metadata; tensors=True adds the tensor table. `path` is relative to the models directory; absolute paths, '..' and symlinks leading out are refused."""
        return await in_thread(lambda: local.inspect_model_file(load_config(config_path), path, tensors=tensors))

    @mcp.tool(annotations=MOVES)
    async def promote_model_card(
        name: Annotated[str, Field(min_length=1, max_length=140, description="the card's file name without .md, "
                                                                            "as in model-card://CANDIDATES/<name>")],
        dry_run: DryRun = False,
    ) -> CardMove:
        """Move a model card from the models directory's documentation/CANDIDATES/ up to documentation/ once its model is added (phase 8 of /add-model); it is then the resource model-card://<name>. Never overwrites a card: an existing one of that name is refused with nothing moved."""
        from mcp_server.model_files.cards import promote_model_card as core

        return await in_thread(lambda: core(load_config(config_path), name, dry_run=dry_run))

    @mcp.tool(annotations=READ_ONLY)
    async def estimate_fit(
        profile: Annotated[str | None, Field(
            pattern=PROFILE_ID_PATTERN, description="the profile to size; with model, the id the draft would get "
                                                    "(need not exist yet); omit with model for a draft named "
                                                    "'draft'")] = None,
        model: Annotated[str | None, Field(
            min_length=1, max_length=1000, description="a .gguf file relative to the models directory: size it "
                                                       "as a profile draft before (or instead of) its profile")] = None,
        values: Annotated[dict[KeyName, KeyValue], Field(
            description="draft settings on top of the profile (or of [global] for a new one), e.g. "
                        "{\"CTX_SIZE\": \"32768\", \"KV_CACHE_TYPE_K\": \"q8_0\"}; nothing is written")] = {},
        gpus: GpuSizes = None,
        oracle: Annotated[bool, Field(description="also run llama-fit-params (llama.cpp's own dry run) and show "
                                                  "its numbers beside these")] = False,
    ) -> ProfileEstimate:
        """Predict the memory of given settings: per GPU and host RAM, weights, KV cache, recurrent state, compute buffers, runtime overhead, fits or not, with an uncertainty band; replays llama-server's default --fit when placement is left to it; shows the last real measurement (calibrate) of the same settings. Sizes an existing profile, or a draft: a model file with settings before any profile exists, or a profile with changed values, without writing. Use it to check settings you have; use plan_placement to have settings chosen for you."""
        return await in_thread(lambda: operations.estimate_fit(load_config(config_path), profile, gpus, oracle=oracle,
                                                               model=model, values=dict(values), agent=True))

    @mcp.tool(annotations=READ_ONLY)
    async def plan_placement(
        model: ModelFilePath,
        ctx: Annotated[int, Field(ge=0, le=4_194_304, description="context tokens; 0 = the model's training context")] = 0,
        gpus: GpuSizes = None,
        kv_type: KvCacheType = "f16",
        slots: Slots = 1,
        reserve_mib: ReserveMib = 384,
        workers: Annotated[list[Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$")]] | None, Field(
            description="also place on these RPC workers' devices (ids from list_workers): the plan splits the "
                        "model over them and the local GPUs, and sets WORKERS")] = None,
    ) -> PlanResult:
        """Choose placement settings for a model file on the GPUs, writing nothing: the whole model on one GPU if it fits, else a layer split sized to each GPU, else (MoE) routed experts moved to the CPU layer by layer while attention, shared experts and KV cache stay on the GPUs, else (dense) layers on the CPU with a warning, reducing the context last. Returns models.conf settings (pass them as create_profile values), the predicted per-device use and what was traded. To write a plan into an existing profile use apply_placement; to size settings you already have use estimate_fit."""
        return await in_thread(lambda: operations.plan_placement(
            load_config(config_path), model, ctx, gpus, kv_type=kv_type, slots=slots, reserve_mib=reserve_mib,
            agent=True, workers=workers))

    @mcp.tool(annotations=OVERWRITES)
    async def apply_placement(
        profile: ProfileId,
        model: Annotated[str | None, Field(
            min_length=1, max_length=1000, description="plan this file (relative to the models directory) instead "
                                                       "of the profile's MODEL, and point MODEL at it")] = None,
        ctx: Annotated[int | None, Field(ge=0, le=4_194_304, description="context tokens; default the profile's "
                                                                          "CTX_SIZE (0 = training context)")] = None,
        gpus: GpuSizes = None,
        kv_type: Annotated[str | None, Field(pattern="^(" + "|".join(KV_CACHE_TYPES) + ")$",
                                             description="KV cache type; default the profile's KV_CACHE_TYPE_K, "
                                                         "else f16")] = None,
        slots: Annotated[int | None, Field(ge=1, le=64, description="parallel requests; default the profile's "
                                                                    "PARALLEL, else 1")] = None,
        reserve_mib: ReserveMib = 384,
        dry_run: DryRun = False,
    ) -> PlanResult:
        """Plan placement for an existing profile (as plan_placement does) and write the settings into it in one edit, removing placement keys that would contradict the plan; returns the plan and the diff (dry_run previews; a backup is kept). Context, KV type and slots default to the profile's own, so only placement changes. For a profile that does not exist yet, call plan_placement and pass its settings to create_profile."""
        return await in_thread(lambda: operations.apply_placement(
            load_config(config_path), profile, model, ctx, gpus, kv_type=kv_type, slots=slots,
            reserve_mib=reserve_mib, dry_run=dry_run, agent=True))

    @mcp.tool(annotations=RECORDS)
    async def calibrate(profile: ProfileId, note: Note = None) -> Measurement:
        """Measure a running, ready profile: per GPU what llama-pilot predicted, what llama.cpp logged (its buffers) and what NVML measures for the process, and the host buffers; the measurement is stored, later estimate_fit calls show it, and estimates on the same GPU model use the measured runtime overhead. Run it after a long prompt so the memory pool has grown."""
        return await in_thread(lambda: operations.calibrate(load_config(config_path), profile, note))
