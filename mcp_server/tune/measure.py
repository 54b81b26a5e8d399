"""Measuring a candidate: tokens/s of prompt and generation at a context depth, on the real engine.

Two sources. ``ServerSource`` starts llama-server with the candidate's argv (the same argv a start
of the profile would use, on a free loopback port), sends a prompt of ``depth`` tokens and reads
llama-server's own timings, then stops it: what the profile will do when it serves. ``BenchSource``
runs ``llama-bench`` with the candidate written as its flags (-ngl, -ncmoe, -ot, -ts, -t, -b, -ub,
-fa, -lm, -ctk/-ctv, -d), where a build has it; it cannot express every profile key, so a candidate
with others is measured by the server. Either way the process is a child of this one, so cancelling
the tune (SIGTERM to the job's process group) stops it too.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import httpx

from mcp_server.profiles.config import Config
from mcp_server.tune.search import CandidateFailed, Sample, Values

if TYPE_CHECKING:
    from mcp_server.placement.operations import GpuSlot

DRAFT_ID = "tune-candidate"


def _draft(config: Config, values: Values) -> Config:
    from mcp_server.profiles.edits import draft_profile

    draft, _, _ = draft_profile(config, DRAFT_ID, {k: v for k, v in values.items() if k != "MODEL"},
                                model=values["MODEL"])
    return draft


class ServerSource:
    kind = "server"

    def __init__(self, config: Config, depth: int, gen_tokens: int = 64, reps: int = 2, load_timeout_s: float = 900,
                 log_dir: Path | None = None, cancelled: Callable[[], bool] = lambda: False,
                 profile: str | None = None, remote: "list[GpuSlot] | None" = None) -> None:
        self.config, self.depth, self.gen, self.reps = config, depth, gen_tokens, reps
        self.profile = profile
        self.remote = remote or []  # the workers' devices, for the memory record
        self.load_timeout_s, self.cancelled = load_timeout_s, cancelled
        self.log_dir = log_dir
        self.engine: str | None = None

    def _start(self, values: Values) -> tuple[subprocess.Popen[bytes], str, Path, list[str]]:
        from mcp_server.engine.argv import launch_spec
        from mcp_server.engine.locate import engine_path

        from mcp_server.setup.bootstrap import free_port

        draft = _draft(self.config, values)
        port = free_port()
        spec = launch_spec(draft.profile(DRAFT_ID), draft, port=port, host="127.0.0.1")
        self.engine = self.engine or engine_path()
        argv = [self.engine, *spec.argv[1:]]
        log_dir = self.log_dir or Path(os.environ.get("TMPDIR", "/tmp"))
        log_dir.mkdir(parents=True, exist_ok=True)
        log = log_dir / f"tune-{port}.log"
        env = {**os.environ, **spec.env}
        with open(log, "wb") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        return proc, f"http://127.0.0.1:{port}", log, argv

    def _wait_ready(self, proc: subprocess.Popen[bytes], url: str, log: Path) -> None:
        deadline = time.monotonic() + self.load_timeout_s
        with httpx.Client(timeout=2) as client:
            while time.monotonic() < deadline:
                if self.cancelled():
                    raise CandidateFailed("cancelled")
                if proc.poll() is not None:
                    tail = log.read_text(errors="replace").splitlines()[-6:]
                    raise CandidateFailed(f"llama-server exited ({proc.returncode}) while loading: "
                                          + " | ".join(tail))
                try:
                    if client.get(f"{url}/health").status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                time.sleep(0.1)
        raise CandidateFailed(f"not ready within {self.load_timeout_s:.0f} s")

    @staticmethod
    def _stop(proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def measure(self, values: Values, depth: int | None = None) -> Sample:
        from mcp_server.bench.speed import BenchError, Prompts, stream_completion

        started = time.monotonic()
        proc, url, log, argv = self._start(values)
        memory: dict[str, float] = {}
        try:
            self._wait_ready(proc, url, log)
            want = self.depth if depth is None else depth
            with httpx.Client(timeout=httpx.Timeout(3600, connect=10)) as client:
                prompts = Prompts(client, url, max(want, 16))
                stream_completion(client, url, prompts.make(16, 99), 4)  # warm-up: first-use costs out
                reps = [stream_completion(client, url, prompts.make(max(want, 16), i), self.gen)
                        for i in range(self.reps)]
            memory = self._record_memory(values, argv, log, proc.pid)
        except (httpx.HTTPError, BenchError) as exc:
            raise CandidateFailed(f"{type(exc).__name__}: {exc}") from exc
        finally:
            self._stop(proc)
        log.unlink(missing_ok=True)
        return Sample(prompt_tps=round(statistics.median(r.prompt_per_second for r in reps), 2),
                      gen_tps=round(statistics.median(r.predicted_per_second for r in reps), 2),
                      seconds=round(time.monotonic() - started, 2), memory_mib=memory or None)

    def _record_memory(self, values: Values, argv: list[str], log: Path, pid: int) -> dict[str, float]:
        """What this load holds, into the calibration store (prediction, llama.cpp's buffers, NVML):
        the learning the estimator uses next time. Measured after the prompts, when the compute
        buffers and the CUDA pool have grown to what serving uses. A failure here costs the record,
        not the candidate."""
        from mcp_server.placement.operations import record_launch
        from mcp_server.runtime.server_log import parse_load_report

        try:
            model = self.config.model_path(_draft(self.config, values).profile(DRAFT_ID))
            measurement = record_launch(model, argv, parse_load_report(log.read_text(errors="replace")), pid,
                                        profile=self.profile, note="tune candidate", remote=self.remote)
        except Exception:  # noqa: BLE001 - memory is a by-product of a speed measurement
            return {}
        return {d.device: (d.nvml_mib if d.nvml_mib is not None else d.logged_mib) for d in measurement.devices
                if (d.nvml_mib if d.nvml_mib is not None else d.logged_mib) is not None}


# profile key -> llama-bench flag (values written as the profile writes them, translated below)
_BENCH_FLAGS = {"N_GPU_LAYERS": "-ngl", "N_CPU_MOE": "-ncmoe", "OVERRIDE_TENSORS": "-ot", "TENSOR_SPLIT": "-ts",
                "SPLIT_MODE": "-sm", "MAIN_GPU": "-mg", "THREADS": "-t", "BATCH_SIZE": "-b", "UBATCH_SIZE": "-ub",
                "FLASH_ATTN": "-fa", "LOAD_MODE": "-lm", "KV_CACHE_TYPE_K": "-ctk", "KV_CACHE_TYPE_V": "-ctv"}
# keys that do not change a llama-bench measurement (context size is the depth; fit is server-side)
_BENCH_IGNORED = {"MODEL", "CTX_SIZE", "PARALLEL", "FIT", "FIT_TARGET", "FIT_CTX", "PORT", "BACKEND", "TEMP", "TOP_P",
                  "TOP_K", "MIN_P", "VISIBLE_DEVICES"}


class BenchSource:
    """llama-bench: pp (a prompt of ``prompt_tokens`` at ``depth``) and tg (``gen_tokens`` at ``depth``)."""

    kind = "llama-bench"

    def __init__(self, config: Config, bench: str, depth: int, gen_tokens: int = 64, prompt_tokens: int = 256,
                 reps: int = 2) -> None:
        self.config, self.bench, self.depth = config, bench, depth
        self.gen, self.prompt, self.reps = gen_tokens, prompt_tokens, reps

    def can(self, values: Values) -> bool:
        return all(k in _BENCH_FLAGS or k in _BENCH_IGNORED for k in values) and "EXTRA_ARGS" not in values

    def argv(self, values: Values) -> list[str]:
        model = str(self.config.model_path(_draft(self.config, values).profile(DRAFT_ID)))
        argv = [self.bench, "-m", model, "-p", str(self.prompt), "-n", str(self.gen), "-d", str(self.depth),
                "-r", str(self.reps), "-o", "json"]
        for key, flag in _BENCH_FLAGS.items():
            value = values.get(key)
            if value is None:
                continue
            if key == "N_GPU_LAYERS" and value in ("all", "auto"):
                value = "999"
            if key == "LOAD_MODE" and value == "auto":
                continue
            if key == "OVERRIDE_TENSORS":
                value = value.replace(",", ";")
            if key == "TENSOR_SPLIT":
                value = value.replace(",", "/")
            argv += [flag, value]
        return argv

    def measure(self, values: Values) -> Sample:
        started = time.monotonic()
        done = subprocess.run(self.argv(values), capture_output=True, text=True)
        if done.returncode != 0:
            raise CandidateFailed(f"llama-bench exited {done.returncode}: {done.stderr.strip().splitlines()[-1:]}")
        tests = json.loads(done.stdout)
        pp = [t["avg_ts"] for t in tests if t.get("n_prompt") and not t.get("n_gen")]
        tg = [t["avg_ts"] for t in tests if t.get("n_gen") and not t.get("n_prompt")]
        if not pp or not tg:
            raise CandidateFailed(f"llama-bench gave no pp/tg result: {done.stdout[:200]}")
        return Sample(prompt_tps=round(pp[0], 2), gen_tps=round(tg[0], 2), seconds=round(time.monotonic() - started, 2))
