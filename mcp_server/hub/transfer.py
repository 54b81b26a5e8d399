"""A file's body at socket speed, for downloads of tens of GB.

httpx (the hub's API calls) copies every chunk through its pure-Python HTTP/1.1 parser; on a
2-core machine that, not the network, capped a download at a third of curl's rate. Here the
standard library's ``http.client`` reads straight into one reused buffer (``readinto``), which
keeps pace with curl on loopback (benchmarks/hub_bench.py).

What the hub needs and this does: redirects (the hub sends LFS files to a CDN, and the token is
not sent to another host), ``HTTPS_PROXY`` / ``HTTP_PROXY`` / ``NO_PROXY``, TLS with certifi's
roots (as httpx uses), and one error type for a connection that breaks off, so the caller can
continue from what is on disk.
"""

from __future__ import annotations

import http.client
import ssl
import urllib.request
from email.message import Message
from urllib.parse import urljoin, urlsplit

_REDIRECTS = (301, 302, 303, 307, 308)


class BrokenTransfer(Exception):
    """The connection failed or broke off; what was written so far is good."""


def _context() -> ssl.SSLContext:
    try:
        import certifi

        return ssl.create_default_context(cafile=certifi.where())
    except ImportError:  # pragma: no cover - certifi comes with httpx
        return ssl.create_default_context()


class Body:
    """An open response: ``status``, ``headers``, ``readinto``; a context manager that closes it."""

    def __init__(self, conn: http.client.HTTPConnection, response: http.client.HTTPResponse) -> None:
        self.conn, self.response = conn, response
        self.status: int = response.status
        self.headers: Message = response.headers

    def readinto(self, buffer: memoryview) -> int:
        try:
            return self.response.readinto(buffer)
        except (OSError, http.client.HTTPException) as exc:
            raise BrokenTransfer(f"{type(exc).__name__}: {exc}") from exc

    def text(self, limit: int = 400) -> str:
        try:
            return self.response.read(limit).decode("utf-8", errors="replace")
        except (OSError, http.client.HTTPException):
            return ""

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> "Body":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _connect(url: str, timeout: float) -> tuple[http.client.HTTPConnection, str]:
    """A connection for ``url`` (through the proxy the environment names, if any) and the request
    target to send on it."""
    parts = urlsplit(url)
    host, port = parts.hostname or "", parts.port
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and urllib.request.proxy_bypass(host):
        proxy = None
    if proxy:
        p = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        if parts.scheme == "https":
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(p.hostname or "", p.port or 3128,
                                                                           timeout=timeout, context=_context())
            conn.set_tunnel(host, port or 443)
            return conn, target
        return http.client.HTTPConnection(p.hostname or "", p.port or 3128, timeout=timeout), url
    if parts.scheme == "https":
        return http.client.HTTPSConnection(host, port or 443, timeout=timeout, context=_context()), target
    return http.client.HTTPConnection(host, port or 80, timeout=timeout), target


def open_body(url: str, headers: dict[str, str], timeout: float = 60.0, redirects: int = 5) -> Body:
    """GET ``url``, following redirects; the caller reads and closes the answer (any status)."""
    origin = urlsplit(url).netloc
    sent = dict(headers)
    for _ in range(redirects + 1):
        conn, target = _connect(url, timeout)
        try:
            # identity: the bytes on disk must be the file's bytes, whatever encoding a CDN would offer
            conn.request("GET", target, headers={**sent, "Accept-Encoding": "identity"})
            response = conn.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise BrokenTransfer(f"{type(exc).__name__}: {exc}") from exc
        location = response.headers.get("location")
        if response.status not in _REDIRECTS or not location:
            return Body(conn, response)
        conn.close()
        url = urljoin(url, location)
        if urlsplit(url).netloc != origin:  # the token is for the hub, not for its CDN
            sent = {k: v for k, v in sent.items() if k.lower() != "authorization"}
    raise BrokenTransfer(f"more than {redirects} redirects, the last to {url}")
