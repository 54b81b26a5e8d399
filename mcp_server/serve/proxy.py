"""The ASGI app: OpenAI and Anthropic routes relayed to the profile a request names.

A request's status is decided only once its model is ready (or has failed to load): until then
no byte goes out, so a failed load is a real non-2xx answer with the diagnosis, never a 200
followed by an error. The one exception is opt-in: a streaming request with the header
``X-Llama-Pilot-Progress: sse`` gets its 200 at once and SSE comments (``: loading ...``) while it
waits, and accepts that a failed load then arrives as an SSE error event.

Bodies are relayed as they come (``aiter_raw``): a streamed token reaches the client when
llama-server sends it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any, AsyncIterator

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from mcp_server.profiles.config import Config
from mcp_server.serve.policy import ServeSettings, is_loopback, serve_settings, strip_samplers
from mcp_server.serve.scheduler import Lease, Scheduler, ServeHTTPError

PROFILE_HEADER = "x-llama-pilot-profile"
INSTANCE_HEADER = "x-llama-pilot-instance"
PROGRESS_HEADER = "x-llama-pilot-progress"
# Not relayed: they describe this hop (or carry our key), not the request.
_DROP_REQUEST = {"host", "content-length", "connection", "keep-alive", "transfer-encoding", "authorization",
                 "x-api-key", "accept-encoding", PROGRESS_HEADER}
_KEEP_RESPONSE = ("content-type", "cache-control")
_LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1", "[::1]"}


def error(status: int, kind: str, message: str, headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": {"type": kind, "message": message, **extra}}, status_code=status, headers=headers)


class Guard:
    """API key and Host checks around the whole app (plain ASGI: nothing buffered, little cost).

    On a loopback bind a Host header naming another machine is refused: a web page cannot reach the
    endpoint through DNS rebinding. With a key, every route but /health needs it."""

    def __init__(self, app: Any, settings: ServeSettings) -> None:
        self.app = app
        self.key = settings.api_key
        self.loopback = is_loopback(settings.host)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        if self.loopback:
            host = headers.get(b"host", b"").decode("latin-1")
            name = host.rsplit(":", 1)[0] if not host.startswith("[") else host.split("]")[0] + "]"
            if name.lower() not in _LOOPBACK_NAMES:
                response = error(403, "forbidden_host", f"Host {host!r} is not this machine: the endpoint listens on "
                                 "loopback and answers only requests addressed to localhost or 127.0.0.1")
                return await response(scope, receive, send)
        if self.key and scope.get("path") != "/health":
            given = headers.get(b"authorization", b"").decode("latin-1")
            token = given[7:] if given.lower().startswith("bearer ") else headers.get(b"x-api-key", b"").decode("latin-1")
            if token != self.key:
                what = "a wrong API key" if token else "no API key"
                response = error(401, "authentication_error", f"{what}: send Authorization: Bearer <key> or x-api-key "
                                 "(the key is SERVE_API_KEY in models.conf or LLAMA_PILOT_API_KEY)")
                return await response(scope, receive, send)
        await self.app(scope, receive, send)


class Relay:
    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        self.client = httpx.AsyncClient(timeout=httpx.Timeout(None, connect=5.0), limits=httpx.Limits(
            max_connections=None, max_keepalive_connections=64))
        self._warming: set[asyncio.Future[None]] = set()

    async def handle(self, request: Request) -> Response:
        body = await request.body()
        try:
            payload = json.loads(body)
        except ValueError as exc:
            return error(400, "invalid_request_error", f"the body is not JSON: {exc}")
        if not isinstance(payload, dict):
            return error(400, "invalid_request_error", "the body must be a JSON object")
        names = sorted(self.scheduler.config.profiles)
        name = payload.get("model")
        if not isinstance(name, str) or not name:
            return error(400, "invalid_request_error", f"'model' is required: one of {', '.join(names)}")
        profile = self.scheduler.resolve(name)
        if profile is None:
            return error(404, "model_not_found", f"no profile or alias {name!r}; known: {', '.join(names)}",
                         known=names)
        if self.scheduler.policy(profile).samplers == "profile" and strip_samplers(payload):
            body = json.dumps(payload).encode()
        streaming = payload.get("stream") is True
        path = request.url.path
        headers = [(k, v) for k, v in request.headers.items() if k not in _DROP_REQUEST]
        if streaming and request.headers.get(PROGRESS_HEADER, "").lower() == "sse":
            return self._early_stream(request, profile, path, body, headers)
        try:
            lease = await _acquire_or_leave(request, self.scheduler, profile)
        except ServeHTTPError as exc:
            return JSONResponse(exc.body, status_code=exc.status, headers=exc.headers)
        if lease is None:
            return Response(status_code=499)  # nobody is listening; nothing was loaded for them
        upstream = await self._send(lease, path, body, headers)
        if isinstance(upstream, str):
            return error(502, "upstream_unreachable", upstream, profile=profile)
        out_headers = {k: upstream.headers[k] for k in _KEEP_RESPONSE if k in upstream.headers}
        out_headers[PROFILE_HEADER], out_headers[INSTANCE_HEADER] = profile, lease.instance
        if not streaming or upstream.status_code >= 300:
            try:
                data = await upstream.aread()
            except httpx.HTTPError as exc:
                self.scheduler.lost(lease, f"{type(exc).__name__}: {exc}")
                return error(502, "upstream_lost", f"{profile}'s llama-server ({lease.instance}) ended while "
                             f"answering ({type(exc).__name__}); the next request starts it again", profile=profile)
            finally:
                await upstream.aclose()
                self.scheduler.release(lease)
            return Response(data, status_code=upstream.status_code, headers=out_headers)
        return StreamingResponse(self._relay(upstream, lease, path), status_code=upstream.status_code,
                                 headers=out_headers)

    async def _send(self, lease: Lease, path: str, body: bytes,
                    headers: list[tuple[str, str]]) -> httpx.Response | str:
        """The upstream's streamed response; or, when it does not answer, the lease given back, the
        instance reported lost, and the message for the client."""
        try:
            return await self.client.send(self.client.build_request(
                "POST", lease.base_url + path, content=body, headers=headers), stream=True)
        except httpx.TransportError as exc:
            self.scheduler.release(lease)
            self.scheduler.lost(lease, f"{type(exc).__name__}: {exc}")
            return (f"{lease.profile}'s llama-server ({lease.instance}) did not answer ({type(exc).__name__}); "
                    "the next request starts it again")

    async def _relay(self, upstream: httpx.Response, lease: Lease, path: str) -> AsyncIterator[bytes]:
        try:
            async for chunk in upstream.aiter_raw():
                yield chunk
        except httpx.HTTPError as exc:
            self.scheduler.lost(lease, f"{type(exc).__name__}: {exc}")
            yield _sse_error(path, f"{lease.profile}'s llama-server ({lease.instance}) ended mid-answer "
                             f"({type(exc).__name__}); the answer is incomplete and the next request starts it again")
        finally:
            await upstream.aclose()
            self.scheduler.release(lease)
            self._warm(lease.base_url)

    def _warm(self, base_url: str) -> None:
        """llama-server closes the connection after a streamed answer, so the next request would
        open one on its critical path (a millisecond and more through httpx on a busy CPU). A
        /health call now leaves an idle keep-alive connection in the pool for it instead."""
        async def warm() -> None:
            with contextlib.suppress(httpx.HTTPError):
                await self.client.get(base_url + "/health", timeout=2.0)

        task = asyncio.ensure_future(warm())
        self._warming.add(task)
        task.add_done_callback(self._warming.discard)

    def _early_stream(self, request: Request, profile: str, path: str, body: bytes,
                      headers: list[tuple[str, str]]) -> StreamingResponse:
        async def stream() -> AsyncIterator[bytes]:
            notes: asyncio.Queue[str] = asyncio.Queue()
            task = asyncio.ensure_future(self.scheduler.acquire(profile, notes))
            try:
                while not task.done():
                    getter = asyncio.ensure_future(notes.get())
                    await asyncio.wait({task, getter}, return_when=asyncio.FIRST_COMPLETED)
                    if getter.done():
                        yield f": {getter.result()}\n\n".encode()
                    else:
                        getter.cancel()
                try:
                    lease = task.result()
                except ServeHTTPError as exc:
                    yield _sse_error(path, exc.body["error"]["message"], exc.body["error"])
                    return
            finally:
                if not task.done():
                    task.cancel()
            yield b": ready\n\n"
            upstream = await self._send(lease, path, body, headers)
            if isinstance(upstream, str):
                yield _sse_error(path, upstream)
                return
            async for chunk in self._relay(upstream, lease, path):
                yield chunk

        return StreamingResponse(stream(), media_type="text/event-stream", headers={PROFILE_HEADER: profile})


def _sse_error(path: str, message: str, detail: dict[str, Any] | None = None) -> bytes:
    if path.startswith("/v1/messages"):
        body = {"type": "error", "error": {"type": "api_error", "message": message}}
        return f"event: error\ndata: {json.dumps(body)}\n\n".encode()
    return f"data: {json.dumps({'error': {**(detail or {}), 'type': 'server_error', 'message': message}})}\n\n".encode()


async def _acquire_or_leave(request: Request, scheduler: Scheduler, profile: str) -> Lease | None:
    """The lease, or None when the client disconnected first (its place in the queue is given up)."""
    if scheduler.admits_now(profile):
        return await scheduler.acquire(profile)  # ready: no wait, no watcher
    waiting = asyncio.ensure_future(scheduler.acquire(profile))
    gone = asyncio.ensure_future(_disconnected(request))
    await asyncio.wait({waiting, gone}, return_when=asyncio.FIRST_COMPLETED)
    if waiting.done():
        gone.cancel()
        return waiting.result()
    waiting.cancel()
    with contextlib.suppress(asyncio.CancelledError, ServeHTTPError):
        await waiting
    return None


async def _disconnected(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


# --- the other routes --------------------------------------------------------------------------


def _models(scheduler: Scheduler) -> JSONResponse:
    snap = scheduler.snapshot()
    created = int(scheduler.started_at)
    data = []
    for model in snap["models"]:
        entry = {"id": model["profile"], "object": "model", "created": created, "owned_by": "llama-pilot",
                 "llama_pilot": {k: model[k] for k in ("state", "aliases", "pinned", "priority", "queued", "in_flight")}}
        data.append(entry)
        for alias in model["aliases"]:
            data.append({"id": alias, "object": "model", "created": created, "owned_by": "llama-pilot",
                         "llama_pilot": {"alias_of": model["profile"], "state": model["state"]}})
    return JSONResponse({"object": "list", "data": data})


async def _metrics(scheduler: Scheduler, client: httpx.AsyncClient) -> PlainTextResponse:
    snap = scheduler.snapshot()
    lines = ["# HELP llama_pilot_requests_total Requests by outcome.", "# TYPE llama_pilot_requests_total counter"]
    lines += [f'llama_pilot_requests_total{{outcome="{k}"}} {v}' for k, v in snap["counters"].items()
              if k in ("requests", "served", "rejected", "abandoned", "failed")]
    lines += ["# HELP llama_pilot_swaps_total Loads that unloaded another model.", "# TYPE llama_pilot_swaps_total counter",
              f"llama_pilot_swaps_total {snap['counters']['swaps']}",
              "# HELP llama_pilot_queued Requests waiting per model.", "# TYPE llama_pilot_queued gauge"]
    lines += [f'llama_pilot_queued{{model="{m["profile"]}"}} {m["queued"]}' for m in snap["models"]]
    lines += ["# HELP llama_pilot_resident 1 when the model is loaded.", "# TYPE llama_pilot_resident gauge"]
    lines += [f'llama_pilot_resident{{model="{m["profile"]}"}} {int(m["state"] == "ready")}' for m in snap["models"]]
    ready = [m for m in snap["models"] if m["state"] == "ready" and m["url"]]
    answers = await asyncio.gather(*(client.get(m["url"] + "/metrics", timeout=2.0) for m in ready),
                                   return_exceptions=True)
    seen: set[str] = set()
    for model, answer in zip(ready, answers):
        if isinstance(answer, BaseException) or answer.status_code != 200:
            continue
        lines += labelled(answer.text, model["profile"], seen)
    return PlainTextResponse("\n".join(lines) + "\n", media_type="text/plain; version=0.0.4")


def labelled(text: str, model: str, seen: set[str]) -> list[str]:
    """One upstream's Prometheus text with model="..." on every sample (HELP/TYPE once per name)."""
    out = []
    for line in text.splitlines():
        if not line.strip():
            continue
        if line.startswith("#"):
            if line not in seen:
                seen.add(line)
                out.append(line)
            continue
        name, _, rest = line.partition(" ")
        if "{" in name:
            metric, _, labels = name.partition("{")
            name = f'{metric}{{model="{model}",{labels}'
        else:
            name = f'{name}{{model="{model}"}}'
        out.append(f"{name} {rest}")
    return out


async def _control(request: Request, scheduler: Scheduler, action: str) -> JSONResponse:
    try:
        payload = json.loads(await request.body() or b"{}")
    except ValueError as exc:
        return error(400, "invalid_request_error", f"the body is not JSON: {exc}")
    name = payload.get("profile") if isinstance(payload, dict) else None
    profile = scheduler.resolve(name) if isinstance(name, str) else None
    if profile is None:
        known = ", ".join(sorted(scheduler.config.profiles))
        return error(404, "model_not_found", f"no profile or alias {name!r}; known: {known}")
    started = time.monotonic()
    try:
        if action == "load":
            await scheduler.load(profile)
        elif action == "unload":
            await scheduler.unload(profile)
        else:
            pinned = payload.get("pinned", True)
            scheduler.pin(profile, None if pinned is None else bool(pinned))
    except ServeHTTPError as exc:
        return JSONResponse(exc.body, status_code=exc.status)
    return JSONResponse({"profile": profile, "action": action, "seconds": round(time.monotonic() - started, 3),
                         "status": scheduler.snapshot()})


def build_app(scheduler: Scheduler) -> Any:
    relay = Relay(scheduler)

    async def health(request: Request) -> JSONResponse:
        ready = [p for p, s in scheduler.slots.items() if s.state == "ready"]
        return JSONResponse({"status": "ok", "ready": sorted(ready)})

    async def models(request: Request) -> JSONResponse:
        return _models(scheduler)

    async def metrics(request: Request) -> PlainTextResponse:
        return await _metrics(scheduler, relay.client)

    async def status(request: Request) -> JSONResponse:
        return JSONResponse(scheduler.snapshot())

    def control(action: str) -> Any:
        async def handler(request: Request) -> JSONResponse:
            return await _control(request, scheduler, action)
        return handler

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        await scheduler.start()
        try:
            yield
        finally:
            await scheduler.close()
            await relay.client.aclose()

    routes = [Route(p, relay.handle, methods=["POST"]) for p in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings",
                                                          "/v1/messages", "/v1/messages/count_tokens")]
    routes += [Route("/v1/models", models), Route("/health", health), Route("/metrics", metrics),
               Route("/llama-pilot/status", status),
               *(Route(f"/llama-pilot/{a}", control(a), methods=["POST"]) for a in ("load", "unload", "pin"))]
    return Guard(Starlette(routes=routes, lifespan=lifespan), scheduler.settings)


def serve(config: Config, *, host: str | None = None, port: int | None = None) -> None:
    """Run the endpoint in this process until SIGTERM/SIGINT (the foreground ``llama-pilot serve``).

    On the way out it finishes the requests in flight (10 s at most) and leaves the models loaded."""
    import uvicorn

    from mcp_server.serve.control import hold_endpoint_lock, release_endpoint_lock

    settings = serve_settings(config, host=host, port=port)
    lock = hold_endpoint_lock(settings, config.path)
    try:
        server = uvicorn.Server(uvicorn.Config(build_app(Scheduler(config.path, settings)), host=settings.host,
                                               port=settings.port, log_level="warning", access_log=False,
                                               lifespan="on", timeout_graceful_shutdown=10))
        server.run()
    finally:
        release_endpoint_lock(lock)
