"""llama-pilot tune on the real engine (CPU): llama-bench measurements, the profile it writes, the
learning loop, and a cancelled tune job leaving no process behind."""

from __future__ import annotations

import time
from pathlib import Path

import psutil
import pytest
from mcp import Client

from mcp_server.jobs import get_job
from mcp_server.profiles.config import load_config
from mcp_server.server.app import build_server

pytestmark = pytest.mark.engine


def _engine_processes(marker: str) -> list[str]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        line = " ".join(proc.info.get("cmdline") or [])
        if marker in line and ("llama-server" in line or "llama-bench" in line):
            found.append(line)
    return found


def test_tune_with_llama_bench_writes_a_valid_profile_and_the_next_tune_starts_from_what_it_learnt(
        demo_project: Path, engine_path: str) -> None:
    from mcp_server.profiles.lint import lint_profiles
    from mcp_server.tune.operations import run_tune

    before = demo_project.read_text()
    result = run_tune(load_config(demo_project), "demo", minutes=3, depth=64, source="llama-bench", rounds=2,
                      gen_tokens=16, write=True)
    assert result.search.stopped == "done"
    assert result.started_from == "planner" and result.measured >= 4
    measured = [t for t in result.search.tried if t.sample]
    assert measured and all(t.sample.source == "measured" and t.sample.gen_tps > 0 for t in measured)
    assert result.paired is not None and result.paired.rounds == 2 and result.paired.gen_ratio > 0
    assert result.full_context == "ok"
    assert result.edit is not None and result.edit.changed
    after = load_config(demo_project)
    demo = after.profile("demo")
    assert demo.values["SPEED"].startswith("~") and demo.values["FIT"] == "off"
    assert all(demo.values.get(k) == v for k, v in result.winner.items())
    assert [f for f in lint_profiles(after, "demo").findings if f.severity == "error"] == []
    comments = after.document.comment_block("demo")[1]
    assert comments[-1].startswith("# tuned ") and "--fit generation" in comments[-1]
    assert demo_project.read_text().startswith(before.split("[demo]")[0])  # the file above is untouched
    # The same key again: it starts from the stored winner and measures only the paired rounds.
    again = run_tune(load_config(demo_project), "demo", minutes=3, depth=64, source="llama-bench", rounds=2,
                     gen_tokens=16, full_context_check=False)
    assert again.started_from == "stored winner" and again.search.stopped == "known"
    assert again.winner == result.winner and again.search.best_sample.source == "stored"
    assert again.measured == 4  # 2 rounds x (winner + baseline): the search itself cost no load
    assert again.seconds < result.seconds / 3


@pytest.mark.anyio
async def test_a_cancelled_tune_job_leaves_no_server_or_bench_process(demo_project: Path, engine_path: str) -> None:
    marker = str(demo_project.parent / "models")
    async with Client(build_server(demo_project), raise_exceptions=True) as client:
        job = (await client.call_tool("tune_profile", {"profile": "demo", "minutes": 5, "depth": 512})
               ).structured_content
        busy = await client.call_tool("run_benchmark", {"profile": "demo", "kind": "speed"})
        assert busy.is_error and "busy" in busy.content[0].text  # two measurements at once would lie
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not _engine_processes(marker):
            time.sleep(0.1)
        assert _engine_processes(marker), "the tune never started a measurement"
        cancelled = (await client.call_tool("cancel_job", {"job_id": job["id"]})).structured_content
    assert cancelled["status"] == "cancelled"
    gone = time.monotonic() + 15
    while time.monotonic() < gone and _engine_processes(marker):
        time.sleep(0.1)
    assert _engine_processes(marker) == []
    assert get_job(job["id"]).status == "cancelled"


def test_a_server_measured_tune_records_what_each_load_held_and_estimate_shows_it_for_the_written_profile(
        demo_project: Path, engine_path: str) -> None:
    from mcp_server.placement import calibration
    from mcp_server.placement.operations import estimate_fit
    from mcp_server.tune.operations import run_tune

    before = len(calibration.measurements())
    result = run_tune(load_config(demo_project), "demo", minutes=1, depth=32, source="server", rounds=1,
                      gen_tokens=8, write=True)
    recorded = calibration.measurements()[before:]
    assert len(recorded) >= result.measured  # every load measured through llama-server (+ the full-context one)
    assert all(m.profile == "demo" and m.note == "tune candidate" for m in recorded)
    host = [d for m in recorded for d in m.devices if d.device == "host"]
    assert host and all(d.logged_mib and d.logged_mib > 100 for d in host)  # the demo's weights + KV, from its log
    assert result.memory_mib and result.memory_mib["host"] > 100
    # The written profile has the winner's settings, so an estimate of it finds the winner's measurement.
    shown = estimate_fit(load_config(demo_project), "demo")
    assert shown.measured is not None and shown.measured.note == "tune candidate"  # found by the settings' key
    assert shown.measured.digest == recorded[-1].digest or shown.measured in recorded
