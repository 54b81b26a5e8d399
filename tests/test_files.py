"""mcp_server.files: the one atomic write every owner of a file uses."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from mcp_server.files import atomic_write, write_temp
from mcp_server.runtime.registry import _run_file_name


def _temps(folder) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_atomic_write_creates_and_replaces_bytes_or_text(tmp_path):
    path = tmp_path / "a.json"
    atomic_write(path, b"one")
    atomic_write(path, "twö")
    assert path.read_bytes() == "twö".encode()
    assert not _temps(tmp_path)


def test_new_file_gets_what_open_would_give_it(tmp_path):
    old = os.umask(0o027)
    try:
        atomic_write(tmp_path / "new", b"x")
        (tmp_path / "plain").write_bytes(b"x")
    finally:
        os.umask(old)
    assert (tmp_path / "new").stat().st_mode & 0o7777 == (tmp_path / "plain").stat().st_mode & 0o7777 == 0o640


def test_mode_is_kept_or_set(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"old")
    path.chmod(0o604)
    atomic_write(path, b"new")
    assert path.stat().st_mode & 0o7777 == 0o604
    atomic_write(path, b"newer", mode=0o600)
    assert path.stat().st_mode & 0o7777 == 0o600


def test_a_symlink_is_written_through(tmp_path):
    real = tmp_path / "real.conf"
    real.write_text("old")
    link = tmp_path / "link.conf"
    link.symlink_to(real)
    atomic_write(link, "new")
    assert link.is_symlink() and real.read_text() == "new"


def test_a_failed_write_leaves_the_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "f"
    path.write_text("old")

    def refuse(*_args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", refuse)
    with pytest.raises(OSError, match="No space"):
        atomic_write(path, "new")
    assert path.read_text() == "old" and not _temps(tmp_path)


def test_write_temp_leaves_the_target_alone_until_renamed(tmp_path):
    path = tmp_path / "f"
    path.write_text("old")
    tmp = write_temp(path, "new")
    assert path.read_text() == "old" and tmp.parent == tmp_path and tmp.name.startswith(".f.")
    os.replace(tmp, path)
    assert path.read_text() == "new"


def test_keeper_temporaries_count_as_their_run_file():
    assert _run_file_name(".abc.pid.0123456789ab.tmp") == "abc.pid"
    assert _run_file_name("abc.exit.tmp") == "abc.exit"  # older keepers
    assert _run_file_name("abc.pid") == "abc.pid"


def test_the_keeper_imports_no_more_than_it_needs():
    """The keeper runs on every model start: importing files.py must not pull in tempfile or hashlib."""
    code = ("import sys; import mcp_server.runtime.keeper; "
            "print(sorted({'tempfile', 'hashlib', 'pydantic'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}).stdout
    assert out.strip() == "[]"
