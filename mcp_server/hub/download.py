"""Download a quant set from the hub: ranged, resumable across processes, verified, one writer per file.

Files go to ``MODELS_DIR/<owner>/<repo>/<path in the repo>``, so a profile's MODEL is that relative
path (not the Hugging Face cache layout: a plain folder the user can see and move).

Per file: a stable partial name (``<file>.part``) that a later run continues with ``Range``
(a 206 whose ``Content-Range`` starts where the part ends; a server that answers 200 instead
restarts the file cleanly); an exclusive ``flock`` on ``<file>.lock`` so two downloads of one file
never interleave; the sha256 of the finished bytes against the hub's LFS sha256 (a mismatch
re-fetches that file once, the others are kept); then an atomic rename. Before the first byte, the
free disk space is checked against what is still missing; a disk that fills up anyway (another
writer) stops the download with the partial file kept, to be continued once there is room.

``download_quant`` does the work in the calling process (``hub download`` in a terminal);
``download_model`` starts it as a background job (the MCP tool), followed with ``get_job`` and
stopped with ``cancel_job``.

Paths come from the hub's listing only and must stay inside the repo's folder: a listing naming
``../x`` or an absolute path is refused before anything is written.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import io
import os
import shutil
import threading
import time
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Callable

from pydantic import BaseModel, Field

from mcp_server.hub.client import HubClient, HubError, HubFile
from mcp_server.hub.transfer import BrokenTransfer, open_body
from mcp_server.hub.quants import QuantSet, group, pick, require_gguf, split_spec

if TYPE_CHECKING:
    from mcp_server.jobs import Job
    from mcp_server.profiles.config import Config

_CHUNK = 1 << 20
_TRIES = 3


class DownloadCancelled(HubError):
    """Stopped on request (cancel_job, Ctrl-C); the partial file is kept and the next run continues it."""

    code = "download-cancelled"


class DiskFull(HubError):
    code = "disk-full"


class DownloadProgress(BaseModel):
    file: str
    done_bytes: int
    total_bytes: int
    rate_bps: float
    eta_s: float | None = Field(description="seconds left for the whole set at the current rate")
    set_done_bytes: int = Field(description="bytes on disk for the whole quant set")
    set_total_bytes: int


class DownloadedFile(BaseModel):
    path: str = Field(description="relative to MODELS_DIR")
    size: int
    sha256: str | None
    verified: bool
    resumed_from: int = Field(0, description="bytes already on disk when this run started")
    fetched_bytes: int = 0
    refetched: bool = Field(False, description="the first copy failed its sha256 and was fetched again")
    from_cache: str | None = Field(None, description="the Hugging Face cache blob it was taken from (llama-server "
                                                     "-hf and huggingface_hub keep one), instead of the network")


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


class _Tally:
    """Progress over the whole set: what is on disk of the files before this one, plus this one."""

    def __init__(self, total: int, progress: Callable[[DownloadProgress], None] | None,
                 cancel: threading.Event | None) -> None:
        self.total, self.before, self.report, self.cancel = total, 0, progress, cancel

    def step(self, f: HubFile, rel: str, have: int, rate: float) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise DownloadCancelled(f"{rel}: download cancelled at {have:,} of {f.size:,} bytes; the partial file "
                                    "is kept and the next download continues from it")
        if self.report:
            left = self.total - self.before - have
            self.report(DownloadProgress(file=rel, done_bytes=have, total_bytes=f.size, rate_bps=rate,
                                         eta_s=left / rate if rate > 0 else None,
                                         set_done_bytes=self.before + have, set_total_bytes=self.total))


def _resolve(spec: str, client: HubClient) -> tuple[str, str, QuantSet, list[HubFile]]:
    """The spec's repo, revision, quant set and its files, as the hub lists them; refuses a spec
    without a quant and a listing whose paths would leave the repo's folder."""
    repo, revision, tag = split_spec(spec)
    if not tag:
        raise HubError(f"{spec}: name the quant to download, e.g. {repo}:Q4_K_M (hub quants lists them)")
    listing = client.files(repo, revision)
    qset = pick(require_gguf(group(listing)), tag)
    by_path = {f.path: f for f in listing.files}
    files = [by_path[p] for p in qset.files]
    for f in files:
        parts = PurePosixPath(f.path).parts
        if not parts or f.path.startswith("/") or ".." in parts or "\\" in f.path:
            raise HubError(f"{repo}: the hub lists a file {f.path!r} that would land outside the repo's folder; "
                           "nothing was downloaded")
    return repo, revision, qset, files


def download_quant(spec: str, models_dir: Path, *, client: HubClient | None = None,
                   progress: Callable[[DownloadProgress], None] | None = None,
                   cancel: threading.Event | None = None) -> DownloadResult:
    """Download ``owner/name[@revision]:QUANT`` into ``models_dir/owner/name/``, here and now."""
    own = client is None
    client = client or HubClient()
    started = time.monotonic()
    try:
        repo, revision, qset, files = _resolve(spec, client)
        folder = models_dir / repo
        _check_space(folder, files, repo)
        tally = _Tally(sum(f.size for f in files), progress, cancel)
        done = []
        for f in files:
            done.append(_fetch(client, repo, revision, f, folder, tally))
            tally.before += f.size
    finally:
        if own:
            client.close()
    first = PurePosixPath(repo) / qset.files[0]
    return DownloadResult(repo=repo, revision=revision, quant=qset.tag, folder=str(folder), model=str(first),
                          files=done, fetched_bytes=sum(d.fetched_bytes for d in done),
                          seconds=round(time.monotonic() - started, 3))


def download_model(config: "Config", spec: str) -> "Job":
    """Start downloading ``owner/name[@revision]:QUANT`` into MODELS_DIR as a background job and
    return it at once. What can be checked now is checked first (the repo, the quant, every shard
    on the hub, the disk space), so those errors come back here, not from the job."""
    from mcp_server.jobs import start_job

    models_dir = Path(config.host.models_dir)
    with HubClient() as client:
        repo, revision, qset, files = _resolve(spec, client)
    _check_space(models_dir / repo, files, repo)
    canonical = f"{repo}@{revision}:{qset.tag}"
    label = f"{repo.split('/')[1]}-{qset.tag}"[:80]
    return start_job("download", None, {"spec": canonical, "models_dir": str(models_dir.resolve()),
                                        "total_bytes": qset.total_bytes}, config.path, label=label)


def hf_cache_dirs() -> list[Path]:
    """The Hugging Face cache folders that exist here, where llama-server -hf (LLAMA_CACHE first) and
    huggingface_hub (HF_HUB_CACHE, HF_HOME) look, in that order."""
    env = os.environ
    candidates = [env.get("LLAMA_CACHE"), env.get("HF_HUB_CACHE"), env.get("HUGGINGFACE_HUB_CACHE"),
                  env.get("HF_HOME") and str(Path(env["HF_HOME"]) / "hub"),
                  env.get("XDG_CACHE_HOME") and str(Path(env["XDG_CACHE_HOME"]) / "huggingface" / "hub"),
                  str(Path.home() / ".cache" / "huggingface" / "hub")]
    seen: list[Path] = []
    for c in candidates:
        if c and Path(c).is_dir() and Path(c) not in seen:
            seen.append(Path(c))
    return seen


def _cached_blob(repo: str, f: HubFile) -> Path | None:
    """The cache's blob of this file (named by its LFS sha256, as both writers name it), if whole."""
    if not f.sha256:
        return None
    folder = "models--" + repo.replace("/", "--")
    for cache in hf_cache_dirs():
        blob = cache / folder / "blobs" / f.sha256
        if blob.is_file() and blob.stat().st_size == f.size:
            return blob
    return None


def _adopt(blob: Path, part: Path) -> None:
    """The blob's bytes as ``part``: a hard link when on the same file system (no second copy on
    disk), else a copy."""
    part.unlink(missing_ok=True)
    try:
        os.link(blob, part)
    except OSError:
        shutil.copyfile(blob, part)


def _check_space(folder: Path, files: list[HubFile], repo: str = "") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    needed = 0
    for f in files:
        final = folder / f.path
        part = final.with_name(final.name + ".part")
        blob = _cached_blob(repo, f) if repo else None
        if final.is_file() and final.stat().st_size == f.size or (blob and blob.stat().st_dev == folder.stat().st_dev):
            continue  # there already, or a hard link away
        needed += f.size - (part.stat().st_size if part.is_file() else 0)
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise HubError(f"not enough disk space in {folder}: the download needs {needed / 2**30:.1f} GiB more, "
                       f"{free / 2**30:.1f} GiB are free; free some space or download elsewhere (--to)")


def _fetch(client: HubClient, repo: str, revision: str, f: HubFile, folder: Path, tally: _Tally) -> DownloadedFile:
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
        blob = _cached_blob(repo, f)
        if blob is not None:
            _adopt(blob, part)
            if _sha256(part) == f.sha256:
                os.replace(part, final)
                final.with_name(final.name + ".lock").unlink(missing_ok=True)
                return DownloadedFile(path=rel, size=f.size, sha256=f.sha256, verified=True, from_cache=str(blob))
            part.unlink()  # a damaged cache blob: fetch it from the hub instead
            resumed = 0
        fetched, refetched = 0, False
        for attempt in range(2):  # a second full fetch when the first copy fails its hash
            got, digest = _fill(client, repo, revision, f, part, rel, tally)
            fetched += got
            if f.sha256 is None or digest == f.sha256:
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


def _write_all(out: "io.FileIO", chunk: bytes | memoryview, part: Path, rel: str) -> int:
    """Write all of ``chunk`` (unbuffered: what returns is on disk); a full disk keeps the part."""
    view = memoryview(chunk)
    written = 0
    try:
        while written < len(view):
            written += out.write(view[written:]) or 0
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
            raise
        size = part.stat().st_size
        raise DiskFull(f"{rel}: the disk filled up ({os.strerror(exc.errno or 0)}) with {size:,} bytes written; "
                       f"the partial file {part} is kept: free some space and download again, it continues "
                       "from there") from None
    return written


class _Digest:
    """The sha256 of ``part`` as it grows, computed by a thread that reads the file just behind the
    writer (from the page cache): hashing a 30 GB shard costs no second pass, and it runs beside the
    network, not in turn with it (hashlib lets go of the GIL). Bytes already on disk from an earlier
    run are hashed first; a restart from byte 0 starts the hash again."""

    def __init__(self, part: Path) -> None:
        self.part = part
        self.cond = threading.Condition()
        self._reset()

    def _reset(self) -> None:
        self.hash, self.upto, self.target, self.closing = hashlib.sha256(), 0, 0, False
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="sha256", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        f = None
        try:
            while True:
                with self.cond:
                    while self.upto >= self.target and not self.closing:
                        self.cond.wait()
                    if self.upto >= self.target:
                        return
                    want = min(self.target - self.upto, 8 << 20)
                f = f or open(self.part, "rb")  # opened once there is something to read: it exists then
                f.seek(self.upto)
                block = f.read(want)
                if not block:
                    raise OSError(f"{self.part} is shorter than the bytes written to it")
                self.hash.update(block)
                with self.cond:
                    self.upto += len(block)
                    self.cond.notify_all()
        except BaseException as exc:  # said by result(), in the caller's thread
            self.error = exc
        finally:
            if f is not None:
                f.close()

    def _stop(self) -> None:
        with self.cond:
            self.closing = True
            self.cond.notify_all()
        self.thread.join()

    def start_at(self, have: int) -> None:
        """The writer continues from ``have`` (bytes 0..have are on disk)."""
        if have < self.target:  # the file was started again
            self._stop()
            self._reset()
        self.advance(have)

    def advance(self, have: int) -> None:
        with self.cond:
            self.target = max(self.target, have)
            self.cond.notify_all()

    def result(self, size: int) -> str:
        self.advance(size)
        self._stop()
        if self.error is not None:
            raise self.error
        return self.hash.hexdigest()

    def close(self) -> None:
        self._stop()


def _fill(client: HubClient, repo: str, revision: str, f: HubFile, part: Path, rel: str,
          tally: _Tally) -> tuple[int, str | None]:
    """Bring ``part`` to the file's full size, continuing what is there; returns the bytes fetched
    and the sha256 of the whole part (None when the hub gives none to check against)."""
    digest = _Digest(part) if f.sha256 else None
    try:
        return _fill_with(client, repo, revision, f, part, rel, tally, digest)
    finally:
        if digest:
            digest.close()


def _fill_with(client: HubClient, repo: str, revision: str, f: HubFile, part: Path, rel: str, tally: _Tally,
               digest: _Digest | None) -> tuple[int, str | None]:
    fetched = 0
    view = memoryview(bytearray(_CHUNK))
    last_error: Exception | None = None
    for _ in range(_TRIES):
        have = part.stat().st_size if part.is_file() else 0
        if have == f.size:
            return fetched, digest.result(f.size) if digest else None
        if have > f.size:
            part.unlink()
            have = 0
        headers = {**client.headers(), **({"Range": f"bytes={have}-"} if have else {})}
        started, base = time.monotonic(), have
        try:
            with open_body(client.endpoint + client.file_url(repo, revision, f.path), headers) as body:
                client.raise_for_status(body.status, body.text() if body.status >= 400 else "", rel)
                if have and body.status != 206:
                    have = 0  # the server ignored Range: start the file again, cleanly
                elif have and not (body.headers.get("content-range") or "").startswith(f"bytes {have}-"):
                    raise HubError(f"{rel}: the hub answered a different range ({body.headers.get('content-range')})")
                tally.step(f, rel, have, 0.0)
                with open(part, "r+b" if have else "wb", buffering=0) as out:
                    out.seek(have)
                    out.truncate()
                    if digest:
                        digest.start_at(have)
                    while True:
                        n = body.readinto(view)
                        if not n:
                            break
                        written = _write_all(out, view[:n], part, rel)
                        have += written
                        if digest:
                            digest.advance(have)
                        fetched += written
                        tally.step(f, rel, have, (have - base) / max(time.monotonic() - started, 1e-6))
        except BrokenTransfer as exc:  # cut mid-file: what arrived is kept, the next try continues
            last_error = exc
            continue
    if part.is_file() and part.stat().st_size == f.size:
        return fetched, digest.result(f.size) if digest else None
    raise HubError(f"{rel}: the download kept breaking off ({type(last_error).__name__}: {last_error}); run it again: "
                   f"it continues from the {part.stat().st_size if part.is_file() else 0} bytes on disk")
