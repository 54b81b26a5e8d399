"""The endpoint: serve_start, serve_stop, serve_status, serve_load, serve_unload, serve_pin."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from mcp.server import MCPServer
from pydantic import Field

from mcp_server.profiles.config import load_config
from mcp_server.serve.control import ServeAction, ServeStatus
from mcp_server.server.conventions import READ_ONLY, STARTS, STOPS, ProfileId, in_thread

ServePort = Annotated[int | None, Field(ge=1024, le=65535, description="port; default SERVE_PORT in [global], "
                                                                        "else 8000")]


def register(mcp: MCPServer, config_path: str | Path | None) -> None:
    from mcp_server.serve import control

    @mcp.tool(annotations=STARTS)
    async def serve_start(port: ServePort = None) -> ServeStatus:
        """Start the one OpenAI/Anthropic endpoint (llama-pilot serve) in the background on 127.0.0.1 (the address is SERVE_HOST, set by people only) and return its status once it answers. Clients then send requests naming a profile id or alias as `model`; the endpoint loads profiles on demand, keeps those that fit in memory side by side and unloads the least wanted when one does not fit. Already running: returns its status. To run one model directly use start_model instead."""
        return await in_thread(lambda: control.serve_start(load_config(config_path), port=port))

    @mcp.tool(annotations=STOPS)
    async def serve_stop() -> ServeStatus:
        """Stop the endpoint after the requests in flight finish. The models it loaded keep running (status lists them; stop_model stops them), and the next serve_start adopts them without reloading."""
        return await in_thread(lambda: control.serve_stop(load_config(config_path)))

    @mcp.tool(annotations=READ_ONLY)
    async def serve_status() -> ServeStatus:
        """What the endpoint holds: each profile's state (absent/loading/ready), memory per device (estimated or measured), requests in flight and queued, the free room per device, and the loads and unloads with their reasons (fits-beside, unused, max-wait, idle-ttl, requested, exited). running=false when no endpoint runs. The llama-server instances themselves are in status."""
        return await in_thread(lambda: control.serve_status(load_config(config_path)))

    @mcp.tool(annotations=STARTS)
    async def serve_load(profile: ProfileId) -> ServeAction:
        """Load a profile through the running endpoint, by the same queue and memory rules as a request (it may unload idle, unpinned, lower-priority models to make room); returns when it is ready. Needs serve_start first; start_model runs a profile outside the endpoint's rules."""
        return await in_thread(lambda: control.serve_load(load_config(config_path), profile))

    @mcp.tool(annotations=STOPS)
    async def serve_unload(profile: ProfileId) -> ServeAction:
        """Unload a profile from the running endpoint once its requests in flight finish; a later request loads it again."""
        return await in_thread(lambda: control.serve_unload(load_config(config_path), profile))

    @mcp.tool(annotations=STARTS)
    async def serve_pin(profile: ProfileId, pinned: Annotated[bool, Field(
            description="true: never unloaded to make room; false: back to the profile's PIN setting")] = True
                        ) -> ServeAction:
        """Pin or unpin a profile in the running endpoint until it restarts (PIN=on in the profile, via update_profile, makes it lasting). A pinned model is never unloaded to make room; a model that cannot fit because of pins gets a 503 naming them."""
        return await in_thread(lambda: control.serve_pin(load_config(config_path), profile, pinned))
