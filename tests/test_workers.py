"""RPC workers on the real engine: worker agents as their own processes (own home, own port), each
owning a real ggml-rpc-server on loopback, and one in its own network namespace across a veth
pair. The demo model split over them must generate what it generates locally; every fault names
the worker behind it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from mcp_server.profiles.config import load_config
from mcp_server.setup.bootstrap import free_port

pytestmark = pytest.mark.engine

TOKEN = "test-worker-token-0123456789"
PROMPT = "The three primary colours are"


class Agent:
    def __init__(self, name: str, home: Path, port: int, rpc_port: int, proc: subprocess.Popen[bytes],
                 host: str = "127.0.0.1") -> None:
        self.name, self.home, self.port, self.rpc_port, self.proc, self.host = name, home, port, rpc_port, proc, host

    def line(self, **options: str) -> str:
        extra = "".join(f" {k}={v}" for k, v in options.items())
        return f"WORKER_{self.name}=http://{self.host}:{self.port} rpc_port={self.rpc_port}{extra}"


def _spawn(name: str, tmp_path: Path, *, env: dict[str, str] | None = None, prefix: list[str] | None = None,
           host: str = "127.0.0.1") -> Agent:
    home = tmp_path / f"worker-{name}"
    home.mkdir(parents=True, exist_ok=True)
    port, rpc_port = free_port(), free_port()
    full_env = {**os.environ, "LLAMA_PILOT_HOME": str(home), "LLAMA_PILOT_WORKER_TOKEN": TOKEN, **(env or {})}
    proc = subprocess.Popen([*(prefix or []), sys.executable, "-m", "mcp_server", "cli", "worker", "serve",
                             "--host", host, "--port", str(port)], env=full_env, cwd=home,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    agent = Agent(name, home, port, rpc_port, proc, host)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else "agent exited"
        try:
            httpx.get(f"http://{host}:{port}/mcp", timeout=1)
            return agent
        except httpx.HTTPError:
            time.sleep(0.1)
    raise AssertionError(f"worker agent {name} did not listen")


def _rpc_servers(agents: list[Agent]) -> list[int]:
    ports = {str(a.rpc_port) for a in agents}
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        line = proc.info.get("cmdline") or []
        if line and Path(line[0]).name == "ggml-rpc-server" and ports & set(line):
            found.append(proc.pid)
    return found


@pytest.fixture
def agents(tmp_path: Path, engine_path: str, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("LLAMA_PILOT_WORKER_TOKEN", TOKEN)
    started: list[Agent] = []

    def start(name: str, **kwargs: object) -> Agent:
        agent = _spawn(name, tmp_path, **kwargs)  # type: ignore[arg-type]
        started.append(agent)
        return agent

    yield start
    for agent in started:
        agent.proc.send_signal(signal.SIGTERM)
    for agent in started:
        try:
            agent.proc.wait(15)
        except subprocess.TimeoutExpired:
            agent.proc.kill()
    for pid in _rpc_servers(started):
        psutil.Process(pid).kill()


def _project(write_conf, demo_gguf: Path, workers: list[str], profile_workers: str) -> Path:  # type: ignore[no-untyped-def]
    conf = write_conf("[global]\nMODELS_DIR=models\nPORT=%d\n%s\n\n[local]\nMODEL=demo.gguf\nCTX_SIZE=1024\n"
                      "PARALLEL=1\n\n[split]\nMODEL=demo.gguf\nCTX_SIZE=1024\nPARALLEL=1\nN_GPU_LAYERS=all\n"
                      "WORKERS=%s\n" % (free_port(), "\n".join(workers), profile_workers))
    os.link(demo_gguf, conf.parent / "models" / "demo.gguf")
    return conf


def _greedy(url: str, n: int = 24) -> list[int]:
    body = {"prompt": PROMPT, "n_predict": n, "temperature": 0, "top_k": 1, "return_tokens": True, "seed": 1,
            "cache_prompt": False}
    return httpx.post(f"{url}/completion", json=body, timeout=120).json()["tokens"]


def test_the_demo_split_over_two_workers_generates_the_local_tokens_and_stop_leaves_no_rpc_server(
        agents, write_conf, demo_gguf: Path) -> None:  # type: ignore[no-untyped-def]
    from mcp_server.placement.operations import estimate_fit
    from mcp_server.runtime.lifecycle import Runtime
    from mcp_server.workers.operations import gpu_stats_with_workers, list_workers

    a, b = agents("a"), agents("b", env={"LLAMA_PILOT_UNUSED": "1"})
    conf = _project(write_conf, demo_gguf, [a.line(), b.line(cache="off")], "a,b")
    config = load_config(conf)
    runtime = Runtime(config)
    local = runtime.start_model("local")
    expected = _greedy(local.url)
    runtime.stop_model("local")
    assert _rpc_servers([a, b]) == []  # nothing is started before a profile needs it

    split = runtime.start_model("split")
    try:
        assert [w.id for w in split.workers] == ["a", "b"] and all(w.started for w in split.workers)
        assert split.workers[0].devices == [f"RPC0[127.0.0.1:{a.rpc_port}]"]
        assert _greedy(split.url) == expected
        # The layers really are on the workers: llama.cpp logged buffers on both RPC devices.
        report = runtime.load_report("split")
        remote = {d.device: d for d in report.devices if d.device.startswith("RPC")}
        assert set(remote) == {f"RPC0[127.0.0.1:{a.rpc_port}]", f"RPC0[127.0.0.1:{b.rpc_port}]"}
        assert all(d.weights_mib > 1 for d in remote.values())
        # status, list_workers and gpu_stats show the workers' devices beside the local ones.
        (view,) = [v for v in runtime.status().instances if v.profile == "split"]
        assert [w.devices for w in view.workers] == [w.devices for w in split.workers]
        listing = list_workers(config)
        assert [(w.id, w.reachable, w.rpc_running, w.used_by, w.same_build) for w in listing.workers] == \
            [("a", True, True, ["split"], True), ("b", True, True, ["split"], True)]
        assert {d.device for d in gpu_stats_with_workers(config).workers} == set(remote)
        from mcp_server.dashboard.app import render_workers

        shown = render_workers(listing)[1]  # the dashboard's panel, as plain text
        assert "RPC running, used by split" in shown and all(name in shown for name in remote)
        # The estimator places on the workers' devices the weights llama.cpp put there.
        estimated = {d.device: d for d in estimate_fit(config, "split").estimate.devices}
        for name, logged in remote.items():
            assert abs(estimated[name].weights_mib - logged.weights_mib) < 2.0
            assert abs(estimated[name].kv_cache_mib - logged.kv_cache_mib) < 0.5
    finally:
        runtime.stop_model("split")
    assert _rpc_servers([a, b]) == []
    assert [w.rpc_running for w in list_workers(config).workers] == [False, False]


def test_kill_9_of_a_worker_mid_generation_names_the_worker_and_stops_the_other(
        agents, write_conf, demo_gguf: Path) -> None:  # type: ignore[no-untyped-def]
    import threading

    from mcp_server.runtime.lifecycle import Runtime
    from mcp_server.workers.operations import worker_status

    a, b = agents("a"), agents("b")
    config = load_config(_project(write_conf, demo_gguf, [a.line(), b.line()], "a,b"))
    runtime = Runtime(config)
    split = runtime.start_model("split")
    victim = worker_status(config, "b").info["rpc"]["pid"]
    answer: dict[str, object] = {}

    def ask() -> None:
        try:
            answer["tokens"] = _greedy(split.url, n=2000)
        except Exception as exc:  # noqa: BLE001 - the connection drops: that is the point
            answer["error"] = exc

    asker = threading.Thread(target=ask)
    asker.start()
    time.sleep(1.5)
    os.kill(victim, signal.SIGKILL)
    asker.join(60)
    assert "error" in answer or len(answer.get("tokens", [])) < 2000  # type: ignore[arg-type]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        (view,) = [v for v in runtime.status().instances if v.profile == "split"]
        if view.status == "failed":
            break
        time.sleep(0.2)
    assert view.status == "failed" and view.diagnosis is not None
    assert view.diagnosis.cause == "worker-lost" and view.diagnosis.worker == "b", view.diagnosis
    assert "b" in view.diagnosis.summary
    assert _rpc_servers([a, b]) == []  # the surviving worker's RPC server, started for it, is stopped too


def test_an_agent_that_is_down_a_wrong_token_and_another_build_refuse_the_start_naming_the_worker(
        agents, write_conf, demo_gguf: Path, tmp_path: Path, engine_path: str, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from mcp_server.runtime.lifecycle import Runtime, StartRefused
    from mcp_server.workers.operations import list_workers

    a = agents("a")
    # A worker whose engine says it is another build: a real llama-server behind a wrapper that
    # answers --version with build 99999, ggml-rpc-server beside it.
    other = tmp_path / "other-build" / "bin"
    other.mkdir(parents=True)
    (other / "llama-server").write_text(f'#!/bin/sh\nif [ "$1" = "--version" ]; then\n'
                                        'echo "version: 99999 (0badc0de)"; echo "built with cc for Linux x86_64"\n'
                                        f'exit 0\nfi\nexec {engine_path} "$@"\n')
    (other / "llama-server").chmod(0o755)
    (other / "ggml-rpc-server").symlink_to(Path(engine_path).parent / "ggml-rpc-server")
    v = agents("v", env={"LLAMA_SERVER": str(other / "llama-server")})
    down_port = free_port()
    monkeypatch.setenv("WRONG_TOKEN", "not-the-token-at-all-xyz")
    conf = _project(write_conf, demo_gguf, [a.line(), v.line(), f"WORKER_down=http://127.0.0.1:{down_port}",
                                            a.line().replace("WORKER_a", "WORKER_t") + " token_env=WRONG_TOKEN"],
                    "a,down")
    text = conf.read_text()
    conf.write_text(text + "\n[mismatch]\nMODEL=demo.gguf\nWORKERS=a,v\n\n[badtoken]\nMODEL=demo.gguf\n"
                           "WORKERS=t\n")
    config = load_config(conf)
    runtime = Runtime(config)
    cases = {"split": ("worker-unreachable", "down"), "mismatch": ("worker-version-mismatch", "v"),
             "badtoken": ("worker-token-refused", "t")}
    for profile, (code, worker) in cases.items():
        with pytest.raises(StartRefused) as refused:
            runtime.start_model(profile)
        assert refused.value.code == code and refused.value.diagnosis.worker == worker, (profile, str(refused.value))
        assert f"worker {worker}" in str(refused.value)
        # a, brought up first for split and mismatch, is taken down again: a refused start leaves nothing
        assert _rpc_servers([a, v]) == [], profile
    views = {w.id: w for w in list_workers(config).workers}
    assert views["down"].reachable is False and views["down"].error.startswith("worker-unreachable")
    assert views["t"].reachable is False and views["t"].error.startswith("worker-token-refused")
    assert views["v"].reachable and views["v"].same_build is False and views["v"].build_number == 99999


@pytest.mark.parametrize("host, why", [("0.0.0.0", "every network"), ("8.8.8.8", "public address"),
                                        ("::", "every network"), ("worker.example.com", "IP address")])
def test_the_agent_refuses_a_wildcard_public_or_named_address(host: str, why: str, tmp_path: Path) -> None:
    env = {**os.environ, "LLAMA_PILOT_HOME": str(tmp_path), "LLAMA_PILOT_WORKER_TOKEN": TOKEN}
    done = subprocess.run([sys.executable, "-m", "mcp_server", "cli", "worker", "serve", "--host", host, "--port",
                           str(free_port())], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and why in done.stderr + done.stdout and "ssh -L" in done.stderr + done.stdout


def test_the_agent_refuses_to_start_without_a_token(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "LLAMA_PILOT_WORKER_TOKEN"}
    done = subprocess.run([sys.executable, "-m", "mcp_server", "cli", "worker", "serve", "--port", str(free_port())],
                          env={**env, "LLAMA_PILOT_HOME": str(tmp_path)}, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "LLAMA_PILOT_WORKER_TOKEN" in done.stderr + done.stdout


def test_bind_rules() -> None:
    from mcp_server.errors import ValidationError
    from mcp_server.workers.addresses import check_bind

    assert [check_bind(h) for h in ("127.0.0.1", "localhost", "::1", "10.0.0.2", "192.168.1.20", "172.20.0.5",
                                    "100.101.102.103", "fd00::5")] == \
        ["127.0.0.1", "127.0.0.1", "::1", "10.0.0.2", "192.168.1.20", "172.20.0.5", "100.101.102.103", "fd00::5"]
    for bad in ("169.254.1.1", "fe80::1", "224.0.0.1", "1.1.1.1", "2001:4860::1"):
        with pytest.raises(ValidationError):
            check_bind(bad)


def _netns_available() -> bool:
    if os.geteuid() != 0:
        return False
    probe = f"lp-probe-{os.getpid()}"
    ok = subprocess.run(["ip", "netns", "add", probe], capture_output=True).returncode == 0
    if ok:
        subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return ok


@pytest.fixture
def veth_namespace():  # type: ignore[no-untyped-def]
    """A network namespace joined to this one by a veth pair: 10.77.<n>.1 here, 10.77.<n>.2 there."""
    if not _netns_available():
        pytest.skip("network namespaces need root with CAP_SYS_ADMIN (`ip netns add` failed)")
    n = os.getpid() % 200 + 20
    ns, here, there = f"lp-w{n}", f"lpm{n}", f"lpw{n}"
    steps = [["ip", "netns", "add", ns], ["ip", "link", "add", here, "type", "veth", "peer", "name", there],
             ["ip", "link", "set", there, "netns", ns], ["ip", "addr", "add", f"10.77.{n}.1/30", "dev", here],
             ["ip", "link", "set", here, "up"], ["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"],
             ["ip", "netns", "exec", ns, "ip", "addr", "add", f"10.77.{n}.2/30", "dev", there],
             ["ip", "netns", "exec", ns, "ip", "link", "set", there, "up"]]
    try:
        for step in steps:
            subprocess.run(step, check=True, capture_output=True)
        yield ns, f"10.77.{n}.2"
    finally:
        subprocess.run(["ip", "link", "del", here], capture_output=True)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def test_a_worker_in_its_own_network_namespace_across_a_veth_pair(
        agents, veth_namespace, write_conf, demo_gguf: Path) -> None:  # type: ignore[no-untyped-def]
    from mcp_server.runtime.lifecycle import Runtime

    ns, address = veth_namespace
    remote = agents("far", prefix=["ip", "netns", "exec", ns], host=address)
    config = load_config(_project(write_conf, demo_gguf, [remote.line()], "far"))
    runtime = Runtime(config)
    local = runtime.start_model("local")
    expected = _greedy(local.url)
    runtime.stop_model("local")
    split = runtime.start_model("split")
    try:
        assert split.workers[0].endpoint == f"{address}:{remote.rpc_port}"
        assert _greedy(split.url) == expected
        # The RPC server listens on the namespace's address only, as the agent does.
        out = subprocess.run(["ip", "netns", "exec", ns, "ss", "-ltnH"], capture_output=True, text=True).stdout
        listening = [line.split()[3] for line in out.splitlines() if line.strip()]
        assert f"{address}:{remote.rpc_port}" in listening and f"{address}:{remote.port}" in listening
        assert not any(x.startswith(("0.0.0.0", "*", "[::]")) for x in listening)
    finally:
        runtime.stop_model("split")
    assert _rpc_servers([remote]) == []


@pytest.mark.anyio
async def test_the_worker_tools_print_the_same_object_both_ways(agents, write_conf, demo_gguf: Path) -> None:  # type: ignore[no-untyped-def]
    """list_workers, worker_status, start_worker and stop_worker: the MCP tool's structured output
    equals the CLI's --json (tests/test_cli_mcp_parity.py compares every other tool)."""
    from mcp import Client

    from mcp_server.server.app import build_server

    from .test_cli_mcp_parity import _cli, _differences, _shape

    a = agents("a")
    conf = _project(write_conf, demo_gguf, [a.line()], "a")
    calls = [("list_workers", {}, []), ("worker_status", {"worker": "a"}, ["a"]),
             ("start_worker", {"worker": "a"}, ["a"]), ("worker_status", {"worker": "a"}, ["a"]),
             ("stop_worker", {"worker": "a"}, ["a"])]
    async with Client(build_server(conf), raise_exceptions=True) as client:
        for tool, arguments, args in calls:
            mcp_side = (await client.call_tool(tool, arguments)).structured_content
            code, cli_side = _cli(conf, tool.replace("_", "-"), *args)
            assert code == 0
            ignore = {"uptime_s", "rss_mib", "ram_available_mib", "free_mib", "gpu_used_mib"}
            assert _differences(_shape(_strip(mcp_side, ignore)), _shape(_strip(cli_side, ignore))) == [], tool
            if tool == "start_worker":  # the second start finds it running with the same settings
                assert mcp_side["rpc_running"] and cli_side["rpc_running"]
        refused = await client.call_tool("stop_worker", {"worker": "nope"})
        assert refused.is_error and "invalid-value: worker=nope" in refused.content[0].text
    assert _rpc_servers([a]) == []


def _strip(value, ignore: set[str]):  # type: ignore[no-untyped-def]
    if isinstance(value, dict):
        return {k: _strip(v, ignore) for k, v in value.items() if k not in ignore}
    if isinstance(value, list):
        return [_strip(v, ignore) for v in value]
    return value


def test_plan_places_a_model_across_the_workers_devices_and_names_them(agents, write_conf, demo_gguf: Path) -> None:  # type: ignore[no-untyped-def]
    from mcp_server.placement.operations import apply_placement, plan_placement

    a, b = agents("a"), agents("b")
    conf = _project(write_conf, demo_gguf, [a.line(), b.line()], "a,b")
    config = load_config(conf)
    planned = plan_placement(config, "demo.gguf", 4096, "none", workers=["a", "b"]).plan
    names = [f"RPC0[127.0.0.1:{a.rpc_port}]", f"RPC0[127.0.0.1:{b.rpc_port}]"]
    assert [d.device for d in planned.estimate.devices] == names
    assert planned.strategy == "layer-split" and planned.settings["WORKERS"] == "a,b"
    assert all(d.weights_mib > 0 for d in planned.estimate.devices)
    assert any(n.startswith("fits across") and names[0] in n for n in planned.notes)
    # A profile with WORKERS is planned on its workers, and the edit keeps them.
    applied = apply_placement(config, "split", gpus="none", dry_run=True, agent=False)
    assert applied.plan.settings["WORKERS"] == "a,b" and "TENSOR_SPLIT" in applied.plan.settings
    assert _rpc_servers([a, b]) == []  # planning asks the agents; it starts nothing


def test_a_worker_out_of_memory_is_diagnosed_with_its_device_and_worker(
        agents, write_conf, demo_gguf: Path) -> None:  # type: ignore[no-untyped-def]
    """A worker whose RPC server may map only 3 GiB (RLIMIT_AS, inherited from its agent) is asked
    for a 6.5 GB buffer: the real allocation failure, on the worker, as llama-server reports it."""
    from mcp_server.model_files.synthetic import write_model
    from mcp_server.runtime.lifecycle import Runtime, StartFailed

    small = agents("small", prefix=["prlimit", f"--as={3 << 30}"])
    conf = _project(write_conf, demo_gguf, [small.line()], "small")
    write_model("dense", conf.parent / "models" / "big.gguf", dict(
        n_layer=8, n_embd=4096, n_head=32, n_head_kv=8, head_dim=128, n_ff=14336, n_ctx_train=4096, n_vocab=32000),
        sparse=True)
    conf.write_text(conf.read_text() + "\n[big]\nMODEL=big.gguf\nCTX_SIZE=512\nN_GPU_LAYERS=all\nWORKERS=small\n")
    with pytest.raises(StartFailed) as failed:
        Runtime(load_config(conf)).start_model("big")
    diagnosis = failed.value.diagnosis
    assert diagnosis.cause == "oom" and diagnosis.worker == "small", diagnosis
    assert diagnosis.device == f"RPC0[127.0.0.1:{small.rpc_port}]" and "worker small" in diagnosis.summary
    assert _rpc_servers([small]) == []


def test_tune_across_a_worker_brings_its_rpc_server_up_for_the_tune_and_stops_it_after(
        agents, write_conf, demo_gguf: Path) -> None:  # type: ignore[no-untyped-def]
    """The demo with WORKERS=a tuned on this CPU machine: the worker's device is the one device the
    estimator places layers on, every load runs over it, and the tune leaves no RPC server behind."""
    from mcp_server.errors import ValidationError
    from mcp_server.placement import calibration
    from mcp_server.tune.operations import run_tune

    a = agents("a")
    conf = _project(write_conf, demo_gguf, [a.line()], "a")
    said: list[str] = []
    result = run_tune(load_config(conf), "split", minutes=0.3, depth=32, source="server", rounds=1, gen_tokens=8,
                      full_context_check=False, say=said.append)
    assert any("0 GPU(s) + 1 worker device(s)" in line for line in said), said
    assert result.winner.get("N_GPU_LAYERS") not in (None, "0")  # layers placed on the worker's device
    assert result.paired is not None and result.paired.rounds == 1 and result.paired.gen_ratio > 0
    assert result.memory_mib and any(k.startswith("RPC0[") and v > 50 for k, v in result.memory_mib.items())
    assert _rpc_servers([a]) == []  # started by the tune, stopped by it
    # Each load's memory record has the worker's device as a device of its own (not host memory),
    # predicted for it: the placed candidates within 10% of llama.cpp's buffers there.
    rpc = [d for m in calibration.measurements() if m.profile == "split" for d in m.devices
           if d.device.startswith("RPC0[")]
    assert rpc and all(d.logged_mib for d in rpc)
    assert any(abs(d.predicted_mib - d.logged_mib) <= 0.1 * d.logged_mib for d in rpc), \
        [(d.predicted_mib, d.logged_mib) for d in rpc]
    with pytest.raises(ValidationError, match="source=server"):
        run_tune(load_config(conf), "split", minutes=0.1, source="llama-bench")


def test_a_worker_serving_one_profile_refuses_a_second_and_a_tune_naming_the_user(
        agents, write_conf, demo_gguf: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """ggml-rpc-server serves one client at a time: a second llama-server on the same worker would
    hang at load. It is refused before anything starts, and the first keeps running."""
    from mcp_server.runtime.lifecycle import Runtime, StartRefused
    from mcp_server.tune.operations import run_tune
    from mcp_server.workers.client import WorkerBusy

    a = agents("a")
    conf = _project(write_conf, demo_gguf, [a.line()], "a")
    with conf.open("a") as out:
        out.write("\n[other]\nMODEL=demo.gguf\nCTX_SIZE=512\nPARALLEL=1\nN_GPU_LAYERS=all\nWORKERS=a\n")
    config = load_config(conf)
    runtime = Runtime(config)
    split = runtime.start_model("split")
    try:
        expected = _greedy(split.url, 8)
        with pytest.raises(StartRefused) as refused:
            runtime.start_model("other")
        diagnosis = refused.value.diagnosis
        assert diagnosis.cause == "worker-busy" and diagnosis.worker == "a" and "stop split" in diagnosis.fix
        with pytest.raises(WorkerBusy, match="serving split"):
            run_tune(config, "other", minutes=0.1, depth=16, rounds=1, full_context_check=False)
        # From another machine (here: another home, so another registry), the worker's own count of
        # connected clients refuses the start.
        elsewhere = conf.parent / "elsewhere"
        elsewhere.mkdir()
        with monkeypatch.context() as env, pytest.raises(StartRefused) as remote:
            env.setenv("LLAMA_PILOT_HOME", str(elsewhere))
            Runtime(load_config(conf)).start_model("other")
        assert remote.value.diagnosis.cause == "worker-busy" and "1 client connection" in remote.value.diagnosis.summary
        assert len(_rpc_servers([a])) == 1 and _greedy(split.url, 8) == expected  # the first one still serves
    finally:
        runtime.stop_model("split")
    assert _rpc_servers([a]) == []


def test_serve_swaps_two_profiles_that_share_a_worker_and_answers_each_by_name(
        agents, write_conf, demo_gguf: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """One endpoint, two profiles on worker a: the worker takes one at a time, so serve unloads the
    one resident there for the other (never both at once, which would hang the second at load)."""
    from mcp_server.serve.memory import footprint

    from .serve_helpers import Endpoint, stop_everything

    a = agents("a")
    conf = _project(write_conf, demo_gguf, [a.line(), f"SERVE_PORT={free_port()}"], "a")
    with conf.open("a") as out:
        out.write("\n[other]\nMODEL=demo.gguf\nCTX_SIZE=512\nPARALLEL=1\nN_GPU_LAYERS=all\nWORKERS=a\n")
    mib = footprint(load_config(conf), "split", []).mib
    assert mib["worker:a"] == 1 and not any(k.startswith("gpu") for k in mib)  # the worker's layers are not here
    endpoint = Endpoint(conf, tmp_path / "serve.log").start()
    try:
        for name in ("split", "other", "split"):
            answer = endpoint.complete(name, max_tokens=4)
            assert answer.status_code == 200, (answer.text, endpoint.log())
            assert answer.headers["x-llama-pilot-profile"] == name
        loads = [s for s in endpoint.status()["swaps"] if s["action"] == "load"]
        assert [(s["profile"], s["unloaded"]) for s in loads] == [("split", []), ("other", ["split"]),
                                                                  ("split", ["other"])]
    finally:
        endpoint.stop()
        stop_everything(conf)
    assert _rpc_servers([a]) == []
