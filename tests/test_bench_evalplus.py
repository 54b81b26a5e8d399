"""EvalPlus HumanEval+ for real: the demo model on the CPU llama-server, the Mini dataset from
../shared/datasets/humanevalplus/, evalplus's own sanitiser and evaluator, and the report."""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path

import pytest

from mcp_server.bench import BenchCancelled, read_jsonl
from mcp_server.bench.evalplus_run import run_evalplus
from mcp_server.bench.report import write_report
from mcp_server.profiles.config import load_config
from mcp_server.profiles.edits import retire_profile
from mcp_server.runtime.lifecycle import Runtime

from .conftest import REPO, need

pytestmark = pytest.mark.engine

MINI = REPO.parent / "shared" / "datasets" / "humanevalplus" / "HumanEvalPlus-Mini-v0.1.10.jsonl.gz"


@pytest.fixture
def mini() -> Path:
    need(MINI.is_file(), "the HumanEval+ Mini dataset",
         "put ../shared/datasets/humanevalplus/ beside the checkout (see its SOURCE.md)")
    try:
        import evalplus  # noqa: F401
    except ImportError:
        need(False, "evalplus", "pip install 'llama-pilot[bench]'")
    return MINI


def _own_scores(eval_results: Path) -> tuple[float, float]:
    """pass@1 computed here, straight from evalplus's result file."""
    evals = json.loads(eval_results.read_text())["eval"]
    base = sum(r[0]["base_status"] == "pass" for r in evals.values())
    plus = sum(r[0]["base_status"] == "pass" and r[0]["plus_status"] == "pass" for r in evals.values())
    return round(100 * base / len(evals), 1), round(100 * plus / len(evals), 1)


def test_limit_5_end_to_end_with_bench_profile_created_on_request(demo_project, engine_path, mini, tmp_path):
    retire_profile(load_config(demo_project), "bench-demo")  # so the run has to derive it from [demo]
    results = tmp_path / "results"
    run = run_evalplus(load_config(demo_project), "demo", create_bench=True, dataset=mini, mini=True, limit=5,
                       max_tokens=128, results=results)
    config = load_config(demo_project)
    bench = config.profile("bench-demo")
    assert bench.get("TEMP") is None and "--reasoning-format none" in bench.get("EXTRA_ARGS")

    run_dir = Path(run.run_dir)
    assert run_dir.parent == results / "bench-demo" and run.status == "done" and run.problems == 5
    assert run.generated_now == 5 and run.concurrency == 2  # all slots of the bench profile
    raw = read_jsonl(run_dir / "raw.jsonl")
    samples = read_jsonl(run_dir / "samples.jsonl")
    assert sorted(r["task_id"] for r in raw) == [f"HumanEval/{i}" for i in range(5)]
    assert [s["task_id"] for s in samples] == [f"HumanEval/{i}" for i in range(5)]
    assert all(r["timings"]["predicted_n"] <= 128 and r["error"] is None for r in raw)
    assert len(read_jsonl(run_dir / "postprocess.jsonl")) == 5

    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "done" and manifest["dataset"]["variant"] == "mini"
    assert manifest["dataset"]["known_version"] == "v0.1.10" and manifest["selection"]["problems"] == 5
    assert manifest["settings"]["max_tokens"] == 128 and manifest["model"]["files"][0]["sha256"]
    assert manifest["timings"]["generation_s"] > 0 and manifest["timings"]["evaluation_s"] > 0

    eval_results = run_dir / "samples_eval_results.json"
    he, hep = _own_scores(eval_results)
    assert (run.scores.humaneval, run.scores.humaneval_plus) == (he, hep)
    assert run.evalplus_printed == {"humaneval": he, "humaneval_plus": hep}  # what evalplus itself printed

    report = write_report(config, results=results, output=tmp_path / "report" / "REPORT.md")
    text = Path(report.path).read_text()
    row = next(line for line in text.splitlines() if line.startswith("| 1 | Gemma 3 270M Q4_K_M"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[2] == f"{he:.1f}%" and cells[3] == f"{hep:.1f}%" and cells[6] == "5/164 (subset)"
    assert Path(report.chart).is_file() and f"({Path(report.chart).name})" in text
    assert not [v for v in Runtime(config).status().instances if v.status in ("loading", "ready")]  # stopped again


def test_interrupted_run_resumes_without_regenerating(demo_project, engine_path, mini, tmp_path):
    results = tmp_path / "results"
    cancel = threading.Event()

    def progress(done: int, total: int, message: str) -> None:
        if done >= 2:
            cancel.set()  # as cancel_job or Ctrl-C would, once two problems are in

    with pytest.raises(BenchCancelled, match="--resume"):
        run_evalplus(load_config(demo_project), "bench-demo", dataset=mini, limit=4, max_tokens=64, results=results,
                     progress=progress, cancel=cancel)
    (run_dir,) = (results / "bench-demo").iterdir()
    assert json.loads((run_dir / "manifest.json").read_text())["status"] == "cancelled"
    kept = (run_dir / "raw.jsonl").read_text().splitlines()
    k = len(kept)
    assert 2 <= k < 4

    resumed = run_evalplus(load_config(demo_project), "demo", resume=True, results=results)
    assert resumed.run_dir == str(run_dir) and resumed.resumed
    assert resumed.generated_now == 4 - k  # only the missing problems were generated
    lines = (run_dir / "raw.jsonl").read_text().splitlines()
    assert lines[:k] == kept and len(lines) == 4  # the first k answers are untouched
    assert len({json.loads(x)["task_id"] for x in lines}) == 4
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "done" and [s["pending"] for s in manifest["sessions"]] == [4, 4 - k]
    assert resumed.scores is not None and resumed.scores.problems == 4
    with pytest.raises(Exception, match="no unfinished evalplus run"):
        run_evalplus(load_config(demo_project), "bench-demo", resume=True, results=results)


def test_tasks_subset_and_report_from_cli(demo_project, engine_path, mini, tmp_path):
    from click.testing import CliRunner

    from mcp_server.cli.main import cli

    results = tmp_path / "results"
    runner = CliRunner()
    out = runner.invoke(cli, ["--config", str(demo_project), "bench", "evalplus", "bench-demo", "--tasks", "2,7",
                              "--mini", "--dataset", str(mini.parent), "--max-tokens", "32", "--results",
                              str(results), "--report", "--json"])
    assert out.exit_code == 0, out.output
    payload = json.loads(out.stdout)
    (run,) = payload["runs"]
    assert run["problems"] == 2 and Path(payload["report"]).is_file()
    assert [r["task_id"] for r in read_jsonl(Path(run["run_dir"]) / "samples.jsonl")] == ["HumanEval/2", "HumanEval/7"]
    listed = runner.invoke(cli, ["bench-results", "--results", str(results), "--json"])
    assert re.search(r'"status": "done"', listed.stdout)
