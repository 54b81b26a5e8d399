"""File primitives several owners need: a file's sha256, and an exclusive lock across processes."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
from pathlib import Path
from typing import Callable, Iterator


def sha256_of(path: str | Path, chunk: int = 8 << 20) -> str:
    """sha256 of a file's bytes, read in chunks (a 60 GB model never sits in memory)."""
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
