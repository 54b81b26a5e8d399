"""File primitives several owners need: a file's sha256, an exclusive lock across processes, and
atomic replacement of a file's contents.

Imported by the keeper, which runs on every model start: module-level imports stay small
(``hashlib`` is imported where it is used, ``tempfile`` not at all).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import Callable, Iterator


def sha256_of(path: str | Path, chunk: int = 8 << 20) -> str:
    """sha256 of a file's bytes, read in chunks (a 60 GB model never sits in memory)."""
    import hashlib  # loads OpenSSL: not worth it for the importers that never hash

    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def exclusive_lock(path: Path, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    """Hold an flock on ``path`` (created, with its folder) until the block ends.

    ``on_wait`` is called once if another process holds the lock, before waiting for it.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait:
                on_wait()
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def atomic_write(path: str | Path, data: bytes | str, *, fsync: bool = True, mode: int | None = None) -> None:
    """Replace the contents of ``path`` so that readers see the old file or the new one, never half.

    A symlink is written through: its target gets the new contents and the link stays. ``mode``
    as in :func:`write_temp`. With ``fsync`` the data and the rename are on disk when this returns.
    """
    target = Path(os.path.realpath(path))
    tmp = write_temp(target, data, fsync=fsync, mode=mode)
    try:
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if fsync:
        sync_dir(target.parent)


def write_temp(target: Path, data: bytes | str, *, fsync: bool = True, mode: int | None = None) -> Path:
    """``data`` (str as UTF-8) in a new temporary file beside ``target``, ready to be renamed over it.

    The file gets ``mode``, or by default the mode ``target`` has, or for a new file what
    ``open()`` would give it. Removed again if writing fails. For callers with a step between
    writing and renaming (models.conf takes its backup there); others use :func:`atomic_write`.
    """
    payload = data.encode("utf-8") if isinstance(data, str) else data
    if mode is None:
        with contextlib.suppress(FileNotFoundError):
            mode = os.stat(target).st_mode & 0o7777
    fd, tmp = _create_beside(target)
    try:
        with os.fdopen(fd, "wb") as handle:
            if mode is not None:
                os.fchmod(handle.fileno(), mode)  # before the data goes in: never readable wider than meant
            handle.write(payload)
            if fsync:
                handle.flush()
                os.fsync(handle.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def _create_beside(target: Path) -> tuple[int, Path]:
    """An exclusively created, empty ``.<name>.<random>.tmp`` in ``target``'s folder.

    Like ``tempfile.mkstemp`` (which costs the keeper an import of shutil and random), except
    that the mode is what ``open()`` gives a new file (0666 less the umask), not 0600.
    """
    for _ in range(100):
        tmp = target.with_name(f".{target.name}.{os.urandom(6).hex()}.tmp")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name beside {target}")


def sync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable; not every platform lets us open a directory."""
    try:
        dir_fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)
