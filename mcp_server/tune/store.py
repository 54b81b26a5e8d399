"""What tuning measured, kept for the next tune: JSON lines beside the calibration measurements.

Keyed by the GGUF (file name and size), the engine build, the GPU models and the memory each one
gave (rounded to 256 MiB: the same profile on a 24 and a 16 GiB budget is two keys), the context
depth, and the measurement source. Per key: every candidate's samples (a later tune reuses them
instead of loading the model again) and the winners (a later tune starts from the last one).
"""

from __future__ import annotations

import hashlib
import json
import statistics
import time

from pydantic import BaseModel

from mcp_server import paths
from mcp_server.files import exclusive_lock
from mcp_server.tune.search import Sample, Values, canonical


class TuneKey(BaseModel):
    model: str
    model_bytes: int
    build: str
    gpus: list[str]
    budget_mib: list[int]
    ctx: int
    depth: int
    source: str

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:16]


def _path():  # type: ignore[no-untyped-def]
    folder = paths.home() / "calibration"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / "tune.jsonl"


def _lines(digest: str) -> list[dict]:  # type: ignore[type-arg]
    path = _path()
    if not path.exists():
        return []
    found = []
    for line in path.read_text().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("key") == digest:
            found.append(entry)
    return found


def _append(entry: dict) -> None:  # type: ignore[type-arg]
    path = _path()
    with exclusive_lock(path.with_suffix(".lock")), open(path, "a") as f:
        f.write(json.dumps(entry) + "\n")


def record(key: TuneKey, values: Values, sample: Sample) -> None:
    _append({"key": key.digest, "kind": "sample", "values": canonical(values), "prompt_tps": sample.prompt_tps,
             "gen_tps": sample.gen_tps, "seconds": sample.seconds, "memory_mib": sample.memory_mib,
             "at": time.strftime("%Y-%m-%dT%H:%M:%S")})


def stored(key: TuneKey, values: Values) -> Sample | None:
    """The median of this candidate's earlier samples, or None."""
    wanted = canonical(values)
    same = [e for e in _lines(key.digest) if e["kind"] == "sample" and e["values"] == wanted]
    if not same:
        return None
    memory = [e["memory_mib"] for e in same if e.get("memory_mib")]
    return Sample(prompt_tps=statistics.median(e["prompt_tps"] for e in same),
                  gen_tps=statistics.median(e["gen_tps"] for e in same), seconds=0.0, source="stored",
                  memory_mib=memory[-1] if memory else None)


def record_winner(key: TuneKey, goal: str, values: Values, noise: float) -> None:
    _append({"key": key.digest, "kind": "winner", "goal": goal, "values": canonical(values), "noise": noise,
             "at": time.strftime("%Y-%m-%dT%H:%M:%S")})


def last_winner(key: TuneKey, goal: str) -> tuple[Values, float] | None:
    winners = [e for e in _lines(key.digest) if e["kind"] == "winner" and e["goal"] == goal]
    if not winners:
        return None
    return json.loads(winners[-1]["values"]), float(winners[-1]["noise"])
