"""The real chain: the built llama-server runs the demo model on the CPU and answers a chat request."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from mcp_server.setup.bootstrap import demo, free_port, install_demo_model, setup
from mcp_server.runtime.server_api import chat, health
from mcp_server.profiles.config import load_config

pytestmark = pytest.mark.engine


def _port_is_free(port: int) -> bool:
    import psutil

    return not any(c.laddr and c.laddr.port == port and c.status == psutil.CONN_LISTEN
                   for c in psutil.net_connections(kind="tcp"))


def test_llama_server_serves_demo_profile(engine_path, demo_project):
    """Start from the profile's argv, see /health go to 200, get a non-empty chat answer, stop."""
    from mcp_server.engine.argv import launch_spec

    config = load_config(demo_project)
    spec = launch_spec(config.profile("demo"), config, engine=engine_path, port=free_port())
    proc = subprocess.Popen(spec.argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{spec.port}"
    try:
        deadline = time.monotonic() + 120
        while (status := health(base)[0]) != 200 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert status == 200, f"not ready: /health {status}, exit code {proc.poll()}"
        status, body = health(base)
        assert status == 200 and body == {"status": "ok"}
        reply = chat(base, "Say hello in three words.", max_tokens=24, temperature=0)
        text = reply["choices"][0]["message"]["content"]
        assert text.strip(), reply
        assert reply["timings"]["predicted_per_second"] > 0
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert proc.returncode is not None and _port_is_free(spec.port)


def test_demo_command_end_to_end(engine_path, demo_project):
    result = demo(demo_project, prompt="What is 2+2? Answer with a number.")
    assert result.answer
    # The demo model is a base model without a chat template: it is asked as a plain completion, so
    # its answer carries none of the role tokens a fallback chat template would make it continue.
    assert result.mode == "completion" and result.sent == "Q: What is 2+2? Answer with a number.\nA:"
    assert "<|im_" not in result.answer and "<start_of_turn>" not in result.answer
    assert 0 < result.ready_s < result.total_s
    assert result.generation_tokens_per_s and result.generation_tokens_per_s > 0
    assert result.argv[0] == engine_path
    port = int(result.argv[result.argv.index("--port") + 1])
    assert _port_is_free(port)  # the server was stopped


def test_demo_reports_a_server_that_dies_while_loading(engine_path, demo_project):
    from mcp_server.errors import LlamaPilotError
    from mcp_server.profiles.edits import update_profile

    update_profile(load_config(demo_project), "demo", set={"EXTRA_ARGS": "--no-such-flag"})
    started = time.monotonic()
    with pytest.raises(LlamaPilotError, match="invalid-argument") as info:
        demo(demo_project, timeout_s=60)
    assert time.monotonic() - started < 30  # failed at once, not after the timeout
    assert "no-such-flag" in str(info.value)  # the log tail is part of the message


def test_setup_is_idempotent_and_reuses_engine_and_model(engine_path, demo_project, demo_gguf, monkeypatch):
    first = setup(demo_project, build_if_missing=False)
    assert first.engine_path == engine_path and not first.engine_built_now
    again = setup(demo_project, build_if_missing=False)
    assert again.demo_model.reused and again.demo_model.path == first.demo_model.path


def test_install_demo_model_links_a_verified_copy(tmp_path, demo_gguf):
    model = install_demo_model(tmp_path / "models")
    assert model.size_bytes == demo_gguf.stat().st_size
    assert model.sha256 == "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
    assert install_demo_model(tmp_path / "models").reused


def test_cli_demo_prints_the_answer(engine_path, demo_project):
    proc = subprocess.run([sys.executable, "-m", "mcp_server", "cli", "--config", str(demo_project), "demo",
                           "--prompt", "Name one colour."], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("Q: Name one colour.\nA: ") and len(proc.stdout.splitlines()[1]) > 3
    assert "server stopped" in proc.stderr
