"""Have a profile's llama-server ready for a benchmark: reuse a running one, else start it (or
switch to it), and stop it again afterwards only if the benchmark started it.

``on_instance(profile, instance_id, started)`` hears which instance serves the benchmark as soon as
that is known; for one the benchmark launches, right after the launch, before the model has loaded.
A background job records it, so that a runner killed before its own cleanup (cancel_job's SIGKILL)
still leaves behind what to stop, and what not to: a model that ran before the job is never its."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any, Callable

from mcp_server.runtime.registry import InstanceRecord, InstanceStatus
from mcp_server.profiles.config import Config
from mcp_server.runtime.lifecycle import AlreadyRunning, InstanceView, LifecycleError, NotRunning, Runtime
from mcp_server.runtime.server_log import LoadProgress
from mcp_server.bench import BenchError

Say = Callable[[str], None]
OnInstance = Callable[[str, str, bool], None]  # (profile id, instance id, started by this benchmark)


def _quiet(_: str) -> None:
    pass


def get_json(url: str, timeout: float = 10.0) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            value = json.loads(resp.read())
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise BenchError(f"{url} did not answer: {exc}") from exc
    return value if isinstance(value, dict) else {}


class Serving:
    """Context manager: ``with Serving(config, "bench-demo") as s: s.url, s.record, s.props``."""

    def __init__(self, config: Config, profile_id: str, *, keep_running: bool = False, switch: bool = False,
                 timeout_s: float | None = None, say: Say = _quiet, on_instance: OnInstance | None = None) -> None:
        config.profile(profile_id)  # unknown profile: fail before anything starts
        self.config = config
        self.profile_id = profile_id
        self.keep_running = keep_running
        self.switch = switch
        self.timeout_s = timeout_s
        self.say = say
        self.on_instance = on_instance
        self.runtime = Runtime(config)
        self.started = False
        self.instance_id: str | None = None  # known before the record: a start is told before it is ready
        self._stopped = False
        self.record: InstanceRecord | None = None
        self.props: dict[str, Any] = {}

    @property
    def url(self) -> str:
        assert self.record is not None
        return self.record.base_url

    def __enter__(self) -> "Serving":
        try:
            view = self.runtime.ensure_ready(self.profile_id, progress=self._loading())
            self._tell(view.id, started=False)
            self.say(f"using the running {self.profile_id} on port {view.port}")
        except NotRunning:
            self.say(f"starting {self.profile_id}")
            view = self._start()
            if self.started:
                self.say(f"{self.profile_id} ready on port {view.port} after {view.load_seconds or 0:.1f} s")
            else:
                self.say(f"using {self.profile_id} on port {view.port}, started meanwhile by another process")
        # From here on the caller's ``with`` body has not begun, so __exit__ would not run: a model
        # started here is stopped here if what follows fails (or is interrupted).
        try:
            record = self.runtime.registry.get(view.id)
            if record is None or record.status != InstanceStatus.READY:
                raise BenchError(f"{self.profile_id} is not running after start (status shows what happened)")
            self.record = record
            self.props = get_json(f"{record.base_url}/props")
        except BaseException:
            self.__exit__()
            raise
        return self

    def _tell(self, instance_id: str, started: bool) -> None:
        self.instance_id = instance_id
        if self.on_instance is not None:
            self.on_instance(self.profile_id, instance_id, started)

    def _start(self) -> InstanceView:
        """Start (or switch to) the profile; ``started`` is whether this benchmark launched it, so
        that it stops only what it started."""
        if self.switch:
            # switch_model launches and waits in one call, so the instance is known only once it is
            # ready (background jobs never switch).
            result = self.runtime.switch_model(self.profile_id, timeout_s=self.timeout_s)
            assert result.started is not None  # a failed switch raises SwitchFailed
            self.started = result.launched is not None
            self._tell(result.started.id, self.started)
            return result.started
        try:
            # Launch without waiting, so the instance id is told before the (possibly long) load.
            launched = self.runtime.start_model(self.profile_id, timeout_s=self.timeout_s, wait=False)
        except AlreadyRunning:
            # Another process started it between our look and our launch: wait for theirs (or
            # start it after all, should that one be gone by now; started_here says which).
            view = self.runtime.ensure_ready(self.profile_id, start=True, timeout_s=self.timeout_s)
            self.started = view.started_here
            self._tell(view.id, self.started)
            return view
        self.started = True
        try:
            self._tell(launched.id, True)
            return self.runtime.wait(launched.id)
        except LifecycleError:
            raise  # a failed start has ended by itself (a timed-out one was stopped by the wait)
        except BaseException:
            self.__exit__()  # an interrupted wait (Ctrl-C) would leave it loading
            raise

    def _loading(self) -> Callable[[LoadProgress], None]:
        said: list[bool] = []

        def once(progress: LoadProgress) -> None:
            if not said and progress.stage != "ready":
                said.append(True)
                self.say(f"{self.profile_id} is loading; waiting for it")

        return once

    def __exit__(self, *exc: object) -> None:
        if self.started and not self.keep_running and self.instance_id is not None and not self._stopped:
            self._stopped = True  # once: __enter__'s own cleanup and the caller's must not both stop it
            self.say(f"stopping {self.profile_id}")
            try:
                self.runtime.stop_model(self.instance_id, grace_s=5)
            except Exception:  # the benchmark's own error matters more than a failed stop (NotRunning too)
                pass

    @property
    def slots(self) -> int:
        return int(self.props.get("total_slots") or 1)

    @property
    def n_ctx_per_slot(self) -> int | None:
        value = (self.props.get("default_generation_settings") or {}).get("n_ctx")
        return int(value) if value else None
