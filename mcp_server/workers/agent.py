"""The worker agent: ``llama-pilot worker serve`` on each host that lends its devices.

It is llama-pilot's MCP server over streamable HTTP, with a bearer token that cannot be left out,
plus four tools for the machine that runs the model: ``worker_info`` (this host's devices, engine
build and RPC server), ``rpc_start``, ``rpc_stop`` and ``rpc_log``. The agent and its RPC server
listen on one address, checked by :func:`mcp_server.workers.addresses.check_bind`; the RPC server
is always bound to the agent's own address, never to one a caller picks.
"""

from __future__ import annotations

import logging
import os
import platform
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, Field

from mcp_server.workers.rpc import RpcStatus

log = logging.getLogger(__name__)


class WorkerGpu(BaseModel):
    device: str = Field(description="CUDA<n> on the worker")
    name: str | None
    total_mib: float | None
    free_mib: float | None


class WorkerInfo(BaseModel):
    hostname: str
    address: str = Field(description="the one address the agent and its RPC server listen on")
    build_number: int | None = Field(description="the worker's llama.cpp build: RPC needs the same on both ends")
    build_commit: str | None = None
    backend: str | None = Field(None, description="cpu | cuda | ...")
    rpc_server: bool = Field(description="whether ggml-rpc-server is next to the worker's llama-server")
    cpu: str
    cpu_cores: int
    ram_total_mib: float
    ram_available_mib: float
    gpus: list[WorkerGpu] = Field(default_factory=list, description="NVML's view (empty without a GPU)")
    gpu_reason: str | None = None
    rpc: RpcStatus


def worker_info(address: str, engine: str | None = None) -> WorkerInfo:
    import psutil

    from mcp_server.engine.binary import locate_engine
    from mcp_server.monitoring.gpu import gpu_stats
    from mcp_server.workers.rpc import rpc_status

    try:
        found = locate_engine(engine)
        build, commit, backend, rpc = (found.build_number, found.build_commit, found.backend,
                                       "ggml-rpc-server" in found.tools)
    except Exception:  # noqa: BLE001 - an agent without an engine still reports its devices
        build, commit, backend, rpc = None, None, None, False
    report = gpu_stats()
    memory = psutil.virtual_memory()
    return WorkerInfo(hostname=platform.node(), address=address, build_number=build, build_commit=commit,
                      backend=backend, rpc_server=rpc, cpu=platform.processor() or platform.machine(),
                      cpu_cores=psutil.cpu_count() or 1, ram_total_mib=round(memory.total / 2**20),
                      ram_available_mib=round(memory.available / 2**20),
                      gpus=[WorkerGpu(device=f"CUDA{i}", name=g.name, total_mib=g.memory_total_mib,
                                      free_mib=g.memory_free_mib) for i, g in enumerate(report.in_cuda_order())],
                      gpu_reason=report.reason, rpc=rpc_status())


def register(mcp, address: str, engine: str | None = None) -> None:  # type: ignore[no-untyped-def]
    from mcp_server.server.conventions import READ_ONLY, STARTS, STOPS, in_thread, tool_errors
    from mcp_server.workers import rpc

    @mcp.tool(name="worker_info", annotations=READ_ONLY)
    async def worker_info_tool() -> WorkerInfo:
        """This worker host: its llama.cpp build, CPU, RAM, GPUs (NVML) and its RPC server (devices lent, memory held, clients)."""
        return await in_thread(lambda: worker_info(address, engine))

    @mcp.tool(annotations=STARTS)
    async def rpc_start(
            port: Annotated[int, Field(ge=1024, le=65535, description="port of the RPC server")] = 50052,
            cache: Annotated[bool, Field(description="the tensor cache (-c): a second load reads this host's "
                                                     "disk instead of the network")] = True,
            threads: Annotated[int | None, Field(ge=1, le=1024, description="CPU threads")] = None,
            devices: Annotated[list[Annotated[str, Field(pattern=r"^[A-Za-z]+[0-9]*$")]] | None, Field(
                description="devices to lend, e.g. ['CUDA0'] (default all)")] = None) -> RpcStatus:
        """Start this host's ggml-rpc-server on the agent's own address (kept as it is when it already runs with the same settings)."""
        def start() -> RpcStatus:
            from mcp_server.engine.binary import locate_engine

            binary = locate_engine(engine).tools.get("ggml-rpc-server")
            if not binary:
                raise rpc.RpcError("this worker's engine has no ggml-rpc-server next to llama-server; build it "
                                   "with `llama-pilot engine build` on the worker")
            return rpc.start_rpc(rpc.RpcSettings(host=address, port=port, cache=cache, threads=threads,
                                                 devices=devices), binary)

        with tool_errors():
            return await in_thread(start)

    @mcp.tool(annotations=STOPS)
    async def rpc_stop() -> RpcStatus:
        """Stop this host's ggml-rpc-server."""
        return await in_thread(rpc.stop_rpc)

    @mcp.tool(annotations=READ_ONLY)
    async def rpc_log(lines: Annotated[int, Field(ge=1, le=2000)] = 100) -> list[str]:
        """The last lines of the RPC server's log."""
        return await in_thread(lambda: rpc.rpc_log(lines))


def serve(host: str, port: int, token_env: str, config_path: str | None = None) -> None:
    """Run the agent until interrupted; its RPC server is stopped on the way out."""
    import uvicorn

    from mcp_server.errors import ValidationError
    from mcp_server.server.app import BearerToken, build_server
    from mcp_server.workers.addresses import check_bind, is_local_address
    from mcp_server.workers.rpc import stop_rpc

    address = check_bind(host)
    if not is_local_address(address):
        raise ValidationError("host", host, "is not an address of this machine (ip addr lists them)")
    token = os.environ.get(token_env)
    if not token or len(token) < 16:
        raise ValidationError(token_env, "(unset)" if not token else "(too short)",
                              "the worker agent needs a bearer token of at least 16 characters in this "
                              "environment variable (e.g. `export {0}=$(openssl rand -hex 24)`), the same on "
                              "the main machine".format(token_env))
    engine = _engine_setting(config_path)
    mcp = build_server(config_path if config_path and Path(config_path).exists() else None,
                       extra=[lambda m: register(m, address, engine)])
    app = mcp.streamable_http_app(host=address, transport_security=_security(address, port))
    log.info("worker agent at http://%s:%d/mcp (bearer token from $%s); RPC server binds %s", address, port,
             token_env, address)
    try:
        uvicorn.run(BearerToken(app, token), host=address, port=port, log_level="warning")
    finally:
        stop_rpc()


def _engine_setting(config_path: str | None) -> str | None:
    if not config_path or not Path(config_path).exists():
        return None
    from mcp_server.profiles.config import load_config

    return load_config(config_path).host.engine


def _security(address: str, port: int):  # type: ignore[no-untyped-def]
    """The SDK's DNS-rebinding guard: automatic on loopback; for a private address, allow only it."""
    from mcp.server.transport_security import TransportSecuritySettings

    if address.startswith("127.") or address == "::1":
        return None
    shown = f"[{address}]" if ":" in address else address
    return TransportSecuritySettings(enable_dns_rebinding_protection=True,
                                     allowed_hosts=[shown, f"{shown}:{port}", f"{shown}:*"],
                                     allowed_origins=[f"http://{shown}:{port}"])
