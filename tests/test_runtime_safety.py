"""What the runtime may touch, and what it must never lose track of, against the real llama-server.

- `orphans --stop/--adopt` act only on this LLAMA_PILOT_HOME's servers (issue 11, item 2);
- a start killed with SIGKILL at a chosen moment never leaves a live, unrecorded server (item 4);
- a server that crashes (SIGSEGV) is reported as crashed, not as killed from outside (issue 12, item 9);
- a server whose state folder was deleted, or whose home moved, is found again (item 5);
- keeper pid/exit files are pruned, and a just-ended, unreaped server is described as such (item 8).

The kill points are set by hooks in a launcher process (a barrier file it writes at the chosen
moment, then it waits to be killed), not by sleeping and hoping.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from mcp_server import paths
from mcp_server.runtime.native import MARK_HOME, NativeBackend, create_time
from mcp_server.runtime.registry import InstanceRecord, InstanceStatus, Registry
from mcp_server.profiles.config import load_config
from mcp_server.profiles.edits import create_profile, update_profile
from mcp_server.runtime.lifecycle import AlreadyRunning, ForeignServer, Runtime
from mcp_server.model_files.synthetic import DenseShape, write_dense

pytestmark = pytest.mark.engine


@pytest.fixture
def project(write_conf, engine_path) -> Path:
    conf = write_conf("""
        [global]
        PORT=18380
        PARALLEL=1

        [tiny]
        NAME=Tiny synthetic
        MODEL=synth/tiny.gguf
        CTX_SIZE=512
    """)
    write_dense(conf.parent / "models" / "synth" / "tiny.gguf", DenseShape(), seed=1)
    return conf


@pytest.fixture
def runtime(project: Path):
    rt = Runtime(load_config(project))
    yield rt
    Runtime(load_config(project)).stop_model("all", grace_s=3)


def _cli(project: Path, *args: str, home: Path | None = None, check: bool = False) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if home is not None:
        env[paths.HOME_ENV] = str(home)
    return subprocess.run([sys.executable, "-m", "mcp_server", "cli", "--config", str(project), *args],
                          capture_output=True, text=True, timeout=120, env=env, check=check)


def _kill_tree(pid: int) -> None:
    try:
        os.killpg(os.getpgid(pid), signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _wait_for(path: Path, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        assert time.monotonic() < deadline, f"the launcher never reached its barrier ({path})"
        time.sleep(0.005)


# -- item 2: orphans are limited to this home's own servers -------------------------------------------


def test_orphans_touch_only_this_homes_servers(runtime, project, engine_path, tmp_path):
    other_home = tmp_path / "other-home"
    started = json.loads(_cli(project, "start", "tiny", "--json", home=other_home, check=True).stdout)
    by_hand = subprocess.Popen([engine_path, "--model", str(project.parent / "models/synth/tiny.gguf"),
                                "--port", "18399", "-c", "256"], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        mine = runtime.start_model("tiny")
        for path in Registry().dir.glob("*.json"):
            path.unlink()  # our record is lost: our server is an orphan now

        found = {o.pid: o for o in Runtime(load_config(project)).orphans()}
        assert found[mine.pid].owner == "ours" and found[mine.pid].instance == mine.id
        assert found[started["pid"]].owner == "other-home" and found[started["pid"]].home == str(other_home)
        _wait_pid_visible(by_hand.pid)
        assert found[by_hand.pid].owner == "unmarked"

        done = _cli(project, "orphans", "--stop", "--json", check=True)
        handled = json.loads(done.stdout)["handled"]
        assert [v["pid"] for v in handled] == [mine.pid]
        assert not psutil.pid_exists(mine.pid) or psutil.Process(mine.pid).status() == psutil.STATUS_ZOMBIE
        # The other home's server and the hand-started one are untouched, and the other home still owns its own.
        assert psutil.Process(started["pid"]).is_running() and by_hand.poll() is None
        other_status = json.loads(_cli(project, "status", "--json", home=other_home, check=True).stdout)
        assert [v["status"] for v in other_status["instances"] if v["profile"] == "tiny"] == ["ready"]

        with pytest.raises(ForeignServer, match="another llama-pilot home"):
            Runtime(load_config(project)).adopt(found[started["pid"]])
        refused = _cli(project, "orphans", "--stop-pid", str(by_hand.pid))
        assert refused.returncode == 1 and "--force" in refused.stderr and by_hand.poll() is None
        forced = _cli(project, "orphans", "--stop-pid", str(by_hand.pid), "--force")
        assert forced.returncode == 0, forced.stderr
        assert by_hand.wait(timeout=20) is not None
    finally:
        _cli(project, "stop", "all", home=other_home)
        _kill_tree(by_hand.pid)


def _wait_pid_visible(pid: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).name() == "llama-server":
                return
        except psutil.Error:
            pass
        time.sleep(0.02)


# -- item 4: a start killed at a chosen moment leaves no hidden server --------------------------------

# Runs `Runtime.start` with a barrier at one point of the native launch: it writes BARRIER there and
# then waits to be killed. "after-spawn" is right after the keeper process was created, before the
# launcher learns llama-server's pid; "before-spawn" is before any process exists.
LAUNCHER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from mcp_server.runtime import native as backends
    from mcp_server.profiles.config import load_config
    from mcp_server.runtime.lifecycle import Runtime

    conf, point, barrier = sys.argv[1], sys.argv[2], Path(sys.argv[3])

    def park():
        barrier.write_text("here")
        time.sleep(600)

    if point == "after-spawn":
        backends.NativeBackend._wait_pid = staticmethod(lambda *a: park())
    else:
        backends.NativeBackend.launch = lambda *a, **k: park()  # the record is claimed, nothing started
    Runtime(load_config(conf)).start_model("tiny")
""")

# Makes the keeper's own start slow (1 s before its first line), so the window between "the keeper
# process exists" and "it wrote the pid file" is wide enough to look into every time.
SLOW_KEEPER = textwrap.dedent("""
    import sys, time
    if "mcp_server.runtime.keeper" in sys.orig_argv:
        time.sleep(1.0)
""")


def _launch_and_kill(project: Path, point: str, tmp_path: Path) -> None:
    barrier = tmp_path / f"barrier-{point}"
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(SLOW_KEEPER)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    launcher = subprocess.Popen([sys.executable, "-c", LAUNCHER, str(project), point, str(barrier)], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for(barrier)
        launcher.kill()  # SIGKILL: no cleanup of any kind
        launcher.wait(timeout=10)
    finally:
        if launcher.poll() is None:
            launcher.kill()


def _servers_with_home(home: Path) -> list[int]:
    pids = []
    for proc in psutil.process_iter(["name"]):
        if proc.info.get("name") != "llama-server":
            continue
        try:
            if proc.environ().get(MARK_HOME) == str(home) and proc.status() != psutil.STATUS_ZOMBIE:
                pids.append(proc.pid)
        except psutil.Error:
            continue
    return pids


def test_start_killed_right_after_spawning_is_found_and_stoppable(runtime, project, tmp_path):
    _launch_and_kill(project, "after-spawn", tmp_path)
    # The keeper is still starting (1 s): this status call must wait for it, not call the start failed.
    (view,) = [v for v in Runtime(load_config(project)).status().instances if v.profile == "tiny"]
    assert view.status in ("loading", "ready"), view
    assert view.pid and psutil.Process(view.pid).name() == "llama-server"
    with pytest.raises(AlreadyRunning):
        Runtime(load_config(project)).start_model("tiny")  # no second copy on the next port
    stopped = Runtime(load_config(project)).stop_model("all").instances
    assert [v.profile for v in stopped] == ["tiny"]
    assert _servers_with_home(paths.home()) == []


def test_start_killed_before_spawning_is_failed_and_leaves_no_process(runtime, project, tmp_path):
    _launch_and_kill(project, "before-spawn", tmp_path)
    (view,) = [v for v in Runtime(load_config(project)).status().instances if v.profile == "tiny"]
    assert view.status == "failed" and view.pid is None
    assert _servers_with_home(paths.home()) == []
    assert Runtime(load_config(project)).start_model("tiny").status == "ready"  # the profile is usable again


# -- item 5: the state folder deleted, or the home moved, while a server runs ---------------------------


def test_deleted_state_folder_server_is_recovered_by_status(runtime, project):
    first = runtime.start_model("tiny")
    shutil.rmtree(paths.home() / "state")
    fresh = Runtime(load_config(project))
    (view,) = [v for v in fresh.status().instances if v.profile == "tiny"]
    assert view.pid == first.pid and view.status == "ready" and view.adopted
    assert "record was lost" in (view.note or "")
    with pytest.raises(AlreadyRunning):
        fresh.start_model("tiny")
    assert [v.pid for v in Runtime(load_config(project)).stop_model("all").instances] == [first.pid]
    assert _servers_with_home(paths.home()) == []


def test_renamed_home_keeps_its_servers(runtime, project, tmp_path, monkeypatch):
    first = runtime.start_model("tiny")
    new_home = tmp_path / "renamed-home"
    paths.home().rename(new_home)  # the records travel with the folder
    monkeypatch.setenv(paths.HOME_ENV, str(new_home))
    try:
        (view,) = [v for v in Runtime(load_config(project)).status().instances if v.status == "ready"]
        assert view.pid == first.pid
        assert [v.pid for v in Runtime(load_config(project)).stop_model("all").instances] == [first.pid]
    finally:
        _kill_tree(first.pid)


def test_deleted_home_server_is_recovered_by_the_next_home(runtime, project, tmp_path, monkeypatch):
    first = runtime.start_model("tiny")
    old_home = paths.home()
    shutil.rmtree(old_home)
    monkeypatch.setenv(paths.HOME_ENV, str(tmp_path / "next-home"))
    try:
        (view,) = [v for v in Runtime(load_config(project)).status().instances if v.status == "ready"]
        assert view.pid == first.pid and "no longer exists" in (view.note or "") and str(old_home) in view.note
        assert [v.pid for v in Runtime(load_config(project)).stop_model("all").instances] == [first.pid]
    finally:
        _kill_tree(first.pid)


def test_another_existing_homes_server_is_reported_not_taken(runtime, project, tmp_path, monkeypatch):
    first = runtime.start_model("tiny")
    old_home = paths.home()
    monkeypatch.setenv(paths.HOME_ENV, str(tmp_path / "second-home"))
    try:
        fresh = Runtime(load_config(project))
        assert fresh.status().instances == []
        (other,) = [o for o in fresh.status().elsewhere if o.pid == first.pid]
        assert other.owner == "other-home" and other.home == str(old_home) and other.profile == "tiny"
        shown = _cli(project, "status", check=True).stdout
        assert f"pid {first.pid}" in shown and str(old_home) in shown
        assert fresh.stop_model("all").instances == [] and psutil.Process(first.pid).is_running()
    finally:
        monkeypatch.setenv(paths.HOME_ENV, str(old_home))
        Runtime(load_config(project)).stop_model("all")


# -- item 8: housekeeping --------------------------------------------------------------------------


def test_run_files_are_pruned_over_cycles(runtime):
    for _ in range(6):
        runtime.start_model("tiny")
        runtime.stop_model("tiny")
    runtime.status()
    leftover = sorted(p.name for p in Registry().run_dir.iterdir())
    (record,) = Registry().all()
    assert set(leftover) <= {f"{record.id}.pid", f"{record.id}.exit"}, leftover


def test_unreaped_server_is_described_as_ended_not_as_reused(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", "pass"])  # never waited for: a zombie once it exits
    try:
        deadline = time.monotonic() + 10
        while psutil.Process(child.pid).status() != psutil.STATUS_ZOMBIE:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        record = InstanceRecord(id="z-1", profile="z", backend="native", status=InstanceStatus.READY,
                                host="127.0.0.1", port=1, argv=["llama-server"], log_path=str(tmp_path / "z.log"),
                                model_path="", pid=child.pid, pid_create_time=create_time(child.pid),
                                started_at=time.time())
        state = NativeBackend().state(record)
        assert not state.alive and "waiting to be reaped" in (state.detail or "")
        reused = record.model_copy(update={"pid_create_time": (record.pid_create_time or 0) - 100})
        assert "another program" in (NativeBackend().state(reused).detail or "")
    finally:
        child.wait()


def test_status_and_stop_work_when_a_profile_was_created_after_start(runtime, project):
    # A guard for the reconcile step: a record for a profile the config no longer (or not yet) has.
    runtime.start_model("tiny")
    create_profile(load_config(project), "other", {"MODEL": "synth/tiny.gguf"})
    update_profile(load_config(project), "tiny", set={"CTX_SIZE": "256"})
    assert {v.profile for v in Runtime(load_config(project)).status().instances} == {"tiny"}


def test_a_segfaulting_server_is_reported_crashed(runtime):
    # The signal a crash raises; the diagnosis must not blame "something outside llama-pilot".
    view = runtime.start_model("tiny")
    os.kill(view.pid, signal.SIGSEGV)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        (current,) = [v for v in runtime.status().instances if v.profile == "tiny"]
        if current.status == "failed":
            break
        time.sleep(0.05)
    assert current.status == "failed" and current.diagnosis.cause == "crashed", current
    assert "SIGSEGV" in current.diagnosis.summary
