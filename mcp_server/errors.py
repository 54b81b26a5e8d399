"""Every error llama-pilot raises on purpose, each with a stable ``code``.

The code is what a program or an agent matches on (it never changes once released); the message is
written for the person or agent reading it and says what to do next. Codes in brackets:

    LlamaPilotError [error]                       base
    ├── ConfigError [config]                      models.conf cannot be read or used
    │   ├── ConfParseError [config-parse]         a line breaks the format (file, line, reason)
    │   ├── ConfConflictError [config-changed]    the file changed on disk since it was read; nothing written
    │   └── ProfileNotFound [profile-not-found]   no active profile with that id
    ├── ValidationError [invalid-value]           a value is of the wrong kind (key, value, reason)
    ├── ModelFileError [model-file]               a GGUF file is missing, unreadable or not a GGUF
    │   └── GGUFFormatError [bad-gguf]            the bytes break the GGUF format (model_files.reader)
    ├── EngineError [engine]                      llama-server is missing, too old, or will not build
    │   ├── EngineNotFound [engine-not-found]     no binary anywhere we look (says how to build one)
    │   ├── EngineBuildError [engine-build-failed] a build step failed (step name, log path)
    │   └── BuildCancelled [build-cancelled]      the client stopped waiting for a build (server.host_tools)
    ├── LifecycleError [lifecycle]                starting, stopping, switching (runtime.lifecycle)
    │   ├── AlreadyRunning [already-running]
    │   ├── NotRunning [not-running]
    │   ├── StartRefused [<cause>]                refused before launch: model-missing, ... (class: start-refused)
    │   │   └── PortInUse [port-in-use]
    │   ├── StartFailed [<cause>]                 launched, never ready: oom, crashed, timeout, ... (class: start-failed)
    │   ├── SwitchFailed [switch-failed]          the target did not start (rolled back)
    │   │   └── SwitchCancelled [switch-cancelled] cancelled by the caller: its target stopped, no rollback
    │   └── ForeignServer [foreign-server]        an unmanaged server that is not this home's
    ├── DockerError [docker]                      (runtime.containers)
    │   ├── DockerUnavailable [docker-unavailable]
    │   └── DockerImageMissing [docker-image-missing]
    ├── DockerImageError [docker-image]           the local image cannot be built (runtime.docker_image)
    ├── BenchError [bench]                        a benchmark cannot run or failed (bench)
    │   ├── BenchCancelled [bench-cancelled]
    │   └── DatasetMissing [dataset-missing]
    ├── JobError [job]                            a background job id is unknown or cannot start (jobs)
    ├── ServeError [serve]                        the endpoint cannot start or be reached (serve.policy)
    │   ├── ServeNotRunning [serve-not-running]
    │   └── ServeRefused [serve-refused]          a public address without a key, a second endpoint, a taken port
    ├── HubError [hub]                            the Hugging Face hub cannot be reached or refused (hub.client)
    │   ├── RepoNotFound [repo-not-found]
    │   ├── RepoGated [repo-gated]                401/403: a gated repo without (or with a refused) HF_TOKEN
    │   ├── DownloadCancelled [download-cancelled] cancel_job or Ctrl-C; the partial file is kept (hub.download)
    │   └── DiskFull [disk-full]                  the disk filled up mid-download; the partial file is kept
    ├── TuneCancelled [tune-cancelled]            cancel_job or Ctrl-C during a tune; its measurements are kept
    ├── TuneFailed [tune-failed]                  the tune's start or its paired rounds could not be measured
    ├── WorkerError [worker]                      an RPC worker's agent answered with an error (workers.client)
    │   ├── WorkerUnreachable [worker-unreachable] nothing answers at the worker's agent URL
    │   ├── WorkerTokenRefused [worker-token-refused] no token, or the agent refused it (401)
    │   ├── WorkerVersionMismatch [worker-version-mismatch] the worker runs another llama.cpp build
    │   └── WorkerBusy [worker-busy]              a running profile uses the worker (one client per RPC server)
    ├── RpcError [rpc-server]                     a worker's ggml-rpc-server cannot start (workers.rpc)
    ├── DemoModelError [demo-model]               the demo GGUF cannot be installed or verified
    └── StorageError [storage]                    a file or folder cannot be written (read-only, full, no permission)

StartRefused and StartFailed take their code from the diagnosis cause (``model-missing``, ``oom``,
``port-in-use``, ``crashed``...; the list is ``runtime.registry.Diagnosis``). The front doors
translate this tree once each (``server.conventions.tool_errors``, ``cli.main.cli_errors``); an
exception outside it is a bug, not a message. ``tests/test_errors.py`` checks that this drawing
names every subclass and that codes are unique.
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


class LlamaPilotError(Exception):
    """Base class: the message is complete and says what to do next."""

    code: str = "error"


class ConfigError(LlamaPilotError):
    """models.conf cannot be read or used."""

    code = "config"


class ConfParseError(ConfigError):
    """A line of models.conf breaks the format."""

    code = "config-parse"

    def __init__(self, path: Path | str | None, line: int, reason: str) -> None:
        self.path = str(path) if path is not None else "<text>"
        self.line = line
        self.reason = reason
        super().__init__(f"{self.path}:{line}: {reason}")


class ConfConflictError(ConfigError):
    """The file changed on disk after it was read; saving would lose someone's edit."""

    code = "config-changed"


class ProfileNotFound(ConfigError):
    """No active profile has this id."""

    code = "profile-not-found"

    def __init__(self, profile: str, known: list[str], advice: str = "") -> None:
        self.profile = profile
        self.known = known
        hint = f" Known profiles: {', '.join(known)}." if known else " The file defines no profiles."
        super().__init__(f"No profile named {profile!r}.{hint}{' ' + advice if advice else ''}")


class ValidationError(LlamaPilotError):
    """A value given for a key is not acceptable."""

    code = "invalid-value"

    def __init__(self, key: str, value: object, reason: str, where: str = "") -> None:
        self.key = key
        self.value = value
        self.reason = reason
        prefix = f"{where}: " if where else ""
        super().__init__(f"{prefix}{key}={value!s}: {reason}")


class EngineError(LlamaPilotError):
    """llama-server cannot be found, run or built."""

    code = "engine"


class EngineNotFound(EngineError):
    """No llama-server binary in any place we look."""

    code = "engine-not-found"


class EngineBuildError(EngineError):
    """A step of the engine build failed; the log is kept."""

    code = "engine-build-failed"

    def __init__(self, step: str, log_path: Path, detail: str = "") -> None:
        self.step = step
        self.log_path = log_path
        tail = f"\n{detail}" if detail else ""
        super().__init__(f"engine build failed during {step!r}; full log: {log_path}{tail}")


class ModelFileError(LlamaPilotError):
    """A model file (GGUF) is missing, unreadable, or not what its name says."""

    code = "model-file"


class GGUFFormatError(ModelFileError, ValueError):
    """The bytes break the GGUF format: bad magic, too old, truncated header, unknown types."""

    code = "bad-gguf"


class DemoModelError(LlamaPilotError):
    """The demo model cannot be installed or does not verify."""

    code = "demo-model"


class StorageError(LlamaPilotError):
    """A file or folder llama-pilot must write cannot be written: read-only, full, or not ours.

    The message names the path, what was being done and the fix, so a read-only home or a full disk
    reads as one sentence instead of a traceback."""

    code = "storage"

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
