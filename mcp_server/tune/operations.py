"""``tune``: search, paired comparison with --fit, what was learnt, and the profile edit.

``run_tune`` does it here (the CLI in a terminal, and the job's runner); ``tune_profile`` starts it as
a background job (the MCP tool), followed with ``get_job`` and stopped with ``cancel_job``.
"""

from __future__ import annotations

import statistics
import time
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Literal

from pydantic import BaseModel, Field

from mcp_server.errors import LlamaPilotError, ValidationError
from mcp_server.profiles.config import Config
from mcp_server.profiles.edits import EditResult
from mcp_server.tune.search import CandidateFailed, Goal, Outcome, Paired, Sample, Values, canonical
from mcp_server.tune.space import TUNED, Space

if TYPE_CHECKING:
    from mcp_server.jobs import Job
    from mcp_server.workers.spec import WorkerSpec

DEFAULT_RESERVE_MIB = 384.0
# The least relative gain a change must show. Loads of the same settings on the H200 machine spread
# by up to 15%; two looks at the start catch only part of that, so the bar never goes below 5%.
NOISE_FLOOR = 0.05


class TuneCancelled(LlamaPilotError):
    code = "tune-cancelled"


class TuneFailed(LlamaPilotError):
    code = "tune-failed"


class TuneResult(BaseModel):
    profile: str
    goal: str
    source: str = Field(description="how candidates were measured: 'server' (llama-server's timings) or 'llama-bench'")
    depth: int = Field(description="context depth the speeds were measured at (tokens already in the context)")
    started_from: str = Field(description="'planner', or 'stored winner': an earlier tune of the same model, build, "
                                          "GPUs and budget, whose winner is re-checked (explore: searched from)")
    winner: Values = Field(description="the winning candidate's tuned keys")
    runner_up: Values | None = None
    baseline: Values = Field(description="llama.cpp's own choice: the profile's fixed keys with --fit on")
    search: Outcome
    paired: Paired | None = Field(None, description="winner vs baseline, measured alternately")
    full_context: str | None = Field(None, description="a prompt of the whole context on the winner: 'ok' or the "
                                                       "failure; None when not checked")
    memory_mib: dict[str, float] | None = Field(None, description="what the winner's last load held per device "
                                                "(NVML on GPUs, llama.cpp's buffers on the host); every load measured "
                                                "through llama-server is also in the calibration store")
    estimator_calls: int
    measured: int = Field(description="candidate loads this tune paid for (stored samples reused cost none)")
    seconds: float
    search_seconds: float
    edit: EditResult | None = Field(None, description="the profile edit (--write)")


def _tuned(values: Values, space: Space) -> Values:
    return {k: v for k, v in values.items() if k in space.tuned}


def _key(config: Config, space: Space, depth: int, source: str) -> Any:
    from mcp_server.engine.locate import engine_path
    from mcp_server.tune.store import TuneKey

    engine = Path(engine_path())
    build = engine.parent.parent.name if engine.parent.name == "bin" else engine.name
    # A worker's CPU device reports the RAM available now, which moves between runs: its size keys it.
    budget = [g.total_mib if g.worker and g.overhead_mib is not None else g.free_mib for g in space.inventory.gpus]
    return TuneKey(model=Path(space.info.path).name, model_bytes=space.info.total_bytes, build=build,
                   gpus=[g.name or "unknown" for g in space.inventory.gpus],
                   budget_mib=[int(f // 256 * 256) for f in budget], ctx=space.profile.ctx_size or 0,
                   depth=depth, source=source)


def _search(space: Space, start: Values, goal: Goal, minutes: float, noise_floor: float,
            measure: Callable[[Values], Sample], cancelled: Callable[[], bool], say: Callable[[str], None],
            started: float) -> Outcome:
    """Coordinate descent over the knobs, then over the placement around the winner."""
    from mcp_server.tune.search import search

    placed, _ = space.repair(start, True)  # the knobs depend on what the placement leaves on the CPU
    outcome = search(start, space.knobs(goal, placed or start), measure, space.repair, goal=goal, budget_s=minutes * 60,
                     noise_floor=noise_floor, cancelled=cancelled, say=say)
    placement = space.experts_knob(outcome.best)
    if placement is None or outcome.stopped != "done":
        return outcome
    more = search(outcome.best, [placement], measure, space.repair, goal=goal,
                  budget_s=max(0.0, minutes * 60 - (time.monotonic() - started)), noise_floor=outcome.noise,
                  cancelled=cancelled, say=say)
    moved = more.best != outcome.best
    return outcome.model_copy(update={"best": more.best, "best_sample": more.best_sample,
                                      "tried": outcome.tried + more.tried, "stopped": more.stopped,
                                      "runner_up": more.runner_up if moved else outcome.runner_up,
                                      "runner_up_sample": more.runner_up_sample if moved else outcome.runner_up_sample})


def run_tune(config: Config, profile_id: str, goal: Goal = "generation", minutes: float = 10.0, depth: int = 2048,
             allow_kv_quant: bool = False, write: bool = False, gpus: str | None = None,
             reserve_mib: float = DEFAULT_RESERVE_MIB, source: Literal["server", "llama-bench"] = "server",
             rounds: int = 3, gen_tokens: int = 64, full_context_check: bool = True, explore: bool = False,
             say: Callable[[str], None] = lambda _: None, cancel: Any = None) -> TuneResult:
    """Tune ``profile_id`` (see the package's docstring); ``cancel`` is a threading.Event.

    A profile with WORKERS is tuned across them: their RPC servers are brought up for the whole
    tune (build checked first) and their devices, asked once, join the GPUs the estimator prunes
    against; afterwards the RPC servers this started are stopped unless a running profile uses them."""
    import psutil

    from mcp_server.engine.argv import launch_spec, profile_workers
    from mcp_server.model_files.layout import read_layout, require_complete
    from mcp_server.placement.operations import gpu_inventory, visible_to, with_workers
    from mcp_server.tune import store
    from mcp_server.tune.measure import BenchSource, ServerSource
    from mcp_server.tune.search import paired

    started = time.monotonic()
    profile = config.profile(profile_id)
    if profile.is_bench:
        raise ValidationError("profile", profile_id, "is a bench profile; tune the production profile")
    specs = profile_workers(profile, config)
    with _lent(config, profile_id, specs, source, say):
        spec = launch_spec(profile, config)
        info = read_layout(spec.model_path)
        require_complete(info, profile.model or spec.model_path)
        inventory = with_workers(visible_to(gpu_inventory(gpus), spec.visible_devices), config, [w.id for w in specs])
        physical = psutil.cpu_count(logical=False) or psutil.cpu_count() or 1
        space = Space(config=config, profile=profile, info=info, inventory=inventory, reserve_mib=reserve_mib,
                      allow_kv_quant=allow_kv_quant, threads=(physical, psutil.cpu_count() or physical),
                      host_available_mib=psutil.virtual_memory().available / 2**20)
        cancelled = (lambda: cancel.is_set()) if cancel is not None else (lambda: False)
        remote = [g for g in inventory.gpus if g.worker]
        server = ServerSource(config, depth=depth, gen_tokens=gen_tokens, cancelled=cancelled, profile=profile_id,
                              remote=remote)
        bench = None
        if source == "llama-bench":
            from mcp_server.engine.binary import locate_engine

            tool = locate_engine().tools.get("llama-bench")
            if not tool:
                raise ValidationError("source", source, "this engine build has no llama-bench; use source=server")
            bench = BenchSource(config, tool, depth=depth, gen_tokens=gen_tokens)
        key = _key(config, space, depth, source)
        measured = 0

        def fresh(values: Values) -> Sample:
            nonlocal measured
            if cancelled():
                raise TuneCancelled(f"tune of {profile_id} cancelled; what was measured is kept for the next tune")
            measured += 1
            sample = bench.measure(values) if bench is not None and bench.can(values) else server.measure(values)
            store.record(key, values, sample)
            return sample

        def remembered(values: Values) -> Sample:
            return store.stored(key, values) or fresh(values)

        known = store.last_winner(key, goal)
        start = space.start(known[0] if known else None)
        noise_floor = max(NOISE_FLOOR, known[1]) if known else NOISE_FLOOR
        say(f"tuning {profile_id} ({'MoE' if space.moe else 'dense'}, {len(inventory.gpus) - len(remote)} GPU(s)"
            f"{f' + {len(remote)} worker device(s)' if remote else ''}, budget "
            f"{minutes:g} min) from {'the stored winner' if known else 'the planner'}")
        if known and not explore:
            # The learning loop: this key was tuned before. Its winner is re-checked against --fit (the
            # paired rounds below), not searched again; explore=True continues the search from it.
            best, why = space.repair(start, False)  # as it was measured: tightening it would be another candidate
            if best is None:
                raise ValidationError("profile", profile_id, f"the stored winner no longer fits: {why}; tune with "
                                      "explore to search again")
            outcome = Outcome(best=best, best_sample=remembered(best), noise=noise_floor, tried=[], stopped="known")
        else:
            try:
                outcome = _search(space, start, goal, minutes, noise_floor, remembered, cancelled, say, started)
            except CandidateFailed as exc:
                if cancelled():  # the cancel's SIGTERM reached the server being measured too
                    raise TuneCancelled(f"tune of {profile_id} cancelled; what was measured is kept") from None
                raise TuneFailed(f"{profile_id}: the starting point could not be measured: {exc}") from None
        if cancelled():
            raise TuneCancelled(f"tune of {profile_id} cancelled; what was measured is kept for the next tune")
        search_seconds = time.monotonic() - started
        baseline = space.baseline()
        say(f"search done: {canonical(_tuned(outcome.best, space))}; now {rounds} paired rounds against --fit")
        try:
            pair = paired(outcome.best, baseline, fresh, rounds, outcome.noise, goal, cancelled, say)
        except CandidateFailed as exc:
            if cancelled():
                raise TuneCancelled(f"tune of {profile_id} cancelled; what was measured is kept") from None
            raise TuneFailed(f"{profile_id}: the paired comparison could not be measured: {exc}") from None
        full = None
        slots = int(profile.get("PARALLEL") or 1)
        if full_context_check and profile.ctx_size:
            # The whole context in one prompt: the one request that finds a compute buffer the
            # estimate got wrong. The answer is read; only its success matters here.
            try:
                # one request fills one slot: the context is split between the slots
                server.measure(outcome.best, depth=max(16, profile.ctx_size // max(1, slots) - gen_tokens - 8))
                full = "ok"
            except Exception as exc:  # reported, not raised: the measurements stand
                full = f"failed: {exc}"
        store.record_winner(key, goal, outcome.best, outcome.noise)
        result = TuneResult(profile=profile_id, goal=goal, source=source, depth=depth,
                            started_from="stored winner" if known else "planner", winner=_tuned(outcome.best, space),
                            runner_up=_tuned(outcome.runner_up, space) if outcome.runner_up else None,
                            baseline=_tuned(baseline, space), search=outcome, paired=pair, full_context=full,
                            memory_mib=_winner_memory(pair, outcome), estimator_calls=space.estimates, measured=measured,
                            seconds=round(time.monotonic() - started, 1), search_seconds=round(search_seconds, 1))
        if write:
            result.edit = write_winner(config, profile_id, result, space)
        return result


@contextmanager
def _lent(config: Config, profile_id: str, specs: "list[WorkerSpec]", source: str,
          say: Callable[[str], None]) -> Iterator[None]:
    """The profile's workers up for the whole tune (nothing to do without WORKERS)."""
    if not specs:
        yield
        return
    if source == "llama-bench":
        raise ValidationError("source", source, f"{profile_id} runs across RPC workers "
                              f"({', '.join(s.id for s in specs)}); tune it with source=server")
    from mcp_server.workers.operations import lent_workers

    with lent_workers(config, profile_id, specs):
        say(f"workers up: {', '.join(s.id for s in specs)}")
        yield


def _winner_memory(pair: Paired | None, outcome: Outcome) -> dict[str, float] | None:
    held = [s.memory_mib for s in (pair.winner if pair else []) if s.memory_mib]
    return held[-1] if held else outcome.best_sample.memory_mib


def write_winner(config: Config, profile_id: str, result: TuneResult, space: Space, dry_run: bool = False
                 ) -> EditResult:
    """The winner's keys into the profile, SPEED from its measured generation, and a comment line
    with the date, the ratio against --fit and the runner-up (the original's tested-date lines)."""
    from mcp_server.bench.speed import speed_label
    from mcp_server.profiles.edits import update_profile

    profile = config.profile(profile_id)
    winner = result.winner
    unset = [k for k in space.tuned if k in profile.values and k not in winner]
    pair = result.paired
    gen = statistics.median([s.gen_tps for s in pair.winner]) if pair else result.search.best_sample.gen_tps
    line = f"tuned {time.strftime('%Y-%m-%d')}: "
    if pair:
        line += (f"{pair.gen_ratio:.2f}x --fit generation ({pair.gen_ratio_range[0]:.2f}-{pair.gen_ratio_range[1]:.2f}"
                 f" over {pair.rounds} paired loads), prompt {pair.prompt_ratio:.2f}x, at depth {result.depth}")
    if result.runner_up:
        changed = {k: v for k, v in result.runner_up.items() if winner.get(k) != v}
        gone = [k for k in winner if k not in result.runner_up]
        line += "; runner-up " + (", ".join(f"{k}={v}" for k, v in changed.items()) or "")
        line += (" without " + ", ".join(gone)) if gone else ""
    old = [c.lstrip("#").strip() for c in config.document.comment_block(profile_id)[1]]
    block = [c for c in old if not c.startswith("tuned ")] + [line]
    return update_profile(config, profile_id, set={**winner, "SPEED": speed_label(gen)}, unset=unset,
                          comments=block, dry_run=dry_run)


def tune_profile(config: Config, profile: str, goal: Goal = "generation", minutes: float = 10.0, depth: int = 2048,
                 allow_kv_quant: bool = False, write: bool = False) -> "Job":
    """Start tuning ``profile`` as a background job and return it at once (the profile and its model
    file are checked first)."""
    from mcp_server.jobs import start_job
    from mcp_server.model_files.layout import read_layout, require_complete
    from mcp_server.engine.argv import launch_spec

    entry = config.profile(profile)
    spec = launch_spec(entry, config)
    require_complete(read_layout(spec.model_path), entry.model or spec.model_path)
    return start_job("tune", profile, {"goal": goal, "minutes": minutes, "depth": depth,
                                       "allow_kv_quant": allow_kv_quant, "write": write}, config.path)


__all__ = ["TUNED", "TuneResult", "run_tune", "tune_profile", "write_winner"]
