"""Switches and starts racing from separate processes, against the real llama-server.

The invariant, checked from what each switch returns (``SwitchResult.decided_at``, ``launched``,
and the ``started_at``/``ended_at`` of every instance any process saw):

(a) when a switch claims its target (``launched.started_at``), no other instance on overlapping
    devices is live: each one either ended before that moment or started after it; the same holds
    for a rollback's claims (apart from the instances that rollback restores together);
(b) a switch stops only instances that started before its decision (``decided_at``);
(c) a switch never stops an instance on devices that do not overlap its target's.

Profiles a, b and c share device 0 (on a CPU-only machine the device list is still recorded in
the instance record, and overlap is decided from it); d is on device 1 and must outlive every
switch. Each round launches ``switch a``, ``switch b`` and ``start c`` at the same moment.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from pydantic import BaseModel

from mcp_server.model_files.synthetic import DenseShape, write_dense
from mcp_server.profiles.config import load_config
from mcp_server.runtime.lifecycle import InstanceView, ReadyView, Runtime, SwitchResult
from mcp_server.runtime.registry import LIVE, InstanceStatus

pytestmark = pytest.mark.engine

DEVICES = {"a": {0}, "b": {0}, "c": {0}, "d": {1}}
ROUNDS = 3

# One racing operation in its own process: everything is imported and the Runtime built before the
# barrier, so that the processes reach the registry within milliseconds of each other.
DRIVER = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    from mcp_server.errors import LlamaPilotError
    from mcp_server.profiles.config import load_config
    from mcp_server.runtime.lifecycle import Runtime, SwitchFailed

    conf, verb, profile, ready, go = sys.argv[1:6]
    runtime = Runtime(load_config(conf))
    Path(ready).touch()
    while not Path(go).exists():
        time.sleep(0.001)
    out = {"verb": verb, "profile": profile, "ok": True}
    try:
        if verb == "switch":
            out["switch"] = runtime.switch_model(profile).model_dump(mode="json")
        elif verb == "start":
            out["view"] = runtime.start_model(profile).model_dump(mode="json")
        else:
            out["view"] = runtime.ensure_ready(profile, start=True).model_dump(mode="json")
    except SwitchFailed as exc:
        out.update(ok=False, error=str(exc), switch=exc.result.model_dump(mode="json"))
    except LlamaPilotError as exc:
        record = getattr(exc, "record", None)
        out.update(ok=False, error=str(exc), record=record.model_dump(mode="json") if record else None)
    print(json.dumps(out))
""")


class Outcome(BaseModel):
    verb: str
    profile: str
    ok: bool
    error: str | None = None
    switch: SwitchResult | None = None
    view: ReadyView | None = None  # a start's view (started_here stays False) or ensure_ready's
    record: dict | None = None  # a failed start's instance record


class Seen(BaseModel):
    """One instance as the racing processes and the final status saw it."""

    id: str
    profile: str
    started_at: float
    ended_at: float | None = None


@pytest.fixture
def project(write_conf, engine_path) -> Path:
    conf = write_conf("""
        [global]
        PORT=18480
        PARALLEL=1
        CTX_SIZE=256

        [a]
        NAME=A on device 0
        MODEL=synth/tiny.gguf
        VISIBLE_DEVICES=0

        [b]
        NAME=B on device 0
        MODEL=synth/tiny.gguf
        VISIBLE_DEVICES=0

        [c]
        NAME=C on device 0, started (not switched) while switches run
        MODEL=synth/tiny.gguf
        VISIBLE_DEVICES=0

        [d]
        NAME=D on device 1, which no switch here may touch
        MODEL=synth/tiny.gguf
        VISIBLE_DEVICES=1
    """)
    write_dense(conf.parent / "models" / "synth" / "tiny.gguf", DenseShape(), seed=1)
    yield conf
    Runtime(load_config(conf)).stop_model("all", grace_s=3)


def _race(project: Path, tmp_path: Path, ops: list[tuple[str, str]], name: str) -> list[Outcome]:
    """Run each (verb, profile) in its own process, released together; their outcomes, in order."""
    folder = tmp_path / name
    folder.mkdir()
    go = folder / "go"
    procs = [subprocess.Popen([sys.executable, "-c", DRIVER, str(project), verb, profile,
                               str(folder / f"ready-{i}"), str(go)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ))
             for i, (verb, profile) in enumerate(ops)]
    deadline = time.monotonic() + 60
    while not all((folder / f"ready-{i}").exists() for i in range(len(ops))):
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs), \
            [p.communicate() for p in procs if p.poll() is not None]
        time.sleep(0.01)
    go.touch()
    outcomes = []
    for proc in procs:
        out, err = proc.communicate(timeout=240)
        assert proc.returncode == 0 and out.strip(), err
        outcomes.append(Outcome.model_validate_json(out.strip().splitlines()[-1]))
    return outcomes


def _views(outcome: Outcome) -> list[InstanceView]:
    views = [outcome.view] if outcome.view else []
    if outcome.switch:
        s = outcome.switch
        views += [*s.stopped, *s.rolled_back, *(v for v in (s.started, s.launched) if v)]
    return views


def _history(outcomes: list[Outcome], final: list[InstanceView]) -> dict[str, Seen]:
    """Every instance any process reported, with the end any of them saw (None: still live)."""
    seen: dict[str, Seen] = {}
    records = [InstanceView.model_validate({**o.record, "url": "", "uptime_s": None, "load_seconds": None})
               for o in outcomes if o.record]
    for view in [v for o in outcomes for v in _views(o)] + records + final:
        known = seen.setdefault(view.id, Seen(id=view.id, profile=view.profile, started_at=view.started_at))
        if view.ended_at is not None:
            known.ended_at = view.ended_at
    live = {v.id for v in final if v.status in LIVE}
    for known in seen.values():
        # An end nobody reported would read as "live forever" and fail (a) falsely: say so instead.
        assert known.ended_at is not None or known.id in live, f"{known.id}: ended, but no process saw when"
    return seen


def _overlap(a: str, b: str) -> bool:
    return bool(DEVICES[a] & DEVICES[b])


def _violations(outcomes: list[Outcome], seen: dict[str, Seen]) -> list[str]:
    found = []
    for o in outcomes:
        if o.switch is None:
            continue
        s = o.switch
        claims = [(s.launched, set())] if s.launched else []
        restored = {v.id for v in s.rolled_back}
        claims += [(v, restored) for v in s.rolled_back]
        for claim, together in claims:
            t = claim.started_at
            for other in seen.values():
                if other.id == claim.id or other.id in together or not _overlap(claim.profile, other.profile):
                    continue
                if other.started_at < t and (other.ended_at is None or other.ended_at > t):
                    found.append(f"(a) switch {o.profile} claimed {claim.id} at {t:.3f} while {other.id} "
                                 f"(started {other.started_at:.3f}, ended {other.ended_at}) held its devices")
        for view in s.stopped:
            if s.decided_at is None or view.started_at >= s.decided_at:
                found.append(f"(b) switch {o.profile} decided at {s.decided_at} but stopped {view.id}, "
                             f"started {view.started_at:.3f}")
            if not _overlap(o.profile, view.profile):
                found.append(f"(c) switch {o.profile} stopped {view.id} on other devices")
    return found


def test_racing_switches_and_starts_never_share_a_device(project, tmp_path):
    runtime = Runtime(load_config(project))
    bystander = runtime.start_model("d")
    outcomes: list[Outcome] = []
    for n in range(ROUNDS):
        outcomes += _race(project, tmp_path, [("switch", "a"), ("switch", "b"), ("start", "c")], f"round-{n}")
    final = runtime.status().instances
    seen = _history(outcomes, final)
    assert not _violations(outcomes, seen), "\n".join(_violations(outcomes, seen))

    # Every switch either succeeded or lost its target to a later decision (never a plain failure),
    # and the bystander on device 1 was never touched.
    for o in outcomes:
        if o.verb == "switch" and not o.ok:
            assert "was stopped before this call saw it ready" in (o.error or ""), o.error
    (d,) = [v for v in final if v.profile == "d"]
    assert d.id == bystander.id and d.status == InstanceStatus.READY
    assert any(v.profile != "d" and v.status in LIVE for v in final), "the last round left nothing on device 0"


def test_racing_ensure_ready_starts_once_and_both_get_it(project, tmp_path):
    outcomes = _race(project, tmp_path, [("ensure", "a"), ("ensure", "a")], "ensure")
    assert all(o.ok for o in outcomes), [o.error for o in outcomes]
    views = [o.view for o in outcomes if o.view]
    assert len({v.id for v in views}) == 1 and all(v.status == InstanceStatus.READY for v in views)
    assert sorted(v.started_here for v in views) == [False, True], \
        "exactly one process launched it; the other waited for that one"


def test_the_registry_lock_excludes_other_threads_and_re_enters_in_its_own():
    """Two threads sharing one Registry (the dashboard's workers share a Runtime) take turns; the
    holder's own nested lock() does not wait for itself."""
    import threading
    import time

    from mcp_server.runtime.registry import Registry

    registry = Registry()
    inside: list[str] = []

    def other() -> None:
        with registry.lock():
            inside.append("other")

    with registry.lock():
        with registry.lock():  # re-entrant in this thread
            inside.append("nested")
        worker = threading.Thread(target=other)
        worker.start()
        time.sleep(0.3)
        assert inside == ["nested"], "another thread got in while this one held the lock"
    worker.join(5)
    assert inside == ["nested", "other"]
