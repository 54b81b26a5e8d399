"""Have a profile's llama-server ready for a benchmark: reuse a running one, else start it (or
switch to it), and stop it again afterwards only if the benchmark started it."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any, Callable

from mcp_server.runtime.registry import InstanceRecord, InstanceStatus
from mcp_server.profiles.config import Config
from mcp_server.runtime.lifecycle import InstanceView, NotRunning, Runtime
from mcp_server.runtime.server_log import LoadProgress
from mcp_server.bench import BenchError

Say = Callable[[str], None]


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
                 timeout_s: float | None = None, say: Say = _quiet) -> None:
        config.profile(profile_id)  # unknown profile: fail before anything starts
        self.config = config
        self.profile_id = profile_id
        self.keep_running = keep_running
        self.switch = switch
        self.timeout_s = timeout_s
        self.say = say
        self.runtime = Runtime(config)
        self.started = False
        self.record: InstanceRecord | None = None
        self.props: dict[str, Any] = {}

    @property
    def url(self) -> str:
        assert self.record is not None
        return self.record.base_url

    def __enter__(self) -> "Serving":
        try:
            view = self.runtime.ensure_ready(self.profile_id, progress=self._loading())
            self.say(f"using the running {self.profile_id} on port {view.port}")
        except NotRunning:
            self.say(f"starting {self.profile_id}")
            view = self._start()
            if self.started:
                self.say(f"{self.profile_id} ready on port {view.port} after {view.load_seconds or 0:.1f} s")
            else:
                self.say(f"using {self.profile_id} on port {view.port}, started meanwhile by another process")
        record = self.runtime.registry.get(view.id)
        if record is None or record.status != InstanceStatus.READY:
            raise BenchError(f"{self.profile_id} is not running after start (status shows what happened)")
        self.record = record
        self.props = get_json(f"{record.base_url}/props")
        return self

    def _start(self) -> InstanceView:
        """Start (or switch to) the profile; ``started`` is whether this benchmark launched it, so
        that it stops only what it started."""
        if self.switch:
            result = self.runtime.switch_model(self.profile_id, timeout_s=self.timeout_s)
            assert result.started is not None  # a failed switch raises SwitchFailed
            self.started = result.launched is not None
            return result.started
        view = self.runtime.ensure_ready(self.profile_id, start=True, timeout_s=self.timeout_s)
        self.started = view.started_here
        return view

    def _loading(self) -> Callable[[LoadProgress], None]:
        said: list[bool] = []

        def once(progress: LoadProgress) -> None:
            if not said and progress.stage != "ready":
                said.append(True)
                self.say(f"{self.profile_id} is loading; waiting for it")

        return once

    def __exit__(self, *exc: object) -> None:
        if self.started and not self.keep_running and self.record is not None:
            self.say(f"stopping {self.profile_id}")
            try:
                self.runtime.stop_model(self.record.id, grace_s=5)
            except Exception:  # the benchmark's own error matters more than a failed stop
                pass

    @property
    def slots(self) -> int:
        return int(self.props.get("total_slots") or 1)

    @property
    def n_ctx_per_slot(self) -> int | None:
        value = (self.props.get("default_generation_settings") or {}).get("n_ctx")
        return int(value) if value else None
