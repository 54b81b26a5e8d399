"""Background jobs: benchmarks and downloads, as detached processes whose state lives in a JSON file.

The MCP server may end with the conversation, so a benchmark or a 60 GB download cannot live inside
it. ``start_job`` writes ``$LLAMA_PILOT_HOME/jobs/<id>.json`` and launches ``python -m
mcp_server.jobs run <file>`` in a new session (its own process group); that runner updates the file
with status and progress (problems, or bytes, done / total) and the result. ``get_job`` reads the
file (and notices a runner that died without reporting); ``cancel_job`` sends SIGTERM to the
runner's process group: the runner stops, marks the job ``cancelled``, and what it did is kept (a
benchmark run resumes, a download continues from its partial files).

The runner records in the job file which llama-server instance serves a benchmark, and whether
the job started it, as soon as it knows (for a start: right after the launch, before the model has
loaded). A runner that ends normally stops what it started itself. One killed first (SIGKILL after
cancel_job's timeout) cannot, so cancel_job stops it afterwards: only that instance, never a model
that was running before the job. ``still_running`` says what of the job's model still runs.

Only one benchmark or tune job runs at a time (two would measure each other); a second is refused. Downloads
run beside benchmarks and beside each other, but one quant set is downloaded by one job at a time.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Literal

import psutil
from pydantic import BaseModel, Field

from mcp_server import paths
from mcp_server.errors import LlamaPilotError
from mcp_server.files import exclusive_lock
from mcp_server.bench import child_env, now_iso, read_json, write_json

JobStatus = Literal["queued", "running", "done", "failed", "cancelled"]
LIVE = ("queued", "running")


class JobError(LlamaPilotError):
    code = "job"


class JobProgress(BaseModel):
    done: int = 0
    total: int = 0
    fraction: float = 0.0
    message: str = ""


CANCELLED_CODES = ("bench-cancelled", "download-cancelled", "tune-cancelled")
JobKind = Literal["evalplus", "speed", "download", "tune"]
BENCHMARKS = ("evalplus", "speed", "tune")  # they measure speed: two at once would measure each other


class Job(BaseModel):
    id: str
    kind: JobKind
    profile: str | None = Field(default=None, description="the profile benchmarked; None for a download")
    params: dict[str, Any]
    config_path: str | None
    status: JobStatus
    pid: int | None = None
    pid_create_time: float | None = None
    created_at: str
    started_at: str | None = None
    ended_at: str | None = None
    progress: JobProgress = Field(default_factory=JobProgress)
    messages: list[str] = Field(default_factory=list, description="the runner's last status lines")
    result: dict[str, Any] | None = None
    error: str | None = None
    log_path: str
    serving_profile: str | None = Field(default=None, description=(
        "the profile whose llama-server the benchmark uses (EvalPlus: the bench- twin); None until known"))
    serving_instance: str | None = Field(default=None, description=(
        "that llama-server's instance id (as in status), recorded as soon as it is known"))
    started_instance: str | None = Field(default=None, description=(
        "the instance id when this job started the model itself (then the job, or cancel_job, stops it); "
        "None when the model was already running before the job, which the job never stops"))
    still_running: list[str] = Field(default_factory=list, description=(
        "profiles of the job's llama-server still running when the job ended or was cancelled; empty when "
        "nothing is left; a model that ran before the job is listed here and left running"))


def jobs_dir() -> Path:
    path = paths.home() / "jobs"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _path(job_id: str) -> Path:
    if not job_id or "/" in job_id or job_id.startswith("."):
        raise JobError(f"no job {job_id!r}")
    return jobs_dir() / f"{job_id}.json"


def _pid_path(job_id: str) -> Path:
    return jobs_dir() / f"{job_id}.pid"


def _save(job: Job) -> None:
    write_json(_path(job.id), job.model_dump(mode="json"))


def _load(job_id: str) -> Job:
    try:
        return Job(**read_json(_path(job_id)))
    except FileNotFoundError:
        known = ", ".join(j.id for j in _recent(5)) or "none"
        raise JobError(f"no job {job_id!r} (recent jobs: {known})") from None


def _pid_of(job: Job) -> int | None:
    if job.pid:
        return job.pid
    try:
        return int(_pid_path(job.id).read_text())
    except (OSError, ValueError):
        return None


def _alive(job: Job) -> bool:
    pid = _pid_of(job)
    if not pid:
        return False
    try:
        proc = psutil.Process(pid)
        if job.pid_create_time and abs(proc.create_time() - job.pid_create_time) > 1.0:
            return False  # the pid was reused
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _reconcile(job: Job) -> Job:
    """A live-looking job whose runner is gone ended without reporting: mark it failed."""
    if job.status in LIVE and _pid_of(job) and not _alive(job):
        fresh = _load(job.id)  # the runner may have written its last state just now
        if fresh.status in LIVE:
            fresh.status = "failed"
            fresh.ended_at = now_iso()
            fresh.error = fresh.error or (f"the job's process (pid {_pid_of(job)}) ended without reporting; "
                                          f"see {job.log_path}")
            # The runner's own cleanup did not run. get_job and list_jobs only read (a read-only
            # tool must not stop models), so this says what is left and how to stop it.
            live = _check_serving(fresh)
            if fresh.started_instance and fresh.started_instance in live:
                fresh.error += (f"; the model it started, {fresh.serving_profile} (instance {fresh.started_instance}), "
                                f"is still running: cancel_job {fresh.id} stops it")
            _save(fresh)
        return fresh
    return job


def _check_serving(job: Job) -> set[str]:
    """Set ``job.still_running`` from what runs now; returns the job's instance ids that are live.

    Only the job's own serving instance counts: whatever else runs is not the job's business."""
    from mcp_server.profiles.config import load_config
    from mcp_server.runtime.lifecycle import Runtime
    from mcp_server.runtime.registry import LIVE as INSTANCE_LIVE

    if not job.serving_instance:
        job.still_running = []
        return set()
    try:
        views = Runtime(load_config(job.config_path)).status().instances
    except LlamaPilotError as exc:  # e.g. models.conf unreadable now: say so, keep the last answer
        job.messages = [*job.messages[-19:], f"could not check whether {job.serving_profile} still runs: {exc}"]
        return set()
    live = {v.id for v in views if v.id == job.serving_instance and v.status in INSTANCE_LIVE}
    job.still_running = [job.serving_profile or job.profile] if live else []
    return live


def _stop_started(job: Job) -> None:
    """Stop the instance the job started itself, if it still runs (its runner is gone), then set
    ``still_running``. A model the job did not start is never stopped."""
    from mcp_server.profiles.config import load_config
    from mcp_server.runtime.lifecycle import NotRunning, Runtime

    live = _check_serving(job)
    target = job.started_instance
    if not target or target not in live:
        return
    try:
        Runtime(load_config(job.config_path)).stop_model(target, grace_s=5)
        note = f"stopped {job.serving_profile} (instance {target}), which this job started"
    except NotRunning:
        note = f"{job.serving_profile} (instance {target}) had ended meanwhile"
    except LlamaPilotError as exc:
        note = f"could not stop {job.serving_profile} (instance {target}): {exc}"
    job.messages = [*job.messages[-19:], note]
    _check_serving(job)


def get_job(job_id: str) -> Job:
    return _reconcile(_load(job_id))


class JobList(BaseModel):
    jobs: list[Job]


def list_jobs(limit: int = 20) -> JobList:
    """Recent background benchmark jobs, newest first."""
    return JobList(jobs=_recent(limit))


def _recent(limit: int) -> list[Job]:
    jobs = []
    for path in sorted(jobs_dir().glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True)[:limit]:
        try:
            jobs.append(_reconcile(Job(**read_json(path))))
        except (OSError, ValueError, TypeError):
            continue
    return jobs


def run_benchmark(config_path: str | os.PathLike[str] | None, profile: str,
                  kind: Literal["evalplus", "speed"] = "evalplus", *, limit: int | None = None,
                  tasks: str | None = None, mini: bool = False, resume: str | None = None,
                  create_bench: bool = False, max_tokens: int | None = None, concurrency: int | None = None,
                  prompt_tokens: list[int] | None = None, gen_tokens: list[int] | None = None, reps: int = 3,
                  update_profile: bool = False) -> Job:
    """Check what can be checked now (the profile exists; for EvalPlus the dataset and the bench
    profile), then start the benchmark as a background job and return it at once.

    EvalPlus takes limit/tasks/mini/resume/create_bench/max_tokens/concurrency; speed takes
    prompt_tokens/gen_tokens/reps/update_profile (its defaults are the speed runner's)."""
    from mcp_server.profiles.config import load_config

    params: dict[str, Any]
    if kind == "evalplus":
        params = {"limit": limit, "tasks": tasks, "mini": mini, "resume": resume, "create_bench": create_bench,
                  "max_tokens": max_tokens, "concurrency": concurrency}
    else:
        params = {"reps": reps, "update_profile": update_profile}
        if prompt_tokens:
            params["prompt_tokens"] = list(prompt_tokens)
        if gen_tokens:
            params["gen_tokens"] = list(gen_tokens)
    config = load_config(config_path)
    config.profile(profile)  # an unknown profile is refused now, not in the background
    if kind == "evalplus":
        from mcp_server.bench.evalplus_run import preflight

        preflight(config, profile, **params)
    return start_job(kind, profile, params, config.path)


def _busy(kind: JobKind, params: dict[str, Any]) -> str | None:
    """Why a job of this kind cannot start now (read under the jobs lock), or None."""
    for job in _recent(50):
        if job.status not in LIVE:
            continue
        if kind in BENCHMARKS and job.kind in BENCHMARKS:
            return (f"busy: benchmark job {job.id} is {job.status} ({job.progress.done}/{job.progress.total}); "
                    f"wait for it or cancel it")
        if kind == "download" and job.kind == "download" and job.params.get("spec") == params.get("spec"):
            return (f"busy: job {job.id} is already downloading {params.get('spec')}; follow it with get_job, "
                    f"or cancel it")
    return None


def start_job(kind: JobKind, profile: str | None, params: dict[str, Any],
              config_path: str | os.PathLike[str] | None, label: str | None = None) -> Job:
    """Launch a detached runner; refuses a benchmark while another benchmark job runs, and a second
    download of the same quant set. ``label`` names the job in its id (default: the profile)."""
    with exclusive_lock(jobs_dir() / "lock"):
        refusal = _busy(kind, params)
        if refusal:
            raise JobError(refusal)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        job_id = f"{kind}-{label or profile}-{stamp}-{secrets.token_hex(2)}"
        log_path = jobs_dir() / f"{job_id}.log"
        job = Job(id=job_id, kind=kind, profile=profile, params=params,
                  config_path=str(Path(config_path).resolve()) if config_path else None, status="queued",
                  created_at=now_iso(), log_path=str(log_path))
        _save(job)
        env = child_env(**{paths.HOME_ENV: str(paths.home().resolve())})
        with open(log_path, "ab") as log:
            proc = subprocess.Popen([sys.executable, "-m", "mcp_server.jobs", "run", str(_path(job_id))],
                                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                                    start_new_session=True, cwd=str(Path(config_path).resolve().parent)
                                    if config_path else None)
        # The runner owns the job file from now on; the launcher's pid goes beside it, so a runner
        # that dies before it writes its first state is still noticed.
        _pid_path(job_id).write_text(str(proc.pid))
        job.pid = proc.pid
        threading.Thread(target=proc.wait, daemon=True).start()  # reap it if we outlive it
        return job


def cancel_job(job_id: str, timeout_s: float = 20.0) -> Job:
    """SIGTERM to the job's process group; SIGKILL if it has not ended after ``timeout_s``. Once the
    runner is gone, the model the job started itself is stopped if it still runs (a killed runner
    never got to its own cleanup); ``still_running`` of the answer says what of the job's model is
    left (a model that ran before the job is left running, and listed).

    On a job that has already ended this only does that cleanup: e.g. one whose runner died."""
    job = get_job(job_id)
    pid = _pid_of(job)
    killed = False
    if job.status in LIVE and pid:
        try:
            os.killpg(pid, signal.SIGTERM)
        except OSError:
            pass
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and _alive(job):
            time.sleep(0.2)
        if _alive(job):
            killed = True
            try:
                os.killpg(pid, signal.SIGKILL)
            except OSError:
                pass
            # The cleanup below must not race a runner still stopping the same model: wait until
            # it is really gone (SIGKILL cannot be caught; this is the kernel's delay only).
            gone = time.monotonic() + 10.0
            while time.monotonic() < gone and _alive(job):
                time.sleep(0.05)
    before = _load(job_id)
    job = before.model_copy(deep=True)
    if job.status in LIVE:
        job.status = "cancelled"
        job.ended_at = now_iso()
        job.error = job.error or "cancelled"
    if killed:
        job.messages = [*job.messages[-19:], f"the runner did not end within {timeout_s:g} s of SIGTERM: "
                                             f"killed it (SIGKILL), so its own cleanup did not run"]
    _stop_started(job)
    if job != before:  # an ended job with nothing to clean keeps its file (and list order) untouched
        _save(job)
    return job


# --------------------------------------------------------------------------------------------
# the runner (a separate process)


class _Runner:
    def __init__(self, job_file: Path) -> None:
        self.file = job_file
        self.job = Job(**read_json(job_file))
        self.cancel = threading.Event()
        self.last_write = 0.0
        self.lock = threading.Lock()

    def save(self, force: bool = False) -> None:
        with self.lock:
            now = time.monotonic()
            if force or now - self.last_write > 0.5:
                write_json(self.file, self.job.model_dump(mode="json"))
                self.last_write = now

    def download_progress(self, p: Any) -> None:
        """hub.download's progress (bytes of the whole set) as the job's progress."""
        eta = f", {p.eta_s:.0f} s left" if p.eta_s is not None else ""
        self.progress(p.set_done_bytes, p.set_total_bytes,
                      f"{p.file}: {p.done_bytes / 2**20:,.0f} / {p.total_bytes / 2**20:,.0f} MiB at "
                      f"{p.rate_bps / 2**20:.1f} MiB/s{eta}")

    def progress(self, done: int, total: int, message: str) -> None:
        self.job.progress = JobProgress(done=done, total=total, fraction=round(done / total, 4) if total else 0.0,
                                        message=message)
        self.save(force=done >= total)

    def say(self, message: str) -> None:
        print(message, flush=True)
        self.job.messages = [*self.job.messages[-19:], message]
        self.save(force=True)

    def instance(self, profile_id: str, instance_id: str, started: bool) -> None:
        """Serving's on_instance: written at once, so that cancel_job knows what to stop should this
        process be killed before its own cleanup (and what not to: a model it did not start)."""
        self.job.serving_profile, self.job.serving_instance = profile_id, instance_id
        self.job.started_instance = instance_id if started else None
        self.save(force=True)

    def run(self) -> None:
        from mcp_server.profiles.config import load_config

        job = self.job
        signal.signal(signal.SIGTERM, lambda *_: self.cancel.set())
        signal.signal(signal.SIGINT, lambda *_: self.cancel.set())
        job.status, job.started_at, job.pid = "running", now_iso(), os.getpid()
        try:
            job.pid_create_time = psutil.Process().create_time()
        except psutil.Error:
            pass
        self.save(force=True)
        try:
            params = dict(job.params)
            if job.kind == "download":
                from mcp_server.hub.download import download_quant

                done = download_quant(params["spec"], Path(params["models_dir"]), progress=self.download_progress,
                                      cancel=self.cancel)
                job.result = done.model_dump(mode="json")
            elif job.kind == "tune":
                from mcp_server.tune.operations import run_tune

                tuned = run_tune(load_config(job.config_path), job.profile or "", say=self.say, cancel=self.cancel,
                                 **params)
                job.result = tuned.model_dump(mode="json", include={"profile", "goal", "winner", "runner_up",
                                                                     "paired", "full_context", "measured", "seconds",
                                                                     "edit"})
            elif job.kind == "evalplus":
                from mcp_server.bench.evalplus_run import run_evalplus

                run = run_evalplus(load_config(job.config_path), job.profile or "", progress=self.progress,
                                   cancel=self.cancel, say=self.say, on_instance=self.instance, **params)
                job.result = {"run_id": run.run_id, "run_dir": run.run_dir, "profile": run.profile,
                              "problems": run.problems, "generated_now": run.generated_now,
                              "scores": run.scores.model_dump() if run.scores else None,
                              "generation_s": run.generation_s, "evaluation_s": run.evaluation_s}
            else:
                from mcp_server.bench.speed import run_speed

                speed = run_speed(load_config(job.config_path), job.profile or "", progress=self.progress,
                                  cancel=self.cancel, say=self.say, on_instance=self.instance, **params)
                job.result = {"run_id": speed.run_id, "run_dir": speed.run_dir, "profile": speed.profile,
                              "generation_tps": speed.generation_tps, "prompt_tps": speed.prompt_tps,
                              "speed_label": speed.speed_label,
                              "aggregate_tps": {p.concurrency: p.aggregate_tps.median for p in speed.concurrency},
                              "profile_updated": bool(speed.profile_update and speed.profile_update.changed)}
            job.status = "done"
        except LlamaPilotError as exc:  # a cancelled run keeps what it did: resumable, or a partial file
            job.status = "cancelled" if exc.code in CANCELLED_CODES else "failed"
            job.error = str(exc)
        except BaseException as exc:  # the job file must say it failed, whatever it was
            job.status, job.error = "failed", f"{type(exc).__name__}: {exc}"
            import traceback

            traceback.print_exc()
        self._end()

    def _end(self) -> None:
        job = self.job
        try:
            _check_serving(job)  # Serving has stopped what it started; say what of the job's model runs on
        except BaseException as exc:  # the job's end must be written, whatever this check met
            job.messages = [*job.messages[-19:], f"could not check what still runs: {type(exc).__name__}: {exc}"]
        job.ended_at = now_iso()
        if job.status == "cancelled" and self.job.progress.message:
            job.progress.message = f"cancelled at {job.progress.done}/{job.progress.total}"
        self.save(force=True)


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2 or args[0] != "run":
        print("usage: python -m mcp_server.jobs run JOB_FILE", file=sys.stderr)
        raise SystemExit(2)
    _Runner(Path(args[1])).run()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # in-flight request threads of a cancelled run must not hold the process open


if __name__ == "__main__":
    main()
