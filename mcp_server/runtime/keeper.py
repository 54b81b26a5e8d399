"""The keeper: a tiny parent that outlives whoever started llama-server and records how it ended.

``python -m mcp_server.runtime.keeper [--hold-fd N] PIDFILE EXITFILE -- ARGV...`` starts ARGV as its child,
writes the child's pid (and its own) to PIDFILE, waits, then writes the exit status to EXITFILE. Only a parent can learn a
process's exit code, and the CLI or MCP server that asked for the start is usually gone by then;
the keeper stays. It runs as the leader of the instance's own session and process group, so a
signal to the group reaches llama-server too; the keeper itself only waits.

Imports are kept to the standard library and :mod:`mcp_server.files` (itself light): this runs on
every start.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from mcp_server.files import atomic_write


def _write(path: str, payload: dict[str, object]) -> None:
    try:
        # No fsync, as ever: these files describe processes, which a crash of the machine ends too.
        atomic_write(path, json.dumps(payload), fsync=False)
    except OSError as exc:
        # A deleted, read-only or full state folder must not end the keeper: it still waits for its
        # child, so the server keeps a parent and its group can still be stopped.
        print(f"llama-pilot keeper: cannot write {path}: {exc}", file=sys.stderr, flush=True)


def main(argv: list[str]) -> int:
    hold_fd = None
    if len(argv) >= 2 and argv[0] == "--hold-fd":
        hold_fd, argv = int(argv[1]), argv[2:]
    if len(argv) < 4 or argv[2] != "--":
        print("usage: python -m mcp_server.runtime.keeper [--hold-fd N] PIDFILE EXITFILE -- ARGV...", file=sys.stderr)
        return 2
    pid_file, exit_file, command = argv[0], argv[1], argv[3:]
    # A handler (not SIG_IGN, which exec would pass on to the child) keeps the keeper alive while
    # the group is told to stop, so it can still record the child's exit.
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: None)
    try:
        try:
            child = subprocess.Popen(command, stdin=subprocess.DEVNULL)
        except OSError as exc:
            print(f"llama-pilot keeper: cannot start {command[0]}: {exc}", file=sys.stderr, flush=True)
            _write(exit_file, {"exit_code": 127, "ended_at": time.time(), "error": str(exc)})
            return 127
        _write(pid_file, {"pid": child.pid, "keeper_pid": os.getpid()})
    finally:
        # The descriptor shares the registry lock of the process that launched us. Until the pid
        # file exists, that lock stays held even if the launcher is killed, so nobody can read the
        # instance's record without a way to find the server it describes.
        if hold_fd is not None:
            os.close(hold_fd)
    code = child.wait()
    _write(exit_file, {"exit_code": code, "ended_at": time.time()})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
