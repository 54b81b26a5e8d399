"""Speed benchmark against the real llama-server on the demo model (CPU is fine: small sizes)."""

from __future__ import annotations

import difflib
import hashlib
import json
from pathlib import Path

import pytest

from mcp_server.bench.speed import run_speed
from mcp_server.profiles.config import load_config
from mcp_server.runtime.lifecycle import Runtime

pytestmark = pytest.mark.engine


def test_speed_numbers_manifest_and_update_profile(demo_project: Path, demo_gguf: Path, engine_path: str,
                                                   tmp_path: Path):
    before = demo_project.read_text()
    run = run_speed(load_config(demo_project), "demo", prompt_tokens=(32, 128), gen_tokens=(16,), reps=2,
                    results=tmp_path / "results", update_profile=True)

    # numbers: every case and every repetition is positive, prompts are exactly as long as asked
    assert [(c.prompt_tokens, c.gen_tokens) for c in run.cases] == [(32, 16), (128, 16)]
    for case in run.cases:
        assert len(case.reps) == 2
        for rep in case.reps:
            assert rep.prompt_n == case.prompt_tokens and rep.predicted_n == case.gen_tokens
            assert rep.prompt_per_second > 0 and rep.predicted_per_second > 0 and 0 < rep.ttft_ms <= rep.wall_ms
        assert case.generation_tps.min <= case.generation_tps.median <= case.generation_tps.max
    assert [p.concurrency for p in run.concurrency] == [1, 2]  # the demo profile has 2 slots
    assert all(p.aggregate_tps.median > 0 and p.reps[0].generated_tokens == p.concurrency * p.gen_tokens
               for p in run.concurrency)
    assert run.generation_tps and run.generation_tps > 0 and run.prompt_tps and run.prompt_tps > 0

    # the manifest: model file, engine build, full argv, GPUs (none on a CPU host), CPU, date
    run_dir = Path(run.run_dir)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "done" and manifest["kind"] == "speed" and manifest["profile"] == "demo"
    (model,) = manifest["model"]["files"]
    assert model["file"] == demo_gguf.name and model["size_bytes"] == demo_gguf.stat().st_size
    assert model["sha256"] == hashlib.sha256(demo_gguf.read_bytes()).hexdigest()
    assert manifest["engine"]["build_number"] and manifest["engine"]["path"] == engine_path
    assert manifest["engine"]["server_build_info"].startswith(f"b{manifest['engine']['build_number']}")
    argv = manifest["argv"]
    assert argv[0] == engine_path and argv[argv.index("--model") + 1].endswith(demo_gguf.name)
    assert "--parallel" in argv and "--ctx-size" in argv
    assert isinstance(manifest["gpus"], list) and all({"name", "driver", "memory_total_mib"} <= set(g)
                                                       for g in manifest["gpus"])
    assert manifest["cpu"]["logical_cpus"] and manifest["date"][:4].isdigit()
    assert manifest["summary"]["generation_tps"] == run.generation_tps
    assert json.loads((run_dir / "speed.json").read_text())["run_id"] == run_dir.name

    # --update-profile changed exactly one line: SPEED, in [demo]
    after = demo_project.read_text()
    changed = [line for line in difflib.ndiff(before.splitlines(), after.splitlines()) if line[:2] in ("+ ", "- ")]
    assert changed == [f"+ SPEED={run.speed_label}"]
    assert load_config(demo_project).profile("demo").speed == run.speed_label

    # the benchmark started the model, so it stopped it again
    assert not [v for v in Runtime(load_config(demo_project)).status().instances if v.status in ("loading", "ready")]


def test_speed_skips_cases_longer_than_a_slot(demo_project: Path, engine_path: str, tmp_path: Path):
    runtime = Runtime(load_config(demo_project))
    runtime.start_model("demo")  # already running: the benchmark uses it and leaves it running
    try:
        run = run_speed(load_config(demo_project), "demo", prompt_tokens=(16, 4096), gen_tokens=(8,), reps=1,
                        concurrency=[1], results=tmp_path / "results")
        assert [c.prompt_tokens for c in run.cases] == [16]
        assert run.skipped and "4096" in run.skipped[0] and "context per slot" in run.skipped[0]
        assert [v.status for v in runtime.status().instances if v.profile == "demo"] == ["ready"]
    finally:
        runtime.stop_model("all", grace_s=3)
