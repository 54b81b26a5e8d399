"""Waiting for a llama-server to be ready, and talking to it over plain HTTP.

Only the standard library: these run in the CLI's start-up path, where importing an HTTP client
would cost more than the request.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any, Callable

from mcp_server.errors import LlamaPilotError


class ServerExited(LlamaPilotError):
    """The server process ended before it became ready."""

    def __init__(self, returncode: int | None, detail: str = "") -> None:
        self.returncode = returncode
        super().__init__(f"llama-server exited with code {returncode} before it was ready{detail}")


class ReadyTimeout(LlamaPilotError):
    """The server was still not ready when the deadline passed."""


def health(url: str, timeout: float = 2.0) -> tuple[int, dict[str, Any] | None]:
    """``GET {url}/health`` -> (HTTP status, JSON body); status 0 when nothing answers."""
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=timeout) as resp:
            return resp.status, _json(resp.read())
    except urllib.error.HTTPError as exc:  # 503 while the model loads
        return exc.code, _json(exc.read())
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return 0, None


def _json(raw: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def wait_ready(url: str, *, timeout_s: float, exit_code: Callable[[], int | None],
               on_poll: Callable[[int], None] | None = None, interval_s: float = 0.1) -> float:
    """Poll /health until it answers 200; returns seconds waited.

    ``exit_code()`` is checked on every poll so a process that dies while loading fails the wait
    at once (llama-swap's "exited prematurely") instead of running out the timeout.
    """
    start = time.monotonic()
    delay = interval_s
    while True:
        code = exit_code()
        if code is not None:
            raise ServerExited(code)
        status, _ = health(url, timeout=min(2.0, max(0.2, timeout_s)))
        if on_poll:
            on_poll(status)
        if status == 200:
            return time.monotonic() - start
        elapsed = time.monotonic() - start
        if elapsed >= timeout_s:
            raise ReadyTimeout(f"{url} was not ready after {elapsed:.0f} s (last /health status {status or 'none'})")
        time.sleep(min(delay, max(0.0, timeout_s - elapsed)))
        delay = min(delay * 1.5, 1.0)


def post_json(url: str, payload: dict[str, Any], timeout: float = 300.0) -> dict[str, Any]:
    """POST JSON and return the decoded answer; HTTP errors carry the server's message."""
    body = json.dumps(payload).encode()
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode("utf-8", errors="replace")[:500]
        raise LlamaPilotError(f"{url} answered HTTP {exc.code}: {detail}") from exc
    except urllib.error.URLError as exc:
        raise LlamaPilotError(f"{url} did not answer: {exc.reason}") from exc


def chat(base_url: str, prompt: str, *, max_tokens: int = 128, timeout: float = 300.0,
         **params: Any) -> dict[str, Any]:
    """One OpenAI-style chat completion; returns the raw response (with llama-server's ``timings``)."""
    payload = {"messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens, **params}
    return post_json(f"{base_url}/v1/chat/completions", payload, timeout=timeout)
