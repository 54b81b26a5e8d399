"""Read-only and full storage (issue 11, item 6): one clear error naming the path and the fix, never a
traceback, and a failed write never costs a good backup.

The storage is real: small tmpfs mounts, remounted read-only or filled to the last byte. That needs
root (as CI runs); elsewhere the tests skip, saying so.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from mcp import Client

from mcp_server.server.app import build_server

from .conftest import need

CONF = "[p1]\nMODEL=a.gguf\nCTX_SIZE=512\n"


def _can_mount(tmp_path: Path) -> bool:
    probe = tmp_path / "probe"
    probe.mkdir()
    ok = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(probe)], capture_output=True).returncode == 0
    if ok:
        subprocess.run(["umount", str(probe)], check=True)
    return ok


@pytest.fixture
def mounts(tmp_path):
    need(os.geteuid() == 0 and _can_mount(tmp_path), "mounting a tmpfs", "run the tests as root (CI does)")
    made: list[Path] = []

    def mount(name: str, size: str = "2M") -> Path:
        point = tmp_path / name
        point.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(point)], check=True)
        made.append(point)
        return point

    yield mount
    for point in reversed(made):
        subprocess.run(["umount", "-l", str(point)], check=False)


def read_only(point: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(point)], check=True)


def fill(point: Path) -> None:
    """Write until the file system is full (ENOSPC), leaving no free block."""
    fd = os.open(point / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError:
        pass
    finally:
        os.close(fd)
    with pytest.raises(OSError):
        (point / "probe").write_bytes(b"\0" * 4096)


def cli(conf: Path, home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LLAMA_PILOT_HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "mcp_server", "cli", "--config", str(conf), *args],
                          capture_output=True, text=True, timeout=120, env=env)


def assert_clear(result: subprocess.CompletedProcess[str], path: Path, reason: str) -> None:
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    assert str(path) in result.stderr and reason in result.stderr and "Fix:" in result.stderr, result.stderr


@pytest.mark.parametrize("command", [["status"], ["start", "p1"], ["stop", "all"], ["logs", "p1"],
                                     ["set", "p1", "CTX_SIZE=1024"], ["orphans"]])
def test_read_only_home_gives_one_clear_error(mounts, write_conf, command):
    conf = write_conf(CONF)
    home = mounts("home")
    read_only(home)
    before = conf.read_bytes()
    result = cli(conf, home, *command)
    assert_clear(result, home, "Read-only file system")
    assert "LLAMA_PILOT_HOME" in result.stderr
    assert conf.read_bytes() == before


def test_home_made_read_only_after_use_gives_one_clear_error(mounts, write_conf):
    conf = write_conf(CONF)
    home = mounts("home")
    assert cli(conf, home, "status").returncode == 0  # state folder and lock now exist
    read_only(home)
    assert_clear(cli(conf, home, "status"), home, "Read-only file system")


def test_read_only_models_conf_folder(mounts, tmp_path):
    folder = mounts("conf")
    conf = folder / "models.conf"
    conf.write_text(CONF)
    read_only(folder)
    result = cli(conf, tmp_path / "home", "set", "p1", "CTX_SIZE=1024")
    assert_clear(result, folder, "Read-only file system")
    assert "--config" in result.stderr
    assert conf.read_text() == CONF


def _backups(home: Path) -> dict[str, bytes]:
    folder = home / "backups"
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())} if folder.is_dir() else {}


def test_full_disk_under_models_conf_keeps_file_and_backups(mounts, tmp_path):
    folder = mounts("conf", size="256k")
    conf = folder / "models.conf"
    conf.write_text(CONF)
    home = tmp_path / "home"
    for i in range(20):  # the backup ring is full: one more backup would push the oldest out
        assert cli(conf, home, "set", "p1", f"CTX_SIZE={1000 + i}").returncode == 0
    kept, text = _backups(home), conf.read_text()
    assert len(kept) == 20
    fill(folder)
    result = cli(conf, home, "set", "p1", "CTX_SIZE=4096")
    assert_clear(result, conf, "No space left on device")
    assert conf.read_text() == text
    assert _backups(home) == kept  # no backup was taken for the failed write, none was pruned
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_full_disk_under_backups_keeps_file_and_backups(mounts, write_conf):
    conf = write_conf(CONF)
    home = mounts("home", size="256k")
    for i in range(3):
        assert cli(conf, home, "set", "p1", f"CTX_SIZE={1000 + i}").returncode == 0
    kept, text = _backups(home), conf.read_text()
    fill(home)
    result = cli(conf, home, "set", "p1", "CTX_SIZE=4096")
    assert_clear(result, home / "backups", "No space left on device")
    assert conf.read_text() == text  # without its backup, the edit is not made
    assert _backups(home) == kept
    assert not [p for p in conf.parent.iterdir() if p.name.endswith(".tmp")]



@pytest.mark.anyio
async def test_mcp_tools_on_read_only_storage_say_what_and_how(mounts, write_conf, monkeypatch):
    conf = write_conf(CONF)
    home = mounts("home")
    read_only(home)
    monkeypatch.setenv("LLAMA_PILOT_HOME", str(home))
    async with Client(build_server(conf)) as client:
        for tool, args in [("status", {}), ("update_profile", {"profile": "p1", "set": {"CTX_SIZE": "1024"}}),
                           ("stop_model", {}), ("tail_logs", {"profile": "p1"})]:
            result = await client.call_tool(tool, args)
            text = result.content[0].text
            assert result.is_error and str(home) in text and "Read-only file system" in text and "Fix:" in text, (
                tool, text)
