"""Parallel edits of models.conf by real CLI processes: every edit that reports "saved" is in the file.

Before the edit lock, 16 parallel `llama-pilot set p1 XK_i=i` reported 10 saves and kept 4 keys: the
stale-file check and the rename were not atomic together. Each writer now holds the lock from the
read it checks to the rename, and one that waited re-reads and applies its edit on top.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mcp_server.profiles.config import load_config

CONF = """\
[p1]
MODEL=a.gguf

[p2]
MODEL=b.gguf
"""


def _cli(conf: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "mcp_server", "cli", "--config", str(conf), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(procs: list[subprocess.Popen[str]]) -> list[tuple[int, str]]:
    return [(p.wait(timeout=120), (p.communicate()[1] or "")) for p in procs]


def test_sixteen_parallel_sets_of_one_profile_all_land(write_conf):
    conf = write_conf(CONF)
    procs = [_cli(conf, "set", "p1", f"XK_{i}={i}") for i in range(16)]
    results = _finish(procs)
    assert [rc for rc, _ in results] == [0] * 16, [err for _, err in results if err]
    values = load_config(conf).profile("p1").values
    assert {f"XK_{i}": str(i) for i in range(16)}.items() <= values.items()
    assert values["MODEL"] == "a.gguf"


@pytest.mark.parametrize("round_", range(3))
def test_parallel_edits_of_different_profiles_both_land(write_conf, round_):
    conf = write_conf(CONF)
    procs = []
    for i in range(6):
        procs.append(_cli(conf, "set", "p1", f"A{i}={i}"))
        procs.append(_cli(conf, "set", "p2", f"B{i}={i}"))
    results = _finish(procs)
    assert all(rc == 0 for rc, _ in results), [err for _, err in results if err]
    config = load_config(conf)
    assert all(config.profile("p1").values.get(f"A{i}") == str(i) for i in range(6))
    assert all(config.profile("p2").values.get(f"B{i}") == str(i) for i in range(6))


def test_a_create_racing_a_create_of_the_same_id_fails_clearly(write_conf):
    conf = write_conf(CONF)
    procs = [_cli(conf, "create", "new", f"MODEL=m{i}.gguf") for i in range(4)]
    results = _finish(procs)
    ok = [err for rc, err in results if rc == 0]
    refused = [err for rc, err in results if rc != 0]
    assert len(ok) == 1, results
    assert len(refused) == 3 and all("already exists" in err for err in refused), refused
    assert conf.read_text().count("[new]") == 1
