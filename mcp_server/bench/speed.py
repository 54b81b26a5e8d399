"""Speed benchmark: prompt processing and generation tokens/s as llama-server itself measures them.

For each prompt length x generation length, N repetitions of one streaming ``/completion``
request with an exact token-id prompt (so the length is exact), greedy sampling, ``ignore_eos``
(so every run generates exactly the asked number of tokens) and the prompt cache off (so every
run processes its whole prompt). Throughput comes from the server's ``timings`` (prompt_per_second,
predicted_per_second); time to first token is measured by the client from sending the request to
the first streamed token. Then 1..slots concurrent requests measure aggregate generation
throughput (all generated tokens / wall time from first send to last token).

Results go to ``<results root>/<profile>/speed-<timestamp>/`` (``speed.json`` and
``manifest.json``); ``update_profile`` writes the single-request generation speed into the
profile's SPEED through the profile editor.
"""

from __future__ import annotations

import json
import random
import statistics
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from pydantic import BaseModel, Field

from mcp_server.profiles.config import Config, load_config
from mcp_server.profiles import edits
from mcp_server.bench import BenchCancelled, BenchError, Progress, new_run_dir, now_iso, results_root, write_json
from mcp_server.bench.manifest import server_manifest
from mcp_server.bench.serving import OnInstance, Serving

DEFAULT_PROMPT_TOKENS = (512, 4096)
DEFAULT_GEN_TOKENS = (128,)
DEFAULT_REPS = 3
WARMUP_PROMPT = 32
WARMUP_GEN = 8

_WORDS = ("the model reads a long document about rivers mountains cities and the people who built bridges "
          "over water while engineers measured loads tides seasons trade routes harvests markets songs "
          "letters numbers tables maps weather kitchens gardens libraries music trains harbors lighthouses "
          "forests deserts islands valleys villages factories schools stories").split()


class Stat(BaseModel):
    median: float
    min: float
    max: float

    @classmethod
    def of(cls, values: list[float]) -> "Stat":
        return cls(median=round(statistics.median(values), 2), min=round(min(values), 2), max=round(max(values), 2))


class Rep(BaseModel):
    prompt_n: int
    prompt_ms: float
    prompt_per_second: float
    predicted_n: int
    predicted_ms: float
    predicted_per_second: float
    ttft_ms: float = Field(description="client-side: request sent to first streamed token")
    wall_ms: float


class SpeedCase(BaseModel):
    prompt_tokens: int
    gen_tokens: int
    reps: list[Rep]
    prompt_tps: Stat
    generation_tps: Stat
    ttft_ms: Stat


class ConcurrencyRep(BaseModel):
    wall_s: float
    generated_tokens: int
    aggregate_tps: float
    per_request_tps: list[float]


class ConcurrencyPoint(BaseModel):
    concurrency: int
    prompt_tokens: int
    gen_tokens: int
    reps: list[ConcurrencyRep]
    aggregate_tps: Stat
    per_request_tps: Stat
    speedup_vs_1: float | None = None


class SpeedRun(BaseModel):
    run_id: str
    run_dir: str
    profile: str
    started_at: str
    ended_at: str
    settings: dict[str, Any]
    cases: list[SpeedCase]
    concurrency: list[ConcurrencyPoint]
    skipped: list[str]
    generation_tps: float | None = Field(description="median single-request generation t/s (shortest prompt, "
                                                      "longest generation)")
    prompt_tps: float | None = Field(description="median prompt processing t/s at the longest prompt")
    speed_label: str | None
    profile_update: edits.EditResult | None = None


def speed_label(tps: float) -> str:
    """The SPEED text the original wrote by hand: '~147 t/s' (one decimal under 10 t/s)."""
    return f"~{tps:.1f} t/s" if tps < 10 else f"~{tps:.0f} t/s"


class Prompts:
    """Exact-length token-id prompts, each repetition a different slice (no shared prefix beyond BOS)."""

    def __init__(self, client: httpx.Client, url: str, longest: int) -> None:
        with_special = self._tokenize(client, url, "hello", True)
        plain = self._tokenize(client, url, "hello", False)
        self.prefix = with_special[: len(with_special) - len(plain)]
        rng = random.Random(1234)
        self.body: list[int] = []
        while len(self.body) < longest + 512:
            text = " ".join(rng.choice(_WORDS) for _ in range(2000))
            self.body += self._tokenize(client, url, text, False)

    @staticmethod
    def _tokenize(client: httpx.Client, url: str, text: str, special: bool) -> list[int]:
        resp = client.post(f"{url}/tokenize", json={"content": text, "add_special": special})
        resp.raise_for_status()
        return [t if isinstance(t, int) else t["id"] for t in resp.json()["tokens"]]

    def make(self, n: int, variant: int) -> list[int]:
        start = (variant * 37) % 500
        return self.prefix + self.body[start:start + max(1, n - len(self.prefix))]


def stream_completion(client: httpx.Client, url: str, prompt: list[int], gen: int) -> Rep:
    payload = {"prompt": prompt, "n_predict": gen, "temperature": 0, "ignore_eos": True, "cache_prompt": False,
               "stream": True}
    t0 = time.perf_counter()
    ttft = None
    final: dict[str, Any] | None = None
    # A fresh connection each time: llama-server closes a kept-alive connection after a long request,
    # and a client that reuses it gets "Server disconnected without sending a response".
    with client.stream("POST", f"{url}/completion", json=payload, headers={"Connection": "close"}) as resp:
        if resp.status_code != 200:
            resp.read()
            raise BenchError(f"{url}/completion answered HTTP {resp.status_code}: {resp.text[:300]}")
        for line in resp.iter_lines():
            if not line.startswith("data:"):
                continue
            chunk = json.loads(line[5:].strip())
            if ttft is None and (chunk.get("content") or chunk.get("tokens")):
                ttft = time.perf_counter() - t0
            if chunk.get("stop"):
                final = chunk
    wall = time.perf_counter() - t0
    if not final or "timings" not in final:
        raise BenchError(f"{url}/completion ended without timings")
    t = final["timings"]
    return Rep(prompt_n=t["prompt_n"], prompt_ms=round(t["prompt_ms"], 3),
               prompt_per_second=round(t["prompt_per_second"], 3),
               predicted_n=t["predicted_n"], predicted_ms=round(t["predicted_ms"], 3),
               predicted_per_second=round(t["predicted_per_second"], 3),
               ttft_ms=round((ttft if ttft is not None else wall) * 1000, 1), wall_ms=round(wall * 1000, 1))


def _concurrent(client: httpx.Client, url: str, prompts: list[list[int]], gen: int) -> ConcurrencyRep:
    reps: list[Rep | None] = [None] * len(prompts)
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(prompts) + 1)

    def one(i: int) -> None:
        barrier.wait()
        try:
            reps[i] = stream_completion(client, url, prompts[i], gen)
        except BaseException as exc:  # re-raised in the caller's thread
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(len(prompts))]
    for th in threads:
        th.start()
    barrier.wait()
    t0 = time.perf_counter()
    for th in threads:
        th.join()
    wall = time.perf_counter() - t0
    if errors:
        raise errors[0]
    done = [r for r in reps if r is not None]
    generated = sum(r.predicted_n for r in done)
    return ConcurrencyRep(wall_s=round(wall, 3), generated_tokens=generated, aggregate_tps=round(generated / wall, 2),
                          per_request_tps=[r.predicted_per_second for r in done])


def run_speed(config: Config, profile_id: str, *, prompt_tokens: tuple[int, ...] | list[int] = DEFAULT_PROMPT_TOKENS,
              gen_tokens: tuple[int, ...] | list[int] = DEFAULT_GEN_TOKENS, reps: int = DEFAULT_REPS,
              concurrency: list[int] | None = None, concurrency_prompt: int | None = None,
              concurrency_gen: int | None = None, results: str | Path | None = None, update_profile: bool = False,
              keep_running: bool = False, switch: bool = False, timeout_s: float | None = None,
              progress: Progress | None = None, cancel: threading.Event | None = None,
              say=lambda _m: None, on_instance: OnInstance | None = None) -> SpeedRun:  # type: ignore[no-untyped-def]
    """Measure a profile's speed; starts it if needed (and stops it after, unless it was running).
    ``on_instance`` hears which llama-server instance serves it (see serving.Serving)."""
    if reps < 1:
        raise BenchError("reps must be at least 1")
    prompt_tokens = sorted({int(p) for p in prompt_tokens})
    gen_tokens = sorted({int(g) for g in gen_tokens})
    if not prompt_tokens or not gen_tokens or min(prompt_tokens) < 1 or min(gen_tokens) < 1:
        raise BenchError("prompt and generation lengths must be positive whole numbers")
    root = results_root(results)
    started_at = now_iso()
    with Serving(config, profile_id, keep_running=keep_running, switch=switch, timeout_s=timeout_s, say=say,
                 on_instance=on_instance) as srv:
        record = srv.record
        assert record is not None
        run_dir = new_run_dir(root, profile_id, "speed")
        ctx = srv.n_ctx_per_slot
        slots = srv.slots
        levels = sorted({c for c in (concurrency or range(1, slots + 1)) if c >= 1})
        conc_prompt = concurrency_prompt or prompt_tokens[0]
        conc_gen = concurrency_gen or gen_tokens[-1]
        settings = {"prompt_tokens": prompt_tokens, "gen_tokens": gen_tokens, "reps": reps,
                    "concurrency": levels, "concurrency_prompt_tokens": conc_prompt,
                    "concurrency_gen_tokens": conc_gen, "server_slots": slots, "n_ctx_per_slot": ctx,
                    "sampling": "greedy (temperature 0), ignore_eos, cache_prompt off"}
        manifest: dict[str, Any] = {"run_id": run_dir.name, "kind": "speed", "profile": profile_id,
                                    "status": "running", "started_at": started_at, "settings": settings,
                                    **server_manifest(config, config.profile(profile_id), argv=record.argv,
                                                      env=record.env, props=srv.props, backend=record.backend)}
        write_json(run_dir / "manifest.json", manifest)
        skipped: list[str] = []
        plan = []
        for p in prompt_tokens:
            for g in gen_tokens:
                if ctx and p + g > ctx:
                    skipped.append(f"prompt {p} + generation {g} tokens exceeds the {ctx}-token context per slot")
                else:
                    plan.append((p, g))
        if ctx and conc_prompt + conc_gen > ctx:
            skipped.append(f"concurrency: prompt {conc_prompt} + generation {conc_gen} exceeds {ctx} tokens per slot")
            levels = []
        total = 1 + len(plan) * reps + len(levels) * reps
        done = 0

        def step(message: str) -> None:
            nonlocal done
            if cancel is not None and cancel.is_set():
                raise BenchCancelled("speed benchmark cancelled")
            done += 1
            if progress:
                progress(done, total, message)

        try:
            with httpx.Client(timeout=httpx.Timeout(3600.0, connect=10.0)) as client:
                prompts = Prompts(client, srv.url, max([p for p, _ in plan] + [conc_prompt]))
                stream_completion(client, srv.url, prompts.make(WARMUP_PROMPT, 999), WARMUP_GEN)
                step("warm-up")
                cases = []
                for p, g in plan:
                    measured = []
                    for r in range(reps):
                        measured.append(stream_completion(client, srv.url, prompts.make(p, r), g))
                        step(f"prompt {p} / gen {g}: rep {r + 1}/{reps}, "
                             f"{measured[-1].predicted_per_second:.1f} t/s")
                    cases.append(SpeedCase(prompt_tokens=p, gen_tokens=g, reps=measured,
                                           prompt_tps=Stat.of([m.prompt_per_second for m in measured]),
                                           generation_tps=Stat.of([m.predicted_per_second for m in measured]),
                                           ttft_ms=Stat.of([m.ttft_ms for m in measured])))
                points = []
                for c in levels:
                    measured_c = []
                    for r in range(reps):
                        batch = [prompts.make(conc_prompt, 100 + r * 16 + i) for i in range(c)]
                        measured_c.append(_concurrent(client, srv.url, batch, conc_gen))
                        step(f"{c} concurrent: rep {r + 1}/{reps}, {measured_c[-1].aggregate_tps:.1f} t/s aggregate")
                    points.append(ConcurrencyPoint(
                        concurrency=c, prompt_tokens=conc_prompt, gen_tokens=conc_gen, reps=measured_c,
                        aggregate_tps=Stat.of([m.aggregate_tps for m in measured_c]),
                        per_request_tps=Stat.of([t for m in measured_c for t in m.per_request_tps])))
        except httpx.HTTPError as exc:
            manifest.update(status="failed", ended_at=now_iso(), error=str(exc))
            write_json(run_dir / "manifest.json", manifest)
            raise BenchError(f"speed benchmark of {profile_id} failed talking to {srv.url}: {exc}") from exc
        except BaseException as exc:
            manifest.update(status="cancelled" if isinstance(exc, (BenchCancelled, KeyboardInterrupt)) else "failed",
                            ended_at=now_iso(), error=str(exc) or type(exc).__name__)
            write_json(run_dir / "manifest.json", manifest)
            raise
    base = next((pt for pt in points if pt.concurrency == 1), None)
    for pt in points:
        if base:
            pt.speedup_vs_1 = round(pt.aggregate_tps.median / base.aggregate_tps.median, 2)
    short = [c for c in cases if c.prompt_tokens == cases[0].prompt_tokens] if cases else []
    gen_tps = short[-1].generation_tps.median if short else None
    prompt_tps = max(cases, key=lambda c: (c.prompt_tokens, c.gen_tokens)).prompt_tps.median if cases else None
    label = speed_label(gen_tps) if gen_tps else None
    run = SpeedRun(run_id=run_dir.name, run_dir=str(run_dir), profile=profile_id, started_at=started_at,
                   ended_at=now_iso(), settings=settings, cases=cases, concurrency=points, skipped=skipped,
                   generation_tps=gen_tps, prompt_tps=prompt_tps, speed_label=label)
    if update_profile:
        if label is None:
            raise BenchError("no generation speed was measured, so SPEED was not changed")
        run.profile_update = edits.update_profile(load_config(config.path), profile_id, set={"SPEED": label})
    write_json(run_dir / "speed.json", run.model_dump(mode="json"))
    manifest.update(status="done", ended_at=run.ended_at,
                    summary={"generation_tps": gen_tps, "prompt_tps": prompt_tps, "speed_label": label,
                             "aggregate_tps": {str(p.concurrency): p.aggregate_tps.median for p in points},
                             "ttft_ms": {f"{c.prompt_tokens}/{c.gen_tokens}": c.ttft_ms.median for c in cases}})
    write_json(run_dir / "manifest.json", manifest)
    return run
