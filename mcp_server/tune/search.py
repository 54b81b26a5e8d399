"""The search, pure: coordinate descent over knobs, inside what the estimator allows, on a budget.

Why coordinate descent: each load of a 60 GB model costs tens of seconds, so the budget buys a few
dozen measurements at most. The knobs barely interact except through memory (a larger micro-batch
grows the compute buffer and may push an expert layer off the GPU), and that interaction is handled
by the repair step, not by the search: every candidate is first made safe by moving expert layers
(or layers) to the CPU until the estimator says the reserve stays free. So one knob at a time, the
most promising first, keeping a change only when it beats the best by more than the noise measured
on this machine, finds the winner in knobs x values loads instead of their product.

``measure`` and ``repair`` are given, so tests drive the search with a fake measurement source.
"""

from __future__ import annotations

import json
import statistics
import time
from typing import Callable, Literal

from pydantic import BaseModel, Field

Goal = Literal["generation", "prompt", "balanced"]
Values = dict[str, str]


class Sample(BaseModel):
    """One measurement of one candidate: tokens/s at the asked context depth."""

    prompt_tps: float
    gen_tps: float
    seconds: float = Field(0.0, description="what the measurement cost, load included")
    source: str = Field("measured", description="'measured' now, or 'stored' (a measurement from an earlier tune)")
    memory_mib: dict[str, float] | None = Field(None, description="what the load held per device (NVML on a GPU, "
                                                "llama.cpp's buffers on the host), when llama-server measured it")


class Knob(BaseModel):
    name: str
    options: list[Values] = Field(description="the settings each option sets (keys absent: the engine's default)")
    repair: bool = Field(True, description="make each option safe by moving placement; False: check it as it is "
                                           "(the placement knob itself), pruning what does not fit")


class Tried(BaseModel):
    knob: str
    values: Values
    sample: Sample | None = None
    pruned: str | None = Field(None, description="why the estimator refused it (never measured)")
    kept: bool = False


class Outcome(BaseModel):
    best: Values
    best_sample: Sample
    runner_up: Values | None = None
    runner_up_sample: Sample | None = None
    noise: float = Field(description="relative spread of repeated measurements of one candidate on this machine")
    tried: list[Tried]
    stopped: str = Field(description="'done'; 'budget' when the time ran out before every knob was tried; 'cancelled'; "
                                     "'known' when a stored winner was re-checked instead of searched")


def canonical(values: Values) -> str:
    return json.dumps(dict(sorted(values.items())), separators=(",", ":"))


def score(sample: Sample, goal: Goal) -> float:
    if goal == "generation":
        return sample.gen_tps
    if goal == "prompt":
        return sample.prompt_tps
    return (sample.gen_tps * sample.prompt_tps) ** 0.5


def relative_spread(values: list[float]) -> float:
    """(max - min) / median: how far apart measurements of one thing land."""
    if len(values) < 2:
        return 0.0
    return (max(values) - min(values)) / statistics.median(values)


class CandidateFailed(Exception):
    """A candidate that could not be measured (it did not load, or its server died)."""


def search(start: Values, knobs: list[Knob], measure: Callable[[Values], Sample],
           repair: Callable[[Values, bool], tuple[Values | None, str | None]], *, goal: Goal, budget_s: float,
           noise_floor: float = 0.02, clock: Callable[[], float] = time.monotonic,
           cancelled: Callable[[], bool] = lambda: False, say: Callable[[str], None] = lambda _: None) -> Outcome:
    """Coordinate descent from ``start`` (see the module's docstring).

    ``repair(values, adjust)`` returns the values made safe (adjusting the placement when
    ``adjust``), or None and why not. The start is measured twice: their spread, not below
    ``noise_floor``, is the noise a change must beat. ``knobs`` may grow while the search runs (the
    caller appends the placement knob around the best so far): they are read in order."""
    deadline = clock() + budget_s
    seen: dict[str, Sample] = {}
    tried: list[Tried] = []

    def run(values: Values) -> Sample:
        key = canonical(values)
        if key not in seen:
            seen[key] = measure(values)
        return seen[key]

    safe_start, why = repair(start, True)
    if safe_start is None:
        raise CandidateFailed(f"the starting point is not safe: {why}")
    first = measure(safe_start)
    second = measure(safe_start)
    noise = max(noise_floor, relative_spread([score(first, goal), score(second, goal)]))
    best = safe_start
    best_sample = Sample(prompt_tps=statistics.mean([first.prompt_tps, second.prompt_tps]),
                         gen_tps=statistics.mean([first.gen_tps, second.gen_tps]),
                         seconds=first.seconds + second.seconds, source=first.source)
    seen[canonical(best)] = best_sample
    say(f"start: {score(best_sample, goal):.2f} ({goal}), noise {noise:.1%}")
    runner: tuple[Values, Sample] | None = None
    stopped = "done"
    index = 0
    while index < len(knobs):
        knob = knobs[index]
        index += 1
        base = dict(best)
        for option in knob.options:
            if cancelled() or clock() >= deadline:
                stopped = "cancelled" if cancelled() else "budget"
                break
            wanted = {**base, **option}
            wanted = {k: v for k, v in wanted.items() if v != ""}  # "" takes a key back to the engine's default
            values, why = repair(wanted, knob.repair)
            if values is None:
                tried.append(Tried(knob=knob.name, values=wanted, pruned=why))
                say(f"{knob.name}: pruned ({why})")
                continue
            if canonical(values) == canonical(best):
                continue
            try:
                sample = run(values)
            except CandidateFailed as exc:
                tried.append(Tried(knob=knob.name, values=values, pruned=f"failed: {exc}"))
                say(f"{knob.name}: failed ({exc})")
                continue
            better = score(sample, goal) > score(best_sample, goal) * (1 + noise)
            tried.append(Tried(knob=knob.name, values=values, sample=sample, kept=better))
            say(f"{knob.name}: {score(sample, goal):.2f} vs best {score(best_sample, goal):.2f}"
                f"{' (kept)' if better else ''}")
            if better:
                runner = (best, best_sample)
                best, best_sample = values, sample
            elif runner is None or score(sample, goal) > score(runner[1], goal):
                runner = (values, sample)
        if stopped != "done":
            break
    return Outcome(best=best, best_sample=best_sample, runner_up=runner[0] if runner else None,
                   runner_up_sample=runner[1] if runner else None, noise=noise, tried=tried, stopped=stopped)


class Paired(BaseModel):
    rounds: int
    winner: list[Sample]
    baseline: list[Sample]
    gen_ratio: float = Field(description="median of the per-round ratios winner / baseline, generation")
    gen_ratio_range: tuple[float, float]
    prompt_ratio: float
    prompt_ratio_range: tuple[float, float]
    better: bool = Field(description="the winner's generation ratio is above 1 by more than the noise")


def paired(winner: Values, baseline: Values, measure: Callable[[Values], Sample], rounds: int, noise: float,
           goal: Goal = "generation", cancelled: Callable[[], bool] = lambda: False,
           say: Callable[[str], None] = lambda _: None) -> Paired:
    """Winner and baseline measured alternately (baseline first in odd rounds, second in even ones,
    so drift hits both alike); ratios per round, reported as the median and its range."""
    won: list[Sample] = []
    base: list[Sample] = []
    for i in range(rounds):
        if cancelled():
            break
        order = [(winner, won), (baseline, base)] if i % 2 else [(baseline, base), (winner, won)]
        for values, into in order:
            into.append(measure(values))
            say(f"paired round {i + 1}/{rounds}: {'winner' if into is won else '--fit'} "
                f"{into[-1].gen_tps:.2f} t/s generation, {into[-1].prompt_tps:.1f} prompt ({into[-1].seconds:.0f} s)")
    gen = [w.gen_tps / b.gen_tps for w, b in zip(won, base)]
    prompt = [w.prompt_tps / b.prompt_tps for w, b in zip(won, base)]
    if not gen:
        raise CandidateFailed("cancelled before the paired measurement")
    ratio = statistics.median(gen if goal != "prompt" else prompt)
    return Paired(rounds=len(gen), winner=won, baseline=base, gen_ratio=round(statistics.median(gen), 4),
                  gen_ratio_range=(round(min(gen), 4), round(max(gen), 4)),
                  prompt_ratio=round(statistics.median(prompt), 4),
                  prompt_ratio_range=(round(min(prompt), 4), round(max(prompt), 4)), better=ratio > 1 + noise)
