"""Calling a worker agent's tools from the machine that runs the model (MCP over HTTP, bearer token).

Core functions here are synchronous (they run in a CLI, or in a worker thread of the MCP server),
so each call runs its own short event loop. A failure becomes one of three errors that name the
worker: unreachable (nothing answers at its URL), token refused (401), or the tool's own error.
"""

from __future__ import annotations

import os
from typing import Any

from mcp_server.errors import LlamaPilotError
from mcp_server.workers.spec import WorkerSpec


class WorkerError(LlamaPilotError):
    code = "worker"

    def __init__(self, worker: str, message: str) -> None:
        super().__init__(f"worker {worker}: {message}")
        self.worker = worker


class WorkerUnreachable(WorkerError):
    code = "worker-unreachable"


class WorkerTokenRefused(WorkerError):
    code = "worker-token-refused"


class WorkerVersionMismatch(WorkerError):
    code = "worker-version-mismatch"


class WorkerBusy(WorkerError):
    """A ggml-rpc-server serves one client at a time: a second llama-server would wait on it forever."""

    code = "worker-busy"

    def __init__(self, worker: str, message: str, user: str) -> None:
        super().__init__(worker, message)
        self.user = user


CALL_TIMEOUT_S = 30.0


def call(worker: WorkerSpec, tool: str, arguments: dict[str, Any] | None = None,
         timeout_s: float = CALL_TIMEOUT_S) -> Any:
    """One tool call on ``worker``'s agent; its structured result."""
    import anyio

    token = os.environ.get(worker.token_env)
    if not token:
        raise WorkerTokenRefused(worker.id, f"no token: set ${worker.token_env} to the token its agent was "
                                 "started with")
    def run() -> Any:
        return anyio.run(_call, worker, token, tool, arguments or {}, timeout_s)

    try:
        if _loop_running():  # called from async code (a test, an embedding program): its own thread
            import concurrent.futures

            with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
                return pool.submit(run).result()
        return run()
    except WorkerError:
        raise
    except BaseException as exc:  # noqa: BLE001 - an ExceptionGroup from the transport's task group
        raise _classify(worker, exc) from None


def _loop_running() -> bool:
    import asyncio

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


async def _call(worker: WorkerSpec, token: str, tool: str, arguments: dict[str, Any], timeout_s: float) -> Any:
    import anyio
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client
    from mcp.shared._httpx_utils import create_mcp_http_client

    http = create_mcp_http_client(headers={"Authorization": f"Bearer {token}"})
    statuses: list[int] = []

    async def seen(response) -> None:  # type: ignore[no-untyped-def]
        statuses.append(response.status_code)

    # The SDK turns an HTTP error into a generic MCP error: the status is kept here to name it.
    http.event_hooks["response"].append(seen)
    try:
        with anyio.fail_after(timeout_s):
            async with http, Client(streamable_http_client(worker.url, http_client=http)) as client:
                result = await client.call_tool(tool, arguments)
    except BaseException as exc:
        if 401 in statuses:
            raise WorkerTokenRefused(worker.id, f"its agent at {worker.url} refused the token in "
                                     f"${worker.token_env}: use the token the agent was started with") from None
        if any(code >= 400 for code in statuses):
            raise WorkerError(worker.id, f"its agent answered HTTP {max(statuses)}") from exc
        raise
    if result.is_error:
        text = " ".join(getattr(c, "text", "") for c in result.content).strip()
        raise WorkerError(worker.id, text or f"{tool} failed")
    return result.structured_content


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


def _classify(worker: WorkerSpec, exc: BaseException) -> WorkerError:
    import httpx2

    for leaf in _leaves(exc):
        if isinstance(leaf, WorkerError):
            return leaf
        if isinstance(leaf, httpx2.HTTPStatusError) and leaf.response.status_code == 401:
            return WorkerTokenRefused(worker.id, f"its agent at {worker.url} refused the token in "
                                      f"${worker.token_env}: use the token the agent was started with")
        if isinstance(leaf, (httpx2.ConnectError, httpx2.ConnectTimeout, ConnectionError, OSError)):
            return WorkerUnreachable(worker.id, f"no agent answers at {worker.url} ({type(leaf).__name__}); "
                                     "start it there with `llama-pilot worker serve`, or check the tunnel")
        if isinstance(leaf, TimeoutError):
            return WorkerUnreachable(worker.id, f"its agent at {worker.url} did not answer within "
                                     f"{CALL_TIMEOUT_S:.0f} s")
        if isinstance(leaf, httpx2.HTTPStatusError):
            return WorkerError(worker.id, f"its agent answered HTTP {leaf.response.status_code}")
    first = _leaves(exc)[0]
    return WorkerError(worker.id, f"{type(first).__name__}: {first}")
