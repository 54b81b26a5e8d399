"""The dashboard, driven headless with Textual's pilot: against the real llama-server for the
whole flow (picker, start, log, switch, rollback, stop, quit), and on its own for the no-GPU path,
resizing and the parsing behind the header.

``UPDATE_SNAPSHOT=1 python -m pytest tests/test_dashboard.py`` rewrites
docs/screenshots/dashboard.svg from the running demo model with two fake GPUs.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable

import pytest

from mcp_server.runtime.server_api import chat
from mcp_server.runtime.registry import InstanceStatus, Registry
from mcp_server.profiles.config import load_config
from mcp_server.profiles.edits import create_profile, update_profile
from mcp_server.runtime.lifecycle import Runtime
from mcp_server.model_files.synthetic import DenseShape, write_dense

from .conftest import REPO, need

try:
    import textual
except ImportError:  # the tui extra is missing: every test here says so (and fails in CI)
    textual = None

SCREENSHOT = REPO / "docs" / "screenshots" / "dashboard.svg"


@pytest.fixture(autouse=True)
def _textual() -> None:
    need(textual, "textual", "pip install 'llama-pilot[tui]'")


@pytest.fixture
def project(demo_project: Path, engine_path: str) -> Path:
    """The demo profiles, a tiny synthetic model, and a profile that cannot start (bad flag)."""
    write_dense(demo_project.parent / "models" / "synth" / "tiny.gguf", DenseShape(), seed=1)
    update_profile(load_config(demo_project), "global", set={"PORT": "18280", "PARALLEL": "1"})
    create_profile(load_config(demo_project), "tiny", {"NAME": "Tiny synthetic", "MODEL": "synth/tiny.gguf",
                                                       "CTX_SIZE": "512", "SPEED": "instant"})
    create_profile(load_config(demo_project), "broken", {"NAME": "Broken flag", "MODEL": "synth/tiny.gguf",
                                                         "EXTRA_ARGS": "--no-such-flag"})
    yield demo_project
    Runtime(load_config(demo_project)).stop_model("all", grace_s=3)


def fake_gpus():  # type: ignore[no-untyped-def]
    from mcp_server.monitoring.gpu import FakeNvml

    return FakeNvml()  # an RTX 4090 and an RTX 5070 Ti, the original project's pair


def sampler_with_history(fake: Any, interval_s: float = 0.5, samples: int = 90):  # type: ignore[no-untyped-def]
    """A real Sampler on a fake NVML, with a minute and a half of varied history already taken."""
    from mcp_server.monitoring.sampler import Sampler

    sampler = Sampler(interval_s=interval_s, gpu_source=fake, registry=Registry())
    for i in range(samples):
        wave = (i % 30) / 30
        fake.gpus[0].update(util=int(35 + 60 * wave), used_mib=int(14_000 + 4_000 * wave), temp=55 + i % 9,
                            power_w=180.0 + 200 * wave)
        fake.gpus[1].update(util=int(20 + 30 * (1 - wave)), used_mib=int(9_000 + 5_500 * wave), temp=48,
                            power_w=90.0 + 120 * wave)
        sampler.sample_once()
    return sampler


async def until(pilot: Any, condition: Callable[[], Any], what: str, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            app = pilot.app
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; screen {app.screen!r}; "
                                 f"header:\n{header(app)}\nlog tail:\n" + "\n".join(log_lines(app)[-15:]))
        await pilot.pause(0.05)


async def picker_shown(pilot: Any, what: str = "the picker") -> None:
    """Wait until the picker is up and its list has the keyboard."""
    from textual.widgets import OptionList

    from mcp_server.dashboard.app import PickerScreen

    await until(pilot, lambda: isinstance(pilot.app.screen, PickerScreen)
                and isinstance(pilot.app.focused, OptionList), what)


def header(app: Any) -> str:
    from mcp_server.dashboard.app import HeaderBar

    return app.main.query_one(HeaderBar).text.plain


def log_lines(app: Any) -> list[str]:
    from textual.widgets import Log

    return list(app.main.query_one(Log).lines)


def ready(app: Any, profile: str) -> bool:
    current = app.current
    return (not app.busy and current is not None and current.profile == profile
            and current.status == InstanceStatus.READY)


def live_profiles() -> list[str]:
    return [r.profile for r in Registry().all() if r.is_live]


@pytest.mark.engine
def test_picker_start_logs_switch_rollback_stop_quit(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mcp_server.dashboard.app import Dashboard, MainScreen, Panel

    fake = fake_gpus()
    app = Dashboard(load_config(project), sampler=sampler_with_history(fake), interval_s=0.3)
    notes: list[str] = []
    real_notify = app.notify
    monkeypatch.setattr(app, "notify", lambda message, **kw: (notes.append(message), real_notify(message, **kw))[1])
    shown_busy: list[str | None] = []
    real_refresh = app.refresh_header
    monkeypatch.setattr(app, "refresh_header", lambda: (shown_busy.append(app.busy), real_refresh())[1])

    async def flow() -> None:
        async with app.run_test(size=(140, 44)) as pilot:
            # Nothing runs: the dashboard opens on the picker, production profiles first, bench- last.
            await picker_shown(pilot, "the picker at start-up")
            picker = app.screen
            assert [m.profile for m in picker.models][:1] == ["demo"]
            from textual.widgets import OptionList

            options = picker.query_one(OptionList)
            ids = [options.get_option_at_index(i).id for i in range(options.option_count)]
            assert ids.index("bench-demo") > max(ids.index("demo"), ids.index("tiny"), ids.index("broken"))

            # Enter starts the highlighted profile (demo): progress, then ready.
            await pilot.press("enter")
            # The pilot may wait out the whole (1-2 s) start before it returns: what the header showed
            # meanwhile is recorded rather than looked at afterwards.
            await until(pilot, lambda: ready(app, "demo"), "demo ready")
            assert isinstance(app.screen, MainScreen)
            assert any(busy and "demo" in busy for busy in shown_busy), shown_busy
            text = header(app)
            assert "READY" in text and "port 1828" in text and "up " in text and "/v1/chat/completions" in text

            # The log pane follows the server's log from this run's separator on.
            await until(pilot, lambda: any("listening on" in line or "server is listening" in line
                                           for line in log_lines(app)), "the server log in the pane")
            assert any(line.startswith("═════ demo") for line in log_lines(app))
            assert any("----- llama-pilot" in line and "starting demo" in line for line in log_lines(app))

            # One request: its generation speed, read from the log's timing lines, shows in the header.
            url = app.current.url
            await asyncio.to_thread(chat, url, "Say hi.", max_tokens=6, temperature=0)
            await until(pilot, lambda: "t/s" in header(app), "tokens/s of the last reply", timeout=30)
            assert "last reply" in header(app)

            # Two (fake) GPUs render with bars and history; the system panel lists llama-server.
            fake.gpus[0]["processes"] = [(app.current.pid, 310)]
            gpus = app.main.query_one("#gpus", Panel)
            system = app.main.query_one("#system", Panel)
            await until(pilot, lambda: "GPU0" in gpus.plain and "GPU1" in gpus.plain, "two GPUs in the panel")
            await until(pilot, lambda: "demo" in system.plain and "RSS" in system.plain,
                        "llama-server's RSS in the system panel", timeout=20)
            await until(pilot, lambda: "demo  pid" in gpus.plain, "the server in GPU0's process rows", timeout=10)
            svg = app.export_screenshot()
            assert "4090" in svg and "5070" in svg and "█" in svg and "▁" in svg
            if os.environ.get("UPDATE_SNAPSHOT") == "1":
                SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
                app.save_screenshot(SCREENSHOT.name, path=str(SCREENSHOT.parent))

            # m, then tiny: a switch in a worker; while it runs the picker stays closed. (The worker
            # waits at a gate before the real switch so the test sees it running: tiny loads in 0.1 s.)
            await pilot.press("m")
            await picker_shown(pilot)
            gate = threading.Event()
            real_switch = Runtime.switch_model
            monkeypatch.setattr(Runtime, "switch_model", lambda self, *a, **k: gate.wait(30) and real_switch(self, *a, **k))
            await pilot.press("down", "enter")
            assert app.busy and "tiny" in app.busy
            await pilot.press("m")
            assert isinstance(app.screen, MainScreen)
            assert any("picker is closed" in note for note in notes)
            gate.set()
            await until(pilot, lambda: ready(app, "tiny"), "tiny ready after the switch")
            await until(pilot, lambda: any(line.startswith("═════ tiny") for line in log_lines(app)),
                        "a separator in the log for the new model")
            assert "stopped demo" in header(app)
            assert live_profiles() == ["tiny"]

            # A switch to a profile that cannot start fails, says why, and rolls back to tiny.
            await pilot.press("m")
            await picker_shown(pilot)
            await pilot.press("3")  # production profiles are numbered: demo, tiny, broken
            await until(pilot, lambda: not app.busy, "the failed switch to end")
            text = header(app)
            assert "switch to broken failed (invalid-argument" in text and "rolled back to tiny" in text, text
            assert any("switch failed" in line for line in log_lines(app))
            await until(pilot, lambda: ready(app, "tiny"), "tiny ready again after the rollback")

            # s stops the model shown.
            await pilot.press("s")
            await until(pilot, lambda: not app.busy and app.current is not None
                        and app.current.status == InstanceStatus.STOPPED, "tiny stopped")
            assert "STOPPED" in header(app) and live_profiles() == []

            # Start tiny again (1-9 pick from the picker), then r: stop it and return to the picker.
            await pilot.press("m")
            await picker_shown(pilot)
            await pilot.press("2")
            await until(pilot, lambda: ready(app, "tiny"), "tiny ready")
            await pilot.press("r")
            await picker_shown(pilot, "the picker after r")
            assert live_profiles() == []

            # Pick demo there, then q: stop it and quit.
            await pilot.press("enter")
            await until(pilot, lambda: ready(app, "demo"), "demo ready from the picker")
            await pilot.press("q")
            await until(pilot, lambda: app.return_value is not None, "the dashboard to quit", timeout=30)

    asyncio.run(flow())
    assert app.return_value and "stopped demo" in app.return_value
    assert live_profiles() == []


def test_no_gpu_help_and_resize(write_conf) -> None:  # type: ignore[no-untyped-def]
    """Without a GPU the panel says why; the layout stacks, then drops the panels, as the terminal shrinks."""
    from mcp_server.dashboard.app import Dashboard, HelpScreen, MainScreen, Panel, PickerScreen
    from mcp_server.monitoring.gpu import NVML_ERROR_DRIVER_NOT_LOADED, FakeNvml
    from mcp_server.monitoring.sampler import Sampler

    conf = write_conf("""
        [demo]
        NAME=Demo
        MODEL=absent.gguf
    """)
    sampler = Sampler(interval_s=0.2, gpu_source=FakeNvml(init_error=NVML_ERROR_DRIVER_NOT_LOADED),
                      registry=Registry())
    app = Dashboard(load_config(conf), sampler=sampler, interval_s=0.2)

    async def flow() -> None:
        async with app.run_test(size=(120, 40)) as pilot:
            await picker_shown(pilot)
            await pilot.press("enter")  # the only profile's file is missing: it cannot be chosen
            assert isinstance(app.screen, PickerScreen)
            await pilot.press("escape")
            assert isinstance(app.screen, MainScreen)
            assert "nothing is running" in header(app)
            gpus = app.main.query_one("#gpus", Panel)
            await until(pilot, lambda: "No GPU to show" in gpus.plain, "the no-GPU reason", timeout=10)
            assert "driver is not loaded" in gpus.plain
            await until(pilot, lambda: "RAM" in app.main.query_one("#system", Panel).plain, "system figures")

            await pilot.press("question_mark")
            assert isinstance(app.screen, HelpScreen)
            await pilot.press("escape")
            assert isinstance(app.screen, MainScreen)

            main = app.main
            assert not main.has_class("narrow") and not main.has_class("small")
            for size, narrow, small in (((80, 30), True, False), ((50, 16), True, True), ((160, 50), False, False)):
                await pilot.resize_terminal(*size)
                await pilot.pause(0.2)
                assert (main.has_class("narrow"), main.has_class("small")) == (narrow, small), size
                assert main.query_one("#panels").display is not small
            await pilot.press("q")  # nothing runs: q just quits
            await until(pilot, lambda: not app.is_running, "the dashboard to quit", timeout=10)

    asyncio.run(flow())
    assert not sampler.running  # the dashboard stops the sampler it was given


def test_speed_from_timing_lines() -> None:
    from mcp_server.dashboard.app import SpeedTracker

    tracker = SpeedTracker()
    for line in [
        "0.12.323.544 I slot print_timing: id  1 | task 0 | prompt eval time =     781.20 ms /    26 tokens "
        "(   30.05 ms per token,    33.28 tokens per second)",
        "0.12.323.566 I slot print_timing: id  1 | task 0 |        eval time =    7966.80 ms /    16 tokens "
        "(  531.12 ms per token,     1.88 tokens per second)",
        "0.12.323.568 I slot print_timing: id  1 | task 0 |       total time =    8748.00 ms /    42 tokens",
    ]:
        tracker.feed(line)
    assert tracker.last is not None
    assert (tracker.last.generation_tps, tracker.last.generated_tokens) == (1.88, 16)
    assert (tracker.last.prompt_tps, tracker.last.prompt_tokens) == (33.28, 26)


def test_log_follower_reads_one_run_and_waits_for_whole_lines(tmp_path: Path) -> None:
    from mcp_server.runtime.native import append_separator
    from mcp_server.dashboard.app import LogFollower

    log = tmp_path / "demo.log"
    append_separator(log, "starting demo (Demo) as demo-1, native, port 8080")
    with open(log, "a") as f:
        f.write("old run line\n")
    append_separator(log, "starting demo (Demo) as demo-2, native, port 8080")
    with open(log, "ab") as f:
        f.write("new run line\npartial é".encode()[:-1])  # ends inside a two-byte character
    view: Any = type("View", (), {"id": "demo-2", "log_path": str(log), "started_at": 2.0})()
    follower = LogFollower()
    follower.follow(view)
    lines = follower.read()
    assert "old run line" not in lines and "new run line" in lines
    assert "as demo-2" in lines[0]
    with open(log, "ab") as f:
        f.write("é".encode()[1:] + b" done\n")
    assert follower.read() == ["partial é done"]
    assert follower.read() == []


def test_thresholds() -> None:
    from mcp_server.dashboard.app import RAM_CRIT_PCT, RAM_WARN_PCT, VRAM_CRIT_PCT, VRAM_WARN_PCT, level

    assert [level(v, VRAM_WARN_PCT, VRAM_CRIT_PCT) for v in (69.9, 70, 89.9, 90)] == ["ok", "warn", "warn", "crit"]
    assert [level(v, RAM_WARN_PCT, RAM_CRIT_PCT) for v in (69, 84, 85)] == ["ok", "warn", "crit"]
    assert level(None, 70, 90) == "ok"


def test_cli_says_how_to_install_textual(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from click.testing import CliRunner

    from mcp_server.cli.main import cli

    monkeypatch.setitem(sys.modules, "textual", None)  # import textual -> ImportError
    result = CliRunner().invoke(cli, ["dashboard"])
    assert result.exit_code == 1
    assert "pip install 'llama-pilot[tui]'" in result.output


@pytest.mark.engine
def test_the_endpoints_queue_and_swaps_are_shown(tmp_path: Path, demo_gguf: Path, engine_path: str) -> None:
    """With `serve` running, the panel under the system figures shows its models, queues and swaps."""
    from mcp_server.dashboard.app import Dashboard, Panel
    from mcp_server.monitoring.gpu import NVML_ERROR_DRIVER_NOT_LOADED, FakeNvml
    from mcp_server.monitoring.sampler import Sampler

    from .serve_helpers import Endpoint, footprints, set_global, stop_everything, write_project

    conf = write_project(tmp_path / "serveproj", demo_gguf)
    sizes = footprints(conf)
    set_global(conf, SERVE_MEMORY_BUDGET=f"{sizes['syn-a'] + sizes['syn-b'] - 1:.0f}MiB")  # one syn model at a time
    endpoint = Endpoint(conf, tmp_path / "serve.log").start()
    try:
        assert endpoint.complete("syn-a").status_code == 200
        assert endpoint.complete("syn-b").status_code == 200  # unloads syn-a
        sampler = Sampler(interval_s=0.2, gpu_source=FakeNvml(init_error=NVML_ERROR_DRIVER_NOT_LOADED),
                          registry=Registry())
        app = Dashboard(load_config(conf), sampler=sampler, interval_s=0.2, picker_when_idle=False)

        async def flow() -> None:
            async with app.run_test(size=(140, 50)) as pilot:
                panel = app.main.query_one("#serve", Panel)
                await until(pilot, lambda: "Endpoint" in panel.plain, "the endpoint panel", timeout=20)
                assert endpoint.url in panel.plain
                assert "syn-b" in panel.plain and "ready" in panel.plain
                assert "load syn-b for syn-a: unused" in panel.plain
                await pilot.press("d")  # leave: the endpoint's models stay loaded

        asyncio.run(flow())
    finally:
        endpoint.stop()
        stop_everything(conf)
