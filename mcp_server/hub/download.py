"""Download a quant set from the hub: ranged, resumable across processes, verified, one writer per file.

Files go to ``MODELS_DIR/<owner>/<repo>/<path in the repo>``, so a profile's MODEL is that relative
path (not the Hugging Face cache layout: a plain folder the user can see and move).

Per file: a stable partial name (``<file>.part``) that a later run continues with ``Range``
(a 206 whose ``Content-Range`` starts where the part ends; a server that answers 200 instead
restarts the file cleanly); an exclusive ``flock`` on ``<file>.lock`` so two downloads of one file
never interleave; the sha256 of the finished bytes against the hub's LFS sha256 (a mismatch
re-fetches that file once, the others are kept); then an atomic rename. Before the first byte, the
free disk space is checked against what is still missing.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import time
from pathlib import Path, PurePosixPath
from typing import Callable

import httpx
from pydantic import BaseModel, Field

from mcp_server.hub.client import HubClient, HubError, HubFile
from mcp_server.hub.quants import group, pick, require_gguf, split_spec

_CHUNK = 1 << 20
_TRIES = 3


class DownloadProgress(BaseModel):
    file: str
    done_bytes: int
    total_bytes: int
    rate_bps: float
    eta_s: float | None


class DownloadedFile(BaseModel):
    path: str = Field(description="relative to MODELS_DIR")
    size: int
    sha256: str | None
    verified: bool
    resumed_from: int = Field(0, description="bytes already on disk when this run started")
    fetched_bytes: int = 0
    refetched: bool = Field(False, description="the first copy failed its sha256 and was fetched again")


class DownloadResult(BaseModel):
    repo: str
    revision: str
    quant: str
    folder: str
    model: str = Field(description="the MODEL value for a profile (the first shard, relative to MODELS_DIR)")
    files: list[DownloadedFile]
    fetched_bytes: int
    seconds: float


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(4 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download_model(spec: str, models_dir: Path, *, client: HubClient | None = None,
                   progress: Callable[[DownloadProgress], None] | None = None) -> DownloadResult:
    """Download ``owner/name[@revision]:QUANT`` into ``models_dir/owner/name/``."""
    repo, revision, tag = split_spec(spec)
    if not tag:
        raise HubError(f"{spec}: name the quant to download, e.g. {repo}:Q4_K_M (hub quants lists them)")
    own = client is None
    client = client or HubClient()
    started = time.monotonic()
    try:
        listing = client.files(repo, revision)
        qset = pick(require_gguf(group(listing)), tag)
        by_path = {f.path: f for f in listing.files}
        files = [by_path[p] for p in qset.files]
        folder = models_dir / repo
        _check_space(folder, files)
        done = [_fetch(client, repo, revision, f, folder, progress) for f in files]
    finally:
        if own:
            client.close()
    first = PurePosixPath(repo) / qset.files[0]
    return DownloadResult(repo=repo, revision=revision, quant=qset.tag, folder=str(folder), model=str(first),
                          files=done, fetched_bytes=sum(d.fetched_bytes for d in done),
                          seconds=round(time.monotonic() - started, 3))


def _check_space(folder: Path, files: list[HubFile]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    needed = 0
    for f in files:
        final = folder / f.path
        part = final.with_name(final.name + ".part")
        if final.is_file() and final.stat().st_size == f.size:
            continue
        needed += f.size - (part.stat().st_size if part.is_file() else 0)
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise HubError(f"not enough disk space in {folder}: the download needs {needed / 2**30:.1f} GiB more, "
                       f"{free / 2**30:.1f} GiB are free; free some space or download elsewhere (--to)")


def _fetch(client: HubClient, repo: str, revision: str, f: HubFile, folder: Path,
           progress: Callable[[DownloadProgress], None] | None) -> DownloadedFile:
    final = folder / f.path
    final.parent.mkdir(parents=True, exist_ok=True)
    rel = str(PurePosixPath(repo) / f.path)
    if final.is_file() and final.stat().st_size == f.size and (f.sha256 is None or _sha256(final) == f.sha256):
        return DownloadedFile(path=rel, size=f.size, sha256=f.sha256, verified=f.sha256 is not None,
                              resumed_from=f.size)
    part = final.with_name(final.name + ".part")
    with open(final.with_name(final.name + ".lock"), "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise HubError(f"another download of {rel} is running; wait for it (its partial file is {part})") from None
        resumed = part.stat().st_size if part.is_file() else 0
        fetched, refetched = 0, False
        for attempt in range(2):  # a second full fetch when the first copy fails its hash
            fetched += _fill(client, repo, revision, f, part, rel, progress)
            if f.sha256 is None or _sha256(part) == f.sha256:
                break
            if attempt == 1:
                raise HubError(f"{rel}: the downloaded bytes do not match the hub's sha256 twice; the partial file "
                               f"{part} is kept for inspection")
            part.unlink()
            refetched = True
        os.replace(part, final)
    final.with_name(final.name + ".lock").unlink(missing_ok=True)
    return DownloadedFile(path=rel, size=f.size, sha256=f.sha256, verified=f.sha256 is not None,
                          resumed_from=resumed, fetched_bytes=fetched, refetched=refetched)


def _fill(client: HubClient, repo: str, revision: str, f: HubFile, part: Path, rel: str,
          progress: Callable[[DownloadProgress], None] | None) -> int:
    """Bring ``part`` to the file's full size, continuing what is there; returns the bytes fetched."""
    fetched = 0
    last_error: Exception | None = None
    for _ in range(_TRIES):
        have = part.stat().st_size if part.is_file() else 0
        if have == f.size:
            return fetched
        if have > f.size:
            part.unlink()
            have = 0
        headers = {"Range": f"bytes={have}-"} if have else {}
        started, base = time.monotonic(), have
        try:
            with client.http.stream("GET", client.file_url(repo, revision, f.path), headers=headers,
                                    timeout=httpx.Timeout(60.0, connect=10.0)) as response:
                client._raise_for(response, rel)
                if have and response.status_code != 206:
                    have = 0  # the server ignored Range: start the file again, cleanly
                elif have and not response.headers.get("content-range", "").startswith(f"bytes {have}-"):
                    raise HubError(f"{rel}: the hub answered a different range ({response.headers.get('content-range')})")
                with open(part, "r+b" if have else "wb") as out:
                    out.seek(have)
                    out.truncate()
                    for chunk in response.iter_raw(_CHUNK):
                        out.write(chunk)
                        have += len(chunk)
                        fetched += len(chunk)
                        if progress:
                            elapsed = max(time.monotonic() - started, 1e-6)
                            rate = (have - base) / elapsed
                            progress(DownloadProgress(file=rel, done_bytes=have, total_bytes=f.size, rate_bps=rate,
                                                      eta_s=(f.size - have) / rate if rate > 0 else None))
        except httpx.TransportError as exc:  # cut mid-file: what arrived is kept, the next try continues
            last_error = exc
            continue
    if part.is_file() and part.stat().st_size == f.size:
        return fetched
    raise HubError(f"{rel}: the download kept breaking off ({type(last_error).__name__}: {last_error}); run it again: "
                   f"it continues from the {part.stat().st_size if part.is_file() else 0} bytes on disk")
