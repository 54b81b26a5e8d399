"""A fake Hugging Face hub: a real HTTP server on loopback (Starlette on uvicorn) with the parts of
the hub's API llama-pilot uses, over files on disk, and switches for the faults tests need."""

from __future__ import annotations

import hashlib
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route


@dataclass
class FakeRepo:
    files: dict[str, Path]
    gated: bool = False
    commit: str = "0123456789abcdef0123456789abcdef01234567"
    downloads: int = 0
    sha256: dict[str, str] = field(default_factory=dict)  # known hashes (a real file above 256 MiB needs one)
    plain: set[str] = field(default_factory=set)  # files listed as plain git files: no LFS sha256 to check

    def hash_of(self, path: str) -> str:
        return self.sha256.get(path) or _sha256(self.files[path])


@dataclass
class FakeHub:
    repos: dict[str, FakeRepo] = field(default_factory=dict)
    token: str = "hf_good"
    ignore_range: bool = False
    page_size: int = 3
    cut_after: int | None = None  # the next body breaks off after this many bytes (then the switch resets)
    corrupt_once: set[str] = field(default_factory=set)  # paths whose next full body has a flipped byte
    delay_per_chunk_s: float = 0.0  # a slow link, so a download can be killed midway
    cdn_host: str | None = None  # when set, file bodies are 302-redirected there (the hub's LFS CDN), unsigned
    cdn_authorized: list[bool] = field(default_factory=list)  # per CDN request: did it carry a token?
    range_requests: int = 0
    bytes_sent: int = 0
    url: str = ""

    def _repo(self, request: Request) -> tuple[str, FakeRepo | None, Response | None]:
        name = f"{request.path_params['owner']}/{request.path_params['name']}"
        repo = self.repos.get(name)
        if repo is None:
            return name, None, JSONResponse({"error": "Repository not found"}, status_code=404)
        if repo.gated and request.headers.get("authorization") != f"Bearer {self.token}":
            return name, None, JSONResponse({"error": "Access to this model is restricted"}, status_code=401)
        return name, repo, None

    async def search(self, request: Request) -> Response:
        query = request.query_params.get("search", "").lower()
        hits = [{"id": name, "downloads": r.downloads, "likes": 1, "lastModified": "2026-11-30T10:00:00.000Z"}
                for name, r in self.repos.items() if query in name.lower()]
        return JSONResponse(sorted(hits, key=lambda h: -h["downloads"]))

    async def revision(self, request: Request) -> Response:
        name, repo, refusal = self._repo(request)
        if refusal:
            return refusal
        assert repo is not None
        return JSONResponse({"id": name, "sha": repo.commit, "gated": "manual" if repo.gated else False,
                             "siblings": [{"rfilename": p} for p in repo.files]})

    async def refs(self, request: Request) -> Response:
        name, repo, refusal = self._repo(request)
        if refusal:
            return refusal
        assert repo is not None
        return JSONResponse({"branches": [{"name": "main", "ref": "refs/heads/main", "targetCommit": repo.commit}],
                             "tags": [], "converts": []})

    async def tree(self, request: Request) -> Response:
        name, repo, refusal = self._repo(request)
        if refusal:
            return refusal
        assert repo is not None
        paths = sorted(repo.files)
        start = int(request.query_params.get("cursor", "0"))
        entries = []
        for path in paths[start:start + self.page_size]:
            size = repo.files[path].stat().st_size
            entry: dict[str, Any] = {"type": "file", "path": path, "size": size, "oid": "git-oid"}
            if path not in repo.plain:  # an LFS file: the hub gives its sha256
                entry["lfs"] = {"oid": repo.hash_of(path), "size": size, "pointerSize": 134}
            entries.append(entry)
        headers = {}
        if start + self.page_size < len(paths):
            headers["Link"] = (f'<{self.url}/api/models/{name}/tree/{request.path_params["revision"]}?recursive=true'
                               f'&cursor={start + self.page_size}>; rel="next"')
        return JSONResponse(entries, headers=headers)

    async def resolve(self, request: Request) -> Response:
        name, repo, refusal = self._repo(request)
        if refusal:
            return refusal
        assert repo is not None
        path = repo.files.get(request.path_params["path"])
        if path is None:
            return JSONResponse({"error": "Entry not found"}, status_code=404)
        if self.cdn_host and request.method == "GET":
            port = self.url.rsplit(":", 1)[1]
            target = f"http://{self.cdn_host}:{port}/cdn/{name}/{request.path_params['path']}"
            return Response(status_code=302, headers={"Location": target, "X-Repo-Commit": repo.commit})
        return self._serve(request, repo, path)

    async def cdn(self, request: Request) -> Response:
        name = f"{request.path_params['owner']}/{request.path_params['name']}"
        repo = self.repos[name]
        self.cdn_authorized.append("authorization" in request.headers)
        return self._serve(request, repo, repo.files[request.path_params["path"]])

    def _serve(self, request: Request, repo: FakeRepo, path: Path) -> Response:
        size = path.stat().st_size
        headers = {"Accept-Ranges": "bytes", "ETag": f'"{repo.hash_of(request.path_params["path"])}"', "X-Repo-Commit": repo.commit,
                   "X-Linked-Size": str(size)}
        wanted = request.headers.get("range")
        if request.method == "HEAD":
            return Response(headers={**headers, "Content-Length": str(size)})
        lo, hi, status = 0, size - 1, 200
        if wanted and not self.ignore_range:
            first, _, last = wanted.removeprefix("bytes=").partition("-")
            lo, hi, status = int(first), min(int(last) if last else size - 1, size - 1), 206
            headers["Content-Range"] = f"bytes {lo}-{hi}/{size}"
            self.range_requests += 1
        rel = request.path_params["path"]
        corrupt = status == 200 and rel in self.corrupt_once
        self.corrupt_once.discard(rel)
        cut, self.cut_after = self.cut_after, None
        if hi - lo < (1 << 20) and not cut and not corrupt and not self.delay_per_chunk_s:
            with open(path, "rb") as f:
                f.seek(lo)
                data = f.read(hi - lo + 1)
            self.bytes_sent += len(data)
            return Response(data, status_code=status, headers=headers)

        async def body():  # type: ignore[no-untyped-def]
            import asyncio

            sent = 0
            with open(path, "rb") as f:
                f.seek(lo)
                left = hi - lo + 1
                while left:
                    chunk = f.read(min(left, 256 << 10))
                    left -= len(chunk)
                    if corrupt and sent == 0:
                        chunk = bytes([chunk[0] ^ 0xFF]) + chunk[1:]
                    if cut is not None and sent + len(chunk) > cut:
                        chunk = chunk[: cut - sent]
                        self.bytes_sent += len(chunk)
                        yield chunk
                        raise ConnectionResetError("fake hub: cut")
                    sent += len(chunk)
                    self.bytes_sent += len(chunk)
                    yield chunk
                    if self.delay_per_chunk_s:
                        await asyncio.sleep(self.delay_per_chunk_s)

        from starlette.responses import StreamingResponse

        return StreamingResponse(body(), status_code=status,
                                 headers={**headers, "Content-Length": str(hi - lo + 1)})

    def app(self) -> Starlette:
        return Starlette(routes=[
            Route("/api/models", self.search),
            Route("/api/models/{owner}/{name}/revision/{revision:path}", self.revision),
            Route("/api/models/{owner}/{name}/refs", self.refs),
            Route("/api/models/{owner}/{name}/tree/{revision:path}", self.tree),
            Route("/{owner}/{name}/resolve/{revision}/{path:path}", self.resolve, methods=["GET", "HEAD"]),
            Route("/cdn/{owner}/{name}/{path:path}", self.cdn),
        ])


_HASHES: dict[tuple[str, float], str] = {}


def _sha256(path: Path) -> str:
    if path.stat().st_size > 256 << 20:  # a sparse giant for header reads: hashing it would read it all
        return hashlib.sha256(str(path).encode()).hexdigest()
    key = (str(path), path.stat().st_mtime)
    if key not in _HASHES:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        _HASHES[key] = digest.hexdigest()
    return _HASHES[key]


class Running:
    """The hub served on a free loopback port in a thread, until ``stop``."""

    def __init__(self, hub: FakeHub) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        hub.url = f"http://127.0.0.1:{port}"
        self.hub = hub
        self.server = uvicorn.Server(uvicorn.Config(hub.app(), host="127.0.0.1", port=port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.01)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(5)


def running(hub: FakeHub) -> Any:
    return Running(hub)


def main() -> None:
    """``python -m tests.fake_hub SPEC.json``: serve in a process of its own (benchmarks: a server in
    the client's process would share its GIL). SPEC: {"port": N, "repos": {"owner/name": {"files":
    {"path": "/file/on/disk"}, "sha256": {"path": "hex"}}}}. Prints the URL once it listens."""
    import json
    import sys

    spec = json.loads(Path(sys.argv[1]).read_text())
    hub = FakeHub(repos={name: FakeRepo(files={p: Path(f) for p, f in r["files"].items()}, sha256=r.get("sha256", {}),
                                        plain=set(r.get("plain", [])))
                         for name, r in spec["repos"].items()})
    hub.url = f"http://127.0.0.1:{spec['port']}"
    server = uvicorn.Server(uvicorn.Config(hub.app(), host="127.0.0.1", port=spec["port"], log_level="warning"))
    server.run()


if __name__ == "__main__":
    main()
