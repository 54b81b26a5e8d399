"""tune_profile: the tuner as a background job (get_job, cancel_job)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from mcp.server import MCPServer
from pydantic import Field

from mcp_server.jobs import Job
from mcp_server.server.conventions import STARTS_JOB, ProfileId, in_thread


def register(mcp: MCPServer, config_path: str | Path | None) -> None:
    @mcp.tool(annotations=STARTS_JOB)
    async def tune_profile(
        profile: ProfileId,
        goal: Annotated[Literal["generation", "prompt", "balanced"], Field(
            description="what to make fastest; balanced: the geometric mean of prompt and generation")] = "generation",
        minutes: Annotated[float, Field(ge=0.1, le=600, description="time for the search; the paired comparison "
                                                                   "with --fit comes after")] = 10.0,
        depth: Annotated[int, Field(ge=0, le=1 << 24, description="tokens already in the context when speed is "
                                                                  "measured")] = 2048,
        allow_kv_quant: Annotated[bool, Field(description="also try a q8_0 KV cache (a quality trade: ask the "
                                                          "user)")] = False,
        write: Annotated[bool, Field(description="put the winner, SPEED and a tuned-date comment into the "
                                                 "profile when done")] = False,
    ) -> Job:
        """Find the fastest safe settings for a profile on this machine, as a background job: candidates around the planner's placement (expert layers on the GPUs, CPU threads, batch and micro-batch, load mode, flash attention; the KV type only with allow_kv_quant), each checked by the estimator at the profile's full context before it is loaded (a candidate predicted to run out of memory is never tried), measured on the real engine, and the winner compared with llama.cpp's --fit in alternating loads (a ratio with its spread). Measurements are kept: a later tune of the same model and GPUs starts from the known best. Loads the model many times: ask the user first, and do not run it beside a benchmark. Poll get_job; cancel_job stops it."""
        from mcp_server.profiles.config import load_config
        from mcp_server.tune.operations import tune_profile as core

        return await in_thread(lambda: core(load_config(config_path), profile, goal, minutes, depth, allow_kv_quant,
                                            write))
