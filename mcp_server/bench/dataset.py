"""The HumanEval+ dataset (EvalPlus v0.1.10), read from a local copy.

evalplus normally downloads it at run time; llama-pilot looks for a local copy first, so runs work
offline, and hands evalplus exactly the problems of a run through ``HUMANEVAL_OVERRIDE_PATH``
(a JSONL written into the run folder: the whole set, or the ``--limit``/``--tasks`` subset, since
evalplus refuses samples that do not cover every problem of its dataset).

Where a copy is looked for, in order: ``--dataset PATH`` (a file, .jsonl or .jsonl.gz, or a folder
holding ``HumanEvalPlus[-Mini]-v0.1.10.jsonl[.gz]``), ``$LLAMA_PILOT_HUMANEVAL`` (same),
``$HUMANEVAL_OVERRIDE_PATH`` (evalplus's own variable, full set only),
``$LLAMA_PILOT_HOME/datasets/humanevalplus/``, then evalplus's download caches. With none there,
evalplus downloads it when the network is reachable; otherwise the error says how to provide one.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from mcp_server import paths
from mcp_server.bench import BenchError

VERSION = "v0.1.10"
DATASET_ENV = "LLAMA_PILOT_HUMANEVAL"
RELEASE_URL = "https://github.com/evalplus/humanevalplus_release/releases/download/v0.1.10/"
# md5 of the decompressed JSONL; the full one is what evalplus 0.3.x pins for v0.1.10.
KNOWN_MD5 = {"full": "fe585eb4df8c88d844eeb463ea4d0302", "mini": "401e75ad986361dccc7afecb4121e295"}


class DatasetMissing(BenchError):
    code = "dataset-missing"


class DatasetInfo(BaseModel):
    path: str
    variant: str  # "full" | "mini"
    md5: str
    known_version: str | None  # "v0.1.10" when the md5 matches the release, else None
    problems: int


def file_names(mini: bool) -> list[str]:
    stem = "HumanEvalPlus-Mini" if mini else "HumanEvalPlus"
    return [f"{stem}-{VERSION}.jsonl.gz", f"{stem}-{VERSION}.jsonl", f"{stem}.jsonl.gz", f"{stem}.jsonl"]


def evalplus_cache_home() -> Path:
    """XDG_CACHE_HOME given to evalplus subprocesses: its downloads and ground truth stay under
    $LLAMA_PILOT_HOME/cache (evalplus keeps them in <XDG_CACHE_HOME>/evalplus)."""
    path = paths.cache_dir() / "xdg"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _in_folder(folder: Path, mini: bool) -> Path | None:
    for name in file_names(mini):
        if (folder / name).is_file():
            return folder / name
    return None


def _resolve(value: str | os.PathLike[str], origin: str, mini: bool) -> Path:
    path = Path(value).expanduser()
    if path.is_dir():
        found = _in_folder(path, mini)
        if found is None:
            raise DatasetMissing(f"{origin} {path} holds none of {', '.join(file_names(mini))}")
        return found
    if not path.is_file():
        raise DatasetMissing(f"{origin} {path} does not exist")
    return path


def locate_dataset(explicit: str | os.PathLike[str] | None = None, *, mini: bool = False,
                   allow_download: bool = True) -> Path:
    """The local HumanEval+ file to use (see the module docstring for the order)."""
    if explicit:
        return _resolve(explicit, "--dataset", mini)
    env = os.environ.get(DATASET_ENV)
    if env:
        return _resolve(env, f"${DATASET_ENV}", mini)
    override = os.environ.get("HUMANEVAL_OVERRIDE_PATH")
    if override and not mini and Path(override).is_file():
        return Path(override)
    folders = [paths.home() / "datasets" / "humanevalplus", evalplus_cache_home() / "evalplus"]
    xdg = os.environ.get("XDG_CACHE_HOME")
    folders.append((Path(xdg) if xdg else Path.home() / ".cache") / "evalplus")
    for folder in folders:
        found = _in_folder(folder, mini) if folder.is_dir() else None
        if found:
            return found
    if allow_download and _network_reachable():
        _download(mini)
        found = _in_folder(evalplus_cache_home() / "evalplus", mini)
        if found:
            return found
    name = file_names(mini)[0]
    raise DatasetMissing(
        f"No local copy of HumanEval+ {VERSION} ({name}) was found and the network is not reachable to "
        f"download it. Provide one: download {RELEASE_URL}{name.replace(f'-{VERSION}', '')} on a machine "
        f"with internet (or take it from evalplus's cache, ~/.cache/evalplus), then put "
        f"it in {paths.home() / 'datasets' / 'humanevalplus'}/, or set ${DATASET_ENV}=PATH where the MCP server "
        f"runs (the CLI also takes --dataset PATH, the file or its folder).")


def _network_reachable(host: str = "github.com", port: int = 443, timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _download(mini: bool) -> None:
    """Let evalplus download the release into its cache (under our XDG cache home)."""
    env = {**os.environ, "XDG_CACHE_HOME": str(evalplus_cache_home())}
    env.pop("HUMANEVAL_OVERRIDE_PATH", None)
    code = f"from evalplus.data import get_human_eval_plus; get_human_eval_plus(mini={bool(mini)})"
    try:
        subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=300,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    except (subprocess.SubprocessError, OSError):
        pass  # the caller reports the dataset as missing, with instructions


def _read_bytes(path: Path) -> bytes:
    with open(path, "rb") as fh:
        head = fh.read(2)
    if head == b"\x1f\x8b":
        with gzip.open(path, "rb") as fh:
            return fh.read()
    return path.read_bytes()


def load_problems(path: Path) -> tuple[dict[str, dict[str, Any]], DatasetInfo]:
    """Problems by task id (in file order) and what the file is."""
    try:
        raw = _read_bytes(path)
    except OSError as exc:
        raise DatasetMissing(f"cannot read {path}: {exc}") from exc
    problems: dict[str, dict[str, Any]] = {}
    for n, line in enumerate(raw.decode("utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            task = json.loads(line)
            problems[task["task_id"]] = task
        except (ValueError, KeyError, TypeError) as exc:
            raise DatasetMissing(f"{path}:{n} is not a HumanEval+ record ({exc})") from exc
    missing = [k for k in ("prompt", "entry_point", "canonical_solution", "base_input", "plus_input")
               if problems and k not in next(iter(problems.values()))]
    if not problems or missing:
        raise DatasetMissing(f"{path} is not HumanEval+ (no problems, or no {', '.join(missing)})")
    md5 = hashlib.md5(raw).hexdigest()
    variant = "mini" if md5 == KNOWN_MD5["mini"] or "mini" in path.name.lower() else "full"
    known = VERSION if md5 in KNOWN_MD5.values() else None
    return problems, DatasetInfo(path=str(path), variant=variant, md5=md5, known_version=known,
                                 problems=len(problems))


def _task_key(value: str) -> str:
    value = value.strip()
    return f"HumanEval/{int(value)}" if value.isdigit() else value


def select(problems: dict[str, dict[str, Any]], *, limit: int | None = None,
           tasks: list[str] | str | None = None) -> list[str]:
    """Task ids to run, in dataset order: ``tasks`` (ids, numbers, or ranges such as 0-9), then the
    first ``limit`` of them."""
    order = list(problems)
    if tasks:
        items = tasks.split(",") if isinstance(tasks, str) else [t for item in tasks for t in item.split(",")]
        wanted: set[str] = set()
        for item in (i.strip() for i in items if i.strip()):
            if "-" in item and all(p.strip().isdigit() for p in item.split("-", 1)):
                lo, hi = (int(p) for p in item.split("-", 1))
                wanted |= {f"HumanEval/{n}" for n in range(lo, hi + 1)}
            else:
                wanted.add(_task_key(item))
        unknown = sorted(wanted - set(order))
        if unknown:
            raise BenchError(f"unknown task ids: {', '.join(unknown[:10])} (the dataset has "
                             f"{order[0]} .. {order[-1]})")
        order = [t for t in order if t in wanted]
    if limit is not None:
        if limit < 1:
            raise BenchError("--limit must be at least 1")
        order = order[:limit]
    return order


def write_subset(problems: dict[str, dict[str, Any]], task_ids: list[str], path: Path) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for task_id in task_ids:
            fh.write(json.dumps(problems[task_id]) + "\n")
