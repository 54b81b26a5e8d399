"""Benchmarks: speed (prompt and generation tokens/s from llama-server's own timings) and EvalPlus
HumanEval+ (code generation through the server's OpenAI-compatible API, evaluated by evalplus).

Every run gets its own folder, never reused: ``<results root>/<profile>/<kind>-<timestamp>/``,
where the results root is ``--results DIR``, else ``$LLAMA_PILOT_BENCH_DIR``, else
``$LLAMA_PILOT_HOME/bench``. A run folder always holds ``manifest.json`` (what ran, on what, when,
and the run's status), so the report and the MCP tools can read any run without guessing.

Modules: ``speed`` (speed benchmark), ``evalplus_run`` (HumanEval+ pipeline), ``postprocess``
(reasoning and code-block extraction), ``dataset`` (the local HumanEval+ copy), ``clientconf``
(bench-client.conf), ``manifest`` (model file, engine, argv, GPUs), ``serving`` (start the
profile if needed), ``report`` (Markdown report and chart), ``jobs`` (detached background runs).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
from pathlib import Path
from typing import Any, Callable

from mcp_server import paths
from mcp_server.errors import LlamaPilotError
from mcp_server.files import atomic_write

BENCH_DIR_ENV = "LLAMA_PILOT_BENCH_DIR"
RUN_KINDS = ("speed", "evalplus")
_RUN_ID_RE = re.compile(r"^(speed|evalplus)-[0-9]{8}-[0-9]{6}(-[0-9]+)?$")

# progress(done, total, message)
Progress = Callable[[int, int, str], None]


class BenchError(LlamaPilotError):
    """A benchmark could not run or finish; the message says why and what to do."""

    code = "bench"


class BenchCancelled(BenchError):
    """The run was cancelled (Ctrl-C, cancel_job); what was finished is kept and can be resumed."""

    code = "bench-cancelled"


def child_env(**extra: str) -> dict[str, str]:
    """Environment for our own Python subprocesses: they import this same mcp_server (the one
    running now), whatever an editable install or the working directory would otherwise pick."""
    package_root = str(Path(__file__).resolve().parents[2])
    current = os.environ.get("PYTHONPATH")
    env = {**os.environ, "PYTHONPATH": package_root + (os.pathsep + current if current else "")}
    env.update(extra)
    return env


def results_root(explicit: str | os.PathLike[str] | None = None) -> Path:
    """Where runs are stored: explicit, else $LLAMA_PILOT_BENCH_DIR, else $LLAMA_PILOT_HOME/bench."""
    if explicit:
        return Path(explicit).expanduser()
    env = os.environ.get(BENCH_DIR_ENV)
    if env:
        return Path(env).expanduser()
    return paths.home() / "bench"


def is_run_id(value: str) -> bool:
    return bool(_RUN_ID_RE.match(value))


def new_run_dir(root: Path, profile: str, kind: str, now: _dt.datetime | None = None) -> Path:
    """Create a fresh run folder; an existing one is never reused (a suffix is added instead)."""
    if kind not in RUN_KINDS:
        raise BenchError(f"unknown run kind {kind!r}")
    stamp = (now or _dt.datetime.now()).strftime("%Y%m%d-%H%M%S")
    parent = root / profile
    parent.mkdir(parents=True, exist_ok=True)
    for n in range(1, 1000):
        candidate = parent / (f"{kind}-{stamp}" if n == 1 else f"{kind}-{stamp}-{n}")
        try:
            candidate.mkdir()  # exclusive: two runs started in the same second get distinct folders
        except FileExistsError:
            continue
        return candidate
    raise BenchError(f"could not create a run folder under {parent}")


def write_json(path: Path, value: Any) -> None:
    """Write JSON atomically (temporary file, then rename), so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # 0644: results are for everyone who may read the folder.
    atomic_write(path, json.dumps(value, indent=2, default=str) + "\n", mode=0o644)


def read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Lines of a JSONL file; a torn last line (the writer was killed mid-line) is skipped."""
    rows: list[dict[str, Any]] = []
    try:
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                line = line.strip()
                if not line:
                    continue
                try:
                    value = json.loads(line)
                except ValueError:
                    continue
                if isinstance(value, dict):
                    rows.append(value)
    except FileNotFoundError:
        pass
    return rows


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).astimezone().isoformat(timespec="seconds")


def list_runs(root: Path | None = None, profile: str | None = None, kind: str | None = None) -> list[dict[str, Any]]:
    """Every run folder's manifest (newest first), with ``run_dir`` added; unreadable ones skipped."""
    base = root or results_root()
    runs = []
    if not base.is_dir():
        return runs
    for profile_dir in sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if profile and profile_dir.name != profile:
            continue
        for run_dir in profile_dir.iterdir():
            if not run_dir.is_dir() or not is_run_id(run_dir.name):
                continue
            if kind and not run_dir.name.startswith(kind + "-"):
                continue
            try:
                manifest = read_json(run_dir / "manifest.json")
            except (OSError, ValueError):
                continue
            if isinstance(manifest, dict):
                manifest["run_dir"] = str(run_dir)
                runs.append(manifest)
    runs.sort(key=lambda m: (m.get("started_at") or "", m.get("run_id") or ""), reverse=True)
    return runs
