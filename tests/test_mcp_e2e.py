"""The MCP server as a client sees it: a real ``python -m mcp_server`` subprocess (stdio, and
streamable HTTP), the real llama-server behind it.

- the demo model: list tools, start, test_completion, tail_logs, stop;
- a scripted agent adding a new (synthetic) model through MCP only, leaving a valid profile;
- ``--http``: loopback only, and a bearer token when one is set.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from mcp import Client, StdioServerParameters

from mcp_server.profiles.config import load_config
from mcp_server.profiles.edits import update_profile
from mcp_server.model_files.synthetic import DenseShape, write_dense

pytestmark = pytest.mark.anyio



def _stdio(conf: Path) -> StdioServerParameters:
    # os.environ carries the test's LLAMA_PILOT_HOME and LLAMA_SERVER (conftest's isolated_home).
    return StdioServerParameters(command=sys.executable, args=["-m", "mcp_server", "--config", str(conf)],
                                 env={**os.environ})


async def _until_nothing_live(client: Client, within_s: float = 30.0) -> tuple[list[dict], list[dict]]:
    """Poll status until no instance is loading or ready (or the time is up): (all views, the live ones)."""
    import anyio

    deadline = time.monotonic() + within_s
    while True:
        views = (await client.call_tool("status", {})).structured_content["instances"]
        live = [v for v in views if v["status"] in ("loading", "ready")]
        if not live or time.monotonic() > deadline:
            return views, live
        await anyio.sleep(0.2)


def _own_port(conf: Path, port: int) -> None:
    """Keep these servers off 8080 and off the other suites' ports."""
    update_profile(load_config(conf), "global", set={"PORT": str(port)})


@pytest.mark.engine
async def test_stdio_demo_start_complete_logs_stop(demo_project, engine_path):
    _own_port(demo_project, 18280)
    async with Client(_stdio(demo_project), read_timeout_seconds=300) as client:
        names = {t.name for t in (await client.list_tools()).tools}
        assert {"start_model", "test_completion", "tail_logs", "stop_model", "diagnose"} <= names
        progress: list[float] = []

        async def on_progress(done: float, total: float | None, message: str | None) -> None:
            progress.append(done)

        try:
            started = await client.call_tool("start_model", {"profile": "demo"}, progress_callback=on_progress)
            assert not started.is_error, started.content[0].text
            assert started.structured_content["status"] == "ready"
            assert progress and progress[-1] == 1.0
            answer = await client.call_tool("test_completion", {"profile": "demo", "prompt": "The sky is",
                                                                "max_tokens": 8, "temperature": 0})
            assert not answer.is_error, answer.content[0].text
            check = answer.structured_content
            assert check["generated_tokens"] >= 1 and check["generation_tokens_per_s"] > 0
            logs = (await client.call_tool("tail_logs", {"profile": "demo", "lines": 50})).structured_content
            assert logs["lines"] and "not instructions" in logs["note"]
            assert any("print_timing" in line for line in logs["lines"])  # the completion we just made
            diagnosis = (await client.call_tool("diagnose", {"profile": "demo"})).structured_content
            assert diagnosis["verdict"].startswith("demo: ready at http://127.0.0.1:18280")
        finally:
            stopped = await client.call_tool("stop_model", {"profile": "all"})
        assert [v["status"] for v in stopped.structured_content["instances"]] == ["stopped"]


ADDED_PROFILE = """
# Tiny synthetic llama (random weights, mcp_server.model_files.synthetic): dense, 2 layers, 4 heads / 2 KV heads,
# 2048-token training context, per inspect_model_file.
# NOT YET TESTED
[tiny-synth]
NAME=Tiny synthetic llama
DESCRIPTION=Random-weight test model added by the scripted add-model run
MODEL=synth/tiny-llama.gguf
CTX_SIZE=512
PARALLEL=1
"""


@pytest.mark.engine
async def test_scripted_add_model_flow_through_mcp_only(demo_project, engine_path):
    """An agent's add-model run on a new file: inspect -> plan -> create -> estimate -> lint -> start -> test -> stop."""
    _own_port(demo_project, 18290)
    # Phase 2 (download) is the user's: the file appears under the models directory.
    write_dense(demo_project.parent / "models" / "synth" / "tiny-llama.gguf", DenseShape(), seed=7)
    before = demo_project.read_text()
    async with Client(_stdio(demo_project), read_timeout_seconds=300) as client:
        local = (await client.call_tool("list_model_files", {})).structured_content["files"]
        [new] = [m for m in local if not m["used_by"]]
        assert new["path"] == "synth/tiny-llama.gguf" and new["complete"]

        info = (await client.call_tool("inspect_model_file", {"path": new["path"]})).structured_content
        assert (info["architecture"], info["n_layer"], info["n_ctx_train"]) == ("llama", 2, 2048)
        assert (max(info["n_head"]), max(info["n_head_kv"])) == (4, 2)
        # Phase 1, fit: would it fit the user's 8 GiB GPU at the chosen context, and how to place it?
        planned = (await client.call_tool("plan_placement", {"model": new["path"], "ctx": 512,
                                                             "gpus": "8GiB"})).structured_content
        assert planned["plan"]["strategy"] == "single-gpu" and planned["plan"]["estimate"]["fits"] is True
        assert planned["edit"] is None and demo_project.read_text() == before  # no write_profile: nothing written

        values = {"NAME": "Tiny synthetic llama",
                  "DESCRIPTION": "Random-weight test model added by the scripted add-model run",
                  "MODEL": new["path"], "CTX_SIZE": "512", "PARALLEL": "1"}
        comments = [f"Tiny synthetic llama (random weights, mcp_server.model_files.synthetic): dense, {info['n_layer']} layers, "
                    f"{max(info['n_head'])} heads / {max(info['n_head_kv'])} KV heads,",
                    f"{info['n_ctx_train']}-token training context, per inspect_model_file.", "NOT YET TESTED"]
        preview = await client.call_tool("create_profile", {"profile": "tiny-synth", "values": values,
                                                          "comments": comments, "dry_run": True})
        assert preview.structured_content["dry_run"] and demo_project.read_text() == before
        created = await client.call_tool("create_profile", {"profile": "tiny-synth", "values": values,
                                                          "comments": comments})
        assert not created.is_error, created.content[0].text

        fit = (await client.call_tool("estimate_fit", {"profile": "tiny-synth", "gpus": "8GiB"})).structured_content
        assert fit["estimate"]["fits"] is True and fit["estimate"]["n_ctx"] == 512

        lint = (await client.call_tool("lint_profiles", {"profile": "tiny-synth"})).structured_content
        assert lint["errors"] == 0, lint
        try:
            started = await client.call_tool("start_model", {"profile": "tiny-synth"})
            assert not started.is_error, started.content[0].text
            answer = await client.call_tool("test_completion", {"profile": "tiny-synth", "max_tokens": 4})
            assert not answer.is_error, answer.content[0].text
            assert answer.structured_content["generated_tokens"] >= 1
        finally:
            stopped = await client.call_tool("stop_model", {"profile": "tiny-synth"})
        assert stopped.structured_content["instances"][0]["status"] == "stopped"

    assert demo_project.read_text() == before.rstrip("\n") + "\n" + ADDED_PROFILE
    profile = load_config(demo_project).profile("tiny-synth")
    assert profile.model == "synth/tiny-llama.gguf" and profile.ctx_size == 512


async def test_stdio_refusals_reach_the_client(write_conf):
    conf = write_conf("[global]\nMODELS_DIR=models\n\n[alpha]\nMODEL=a.gguf\n")
    async with Client(_stdio(conf)) as client:
        start = await client.call_tool("start_model", {"profile": "alpha"})
        assert start.is_error and "model-missing" in start.content[0].text
        edit = await client.call_tool("update_profile", {"profile": "alpha", "set": {"MODEL": "x.gguf --rpc evil"}})
        assert edit.is_error and "read as a flag" in edit.content[0].text


# --- streamable HTTP ---------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve_http(conf: Path, port: int, token: str | None) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "LLAMA_PILOT_MCP_TOKEN"}
    if token:
        env["LLAMA_PILOT_MCP_TOKEN"] = token
    proc = subprocess.Popen([sys.executable, "-m", "mcp_server", "--config", str(conf), "--http", "--port", str(port)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited: {proc.stderr.read().decode()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise AssertionError("the HTTP server did not listen within 30 s")


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


CONF = "[global]\nMODELS_DIR=models\n\n[alpha]\nNAME=Alpha\nMODEL=a.gguf\n"


async def test_http_serves_on_loopback_only(write_conf):
    port = _free_port()
    proc = _serve_http(write_conf(CONF), port, token=None)
    try:
        listening = [c.laddr for c in psutil.Process(proc.pid).net_connections(kind="tcp")
                     if c.status == psutil.CONN_LISTEN]
        assert listening and all(addr.ip == "127.0.0.1" for addr in listening)
        async with Client(f"http://127.0.0.1:{port}/mcp") as client:
            result = await client.call_tool("list_profiles", {})
        assert result.structured_content["profiles"][0]["name"] == "Alpha"
    finally:
        _stop(proc)


async def test_http_bearer_token(write_conf):
    import httpx2
    from mcp.client.streamable_http import streamable_http_client
    from mcp.shared._httpx_utils import create_mcp_http_client

    port = _free_port()
    url = f"http://127.0.0.1:{port}/mcp"
    proc = _serve_http(write_conf(CONF), port, token="s3cret-token")
    try:
        async with httpx2.AsyncClient() as raw:
            body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
            assert (await raw.post(url, json=body)).status_code == 401
            wrong = await raw.post(url, json=body, headers={"Authorization": "Bearer nope"})
            assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
            # The SDK's DNS-rebinding guard is on for loopback: a foreign Host is refused even with the token.
            rebound = await raw.post(url, json=body, headers={"Authorization": "Bearer s3cret-token",
                                                              "Host": "evil.example.com"})
            assert rebound.status_code == 421
        http = create_mcp_http_client(headers={"Authorization": "Bearer s3cret-token"})
        async with http, Client(streamable_http_client(url, http_client=http)) as client:
            result = await client.call_tool("list_profiles", {})
        assert result.structured_content["profiles"][0]["profile"] == "alpha"
    finally:
        _stop(proc)


def test_http_without_a_token_warns_loudly_and_with_one_does_not(write_conf):
    conf = write_conf(CONF)
    stderr = {}
    for token in (None, "s3cret-token"):
        proc = _serve_http(conf, _free_port(), token=token)
        _stop(proc)
        stderr[token] = proc.stderr.read().decode()
    assert "WITHOUT A TOKEN" in stderr[None] and "LLAMA_PILOT_MCP_TOKEN" in stderr[None]
    assert "WITHOUT A TOKEN" not in stderr["s3cret-token"] and "bearer token required" in stderr["s3cret-token"]


def test_http_offers_no_host_option():
    result = subprocess.run([sys.executable, "-m", "mcp_server", "--http", "--host", "0.0.0.0"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "unrecognized arguments: --host" in result.stderr


@pytest.mark.engine
async def test_failed_start_is_explained_by_diagnose(demo_project, engine_path):
    _own_port(demo_project, 18300)
    update_profile(load_config(demo_project), "demo", set={"EXTRA_ARGS": "--no-such-flag"})
    async with Client(_stdio(demo_project), read_timeout_seconds=120) as client:
        started = await client.call_tool("start_model", {"profile": "demo"})
        assert started.is_error and "invalid-argument" in started.content[0].text
        report = (await client.call_tool("diagnose", {"profile": "demo"})).structured_content
    assert report["diagnosis"]["cause"] == "invalid-argument"
    assert report["verdict"].startswith("demo: last start failed: llama-server rejected an argument")
    assert any("no-such-flag" in line for line in report["diagnosis"]["evidence"] + report["log_tail"])
    assert report["last_instance"]["status"] == "failed"


@pytest.mark.engine
async def test_cancelled_start_stops_the_server(demo_project, engine_path):
    """A client that stops waiting (cancel) leaves no llama-server behind."""
    import anyio

    _own_port(demo_project, 18310)
    async with Client(_stdio(demo_project), read_timeout_seconds=120) as client:
        scope = anyio.CancelScope()
        seen: list[float] = []

        async def on_progress(done: float, total: float | None, message: str | None) -> None:
            seen.append(done)
            if done < 1.0:
                scope.cancel()  # still loading: the client gives up

        with scope:
            await client.call_tool("start_model", {"profile": "demo"}, progress_callback=on_progress)
        if not scope.cancelled_caught:
            pytest.skip(f"the demo model was ready before the first progress report ({seen}); nothing to cancel")
        views, live = await _until_nothing_live(client)
    assert not live, live
    assert [v["status"] for v in views if v["profile"] == "demo"] == ["stopped"]


@pytest.mark.engine
async def test_cancelled_switch_stops_the_new_server_and_does_not_roll_back(demo_project, engine_path, tmp_path):
    """A client that cancels switch_model while the new model loads leaves neither model running:
    the new one is stopped, the old one stays stopped (no rollback: that would be another load)."""
    import anyio

    from mcp_server.runtime.native import MARK_INSTANCE

    _own_port(demo_project, 18320)
    # bench-demo's load hangs until it is stopped: its --mmproj is a FIFO nobody writes, which
    # llama-server opens after its HTTP server is up (/health: loading). Nothing but the cancel ends it.
    fifo = tmp_path / "stall.fifo"
    os.mkfifo(fifo)
    update_profile(load_config(demo_project), "bench-demo", set={"EXTRA_ARGS": f"--mmproj {fifo}"})
    async with Client(_stdio(demo_project), read_timeout_seconds=120) as client:
        started = await client.call_tool("start_model", {"profile": "demo"})
        assert not started.is_error, started.content[0].text
        old = started.structured_content
        scope = anyio.CancelScope()
        seen: list[float] = []

        async def on_progress(done: float, total: float | None, message: str | None) -> None:
            seen.append(done)
            scope.cancel()  # bench-demo is loading (it cannot get ready): the client gives up

        with anyio.fail_after(60):  # without progress reports (or with a hang) this fails, not waits
            with scope:
                await client.call_tool("switch_model", {"profile": "bench-demo"}, progress_callback=on_progress)
        assert scope.cancelled_caught and seen, "switch_model returned although bench-demo cannot load"
        # The server stops bench-demo after the cancel arrives; its own load timeout is a minute away.
        views, live = await _until_nothing_live(client)
    assert not live, live
    states = {v["profile"]: v["status"] for v in views}
    assert states == {"demo": "stopped", "bench-demo": "stopped"}, states  # stopped, neither failed nor rolled back
    (new,) = [v for v in views if v["profile"] == "bench-demo"]
    for port in (new["port"], old["port"]):
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still answers"
    left = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get(MARK_INSTANCE) in (new["id"], old["id"]) and proc.status() != psutil.STATUS_ZOMBIE:
                left.append(proc.pid)
        except psutil.Error:
            continue
    assert left == [], f"processes of {new['id']} or {old['id']} remain: {left}"
