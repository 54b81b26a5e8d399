"""The Hugging Face hub's HTTP API, read with httpx: search, a repo's files, ranged reads.

``HF_ENDPOINT`` and ``HF_TOKEN`` are honoured (read when a client is made, not at import). Every
error names the endpoint it tried and what to do: a repo that does not exist, a gated repo
without a token, no network.
"""

from __future__ import annotations

import os
import re
from typing import Any
from urllib.parse import quote

import httpx
from pydantic import BaseModel, Field

from mcp_server.errors import LlamaPilotError

DEFAULT_ENDPOINT = "https://huggingface.co"
REPO_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
REVISION_RE = re.compile(r"^[A-Za-z0-9._/-]{1,200}$")


class HubError(LlamaPilotError):
    """The hub cannot be reached or refused the request."""

    code = "hub"


class RepoNotFound(HubError):
    code = "repo-not-found"


class RepoGated(HubError):
    code = "repo-gated"


class HubFile(BaseModel):
    path: str
    size: int
    sha256: str | None = Field(default=None, description="the LFS object's sha256, when the file is in LFS")


class RepoFiles(BaseModel):
    repo: str
    revision: str
    commit: str | None = None
    files: list[HubFile]


class SearchHit(BaseModel):
    repo: str
    downloads: int | None = None
    likes: int | None = None
    updated: str | None = None


def check_repo(repo: str) -> None:
    if not REPO_RE.match(repo or ""):
        raise HubError(f"{repo!r} is not a Hugging Face repo id: expected owner/name, e.g. unsloth/Qwen3-8B-GGUF")


class HubClient:
    def __init__(self, endpoint: str | None = None, token: str | None = None, timeout: float = 30.0) -> None:
        self.endpoint = (endpoint or os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")
        self.token = token if token is not None else (os.environ.get("HF_TOKEN") or None)
        headers = {"User-Agent": "llama-pilot"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        self.http = httpx.Client(base_url=self.endpoint, headers=headers, timeout=timeout, follow_redirects=True)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> "HubClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _get(self, path: str, *, repo: str | None = None, headers: dict[str, str] | None = None,
             **params: Any) -> httpx.Response:
        try:
            response = self.http.get(path, params=params or None, headers=headers)
        except httpx.TransportError as exc:
            raise HubError(f"cannot reach the hub at {self.endpoint} ({type(exc).__name__}: {exc}); check the "
                           "network, or HF_ENDPOINT if you use a mirror") from exc
        self._raise_for(response, repo)
        return response

    def _raise_for(self, response: httpx.Response, repo: str | None) -> None:
        if response.status_code >= 400:
            self.raise_for_status(response.status_code, response.text, repo or response.request.url.path)

    def raise_for_status(self, status: int, text: str, what: str) -> None:
        """The error for an answer of ``status`` about ``what`` (a repo or a file), naming the endpoint."""
        if status < 400:
            return
        if status in (401, 403):
            how = ("the token in HF_TOKEN was refused: check it has access to this repo"
                   if self.token else "set HF_TOKEN to a token of an account that accepted the repo's terms "
                                      "(huggingface.co/settings/tokens), or run `hf auth login`")
            raise RepoGated(f"{what} on {self.endpoint} needs permission ({status}): {how}")
        if status == 404:
            raise RepoNotFound(f"{what} was not found on {self.endpoint}: check the spelling (hub search finds repos)")
        raise HubError(f"{self.endpoint} answered {status} for {what}: {text[:200]}")

    def headers(self) -> dict[str, str]:
        """What a request to the hub carries besides the transport's own: who asks, and the token."""
        own = {"User-Agent": "llama-pilot"}
        if self.token:
            own["Authorization"] = f"Bearer {self.token}"
        return own

    def search(self, query: str, limit: int = 20) -> list[SearchHit]:
        """GGUF repos matching ``query``, most downloaded first."""
        answer = self._get("/api/models", search=query, filter="gguf", sort="downloads", direction="-1",
                           limit=str(limit)).json()
        return [SearchHit(repo=m.get("id") or m.get("modelId"), downloads=m.get("downloads"), likes=m.get("likes"),
                          updated=m.get("lastModified")) for m in answer if m.get("id") or m.get("modelId")]

    def files(self, repo: str, revision: str = "main") -> RepoFiles:
        """Every file of the repo at ``revision`` with its size and LFS sha256 (pages followed)."""
        check_repo(repo)
        if not REVISION_RE.match(revision):
            raise HubError(f"{revision!r} is not a revision (a branch, tag or commit)")
        info = self._get(f"/api/models/{repo}/revision/{quote(revision, safe='')}", repo=repo).json()
        path = f"/api/models/{repo}/tree/{quote(revision, safe='')}"
        found: list[HubFile] = []
        url: str | None = path
        params: dict[str, str] = {"recursive": "true"}
        while url:
            response = self._get(url, repo=repo, **params)
            for entry in response.json():
                if entry.get("type") != "file":
                    continue
                lfs = entry.get("lfs") or {}
                found.append(HubFile(path=entry["path"], size=int(lfs.get("size") or entry.get("size") or 0),
                                     sha256=lfs.get("oid") or lfs.get("sha256")))
            url = response.links.get("next", {}).get("url")
            params = {}
        return RepoFiles(repo=repo, revision=revision, commit=info.get("sha"), files=found)

    def file_url(self, repo: str, revision: str, path: str) -> str:
        return f"/{repo}/resolve/{quote(revision, safe='')}/{quote(path)}"

    def read_range(self, repo: str, revision: str, path: str, start: int, end: int) -> bytes:
        """Bytes ``start..end`` (inclusive) of a file; refuses a server that ignores Range."""
        response = self._get(self.file_url(repo, revision, path), repo=f"{repo}/{path}",
                             headers={"Range": f"bytes={start}-{end}"})
        if response.status_code != 206:
            raise HubError(f"{self.endpoint} ignored the byte range for {repo}/{path} (status {response.status_code}): "
                           "reading only the header needs a server that honours Range")
        return response.content


class SearchResult(BaseModel):
    query: str
    endpoint: str
    repos: list[SearchHit]


def search_models(query: str, limit: int = 20, client: HubClient | None = None) -> SearchResult:
    """GGUF repos on the hub matching ``query``, most downloaded first, with their update date."""
    own = client is None
    client = client or HubClient()
    try:
        return SearchResult(query=query, endpoint=client.endpoint, repos=client.search(query, limit))
    finally:
        if own:
            client.close()
