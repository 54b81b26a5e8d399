"""Talking to a llama-server over plain HTTP: its /health and its OpenAI-style chat endpoint.

Only the standard library: these run in the CLI's start-up path, where importing an HTTP client
would cost more than the request (``health`` is a bare socket; urllib loads only for a chat).
"""

from __future__ import annotations

import json
import socket
from typing import Any
from urllib.parse import urlsplit

from mcp_server.errors import LlamaPilotError


def health(url: str, timeout: float = 2.0) -> tuple[int, dict[str, Any] | None]:
    """``GET {url}/health`` -> (HTTP status, JSON body); status 0 when nothing answers.

    A plain socket, not urllib: a start polls this every 10 ms, and the CLI's start should not pay
    for importing an HTTP stack to ask one question of a server on loopback."""
    where = urlsplit(url)
    try:
        with socket.create_connection((where.hostname or "127.0.0.1", where.port or 80), timeout=timeout) as conn:
            conn.sendall(f"GET {where.path.rstrip('/')}/health HTTP/1.0\r\nHost: {where.netloc}\r\n\r\n".encode())
            chunks = []
            while chunk := conn.recv(65536):
                chunks.append(chunk)
    except OSError:
        return 0, None
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0].split()
    if len(status_line) < 2 or not status_line[1].isdigit():
        return 0, None
    return int(status_line[1]), _json(body)


def _json(raw: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def post_json(url: str, payload: dict[str, Any], timeout: float = 300.0) -> dict[str, Any]:
    """POST JSON and return the decoded answer; HTTP errors carry the server's message."""
    import urllib.error
    import urllib.request

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
