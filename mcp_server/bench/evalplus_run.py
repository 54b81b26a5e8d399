"""EvalPlus HumanEval+ on a local profile: bench profile, generation, post-processing, evaluation.

(Named ``evalplus_run`` so it never shadows the ``evalplus`` package.)

1. **Bench profile**: ``bench-<id>``, derived from the production profile as the original did:
   the benchmark context (10240 tokens per slot by default; HumanEval's worst case is about 8.4K),
   no server-side samplers (TEMP/TOP_P/TOP_K/MIN_P and sampler flags in EXTRA_ARGS are dropped, so
   the client's temperature 0 decides), ``--reasoning-format none`` so reasoning stays in
   ``content`` where the post-processor strips it, no DESCRIPTION/SPEED. Created on request.
2. **Generation**: llama-pilot's own client posts each problem to ``/v1/chat/completions`` with
   evalplus's instruction and system prompt (or bench-client.conf's), ``temperature 0`` and
   bench-client.conf's ``MAX_TOKENS``, with as many requests in flight as the server has slots.
   Each answer is appended to ``raw.jsonl`` the moment it arrives, so an interrupted run resumes
   where it stopped (``--resume``) without generating those problems again.
3. **Post-processing** (:mod:`.postprocess`): reasoning stripped, code block taken, evalplus's
   sanitiser; ``samples.jsonl`` is what evalplus evaluates, ``postprocess.jsonl`` says what was
   done to each answer, ``raw.jsonl`` keeps the answers untouched.
4. **Evaluation**: ``evalplus.evaluate`` in a subprocess (own process group, its own per-test time
   limits and an overall timeout), on exactly this run's problems via ``HUMANEVAL_OVERRIDE_PATH``.
   It writes ``samples_eval_results.json``; the scores come from that file.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from pydantic import BaseModel

from mcp_server.profiles.config import BENCH_PREFIX, Config, Profile, load_config, split_extra_args
from mcp_server.profiles.edits import EditResult, create_profile
from mcp_server.bench import (BenchCancelled, BenchError, Progress, child_env, list_runs, new_run_dir, now_iso, read_json,
               read_jsonl, results_root, write_json)
from mcp_server.bench.clientconf import ClientSettings, client_settings
from mcp_server.bench.dataset import DatasetInfo, evalplus_cache_home, load_problems, locate_dataset, select, write_subset
from mcp_server.bench.manifest import load_avg, server_manifest
from mcp_server.bench.postprocess import postprocess
from mcp_server.bench.serving import OnInstance, Serving

DEFAULT_CTX_PER_SLOT = 10240
INSTRUCTION = ("Please provide a self-contained Python script that solves the following problem in a "
               "markdown code block:")  # evalplus.codegen's instruction_prefix, sent as evalplus does
SAMPLER_KEYS = ("TEMP", "TOP_P", "TOP_K", "MIN_P")
# llama-server sampler flags that take a value; dropped from a bench profile's EXTRA_ARGS.
SAMPLER_FLAGS = {
    "--temp", "--temperature", "--top-p", "--top-k", "--min-p", "--typical", "--typical-p", "--top-nsigma",
    "--repeat-penalty", "--repeat-last-n", "--presence-penalty", "--frequency-penalty", "--dynatemp-range",
    "--dynatemp-exp", "--mirostat", "--mirostat-lr", "--mirostat-ent", "--xtc-probability", "--xtc-threshold",
    "--dry-multiplier", "--dry-base", "--dry-allowed-length", "--dry-penalty-last-n", "--dry-sequence-breaker",
    "--samplers", "--sampling-seq", "--sampler-seq", "--seed", "-s",
}
# Flags a bench profile decides itself (context, slots, reasoning format); dropped from EXTRA_ARGS.
OWN_FLAGS = {"-c", "--ctx-size", "-np", "--parallel", "--reasoning-format"}
SAMPLES = "samples.jsonl"
RAW = "raw.jsonl"
EVAL_RESULTS = "samples_eval_results.json"


# --------------------------------------------------------------------------------------------
# bench profiles


def bench_id_for(profile_id: str) -> str:
    return profile_id if profile_id.startswith(BENCH_PREFIX) else BENCH_PREFIX + profile_id


def _parallel_of(profile: Profile, extra: list[str]) -> int | None:
    for i, arg in enumerate(extra):
        if arg in ("-np", "--parallel") and i + 1 < len(extra) and extra[i + 1].lstrip("-").isdigit():
            return int(extra[i + 1])
        if arg.startswith("--parallel="):
            return int(arg.split("=", 1)[1])
    raw = profile.get("PARALLEL")
    return int(raw) if raw and raw.isdigit() else None


def _strip_flags(args: list[str], flags: set[str]) -> list[str]:
    out: list[str] = []
    skip = False
    for arg in args:
        if skip:
            skip = False
            continue
        name = arg.split("=", 1)[0]
        if name in flags:
            skip = "=" not in arg
            continue
        out.append(arg)
    return out


def bench_profile_values(profile: Profile, *, ctx_per_slot: int = DEFAULT_CTX_PER_SLOT,
                         parallel: int | None = None) -> dict[str, str]:
    """The keys of ``bench-<id>`` for a production profile (see the module docstring)."""
    extra = split_extra_args(profile.values.get("EXTRA_ARGS", ""))
    slots = parallel or _parallel_of(profile, extra) or 1
    values: dict[str, str] = {"NAME": f"{profile.name} (benchmark)"}
    for key, value in profile.values.items():
        if key in ("NAME", "DESCRIPTION", "SPEED", "CTX_SIZE", "PARALLEL", "EXTRA_ARGS") or key in SAMPLER_KEYS:
            continue
        values[key] = value
    values["CTX_SIZE"] = str(ctx_per_slot * slots)
    values["PARALLEL"] = str(slots)
    kept = _strip_flags(_strip_flags(extra, SAMPLER_FLAGS), OWN_FLAGS)
    values["EXTRA_ARGS"] = shlex.join([*kept, "--reasoning-format", "none"])
    return values


def create_bench_profile(config: Config, profile_id: str, *, ctx_per_slot: int = DEFAULT_CTX_PER_SLOT,
                         parallel: int | None = None, dry_run: bool = False) -> EditResult:
    """Append ``[bench-<id>]`` derived from ``profile_id`` to models.conf."""
    if profile_id.startswith(BENCH_PREFIX):
        raise BenchError(f"{profile_id} is already a bench profile; give its production profile")
    production = config.profile(profile_id)
    values = bench_profile_values(production, ctx_per_slot=ctx_per_slot, parallel=parallel)
    slots = int(values["PARALLEL"])
    comments = [f"Benchmark twin of [{profile_id}], made by create_bench_profile:",
                f"{ctx_per_slot} tokens of context per slot x {slots} slot(s), no server-side samplers (the client",
                "sends temperature 0), reasoning left in the content for the post-processor."]
    return create_profile(config, bench_id_for(profile_id), values, comments=comments, dry_run=dry_run)


def _no_twin(target: str, profile_id: str) -> str:
    return (f"{target} does not exist. Create it first with create_bench_profile(profile={profile_id!r}) "
            f"(CLI: create-bench-profile {profile_id}), or give an existing bench- profile.")


def resolve_bench_profile(config: Config, profile_id: str, *, create: bool = False,
                          ctx_per_slot: int = DEFAULT_CTX_PER_SLOT) -> tuple[Config, str, EditResult | None]:
    """The bench profile to run for ``profile_id`` (itself when it is one), created if asked."""
    target = bench_id_for(profile_id)
    if target in config.profiles:
        return config, target, None
    if profile_id.startswith(BENCH_PREFIX):
        config.profile(profile_id)  # raises ProfileNotFound with the known ids
    config.profile(profile_id)
    if not create:
        raise BenchError(_no_twin(target, profile_id))
    edit = create_bench_profile(config, profile_id, ctx_per_slot=ctx_per_slot)
    return load_config(config.path), target, edit


# --------------------------------------------------------------------------------------------
# results


class Scores(BaseModel):
    problems: int
    base_passed: int
    plus_passed: int
    humaneval: float  # pass@1 in percent, base tests
    humaneval_plus: float  # pass@1 in percent, base + plus tests (evalplus's definition)


class EvalplusRun(BaseModel):
    run_id: str
    run_dir: str
    profile: str
    status: str
    problems: int
    generated_now: int
    resumed: bool
    dataset: DatasetInfo
    scores: Scores | None
    evalplus_printed: dict[str, float] | None
    generation_s: float
    postprocess_s: float
    evaluation_s: float | None
    concurrency: int
    max_tokens: int


def scores_from_eval_results(path: Path) -> Scores:
    """pass@1 from evalplus's own result file: per-task statuses (evalplus 0.3.x writes no totals;
    a file with ``pass_at_k`` totals, as other versions write, is read from those)."""
    data = read_json(path)
    evals = data.get("eval") or {}
    n = len(evals)
    if not n:
        raise BenchError(f"{path} holds no evaluated tasks")
    base = sum(1 for rows in evals.values() if rows and rows[0].get("base_status") == "pass")
    plus = sum(1 for rows in evals.values()
               if rows and rows[0].get("base_status") == "pass" and rows[0].get("plus_status") == "pass")
    he, hep = 100.0 * base / n, 100.0 * plus / n
    totals = data.get("pass_at_k") or {}
    if totals.get("base", {}).get("pass@1") is not None:
        he = 100.0 * float(totals["base"]["pass@1"])
    if totals.get("plus", {}).get("pass@1") is not None:
        hep = 100.0 * float(totals["plus"]["pass@1"])
    return Scores(problems=n, base_passed=base, plus_passed=plus, humaneval=round(he, 1), humaneval_plus=round(hep, 1))


_PRINTED_RE = re.compile(r"humaneval(\+?) \((?:base|base \+ extra) tests\)\s*\n\s*pass@1:\s*([0-9.]+)")


def printed_pass_at_1(log_text: str) -> dict[str, float]:
    """The pass@1 lines evalplus printed (a cross-check of the result file)."""
    found = {}
    for plus, value in _PRINTED_RE.findall(log_text):
        found["humaneval_plus" if plus else "humaneval"] = round(100.0 * float(value), 1)
    return found


# --------------------------------------------------------------------------------------------
# generation


class _Transient(Exception):
    """The server did not answer (connection refused, reset, 5xx): stop, keep what is done."""


def _messages(problem: dict[str, Any], settings: ClientSettings) -> list[dict[str, str]]:
    user = INSTRUCTION + f"\n```python\n{problem['prompt'].strip()}\n```"
    messages = [{"role": "user", "content": user}]
    if settings.system_prompt:
        messages.insert(0, {"role": "system", "content": settings.system_prompt})
    return messages


def _generate_one(client: httpx.Client, url: str, model: str, problem: dict[str, Any],
                  settings: ClientSettings, max_tokens: int, retries: int = 2,
                  cancel: threading.Event | None = None) -> dict[str, Any]:
    payload: dict[str, Any] = {"model": model, "messages": _messages(problem, settings), "temperature": 0,
                               "max_tokens": max_tokens, "stream": False}
    if settings.reasoning_effort:
        payload["reasoning_effort"] = settings.reasoning_effort
        payload["chat_template_kwargs"] = {"reasoning_effort": settings.reasoning_effort}
    last: str = ""
    for attempt in range(retries + 1):
        t0 = time.perf_counter()
        started = now_iso()
        try:
            # A fresh connection per problem: llama-server closes a kept-alive connection after a long
            # request, and reusing it fails with "Server disconnected without sending a response".
            resp = client.post(f"{url}/v1/chat/completions", json=payload, timeout=settings.timeout_s,
                               headers={"Connection": "close"})
        except httpx.TimeoutException as exc:
            last = f"timeout after {settings.timeout_s:.0f} s ({type(exc).__name__})"
        except httpx.TransportError as exc:
            last = f"{type(exc).__name__}: {exc}"
        else:
            elapsed = round(time.perf_counter() - t0, 3)
            if resp.status_code == 200:
                body = resp.json()
                choice = (body.get("choices") or [{}])[0]
                message = choice.get("message") or {}
                return {"task_id": problem["task_id"], "content": message.get("content") or "",
                        "reasoning_content": message.get("reasoning_content"),
                        "finish_reason": choice.get("finish_reason"), "usage": body.get("usage"),
                        "timings": body.get("timings"), "elapsed_s": elapsed, "started_at": started,
                        "attempts": attempt + 1, "error": None}
            detail = resp.text[:500]
            if resp.status_code < 500:  # the request itself is wrong (e.g. longer than the context): a failed sample
                return {"task_id": problem["task_id"], "content": "", "reasoning_content": None,
                        "finish_reason": None, "usage": None, "timings": None, "elapsed_s": elapsed,
                        "started_at": started, "attempts": attempt + 1,
                        "error": f"HTTP {resp.status_code}: {detail}"}
            last = f"HTTP {resp.status_code}: {detail}"
        if cancel is not None and cancel.is_set():
            break  # the run was cancelled: no retries against a server that is being stopped
        if attempt < retries:
            time.sleep(2.0 * (attempt + 1))
    raise _Transient(f"{problem['task_id']}: {last}")


def _generate(url: str, model: str, problems: dict[str, dict[str, Any]], pending: list[str], raw_path: Path,
              settings: ClientSettings, max_tokens: int, concurrency: int, done_before: int, total: int,
              progress: Progress | None, cancel: threading.Event | None) -> int:
    """Generate ``pending`` with ``concurrency`` requests in flight; each answer is appended to
    raw.jsonl as it arrives. Returns how many were generated."""
    import json

    lock = threading.Lock()
    generated = 0
    pool = cf.ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="codegen")
    client = httpx.Client(timeout=httpx.Timeout(settings.timeout_s, connect=10.0),
                          limits=httpx.Limits(max_connections=concurrency + 2))
    futures = {pool.submit(_generate_one, client, url, model, problems[t], settings, max_tokens, 2, cancel): t
               for t in pending}
    failure: BaseException | None = None
    try:
        remaining = set(futures)
        while remaining:
            if cancel is not None and cancel.is_set():
                raise BenchCancelled("cancelled")
            finished, remaining = cf.wait(remaining, timeout=0.5, return_when=cf.FIRST_COMPLETED)
            for future in finished:
                try:
                    record = future.result()
                except _Transient as exc:
                    failure = exc
                    continue
                with lock, open(raw_path, "a", encoding="utf-8") as fh:
                    fh.write(json.dumps(record) + "\n")
                    fh.flush()
                    os.fsync(fh.fileno())
                generated += 1
                if progress:
                    progress(done_before + generated, total, f"generated {record['task_id']}"
                             + (f" ({record['error']})" if record["error"] else ""))
            if failure is not None:
                raise BenchError(f"the server stopped answering ({failure}); {done_before + generated} of {total} "
                                 "problems are kept, resume the run to generate the rest")
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        if cancel is None or not cancel.is_set():
            client.close()  # with requests still in flight (cancel), leave them to die with the process
    return generated


# --------------------------------------------------------------------------------------------
# evaluation


def _evaluate(run_dir: Path, *, parallel: int, timeout_s: float, min_time_limit: float,
              gt_time_limit_factor: float, cancel: threading.Event | None) -> float:
    """Run evalplus.evaluate in its own process group; returns its wall time."""
    results = run_dir / EVAL_RESULTS
    if results.exists():
        results.unlink()  # derived from samples.jsonl, which was just rewritten
    env = child_env(HUMANEVAL_OVERRIDE_PATH=str(run_dir / "dataset.jsonl"), XDG_CACHE_HOME=str(evalplus_cache_home()),
                    TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    argv = [sys.executable, "-m", "mcp_server.bench.evalplus_run", "evaluate", str(run_dir / SAMPLES),
            "--parallel", str(parallel), "--min-time-limit", str(min_time_limit),
            "--gt-time-limit-factor", str(gt_time_limit_factor)]
    t0 = time.perf_counter()
    with open(run_dir / "evaluation.log", "ab") as log:
        log.write(f"$ {shlex.join(argv)}\n".encode())
        log.flush()
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        try:
            while proc.poll() is None:
                if cancel is not None and cancel.is_set():
                    raise BenchCancelled("cancelled during evaluation")
                if time.perf_counter() - t0 > timeout_s:
                    raise BenchError(f"evaluation did not finish within {timeout_s:.0f} s; see "
                                     f"{run_dir / 'evaluation.log'} (raise --eval-timeout)")
                time.sleep(0.2)
        finally:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except OSError:
                    pass
                proc.wait()
    wall = time.perf_counter() - t0
    if proc.returncode != 0 or not results.is_file():
        tail = (run_dir / "evaluation.log").read_text(errors="replace").splitlines()[-15:]
        raise BenchError(f"evalplus.evaluate failed (exit {proc.returncode}); last lines of "
                         f"{run_dir / 'evaluation.log'}:\n" + "\n".join(tail))
    return wall


def _evaluate_main(args: argparse.Namespace) -> None:
    """Subprocess entry: evalplus's evaluate(), then exit at once (its watchdog thread is not a daemon)."""
    from evalplus.evaluate import evaluate

    evaluate(dataset="humaneval", samples=args.samples, parallel=args.parallel, min_time_limit=args.min_time_limit,
             gt_time_limit_factor=args.gt_time_limit_factor)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


# --------------------------------------------------------------------------------------------
# the run


def _evalplus_version() -> str | None:
    try:
        from importlib.metadata import version

        return version("evalplus")
    except Exception:
        return None


def _find_run(root: Path, profile: str, resume: str | bool) -> Path:
    if isinstance(resume, str) and resume not in ("", "latest"):
        run_dir = root / profile / resume
        if not (run_dir / "manifest.json").is_file():
            raise BenchError(f"no run {resume} of {profile} under {root}")
        return run_dir
    unfinished = [m for m in list_runs(root, profile, "evalplus") if m.get("status") != "done"]
    if not unfinished:
        raise BenchError(f"no unfinished evalplus run of {profile} under {root} to resume")
    return Path(unfinished[0]["run_dir"])


def preflight(config: Config, profile_id: str, *, create_bench: bool = False, resume: str | bool | None = None,
              dataset: str | os.PathLike[str] | None = None, mini: bool = False, **_ignored: Any) -> None:
    """The checks a background job would otherwise fail on minutes later: evalplus installed, the
    bench profile there (or to be created), the dataset found."""
    config.profile(profile_id)
    if not resume and bench_id_for(profile_id) not in config.profiles and not create_bench:
        raise BenchError(_no_twin(bench_id_for(profile_id), profile_id))
    try:
        import evalplus  # noqa: F401
    except ImportError:
        raise BenchError("evalplus is not installed: pip install 'llama-pilot[bench]' "
                         "(or pip install evalplus)") from None
    if not resume:
        locate_dataset(dataset, mini=mini)


def _close_dead_sessions(manifest: dict[str, Any], raw: list[dict[str, Any]]) -> None:
    """A generation session whose process was killed never wrote its end: reconstruct its wall time
    from the answers that arrived during it (each has its start time and duration)."""
    import datetime as dt

    sessions = manifest.get("sessions") or []
    for i, session in enumerate(sessions):
        if "wall_s" in session or not session.get("started_at"):
            continue
        start = dt.datetime.fromisoformat(session["started_at"])
        end_limit = dt.datetime.fromisoformat(sessions[i + 1]["started_at"]) if i + 1 < len(sessions) else None
        ends, count = [], 0
        for record in raw:
            if not record.get("started_at"):
                continue
            began = dt.datetime.fromisoformat(record["started_at"])
            if began >= start and (end_limit is None or began < end_limit):
                ends.append(began + dt.timedelta(seconds=float(record.get("elapsed_s") or 0)))
                count += 1
        last = max(ends) if ends else start
        session.update(wall_s=round((last - start).total_seconds(), 3), generated=count,
                       ended_at=last.isoformat(timespec="seconds"),
                       note="the process was killed; wall time reconstructed from the answers that arrived")


def run_evalplus(config: Config, profile_id: str, *, dataset: str | os.PathLike[str] | None = None,
                 mini: bool = False, limit: int | None = None, tasks: list[str] | str | None = None,
                 results: str | os.PathLike[str] | None = None, resume: str | bool | None = None,
                 concurrency: int | None = None, max_tokens: int | None = None,
                 client_conf: str | os.PathLike[str] | None = None, create_bench: bool = False,
                 keep_running: bool = False, switch: bool = False, start_timeout_s: float | None = None,
                 eval_parallel: int | None = None, eval_timeout_s: float | None = None,
                 min_time_limit: float = 1.0, gt_time_limit_factor: float = 4.0,
                 progress: Progress | None = None, cancel: threading.Event | None = None,
                 say=lambda _m: None, on_instance: OnInstance | None = None) -> EvalplusRun:  # type: ignore[no-untyped-def]
    """Run (or resume) HumanEval+ on a bench profile; see the module docstring. ``on_instance`` hears
    which llama-server instance serves the run (see serving.Serving)."""
    try:
        import evalplus  # noqa: F401
    except ImportError:
        raise BenchError("evalplus is not installed: pip install 'llama-pilot[bench]' "
                         "(or pip install evalplus)") from None
    root = results_root(results)
    if resume:
        profile_guess = bench_id_for(profile_id)
        run_dir = _find_run(root, profile_guess, resume)
        manifest = read_json(run_dir / "manifest.json")
        if manifest.get("status") == "done":
            raise BenchError(f"run {run_dir.name} is already complete; start a new run instead")
        bench_id = manifest["profile"]
        config.profile(bench_id)
        problems, _ = load_problems(run_dir / "dataset.jsonl")
        task_ids = list(problems)
        info = DatasetInfo(**manifest["dataset"])
        settings = ClientSettings(**manifest["client"])
        max_tokens = int(manifest["settings"]["max_tokens"])
        say(f"resuming {run_dir}")
    else:
        config, bench_id, created = resolve_bench_profile(config, profile_id, create=create_bench)
        if created:
            say(f"created [{bench_id}] in {config.path}")
        source = locate_dataset(dataset, mini=mini)
        all_problems, info = load_problems(source)
        task_ids = select(all_problems, limit=limit, tasks=tasks)
        problems = {t: all_problems[t] for t in task_ids}
        settings = client_settings(config, bench_id, client_conf)
        max_tokens = int(max_tokens or settings.max_tokens)
        run_dir = new_run_dir(root, bench_id, "evalplus")
        write_subset(problems, task_ids, run_dir / "dataset.jsonl")
        manifest = {"run_id": run_dir.name, "kind": "evalplus", "profile": bench_id, "status": "created",
                    "started_at": now_iso(), "dataset": info.model_dump(),
                    "selection": {"problems": len(task_ids), "of": info.problems, "limit": limit,
                                  "tasks": tasks if isinstance(tasks, (str, type(None))) else ",".join(tasks)},
                    "client": settings.model_dump(),
                    "settings": {"max_tokens": max_tokens, "temperature": 0, "instruction": INSTRUCTION,
                                 "system_prompt": settings.system_prompt,
                                 "reasoning_effort": settings.reasoning_effort},
                    "evalplus_version": _evalplus_version(), "sessions": [], "timings": {}}
        write_json(run_dir / "manifest.json", manifest)
        say(f"run folder {run_dir}")
    raw_path = run_dir / RAW
    _close_dead_sessions(manifest, read_jsonl(raw_path))
    done_ids = {r["task_id"] for r in read_jsonl(raw_path) if r.get("task_id") in problems}
    pending = [t for t in task_ids if t not in done_ids]
    resumed = bool(resume)
    total = len(task_ids)
    generated = 0
    used_concurrency = concurrency or 0

    def set_status(status: str, **extra: Any) -> None:
        manifest.update(status=status, **extra)
        write_json(run_dir / "manifest.json", manifest)

    try:
        if pending:
            with Serving(config, bench_id, keep_running=keep_running, switch=switch, timeout_s=start_timeout_s,
                         say=say, on_instance=on_instance) as srv:
                record = srv.record
                assert record is not None
                used_concurrency = max(1, concurrency or srv.slots)
                session = {"started_at": now_iso(), "concurrency": used_concurrency, "pending": len(pending),
                           **server_manifest(config, config.profile(bench_id), argv=record.argv, env=record.env,
                                             props=srv.props, backend=record.backend)}
                for key in ("profile_settings", "model", "engine", "backend", "argv", "env", "server", "gpus", "cpu",
                            "host", "llama_pilot"):
                    manifest.setdefault(key, session[key])
                manifest["sessions"].append(session)
                set_status("generating")
                say(f"generating {len(pending)} of {total} problems, {used_concurrency} in flight, "
                    f"max_tokens {max_tokens}")
                if progress:
                    progress(len(done_ids), total, "generating")
                t0 = time.perf_counter()
                try:
                    generated = _generate(srv.url, bench_id, problems, pending, raw_path, settings, max_tokens,
                                          used_concurrency, len(done_ids), total, progress, cancel)
                finally:
                    wall = time.perf_counter() - t0
                    session.update(ended_at=now_iso(), wall_s=round(wall, 3), load_avg_at_end=load_avg(),
                                   generated=len({r["task_id"] for r in read_jsonl(raw_path)}) - len(done_ids))
                    write_json(run_dir / "manifest.json", manifest)
        generation_s = round(sum(s.get("wall_s", 0.0) for s in manifest["sessions"]), 3)
        if used_concurrency == 0 and manifest["sessions"]:
            used_concurrency = manifest["sessions"][-1]["concurrency"]

        # post-process every answer, in dataset order
        set_status("postprocessing")
        t0 = time.perf_counter()
        raw_by_task = {r["task_id"]: r for r in read_jsonl(raw_path)}
        missing = [t for t in task_ids if t not in raw_by_task]
        if missing:
            raise BenchError(f"{len(missing)} problems have no answer ({missing[0]}, ...); resume the run")
        import json

        with open(run_dir / SAMPLES, "w", encoding="utf-8") as samples, \
                open(run_dir / "postprocess.jsonl", "w", encoding="utf-8") as notes:
            for task_id in task_ids:
                result = postprocess(raw_by_task[task_id]["content"], problems[task_id])
                samples.write(json.dumps({"task_id": task_id, "solution": result.solution}) + "\n")
                notes.write(json.dumps({"task_id": task_id, **result.model_dump(exclude={"solution"}),
                                        "error": raw_by_task[task_id].get("error")}) + "\n")
        postprocess_s = round(time.perf_counter() - t0, 3)
        if progress:
            progress(total, total, "evaluating")

        set_status("evaluating")
        say(f"evaluating {total} problems with evalplus")
        evaluation_s = round(_evaluate(
            run_dir, parallel=eval_parallel or max(1, os.cpu_count() or 1),
            timeout_s=eval_timeout_s or (300.0 + 10.0 * total), min_time_limit=min_time_limit,
            gt_time_limit_factor=gt_time_limit_factor, cancel=cancel), 3)
        scores = scores_from_eval_results(run_dir / EVAL_RESULTS)
        printed = printed_pass_at_1((run_dir / "evaluation.log").read_text(errors="replace")) or None
        manifest["timings"] = {"generation_s": generation_s, "postprocess_s": postprocess_s,
                               "evaluation_s": evaluation_s, "load_avg_after_evaluation": load_avg()}
        set_status("done", ended_at=now_iso(), scores=scores.model_dump(), evalplus_printed=printed,
                   eval_results=EVAL_RESULTS)
    except (BenchCancelled, KeyboardInterrupt) as exc:
        set_status("cancelled", error=str(exc) or "interrupted", ended_at=now_iso())
        raise BenchCancelled(f"run {run_dir.name} of {bench_id} stopped; what was generated is kept: "
                             f"`llama-pilot bench evalplus {bench_id} --resume {run_dir.name}`") from exc
    except BaseException as exc:
        set_status("failed", error=str(exc) or type(exc).__name__, ended_at=now_iso())
        raise
    return EvalplusRun(run_id=run_dir.name, run_dir=str(run_dir), profile=bench_id, status="done", problems=total,
                       generated_now=generated, resumed=resumed, dataset=info, scores=scores,
                       evalplus_printed=printed, generation_s=generation_s, postprocess_s=postprocess_s,
                       evaluation_s=evaluation_s, concurrency=used_concurrency, max_tokens=max_tokens)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mcp_server.bench.evalplus_run")
    sub = parser.add_subparsers(dest="command", required=True)
    ev = sub.add_parser("evaluate", help="run evalplus.evaluate on a samples file (used by the pipeline)")
    ev.add_argument("samples")
    ev.add_argument("--parallel", type=int, default=1)
    ev.add_argument("--min-time-limit", type=float, default=1.0)
    ev.add_argument("--gt-time-limit-factor", type=float, default=4.0)
    args = parser.parse_args(argv)
    if args.command == "evaluate":
        _evaluate_main(args)


if __name__ == "__main__":
    main()
