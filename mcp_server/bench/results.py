"""Short summaries of benchmark runs: ``bench_results`` (the MCP tool and the CLI command)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from mcp_server.bench import list_runs, results_root


class RunSummary(BaseModel):
    profile: str
    run_id: str
    kind: str
    status: str
    date: str | None
    problems: str | None = None
    humaneval: float | None = None
    humaneval_plus: float | None = None
    generation_s: float | None = None
    evaluation_s: float | None = None
    generation_tps: float | None = None
    prompt_tps: float | None = None
    speed_label: str | None = None
    headline: str | None = None
    error: str | None = None
    run_dir: str


def summarize_runs(root: Path, profile: str | None = None, kind: str | None = None,
                   limit: int | None = None) -> list[RunSummary]:
    out = []
    for m in list_runs(root, profile, kind):
        summary = RunSummary(profile=m.get("profile", "?"), run_id=m.get("run_id", "?"), kind=m.get("kind", "?"),
                             status=m.get("status", "?"), date=str(m.get("ended_at") or m.get("started_at") or "")[:16]
                             or None, error=m.get("error"), run_dir=m["run_dir"])
        if summary.kind == "evalplus":
            selection = m.get("selection") or {}
            summary.problems = f"{selection.get('problems')}/{selection.get('of')}" if selection else None
            scores = m.get("scores") or {}
            timings = m.get("timings") or {}
            summary.humaneval, summary.humaneval_plus = scores.get("humaneval"), scores.get("humaneval_plus")
            summary.generation_s, summary.evaluation_s = timings.get("generation_s"), timings.get("evaluation_s")
            if scores:
                summary.headline = f"HumanEval {scores['humaneval']:.1f}%, HumanEval+ {scores['humaneval_plus']:.1f}%"
        else:
            s = m.get("summary") or {}
            summary.generation_tps, summary.prompt_tps = s.get("generation_tps"), s.get("prompt_tps")
            summary.speed_label = s.get("speed_label")
            if s.get("generation_tps"):
                summary.headline = f"gen {s['generation_tps']:.1f} t/s, prompt {s.get('prompt_tps') or 0:.1f} t/s"
        out.append(summary)
        if limit and len(out) >= limit:
            break
    return out


class RunList(BaseModel):
    results_root: str
    runs: list[RunSummary]


def bench_results(profile: str | None = None, kind: str | None = None, limit: int | None = 50,
                  results: str | Path | None = None) -> RunList:
    """Benchmark runs on disk, newest first (``results``: the results folder, default per docs/benchmarks.md)."""
    root = results_root(results)
    return RunList(results_root=str(root), runs=summarize_runs(root, profile=profile, kind=kind, limit=limit))
