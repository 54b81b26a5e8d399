"""RPC workers seen from this machine: list_workers, worker_status, start_worker, stop_worker."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from mcp.server import MCPServer
from pydantic import Field

from mcp_server.server.conventions import READ_ONLY, STARTS, STOPS, in_thread
from mcp_server.workers.operations import WorkerList, WorkerView

WorkerId = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$",
                                description="a worker id from [global]'s WORKER_<id> lines (list_workers shows them)")]


def register(mcp: MCPServer, config_path: str | Path | None) -> None:
    def config():  # type: ignore[no-untyped-def]
        from mcp_server.profiles.config import load_config

        return load_config(config_path)

    @mcp.tool(annotations=READ_ONLY)
    async def list_workers() -> WorkerList:
        """The RPC workers models.conf names (other machines lending their GPUs or CPU to one llama-server): each one's agent asked now for its llama.cpp build (must equal this machine's), its devices with free memory, whether its RPC server runs and which running profiles use it. An unreachable worker says why (worker-unreachable, worker-token-refused)."""
        from mcp_server.workers.operations import list_workers as core

        return await in_thread(lambda: core(config()))

    @mcp.tool(annotations=READ_ONLY)
    async def worker_status(worker: WorkerId) -> WorkerView:
        """One worker as list_workers shows it, with its agent's full report (CPU, RAM, GPUs, the RPC server's memory and clients)."""
        from mcp_server.workers.operations import worker_status as core

        return await in_thread(lambda: core(config(), worker))

    @mcp.tool(annotations=STARTS)
    async def start_worker(worker: WorkerId) -> WorkerView:
        """Start a worker's RPC server ahead of time (start_model does it for a profile with WORKERS); refused when the worker's llama.cpp build differs from this machine's."""
        from mcp_server.workers.operations import start_worker as core

        return await in_thread(lambda: core(config(), worker))

    @mcp.tool(annotations=STOPS)
    async def stop_worker(worker: WorkerId, force: Annotated[bool, Field(
            description="stop it even while a running profile uses it (that llama-server then fails)")] = False
                          ) -> WorkerView:
        """Stop a worker's RPC server (stop_model does it for the workers a profile's start brought up); refused while a running profile uses it unless force."""
        from mcp_server.workers.operations import stop_worker as core

        return await in_thread(lambda: core(config(), worker, force))
