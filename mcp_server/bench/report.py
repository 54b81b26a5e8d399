"""The Markdown report: local HumanEval+ results next to published reference scores, and a chart.

Scores are read from each run's own evalplus result file (``samples_eval_results.json``), never
from a copy. One row per profile: its newest full-set run, else its newest subset run (marked,
and left out of the rankings: a subset's pass@1 is not comparable). The reference scores come
from ``reference-scores.json`` (``--reference``, ``$LLAMA_PILOT_REFERENCE_SCORES``, or beside
models.conf / in its ``benchmarks/`` folder), the format the original used::

    {"metadata": {"source": ..., "last_updated": ..., "notes": ...},
     "models": {"<name>": {"humaneval": 94.2, "humaneval_plus": null, "source": "..."}}}

A profile is compared with a reference model named by ``REFERENCE=`` in its bench-client.conf
section. The chart (HumanEval+ per model, local and reference in two colours) is written beside
the report and embedded in it.
"""

from __future__ import annotations

import datetime as _dt
import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from mcp_server.errors import ConfigError
from mcp_server.profiles.config import BENCH_PREFIX, Config
from mcp_server.bench import BenchError, list_runs, read_json, results_root
from mcp_server.bench.clientconf import client_settings
from mcp_server.bench.evalplus_run import EVAL_RESULTS, scores_from_eval_results

REFERENCE_ENV = "LLAMA_PILOT_REFERENCE_SCORES"
CHART_NAME = "humaneval-plus.png"
LOCAL_COLOUR = "#1f77b4"
REFERENCE_COLOUR = "#b8b8b8"


class ReferenceModel(BaseModel):
    name: str
    humaneval: float | None
    humaneval_plus: float | None
    source: str = ""


class LocalRow(BaseModel):
    profile: str
    model: str
    humaneval: float
    humaneval_plus: float
    base_passed: int
    plus_passed: int
    problems: int
    of: int
    full: bool
    reference: str | None
    delta_humaneval: float | None
    delta_humaneval_plus: float | None
    speed: str | None
    speed_source: str | None
    date: str
    run_id: str
    run_dir: str
    max_tokens: int | None
    concurrency: int | None
    generation_s: float | None
    generation_sessions: int = 1
    evaluation_s: float | None
    dataset: str
    engine: str | None
    hardware: str | None


class Report(BaseModel):
    generated_at: str
    results_root: str
    rows: list[LocalRow]
    references: list[ReferenceModel]
    reference_file: str | None
    reference_metadata: dict[str, Any]
    markdown: str = ""
    path: str | None = None
    chart: str | None = None


def find_reference_file(config: Config | None, explicit: str | os.PathLike[str] | None = None) -> Path | None:
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise ConfigError(f"{path}: no such reference-scores.json")
        return path
    env = os.environ.get(REFERENCE_ENV)
    if env:
        return Path(env).expanduser() if Path(env).expanduser().is_file() else None
    if config is not None:
        folder = config.path.resolve().parent
        for candidate in (folder / "reference-scores.json", folder / "benchmarks" / "reference-scores.json"):
            if candidate.is_file():
                return candidate
    return None


def load_references(path: Path | None) -> tuple[list[ReferenceModel], dict[str, Any]]:
    if path is None:
        return [], {}
    try:
        data = read_json(path)
        models = data.get("models") or {}
        refs = [ReferenceModel(name=name, humaneval=v.get("humaneval"), humaneval_plus=v.get("humaneval_plus"),
                               source=v.get("source") or "") for name, v in models.items()]
    except (OSError, ValueError, AttributeError, TypeError) as exc:
        raise ConfigError(f"{path} is not a reference-scores.json ({exc}); expected "
                          '{"metadata": {...}, "models": {"<name>": {"humaneval": x, "humaneval_plus": y, '
                          '"source": "..."}}}') from exc
    return refs, data.get("metadata") or {}


def _display_name(config: Config | None, manifest: dict[str, Any], display: str | None) -> str:
    if display:
        return display
    profile = manifest.get("profile")
    name = None
    if config is not None and profile in config.profiles:
        name = config.profiles[profile].name
    if name is None:
        name = (manifest.get("profile_settings") or {}).get("name")
    name = name or profile or "?"
    return name[: -len(" (benchmark)")] if name.endswith(" (benchmark)") else name


def _speed(config: Config | None, root: Path, bench_profile: str) -> tuple[str | None, str | None]:
    """The newest measured speed of the bench profile or its production twin, else the twin's SPEED."""
    twin = bench_profile[len(BENCH_PREFIX):] if bench_profile.startswith(BENCH_PREFIX) else bench_profile
    for profile in (twin, bench_profile):
        for run in list_runs(root, profile, "speed"):
            label = (run.get("summary") or {}).get("speed_label")
            if run.get("status") == "done" and label:
                return label, f"measured {str(run.get('ended_at', ''))[:10]} ({profile})"
    if config is not None:
        for profile in (twin, bench_profile):
            if profile in config.profiles and config.profiles[profile].speed:
                return config.profiles[profile].speed, f"SPEED of {profile}"
    return None, None


def _hardware(manifest: dict[str, Any]) -> str | None:
    gpus = [g for g in manifest.get("gpus") or [] if g.get("used_by_profile", True)]
    if gpus:
        return ", ".join(f"{g['name']} ({g['memory_total_mib'] // 1024} GiB)" for g in gpus)
    cpu = manifest.get("cpu") or {}
    if cpu.get("model"):
        return f"CPU: {cpu['model']} ({cpu.get('usable_cpus')} threads)"
    return None


def _row(config: Config | None, root: Path, manifest: dict[str, Any], refs: dict[str, ReferenceModel],
         client_conf: str | os.PathLike[str] | None) -> LocalRow | None:
    run_dir = Path(manifest["run_dir"])
    if not (run_dir / EVAL_RESULTS).is_file():
        return None
    scores = scores_from_eval_results(run_dir / EVAL_RESULTS)
    profile = manifest["profile"]
    try:
        settings = client_settings(config, profile, client_conf)
    except ConfigError:
        settings = None
    reference = settings.reference if settings else None
    ref = refs.get(reference) if reference else None
    speed, speed_source = _speed(config, root, profile)
    selection = manifest.get("selection") or {}
    dataset = manifest.get("dataset") or {}
    of = int(selection.get("of") or dataset.get("problems") or scores.problems)
    timings = manifest.get("timings") or {}
    sessions = manifest.get("sessions") or []
    engine = manifest.get("engine") or {}
    return LocalRow(
        profile=profile, model=_display_name(config, manifest, settings.display_name if settings else None),
        humaneval=scores.humaneval, humaneval_plus=scores.humaneval_plus, base_passed=scores.base_passed,
        plus_passed=scores.plus_passed, problems=scores.problems, of=of, full=scores.problems >= of,
        reference=reference if ref else (f"{reference} (not in reference file)" if reference else None),
        delta_humaneval=round(scores.humaneval - ref.humaneval, 1) if ref and ref.humaneval is not None else None,
        delta_humaneval_plus=(round(scores.humaneval_plus - ref.humaneval_plus, 1)
                              if ref and ref.humaneval_plus is not None else None),
        speed=speed, speed_source=speed_source, date=str(manifest.get("ended_at") or manifest.get("started_at"))[:10],
        run_id=manifest["run_id"], run_dir=str(run_dir), max_tokens=(manifest.get("settings") or {}).get("max_tokens"),
        concurrency=sessions[-1].get("concurrency") if sessions else None,
        generation_s=timings.get("generation_s"), generation_sessions=max(1, len(sessions)),
        evaluation_s=timings.get("evaluation_s"),
        dataset=f"HumanEval+ {dataset.get('known_version') or '(unknown version)'}"
                f"{' Mini' if dataset.get('variant') == 'mini' else ''}",
        engine=(f"llama.cpp b{engine['build_number']}" if engine.get("build_number")
                else engine.get("server_build_info")),
        hardware=_hardware(manifest))


def collect(config: Config | None = None, *, results: str | os.PathLike[str] | None = None,
            reference: str | os.PathLike[str] | None = None, client_conf: str | os.PathLike[str] | None = None,
            all_runs: bool = False, profiles: list[str] | None = None) -> Report:
    root = results_root(results)
    ref_path = find_reference_file(config, reference)
    refs, metadata = load_references(ref_path)
    by_name = {r.name: r for r in refs}
    done = [m for m in list_runs(root, kind="evalplus") if m.get("status") == "done"]
    if profiles:
        done = [m for m in done if m.get("profile") in profiles]
    chosen: list[dict[str, Any]] = []
    if all_runs:
        chosen = done
    else:
        for profile in dict.fromkeys(m["profile"] for m in done):
            runs = [m for m in done if m["profile"] == profile]  # newest first
            full = [m for m in runs
                    if (m.get("selection") or {}).get("problems") == (m.get("selection") or {}).get("of")]
            chosen.append((full or runs)[0])
    rows = [row for m in chosen if (row := _row(config, root, m, by_name, client_conf)) is not None]
    rows.sort(key=lambda r: (not r.full, -r.humaneval_plus, -r.humaneval, r.model))
    return Report(generated_at=_dt.datetime.now().strftime("%Y-%m-%d %H:%M"), results_root=str(root), rows=rows,
                  references=refs, reference_file=str(ref_path) if ref_path else None, reference_metadata=metadata)


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}%"


def _delta(row: LocalRow) -> str:
    parts = []
    if row.delta_humaneval is not None:
        parts.append(f"{row.delta_humaneval:+.1f}pp HE")
    if row.delta_humaneval_plus is not None:
        parts.append(f"{row.delta_humaneval_plus:+.1f}pp HE+")
    if not parts:
        return "—"
    return ", ".join(parts) + f" vs {row.reference}"


def _seconds(value: float | None) -> str:
    if value is None:
        return "—"
    minutes, seconds = divmod(int(round(value)), 60)
    return f"{minutes}m{seconds:02d}s" if minutes else f"{value:.1f}s"


def _ranking(report: Report, key: str) -> list[str]:
    entries: list[tuple[float, str, str, bool]] = []
    for ref in report.references:
        value = getattr(ref, key)
        if value is not None:
            entries.append((value, ref.name, ref.source, False))
    for row in report.rows:
        if row.full:
            entries.append((getattr(row, key), row.model, "Local benchmark", True))
    entries.sort(key=lambda e: (-e[0], e[1]))
    lines = []
    for i, (value, name, source, local) in enumerate(entries, 1):
        cells = [str(i), name, f"{value:.1f}%", source]
        if local:
            cells = [cells[0]] + [f"**{c}**" for c in cells[1:]]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def render_markdown(report: Report, chart_name: str | None) -> str:
    out = ["# EvalPlus HumanEval+ results", "",
           f"*Generated {report.generated_at} by `llama-pilot bench report`. pass@1 with greedy decoding "
           "(temperature 0); local scores are read from each run's evalplus result file.*", ""]
    if not report.rows:
        out += ["No finished EvalPlus runs found under `" + report.results_root + "`. Run one first:", "",
                "```bash", "llama-pilot bench evalplus demo --create-bench --limit 5   # quick check",
                "llama-pilot bench evalplus demo                                # all 164 problems", "```", ""]
    if chart_name:
        out += [f"![HumanEval+ pass@1 per model: local runs and reference scores]({chart_name})", ""]
    if report.rows:
        out += ["## Local results", "",
                "| # | Model | HumanEval | HumanEval+ | vs reference | Speed | Problems | Date |",
                "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for i, row in enumerate(report.rows, 1):
            problems = f"{row.problems}/{row.of}" + ("" if row.full else " (subset)")
            out.append(f"| {i} | {row.model} | {_pct(row.humaneval)} | {_pct(row.humaneval_plus)} | {_delta(row)} | "
                       f"{row.speed or '—'} | {problems} | {row.date} |")
        out.append("")
    he = _ranking(report, "humaneval")
    if he:
        out += ["## HumanEval ranking (pass@1)", "", "| # | Model | HumanEval | Source |", "| --- | --- | --- | --- |",
                *he, ""]
    hep = _ranking(report, "humaneval_plus")
    if hep:
        out += ["## HumanEval+ ranking (pass@1, stricter)", "", "| # | Model | HumanEval+ | Source |",
                "| --- | --- | --- | --- |", *hep, ""]
    if report.rows:
        out += ["## Runs", "",
                "| Model | Run | Dataset | Passed (base / plus) | max_tokens | Requests in flight | Generation | "
                "Evaluation | Engine | Hardware |",
                "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for row in report.rows:
            out.append(f"| {row.model} | `{row.profile}/{row.run_id}` | {row.dataset} | "
                       f"{row.base_passed} / {row.plus_passed} of {row.problems} | {row.max_tokens or '—'} | "
                       f"{row.concurrency or '—'} | {_seconds(row.generation_s)}"
                       f"{f' ({row.generation_sessions} sessions)' if row.generation_sessions > 1 else ''} | "
                       f"{_seconds(row.evaluation_s)} | "
                       f"{row.engine or '—'} | {row.hardware or '—'} |")
        out.append("")
    out += ["## Notes", "",
            "- pass@1, one greedy sample per problem (temperature 0, set by the client; bench profiles set no "
            "server-side samplers).",
            "- HumanEval is the original base tests; HumanEval+ adds EvalPlus's extra tests (a problem counts only "
            "when both pass), so it is stricter.",
            "- Reasoning blocks are stripped and the code block taken before evalplus's sanitiser; the raw answers "
            "are kept in each run folder (`raw.jsonl`).",
            "- \"vs reference\" is the local score minus the reference model's published score (percentage points).",
            "- Speed is the newest `llama-pilot bench speed` result (single-request generation tokens/s), else the "
            "profile's SPEED.",
            "- Subset runs (`--limit`, `--tasks`) are listed but left out of the rankings and marked in the chart.",
            ""]
    if report.references:
        meta = report.reference_metadata
        out += ["## Reference scores", "",
                f"From `{Path(report.reference_file).name if report.reference_file else 'reference-scores.json'}`"
                + (f" ({meta.get('source')}, last updated {meta.get('last_updated')})" if meta.get("source") else "")
                + ". Edit that file to add or correct models.", ""]
        if meta.get("notes"):
            out += [f"> {meta['notes']}", ""]
    return "\n".join(out)


def render_chart(report: Report, path: Path) -> bool:
    """Horizontal bar chart of HumanEval+ pass@1: local runs and references in two colours."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.patches import Patch
    except ImportError:
        return False
    bars: list[tuple[str, float, bool]] = []
    for row in report.rows:
        label = row.model + ("" if row.full else f" ({row.problems} problems)")
        bars.append((label, row.humaneval_plus, True))
    for ref in report.references:
        if ref.humaneval_plus is not None:
            bars.append((ref.name, ref.humaneval_plus, False))
    if not bars:
        return False
    bars.sort(key=lambda b: b[1])
    height = max(2.5, 0.42 * len(bars) + 1.2)
    fig, ax = plt.subplots(figsize=(8.5, height), dpi=110)
    colours = [LOCAL_COLOUR if local else REFERENCE_COLOUR for _, _, local in bars]
    positions = range(len(bars))
    ax.barh(list(positions), [b[1] for b in bars], color=colours, edgecolor="none", height=0.7)
    ax.set_yticks(list(positions), [b[0] for b in bars], fontsize=9)
    for i, (_, value, local) in enumerate(bars):
        ax.text(value + 0.8, i, f"{value:.1f}", va="center", fontsize=8, fontweight="bold" if local else "normal")
    ax.set_xlim(0, 105)
    ax.set_xlabel("HumanEval+ pass@1 (%)")
    ax.set_title("EvalPlus HumanEval+ (greedy, pass@1)", fontsize=11)
    ax.spines[["top", "right"]].set_visible(False)
    ax.legend(handles=[Patch(color=LOCAL_COLOUR, label="local run (llama-pilot)"),
                       Patch(color=REFERENCE_COLOUR, label="published reference")],
              loc="lower right", fontsize=8, frameon=False)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return True


def write_report(config: Config | None = None, *, output: str | os.PathLike[str] | None = None,
                 results: str | os.PathLike[str] | None = None, reference: str | os.PathLike[str] | None = None,
                 client_conf: str | os.PathLike[str] | None = None, all_runs: bool = False,
                 profiles: list[str] | None = None, chart: bool = True) -> Report:
    """Collect, render and write the report (and its chart, beside it)."""
    report = collect(config, results=results, reference=reference, client_conf=client_conf, all_runs=all_runs,
                     profiles=profiles)
    out_path = Path(output).expanduser() if output else results_root(results) / "REPORT.md"
    if out_path.is_dir():
        raise BenchError(f"{out_path} is a folder; give the report's file name (e.g. {out_path / 'REPORT.md'})")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    chart_path = out_path.parent / CHART_NAME
    has_chart = chart and render_chart(report, chart_path)
    report.markdown = render_markdown(report, CHART_NAME if has_chart else None)
    out_path.write_text(report.markdown, encoding="utf-8")
    report.path = str(out_path)
    report.chart = str(chart_path) if has_chart else None
    return report
