"""Every error llama-pilot raises on purpose.

    LlamaPilotError                 base: its message is written for the person or agent reading it
    ├── ConfigError                 models.conf cannot be read or used
    │   ├── ConfParseError          a line breaks the format (file, line, reason)
    │   ├── ConfConflictError       the file changed on disk since it was read; nothing written
    │   └── ProfileNotFound         no active profile with that id
    ├── ValidationError             a value is of the wrong kind (key, value, reason)
    ├── EngineError                 llama-server is missing, too old, or will not build
    │   ├── EngineNotFound          no binary anywhere we look (says how to build one)
    │   └── EngineBuildError        a build step failed (step name, log path)
    ├── DemoModelError              the demo GGUF cannot be installed or verified
    └── StorageError                a file or folder cannot be written (read-only, full, no permission)

The front doors (CLI, MCP) translate this tree once each; nothing else is shown to users
as-is, so an unexpected exception is a bug, not a message.
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


class LlamaPilotError(Exception):
    """Base class: the message is complete and says what to do next."""


class ConfigError(LlamaPilotError):
    """models.conf cannot be read or used."""


class ConfParseError(ConfigError):
    """A line of models.conf breaks the format."""

    def __init__(self, path: Path | str | None, line: int, reason: str) -> None:
        self.path = str(path) if path is not None else "<text>"
        self.line = line
        self.reason = reason
        super().__init__(f"{self.path}:{line}: {reason}")


class ConfConflictError(ConfigError):
    """The file changed on disk after it was read; saving would lose someone's edit."""


class ProfileNotFound(ConfigError):
    """No active profile has this id."""

    def __init__(self, profile: str, known: list[str]) -> None:
        self.profile = profile
        self.known = known
        hint = f" Known profiles: {', '.join(known)}." if known else " The file defines no profiles."
        super().__init__(f"No profile named {profile!r}.{hint}")


class ValidationError(LlamaPilotError):
    """A value given for a key is not acceptable."""

    def __init__(self, key: str, value: object, reason: str, where: str = "") -> None:
        self.key = key
        self.value = value
        self.reason = reason
        prefix = f"{where}: " if where else ""
        super().__init__(f"{prefix}{key}={value!s}: {reason}")


class EngineError(LlamaPilotError):
    """llama-server cannot be found, run or built."""


class EngineNotFound(EngineError):
    """No llama-server binary in any place we look."""


class EngineBuildError(EngineError):
    """A step of the engine build failed; the log is kept."""

    def __init__(self, step: str, log_path: Path, detail: str = "") -> None:
        self.step = step
        self.log_path = log_path
        tail = f"\n{detail}" if detail else ""
        super().__init__(f"engine build failed during {step!r}; full log: {log_path}{tail}")


class DemoModelError(LlamaPilotError):
    """The demo model cannot be installed or does not verify."""


class StorageError(LlamaPilotError):
    """A file or folder llama-pilot must write cannot be written: read-only, full, or not ours.

    The message names the path, what was being done and the fix, so a read-only home or a full disk
    reads as one sentence instead of a traceback."""

    def __init__(self, path: Path | str, action: str, reason: str, fix: str) -> None:
        self.path = str(path)
        self.action = action
        self.reason = reason
        self.fix = fix
        super().__init__(f"cannot {action} {self.path}: {reason}. Fix: {fix}")

    @classmethod
    def from_os_error(cls, exc: OSError, action: str, path: Path | str | None = None,
                      fix: str | None = None) -> "StorageError":
        where = path if path is not None else (exc.filename or "?")
        reason = exc.strerror or str(exc)
        if fix is None:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                fix = "free space on that disk (or move LLAMA_PILOT_HOME to another one), then try again"
            elif exc.errno == errno.EROFS:
                fix = ("the file system is mounted read-only: set LLAMA_PILOT_HOME (or --config) to a folder "
                       "on a writable disk")
            elif exc.errno in (errno.EACCES, errno.EPERM):
                fix = "give your user write permission there, or set LLAMA_PILOT_HOME (or --config) elsewhere"
            else:
                fix = "check that the path exists and is writable"
        return cls(where, action, reason, fix)


# errno values that mean "this storage cannot take the write", as opposed to a bug.
STORAGE_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.ENOTDIR,
                            errno.EISDIR, errno.ENAMETOOLONG})


def is_storage_error(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in STORAGE_ERRNOS


@contextmanager
def storage_errors(action: str, path: Path | str | None = None,
                   fix: Callable[[OSError], str] | None = None) -> Iterator[None]:
    """Inside the block, an OSError that means "this storage cannot take the write" (read-only, full,
    no permission) becomes one StorageError naming the path and the fix; any other OSError passes."""
    try:
        yield
    except OSError as exc:
        if not is_storage_error(exc):
            raise
        raise StorageError.from_os_error(exc, action, path, fix=fix(exc) if fix else None) from None
