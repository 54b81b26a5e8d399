"""The machine and the engine: gpu_stats, system_stats, build_engine."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Annotated, Literal

import anyio
from mcp.server import MCPServer
from mcp.server.mcpserver import Context
from pydantic import Field

from mcp_server.engine.binary import EngineInfo
from mcp_server.errors import LlamaPilotError
from mcp_server.monitoring.gpu import GpuReport
from mcp_server.monitoring.system import SystemStats
from mcp_server.server.conventions import BUILDS, READ_ONLY, in_thread, tool_errors

BUILD_STEPS = ("wait", "download", "extract", "configure", "compile", "install")


class BuildCancelled(LlamaPilotError):
    """The client stopped waiting; raised inside the build so it kills the running step."""

    code = "build-cancelled"


def register(mcp: MCPServer, config_path: "str | Path | None" = None) -> None:
    @mcp.tool(annotations=READ_ONLY)
    async def gpu_stats() -> GpuReport:
        """The GPUs now (for the host's CPU and RAM use system_stats): every NVIDIA GPU: NVML index (nvidia-smi's) and CUDA index (llama.cpp's CUDA<n>), name, compute capability, memory total/used/free in MiB, GPU and memory utilisation, temperature, power and limit, clocks, fan; each process on it with its memory and the llama-pilot instance (profile) that owns it. Without a driver or GPU: gpus is empty and reason says why. With RPC workers in models.conf, workers lists the devices each lends (as its agent reports them now)."""
        from mcp_server.server.conventions import config_or_none
        from mcp_server.workers.operations import gpu_stats_with_workers as core

        return await in_thread(lambda: core(config_or_none(config_path)))

    @mcp.tool(annotations=READ_ONLY)
    async def system_stats() -> SystemStats:
        """Host CPU (total and per core, over a short window), load average, RAM and swap in MiB, and per running instance its llama-server's RSS and CPU (Docker instances also the container's memory and CPU)."""
        from mcp_server.monitoring.system import system_stats as core

        return await in_thread(core)

    @mcp.tool(annotations=BUILDS)
    async def build_engine(
        ctx: Context,
        backend: Annotated[Literal["auto", "cpu", "cuda"], Field(
            description="'cuda' for NVIDIA GPUs, 'cpu' for none; 'auto' picks cuda when a GPU and nvcc are "
                        "found")] = "auto",
        cuda_arch: Annotated[str | None, Field(pattern=r"^[0-9]{2,3}[a-z]?(;[0-9]{2,3}[a-z]?)*$",
                                               description="CUDA architectures such as '89;120' "
                                                           "(default: the GPUs present)")] = None,
        force: Annotated[bool, Field(description="rebuild even when the same build exists")] = False,
    ) -> EngineInfo:
        """Build llama-server (and llama-bench, llama-fit-params, ggml-rpc-server) from llama-pilot's pinned llama.cpp release into its cache: download, extract, configure, compile, install, with progress. Takes about 15 minutes on two CPU cores (longer with CUDA); returns at once when the same build already exists (force=True rebuilds). Only needed when status/diagnose report no engine. Cancelling kills the compiler; a failed build names the step and keeps its log."""
        from mcp_server.engine import binary as core

        cancelled = threading.Event()
        done = 0.0

        def progress(step: str, fraction: float | None) -> None:
            nonlocal done
            if cancelled.is_set():
                raise BuildCancelled("build cancelled by the client")
            index = BUILD_STEPS.index(step) if step in BUILD_STEPS else 0
            # A step's end stays just below the next step's start, so every step is reported.
            overall = (index + 0.99 * (fraction or 0.0)) / len(BUILD_STEPS)
            if overall > done:
                done = overall
                anyio.from_thread.run(ctx.report_progress, overall, 1.0, step)

        with tool_errors():
            plan = core.plan_build(None, backend=backend, cuda_architectures=cuda_arch)
        try:
            return await in_thread(lambda: core.build_engine(plan, progress=progress, force=force), cancellable=True)
        except anyio.get_cancelled_exc_class():
            cancelled.set()  # the worker raises at its next progress line, which kills the step
            raise
