"""Talking to a llama-server over plain HTTP: its /health and its OpenAI-style chat endpoint.

Only the standard library: these run in the CLI's start-up path, where importing an HTTP client
would cost more than the request.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from mcp_server.errors import LlamaPilotError


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
