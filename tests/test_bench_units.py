"""Benchmark pieces that need no server: bench profiles, dataset lookup and selection, client
settings, run folders, evalplus result files, the report and its chart."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from mcp_server.bench import new_run_dir, read_jsonl, write_json
from mcp_server.bench import dataset as ds
from mcp_server.bench.clientconf import EVALPLUS_SYSTEM_PROMPT, client_settings
from mcp_server.bench.evalplus_run import (BenchError, bench_profile_values, create_bench_profile, printed_pass_at_1,
                                           resolve_bench_profile, scores_from_eval_results)
from mcp_server.bench.report import write_report
from mcp_server.profiles.lint import lint_profiles
from mcp_server.profiles.config import load_config

from .conftest import REPO

SHARED = REPO.parent / "shared" / "datasets" / "humanevalplus"

CONF = """
[global]
MODELS_DIR=models
TOP_K=40

[qwen]
NAME=Qwen Coder
DESCRIPTION=production
SPEED=~50 t/s
MODEL=q/q.gguf
CTX_SIZE=131072
TEMP=0.7
MIN_P=0.01
FIT_TARGET=128,1024
EXTRA_ARGS=--jinja -np 2 --temp 1.0 --top-p=0.95 --reasoning-format deepseek --no-context-shift -c 4096
"""


def test_bench_profile_is_derived_like_the_original(write_conf):
    config = load_config(write_conf(CONF))
    values = bench_profile_values(config.profile("qwen"))
    assert values["NAME"] == "Qwen Coder (benchmark)"
    assert values["CTX_SIZE"] == str(10240 * 2) and values["PARALLEL"] == "2"  # 10240 per slot, -np 2 kept
    assert values["FIT_TARGET"] == "128,1024" and values["MODEL"] == "q/q.gguf"
    assert not {"TEMP", "MIN_P", "DESCRIPTION", "SPEED"} & set(values)
    assert values["EXTRA_ARGS"] == "--jinja --no-context-shift --reasoning-format none"


def test_create_bench_profile_writes_a_valid_section(write_conf):
    path = write_conf(CONF)
    result = create_bench_profile(load_config(path), "qwen", ctx_per_slot=8192, parallel=1)
    assert result.changed and "+[bench-qwen]" in result.diff and "+CTX_SIZE=8192" in result.diff
    config = load_config(path)
    bench = config.profile("bench-qwen")
    assert bench.is_bench and bench.get("TEMP") is None
    assert not [f for f in lint_profiles(config, "bench-qwen").findings if f.code == "bench-samplers" and "TEMP" in f.message]
    with pytest.raises(BenchError, match="already a bench profile"):
        create_bench_profile(config, "bench-qwen")


def test_missing_bench_profile_is_created_only_on_request(write_conf):
    path = write_conf(CONF)
    with pytest.raises(BenchError, match=r"create_bench_profile\(profile=.qwen.\)"):
        resolve_bench_profile(load_config(path), "qwen")
    config, bench_id, edit = resolve_bench_profile(load_config(path), "qwen", create=True)
    assert bench_id == "bench-qwen" and edit is not None and "bench-qwen" in config.profiles
    assert resolve_bench_profile(config, "qwen")[1:] == ("bench-qwen", None)


def _need_shared() -> None:
    from .conftest import need

    need((SHARED / "HumanEvalPlus-Mini-v0.1.10.jsonl.gz").is_file(), "../shared/datasets/humanevalplus",
         "the HumanEval+ files beside the checkout (see ../shared/datasets/humanevalplus/SOURCE.md)")


def test_dataset_from_a_folder_file_and_selection():
    _need_shared()
    mini = ds.locate_dataset(SHARED, mini=True)
    full = ds.locate_dataset(SHARED)
    assert mini.name == "HumanEvalPlus-Mini-v0.1.10.jsonl.gz" and full.name == "HumanEvalPlus-v0.1.10.jsonl.gz"
    problems, info = ds.load_problems(full)
    assert info.problems == 164 and info.known_version == "v0.1.10" and info.md5 == ds.KNOWN_MD5["full"]
    assert ds.load_problems(mini)[1].variant == "mini"
    assert ds.select(problems, limit=5) == [f"HumanEval/{i}" for i in range(5)]
    assert ds.select(problems, tasks="3-5,HumanEval/42,7", limit=4) == ["HumanEval/3", "HumanEval/4", "HumanEval/5",
                                                                         "HumanEval/7"]
    with pytest.raises(BenchError, match="unknown task ids: HumanEval/999"):
        ds.select(problems, tasks="999")


def test_dataset_from_environment_and_home(tmp_path, monkeypatch, isolated_home):
    _need_shared()
    monkeypatch.setenv(ds.DATASET_ENV, str(SHARED))
    assert ds.locate_dataset(mini=True).name.startswith("HumanEvalPlus-Mini")
    monkeypatch.delenv(ds.DATASET_ENV)
    target = isolated_home / "datasets" / "humanevalplus"
    target.mkdir(parents=True)
    plain = target / "HumanEvalPlus-v0.1.10.jsonl"
    plain.write_bytes(gzip.decompress((SHARED / "HumanEvalPlus-v0.1.10.jsonl.gz").read_bytes()))
    assert ds.locate_dataset(allow_download=False) == plain
    assert ds.load_problems(plain)[1].md5 == ds.KNOWN_MD5["full"]


def test_no_dataset_and_no_network_says_how_to_provide_one(tmp_path, monkeypatch):
    for var in (ds.DATASET_ENV, "HUMANEVAL_OVERRIDE_PATH"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(ds, "_network_reachable", lambda *a, **k: False)
    with pytest.raises(ds.DatasetMissing) as info:
        ds.locate_dataset()
    message = str(info.value)
    assert "network is not reachable" in message and "--dataset PATH" in message
    assert "LLAMA_PILOT_HUMANEVAL" in message and "HumanEvalPlus.jsonl.gz" in message


def test_client_settings_defaults_and_overrides(write_conf):
    path = write_conf(CONF)
    (path.parent / "bench-client.conf").write_text(
        "[defaults]\nMAX_TOKENS=2048\n\n[bench-qwen]\nSYSTEM_PROMPT=Reasoning: high\nREFERENCE=GPT-4o\n")
    config = load_config(path)
    assert client_settings(config, "bench-other").max_tokens == 2048
    qwen = client_settings(config, "bench-qwen")
    assert (qwen.max_tokens, qwen.system_prompt, qwen.reference) == (2048, "Reasoning: high", "GPT-4o")
    (path.parent / "bench-client.conf").unlink()
    assert client_settings(config, "bench-qwen").system_prompt == EVALPLUS_SYSTEM_PROMPT


def test_run_folders_are_never_reused(tmp_path):
    first = new_run_dir(tmp_path, "bench-x", "evalplus")
    second = new_run_dir(tmp_path, "bench-x", "evalplus")
    assert first != second and first.is_dir() and second.is_dir()
    (first / "raw.jsonl").write_text('{"task_id": "a"}\n{"task_id": "b"}\n{"task_id": "c", "con')  # torn last line
    assert [r["task_id"] for r in read_jsonl(first / "raw.jsonl")] == ["a", "b"]


def _eval_results(statuses: list[tuple[str, str]]) -> dict:
    return {"date": "2026-01-01 00:00", "hash": "x", "eval": {
        f"HumanEval/{i}": [{"task_id": f"HumanEval/{i}", "solution": "", "base_status": b, "plus_status": p,
                            "base_fail_tests": [], "plus_fail_tests": []}] for i, (b, p) in enumerate(statuses)}}


def test_scores_follow_evalplus_definitions(tmp_path):
    path = tmp_path / "samples_eval_results.json"
    path.write_text(json.dumps(_eval_results([("pass", "pass"), ("pass", "fail"), ("fail", "pass"), ("fail", "fail")])))
    scores = scores_from_eval_results(path)
    # plus counts a problem only when base and plus tests both pass, as evalplus does
    assert (scores.base_passed, scores.plus_passed, scores.humaneval, scores.humaneval_plus) == (2, 1, 50.0, 25.0)
    log = "humaneval (base tests)\npass@1:\t0.500\nhumaneval+ (base + extra tests)\npass@1:\t0.250\n"
    assert printed_pass_at_1(log) == {"humaneval": 50.0, "humaneval_plus": 25.0}


def _fake_run(root: Path, profile: str, statuses: list[tuple[str, str]], of: int, ended: str) -> Path:
    run = new_run_dir(root, profile, "evalplus")
    (run / "samples_eval_results.json").write_text(json.dumps(_eval_results(statuses)))
    write_json(run / "manifest.json", {
        "run_id": run.name, "kind": "evalplus", "profile": profile, "status": "done", "started_at": ended,
        "ended_at": ended, "selection": {"problems": len(statuses), "of": of},
        "dataset": {"known_version": "v0.1.10", "variant": "full", "problems": of},
        "settings": {"max_tokens": 512}, "sessions": [{"concurrency": 2}],
        "timings": {"generation_s": 100.0, "evaluation_s": 20.0}, "engine": {"build_number": 11434},
        "cpu": {"model": "Test CPU", "usable_cpus": 2}})
    return run


def test_report_table_references_and_chart(tmp_path, write_conf):
    from .conftest import need

    try:
        import matplotlib  # noqa: F401
    except ImportError:
        need(False, "matplotlib", "pip install 'llama-pilot[bench]'")
    path = write_conf(CONF + "\n[bench-qwen]\nNAME=Qwen Coder (benchmark)\nMODEL=q/q.gguf\n")
    (path.parent / "bench-client.conf").write_text("[bench-qwen]\nREFERENCE=GPT-4o\n")
    (path.parent / "reference-scores.json").write_text(json.dumps({
        "metadata": {"source": "test", "last_updated": "2026-01-01"},
        "models": {"GPT-4o": {"humaneval": 90.0, "humaneval_plus": 85.0, "source": "leaderboard"},
                   "Other": {"humaneval": 80.0, "humaneval_plus": None, "source": "card"}}}))
    root = tmp_path / "results"
    _fake_run(root, "bench-qwen", [("pass", "pass")] * 3 + [("pass", "fail")], of=4, ended="2026-02-01T10:00:00")
    _fake_run(root, "bench-qwen", [("fail", "fail")], of=4, ended="2026-02-02T10:00:00")  # newer, but a subset
    _fake_run(root, "bench-tiny", [("pass", "fail"), ("fail", "fail")], of=164, ended="2026-02-03T10:00:00")
    report = write_report(load_config(path), output=tmp_path / "out" / "REPORT.md", results=root)
    text = (tmp_path / "out" / "REPORT.md").read_text()
    # one row per profile: the full run wins over a newer subset
    assert "| 1 | Qwen Coder | 100.0% | 75.0% | +10.0pp HE, -10.0pp HE+ vs GPT-4o | ~50 t/s | 4/4 | 2026-02-01 |" in text
    assert "| bench-tiny | 50.0% | 0.0% | — | — | 2/164 (subset) | 2026-02-03 |" in text
    he_plus = text.split("## HumanEval+ ranking")[1].split("##")[0]
    assert "**Qwen Coder**" in he_plus and "GPT-4o" in he_plus and "bench-tiny" not in he_plus  # subset left out
    assert "Other" not in he_plus  # no HumanEval+ score published
    assert "![HumanEval+ pass@1" in text and report.chart
    assert Path(report.chart).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| Qwen Coder | `bench-qwen/" in text and "1m40s" in text and "CPU: Test CPU" in text



@pytest.mark.anyio
async def test_mcp_run_benchmark_refuses_at_once_what_a_job_would_fail_on(write_conf, monkeypatch, tmp_path):
    from mcp import Client

    from mcp_server.server.app import build_server

    for var in (ds.DATASET_ENV, "HUMANEVAL_OVERRIDE_PATH"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(ds, "_network_reachable", lambda *a, **k: False)
    path = write_conf(CONF + "\n[bench-qwen]\nMODEL=q/q.gguf\n")
    async with Client(build_server(path)) as client:
        no_twin = await client.call_tool("run_benchmark", {"profile": "qwen2"})
        assert no_twin.is_error and "No profile named 'qwen2'" in no_twin.content[0].text
        (path.parent / "models.conf").write_text(path.read_text().replace("[bench-qwen]", "[bench-other]"))
        missing = await client.call_tool("run_benchmark", {"profile": "qwen"})
        assert missing.is_error and "bench-qwen does not exist" in missing.content[0].text
        no_data = await client.call_tool("run_benchmark", {"profile": "bench-other"})
        try:
            import evalplus  # noqa: F401

            expected = "No local copy of HumanEval+"
        except ImportError:
            expected = "evalplus is not installed"
        assert no_data.is_error and expected in no_data.content[0].text
        assert (await client.call_tool("list_jobs", {})).structured_content["jobs"] == []
        results = (await client.call_tool("bench_results", {})).structured_content
        assert results["runs"] == [] and results["results_root"].endswith("bench")


def test_a_killed_session_gets_its_wall_time_from_the_answers():
    from mcp_server.bench.evalplus_run import _close_dead_sessions

    manifest = {"sessions": [{"started_at": "2026-01-01T10:00:00+00:00", "pending": 3},
                             {"started_at": "2026-01-01T11:00:00+00:00", "pending": 1, "wall_s": 5.0}]}
    raw = [{"task_id": "a", "started_at": "2026-01-01T10:00:00+00:00", "elapsed_s": 30.0},
           {"task_id": "b", "started_at": "2026-01-01T10:00:30+00:00", "elapsed_s": 40.5},
           {"task_id": "c", "started_at": "2026-01-01T11:00:00+00:00", "elapsed_s": 5.0}]  # the next session's
    _close_dead_sessions(manifest, raw)
    first, second = manifest["sessions"]
    assert (first["wall_s"], first["generated"]) == (70.5, 2) and "killed" in first["note"]
    assert second == {"started_at": "2026-01-01T11:00:00+00:00", "pending": 1, "wall_s": 5.0}
