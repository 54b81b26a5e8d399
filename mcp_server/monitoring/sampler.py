"""One sampling loop for GPU and host stats, with a bounded history per metric for sparklines.

The dashboard keeps one :class:`Sampler` for its lifetime::

    sampler = Sampler(interval_s=1.0)        # gpu_source=FakeNvml() to work without a GPU
    sampler.start()                          # a daemon thread samples every interval_s
    snap = sampler.latest()                  # Snapshot(at, gpu: GpuReport, system: SystemStats) or None
    values = sampler.history("gpu0.util_pct")   # oldest first, at most history_len values
    sampler.stop()

The MCP server keeps no sampler (each conversation is a fresh process): its tools call
:func:`mcp_server.monitoring.gpu.gpu_stats` and :func:`mcp_server.monitoring.system.system_stats` directly.

History keys are stable strings (``keys()`` lists those seen so far):

- host: ``cpu_pct``, ``core<N>.cpu_pct``, ``load1``, ``ram_used_mib``, ``ram_available_mib``,
  ``swap_used_mib``;
- per GPU, by NVML index (nvidia-smi's): ``gpu<N>.util_pct``, ``gpu<N>.mem_util_pct``,
  ``gpu<N>.mem_used_mib``, ``gpu<N>.power_w``, ``gpu<N>.temp_c``, ``gpu<N>.sm_clock_mhz``,
  ``gpu<N>.fan_pct``;
- per instance, by profile (stable across restarts): ``instance.<profile>.rss_mib``,
  ``instance.<profile>.cpu_pct``, ``instance.<profile>.gpu_mem_mib`` (summed over GPUs),
  ``instance.<profile>.container_mem_mib``, ``instance.<profile>.container_cpu_pct``.

A value that is unknown in a sample (None: NVML refused it, the instance had just started) is not
appended, so a series never holds invented points; :meth:`Sampler.series` gives (time, value)
pairs where the gaps matter.

Cost: a sample is a handful of NVML calls per GPU (static facts and refused fields are cached in
the NVML session), one ``/proc`` pass for CPU and memory, and a few reads per instance; the
instance list is re-read from the registry only when its folder changes.
``benchmarks/sampler_cost.py`` measures it (docs/benchmarks/sampler.md).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Any, Iterator

from pydantic import BaseModel

from mcp_server.monitoring.gpu import GpuReport, gpu_stats
from mcp_server.runtime.registry import InstanceRecord, Registry
from mcp_server.monitoring.system import StatsState, SystemStats, system_stats

log = logging.getLogger(__name__)


class Snapshot(BaseModel):
    at: float
    gpu: GpuReport
    system: SystemStats
    took_s: float = 0.0


class Sampler:
    """Samples GPUs and the host every ``interval_s`` on a daemon thread; thread-safe."""

    def __init__(self, interval_s: float = 1.0, history_len: int = 300, gpu_source: Any = None,
                 registry: Registry | None = None, *, gpu_enabled: bool = True) -> None:
        if interval_s <= 0:
            raise ValueError("interval_s must be > 0")
        if history_len < 1:
            raise ValueError("history_len must be >= 1")
        self.interval_s = float(interval_s)
        self.history_len = int(history_len)
        self.gpu_source = gpu_source
        self.gpu_enabled = gpu_enabled
        self._registry = registry
        self._state = StatsState()
        self._lock = threading.Lock()  # guards history and latest
        self._sample_lock = threading.Lock()  # one sample at a time (psutil/NVML state)
        self._history: dict[str, deque[tuple[float, float]]] = {}
        self._latest: Snapshot | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._records: list[InstanceRecord] = []
        self._records_key: tuple[int, float] | None = None
        self.samples = 0
        self.errors = 0
        self.last_error: str | None = None

    # -- loop ----------------------------------------------------------------------------------

    def start(self) -> "Sampler":
        """Start the sampling thread (no-op if it runs). The first sample is taken at once."""
        if self._thread and self._thread.is_alive():
            return self
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="llama-pilot-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread and thread is not threading.current_thread():
            thread.join(timeout)

    @property
    def running(self) -> bool:
        return bool(self._thread and self._thread.is_alive())

    def __enter__(self) -> "Sampler":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            try:
                self.sample_once()
            except Exception as exc:  # a bad sample must not end the loop the dashboard relies on
                self.errors += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("sample failed: %s", self.last_error)
            next_at += self.interval_s
            delay = next_at - time.monotonic()
            if delay < 0:  # fell behind (suspended, slow NVML): skip the missed ticks
                next_at, delay = time.monotonic(), 0.0
            self._stop.wait(delay)

    # -- sampling ------------------------------------------------------------------------------

    def _instances(self) -> list[InstanceRecord]:
        """Live records; the registry folder is re-read only when it changed (or every 10 s)."""
        registry = self._registry
        if registry is None:
            registry = self._registry = Registry()
        try:
            stamp = registry.dir.stat().st_mtime_ns
        except OSError:
            return []
        now = time.monotonic()
        if self._records_key is None or self._records_key[0] != stamp or now - self._records_key[1] > 10.0:
            self._records = [r for r in registry.all() if r.is_live]
            self._records_key = (stamp, now)
        return self._records

    def sample_once(self) -> Snapshot:
        """Take one sample now, record it in the history, and return it."""
        with self._sample_lock:
            started = time.monotonic()
            records = self._instances()
            if self.gpu_enabled:
                gpu = gpu_stats(self.gpu_source, records)
            else:
                gpu = GpuReport(gpus=[], reason="GPU sampling is off", at=time.time())
            system = system_stats(records, self._state, prime_s=0.0 if self.samples else 0.1)
            snap = Snapshot(at=time.time(), gpu=gpu, system=system, took_s=round(time.monotonic() - started, 4))
            self._record(snap)
            self.samples += 1
            return snap

    def _record(self, snap: Snapshot) -> None:
        points = list(_points(snap))
        with self._lock:
            for key, value in points:
                series = self._history.get(key)
                if series is None:
                    series = self._history[key] = deque(maxlen=self.history_len)
                series.append((snap.at, value))
            self._latest = snap

    # -- reading -------------------------------------------------------------------------------

    def latest(self) -> Snapshot | None:
        with self._lock:
            return self._latest

    def history(self, key: str) -> list[float]:
        """The values recorded for ``key``, oldest first (empty for an unknown key)."""
        with self._lock:
            return [v for _, v in self._history.get(key, ())]

    def series(self, key: str) -> list[tuple[float, float]]:
        """(unix time, value) pairs for ``key``, oldest first."""
        with self._lock:
            return list(self._history.get(key, ()))

    def keys(self) -> list[str]:
        with self._lock:
            return sorted(self._history)


def _points(snap: Snapshot) -> Iterator[tuple[str, float]]:
    system = snap.system
    if system.interval_s is not None:  # the very first reading of a state has no CPU window
        yield "cpu_pct", system.cpu_pct
        for n, pct in enumerate(system.per_core_pct):
            yield f"core{n}.cpu_pct", pct
    if system.load_avg:
        yield "load1", system.load_avg[0]
    yield "ram_used_mib", system.ram_used_mib
    yield "ram_available_mib", system.ram_available_mib
    yield "swap_used_mib", system.swap_used_mib
    gpu_mem: dict[str, float] = {}
    for g in snap.gpu.gpus:
        prefix = f"gpu{g.nvml_index}"
        for key, value in (("util_pct", g.gpu_util_pct), ("mem_util_pct", g.mem_util_pct),
                           ("mem_used_mib", g.memory_used_mib), ("power_w", g.power_w),
                           ("temp_c", g.temperature_c), ("sm_clock_mhz", g.sm_clock_mhz), ("fan_pct", g.fan_pct)):
            if value is not None:
                yield f"{prefix}.{key}", float(value)
        for proc in g.processes:
            if proc.profile and proc.used_mib is not None:
                gpu_mem[proc.profile] = gpu_mem.get(proc.profile, 0.0) + proc.used_mib
    for inst in system.instances:
        prefix = f"instance.{inst.profile}"
        for key, value in (("rss_mib", inst.rss_mib), ("cpu_pct", inst.cpu_pct),
                           ("container_mem_mib", inst.container_mem_mib),
                           ("container_cpu_pct", inst.container_cpu_pct)):
            if value is not None:
                yield f"{prefix}.{key}", float(value)
    for profile, mib in gpu_mem.items():
        yield f"instance.{profile}.gpu_mem_mib", mib
