"""The lifecycle against the real llama-server: start, answer, stop, switch, failures and orphans.

The same suite runs on both backends: native processes, and containers on a real Docker engine.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from mcp_server.runtime.server_api import chat
from mcp_server.runtime.registry import InstanceStatus, Registry
from mcp_server.profiles.config import load_config
from mcp_server.profiles.edits import create_profile, update_profile
from mcp_server.runtime.lifecycle import (AlreadyRunning, PortInUse, Runtime, StartFailed, StartRefused, SwitchCancelled,
                                          SwitchFailed)
from mcp_server.runtime.native import MARK_INSTANCE
from mcp_server.model_files.synthetic import DenseShape, write_dense

from .conftest import need

pytestmark = pytest.mark.engine


def _docker_ready() -> bool:
    try:
        import docker

        docker.from_env(timeout=5).ping()
        return True
    except Exception:
        return False


@pytest.fixture(params=["native", "docker"])
def backend(request, engine_path) -> str:
    if request.param == "docker":
        need(_docker_ready(), "a Docker engine", "run `bash .ci/docker.sh` (installs docker.io, starts dockerd)")
        from mcp_server.runtime.docker_image import build_local_image

        build_local_image(engine_path=engine_path)
    return request.param


@pytest.fixture
def project(demo_project: Path, backend: str) -> Path:
    """The demo profiles plus a tiny synthetic model, all on the chosen backend, ports from 18080."""
    write_dense(demo_project.parent / "models" / "synth" / "tiny.gguf", DenseShape(), seed=1)
    config = load_config(demo_project)
    update_profile(config, "global", set={"BACKEND": backend, "PORT": "18080", "PARALLEL": "1"})
    create_profile(load_config(demo_project), "tiny", {"NAME": "Tiny synthetic", "MODEL": "synth/tiny.gguf",
                                                       "CTX_SIZE": "512"})
    return demo_project


@pytest.fixture
def runtime(project: Path):
    rt = Runtime(load_config(project))
    yield rt
    rt.stop_model("all", grace_s=3)


def reload(rt: Runtime, project: Path) -> Runtime:
    """A fresh Runtime over the same state, as another process would see it."""
    return Runtime(load_config(project))


def edit(project: Path, profile: str, **values: str) -> None:
    update_profile(load_config(project), profile, set=values)


def listening(port: int) -> bool:
    return any(c.laddr and c.laddr.port == port and c.status == psutil.CONN_LISTEN
               for c in psutil.net_connections(kind="tcp"))


def no_llama_servers_left() -> list[int]:
    return [p.pid for p in psutil.process_iter(["cmdline"])
            if (p.info["cmdline"] or [""])[0].endswith("llama-server")]


def test_start_ready_answer_stop(runtime, project):
    view = runtime.start_model("demo")
    assert view.status == InstanceStatus.READY and view.load_seconds and view.load_seconds > 0
    reply = chat(view.url, "Say hi.", max_tokens=8, temperature=0)
    assert reply["choices"][0]["message"]["content"].strip()
    (listed,) = [v for v in runtime.status().instances if v.profile == "demo"]
    assert listed.status == "ready" and listed.uptime_s is not None and listed.pid
    (stopped,) = runtime.stop_model("demo").instances
    assert stopped.status == InstanceStatus.STOPPED
    assert not listening(view.port)  # stop returns only once the port is free


def test_second_copy_is_refused_and_state_is_shared(runtime, project):
    runtime.start_model("demo")
    other = reload(runtime, project)
    with pytest.raises(AlreadyRunning, match="already ready"):
        other.start_model("demo")
    assert [v.profile for v in other.status().instances if v.status == "ready"] == ["demo"]


def test_switch_a_to_b(runtime, project):
    runtime.start_model("demo")
    result = runtime.switch_model("tiny")
    assert [v.profile for v in result.stopped] == ["demo"]
    assert result.started and result.started.profile == "tiny" and result.started.status == "ready"
    states = {v.profile: v.status for v in runtime.status().instances}
    assert states == {"demo": "stopped", "tiny": "ready"}


def test_switch_to_broken_profile_rolls_back(runtime, project):
    edit(project, "tiny", EXTRA_ARGS="--no-such-flag")
    runtime = reload(runtime, project)
    runtime.start_model("demo")
    with pytest.raises(SwitchFailed) as info:
        runtime.switch_model("tiny")
    result = info.value.result
    assert [v.profile for v in result.rolled_back] == ["demo"] and result.started is None
    assert "invalid-argument" in (result.error or "")
    states = {v.profile: v.status for v in runtime.status().instances}
    assert states["demo"] == "ready" and states["tiny"] == "failed"


def stall_load(project: Path, profile: str, backend: str, tmp_path: Path) -> None:
    """Make ``profile``'s load hang until it is stopped: its --mmproj is a FIFO nobody writes, and
    llama-server blocks opening it once its HTTP server is up (so /health says loading) and before
    it installs its signal handlers (so SIGTERM ends it at once). No timing luck needed to cancel it.

    For containers the FIFO is in the models folder, which they see at /models."""
    fifo = (project.parent / "models" if backend == "docker" else tmp_path) / "stall.fifo"
    os.mkfifo(fifo)
    edit(project, profile, EXTRA_ARGS=f"--mmproj {'/models/stall.fifo' if backend == 'docker' else fifo}")


def processes_of(instance_id: str) -> list[int]:
    """Live processes carrying this instance's mark (the server, whatever its backend, and its keeper)."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get(MARK_INSTANCE) == instance_id and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc.pid)
        except psutil.Error:
            continue
    return found


def test_cancelled_switch_stops_its_target_and_does_not_roll_back(runtime, project, backend, tmp_path):
    stall_load(project, "tiny", backend, tmp_path)
    runtime = reload(runtime, project)
    old = runtime.start_model("demo")
    cancel = threading.Event()
    cancelled_at: list[float] = []

    def progress(report) -> None:  # the first report comes while tiny loads: the caller gives up
        if not cancel.is_set():
            cancelled_at.append(time.monotonic())
            cancel.set()

    with pytest.raises(SwitchCancelled) as info:
        runtime.switch_model("tiny", progress=progress, cancel=cancel)
    took = time.monotonic() - cancelled_at[0]
    result = info.value.result
    assert info.value.code == "switch-cancelled" and result.cancelled
    assert [v.profile for v in result.stopped] == ["demo"]
    assert result.started is None and result.rolled_back == [], "a cancelled switch must not roll back"
    launched = result.launched
    assert launched is not None and launched.profile == "tiny" and launched.status == InstanceStatus.STOPPED
    assert "nothing runs for tiny" in str(info.value) and "Nothing was rolled back" in str(info.value)
    # Its load never ends by itself (and would time out only after a minute): only the cancel stopped it.
    assert took < 15, f"the cancel took {took:.1f} s to stop the switch"
    states = {v.profile: v.status for v in reload(runtime, project).status().instances}
    assert states == {"demo": "stopped", "tiny": "stopped"}
    assert not listening(launched.port) and not listening(old.port)
    assert processes_of(launched.id) == [] and processes_of(old.id) == []


def test_switch_cancelled_before_it_decides_changes_nothing(runtime, project):
    old = runtime.start_model("demo")
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(SwitchCancelled) as info:
        runtime.switch_model("tiny", cancel=cancel)
    assert info.value.result.stopped == [] and info.value.result.launched is None
    states = {v.profile: v.status for v in runtime.status().instances}
    assert states == {"demo": "ready"} and listening(old.port)


def test_switch_cancelled_while_stopping_does_not_launch(runtime, project, monkeypatch):
    runtime.start_model("demo")
    cancel = threading.Event()
    stop_locked = runtime._stop_locked

    def stop_then_cancel(records, grace_s):  # the cancel arrives while the old model is being stopped
        stopped = stop_locked(records, grace_s)
        cancel.set()
        return stopped

    monkeypatch.setattr(runtime, "_stop_locked", stop_then_cancel)
    with pytest.raises(SwitchCancelled) as info:
        runtime.switch_model("tiny", cancel=cancel)
    result = info.value.result
    assert [v.profile for v in result.stopped] == ["demo"] and result.launched is None and result.rolled_back == []
    assert {v.profile: v.status for v in runtime.status().instances} == {"demo": "stopped"}


def test_killed_server_is_reported_failed_with_log_kept(runtime, project, backend):
    view = runtime.start_model("demo")
    if backend == "native":
        os.kill(view.pid, signal.SIGKILL)
    else:
        import docker

        docker.from_env().containers.get(view.container_id).kill(signal="SIGKILL")
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        (current,) = [v for v in runtime.status().instances if v.profile == "demo"]
        if current.status == "failed":
            break
        time.sleep(0.1)
    assert current.status == "failed"
    assert current.exit_code in (-9, 137)
    assert current.diagnosis and current.diagnosis.cause == "killed"
    assert "server is listening" in Path(current.log_path).read_text() or runtime.tail_logs("demo").lines


@pytest.mark.parametrize("breakage, cause", [
    ("bad-flag", "invalid-argument"),
    ("unreadable", "model-unreadable"),
    ("unknown-arch", "unknown-architecture"),
    ("port-taken-late", "port-in-use"),
])
def test_failed_starts_are_diagnosed(runtime, project, breakage, cause):
    models = project.parent / "models"
    if breakage == "bad-flag":
        edit(project, "tiny", EXTRA_ARGS="--no-such-flag")
    elif breakage == "unreadable":
        (models / "synth" / "junk.gguf").write_bytes(b"GGUF" + os.urandom(64))
        edit(project, "tiny", MODEL="synth/junk.gguf")
    elif breakage == "unknown-arch":
        _write_unknown_arch(models / "synth" / "alien.gguf")
        edit(project, "tiny", MODEL="synth/alien.gguf")
    blocker = None
    if breakage == "port-taken-late":
        # EXTRA_ARGS wins over the port llama-pilot chose, so llama-server itself finds it taken.
        blocker = socket.socket()
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        edit(project, "tiny", EXTRA_ARGS=f"--port {blocker.getsockname()[1]}")
    runtime = reload(runtime, project)
    started = time.monotonic()
    try:
        with pytest.raises(StartFailed) as info:
            runtime.start_model("tiny", timeout_s=60)
    finally:
        if blocker:
            blocker.close()
    assert time.monotonic() - started < 30  # failed as soon as the process ended
    assert info.value.diagnosis.cause == cause, info.value
    (failed,) = [v for v in runtime.status().instances if v.profile == "tiny"]
    assert failed.status == "failed" and failed.diagnosis.cause == cause


def test_missing_model_file_is_refused_before_launch(runtime, project):
    edit(project, "tiny", MODEL="synth/absent.gguf")
    with pytest.raises(StartRefused, match="missing") as info:
        reload(runtime, project).start_model("tiny")
    assert info.value.diagnosis.cause == "model-missing"


def test_taken_profile_port_is_refused(runtime, project):
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        edit(project, "tiny", PORT=str(blocker.getsockname()[1]))
        with pytest.raises(PortInUse, match="in use") as info:
            reload(runtime, project).start_model("tiny")
    assert info.value.diagnosis.cause == "port-in-use"


def test_start_times_out_while_loading(runtime, project):
    with pytest.raises(StartFailed) as info:
        runtime.start_model("demo", timeout_s=0.05)
    assert info.value.diagnosis.cause == "timeout"
    assert not any(v.status in ("loading", "ready") for v in runtime.status().instances)


def test_two_profiles_side_by_side(runtime, project):
    a = runtime.start_model("demo")
    b = runtime.start_model("tiny")
    assert a.port != b.port
    assert {v.profile for v in runtime.status().instances if v.status == "ready"} == {"demo", "tiny"}


def test_logs_kept_across_restarts_and_load_report(runtime, project):
    runtime.start_model("tiny")
    runtime.stop_model("tiny")
    runtime.start_model("tiny")
    tail = runtime.tail_logs("tiny", lines=0)
    assert sum("----- llama-pilot" in line for line in tail.lines) == 2
    assert not any("\x1b[" in line for line in tail.lines)
    report = runtime.load_report("tiny")
    assert report.build_number == 11434 and report.n_ctx == 512 and report.slots == 1
    assert report.devices and report.devices[0].weights_mib > 0 and report.load_seconds


def test_concurrent_starts_from_two_processes_give_one_instance(project, backend):
    cmd = [sys.executable, "-m", "mcp_server", "cli", "--config", str(project), "start", "demo", "--json"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [p.communicate(timeout=180) for p in procs]
    codes = sorted(p.returncode for p in procs)
    try:
        assert codes == [0, 1], results
        # The loser's --json error names why, with its code.
        errors = [json.loads(out)["error"] for (out, _), p in zip(results, procs) if p.returncode == 1]
        assert [e["code"] for e in errors] == ["already-running"] and "already" in errors[0]["message"]
        records = Registry().all()
        assert len([r for r in records if r.profile == "demo" and r.is_live]) == 1
        for path in Registry().dir.glob("*.json"):
            json.loads(path.read_text())  # every record is whole
    finally:
        Runtime(load_config(project)).stop_model("all")


def test_instance_outlives_the_cli_that_started_it(project):
    cmd = [sys.executable, "-m", "mcp_server", "cli", "--config", str(project), "start", "tiny", "--no-wait", "--json"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=True)
    assert json.loads(out.stdout)["status"] == "loading"
    runtime = Runtime(load_config(project))
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            (view,) = [v for v in runtime.status().instances if v.profile == "tiny"]
            if view.status != "loading":
                break
            time.sleep(0.1)
        assert view.status == "ready"
    finally:
        runtime.stop_model("all")


@pytest.mark.parametrize("backend", ["native"], indirect=True)  # containers: test_docker_backend.py
def test_orphan_is_found_and_adopted(runtime, project, backend):
    view = runtime.start_model("tiny")
    try:
        for path in Registry().dir.glob("*.json"):
            path.unlink()  # the manager's state is lost: the process runs on, unknown to us
        rt = reload(runtime, project)
        (orphan,) = [o for o in rt.orphans() if o.pid == view.pid]  # other servers here are not ours
        assert orphan.port == view.port and orphan.model_path.endswith("synth/tiny.gguf")
        adopted = rt.adopt(orphan)
        assert adopted.profile == "tiny" and adopted.status == "ready" and adopted.adopted
        assert view.pid not in [o.pid for o in rt.orphans()]
        rt.stop_model("tiny")
        assert not psutil.pid_exists(view.pid) or psutil.Process(view.pid).status() == psutil.STATUS_ZOMBIE
    finally:
        if psutil.pid_exists(view.pid):
            os.killpg(os.getpgid(view.pid), signal.SIGKILL)


def test_stale_record_with_dead_pid_is_cleaned(runtime, project):
    view = runtime.start_model("tiny")
    registry = Registry()
    (record,) = [r for r in registry.all() if r.id == view.id]
    fake = record.model_copy(update={"id": "ghost-1", "profile": "ghost", "pid": 999999, "supervisor_pid": None,
                                     "exit_file": None, "port": 1, "backend": "native", "container_id": None})
    registry.save(fake)
    states = {v.profile: v for v in runtime.status().instances}
    assert states["ghost"].status == "failed" and "no exit status" in states["ghost"].diagnosis.summary


def test_twenty_start_stop_cycles_leave_nothing_behind(runtime, project, backend):
    before = set(no_llama_servers_left())  # other servers (not ours) may run on a shared machine
    for _ in range(20):
        runtime.start_model("tiny")
        runtime.stop_model("tiny")
    assert set(no_llama_servers_left()) <= before
    assert [v.status for v in runtime.status().instances] == ["stopped"]
    if backend == "docker":
        import docker

        assert not docker.from_env().containers.list(all=True, filters={"label": "llama-pilot.profile=tiny"})


def _write_unknown_arch(path: Path) -> None:
    import gguf

    writer = gguf.GGUFWriter(str(path), "notanarch")
    writer.add_block_count(1)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
