"""The queues, the loads and the unloads behind ``serve``: one asyncio object, one decision at a time.

Rules (docs/serve.md says why):

* A request for a ready profile is served at once, unless that profile is being drained to make
  room for a model that has waited ``max_wait``.
* Requests wait per profile, FIFO. Of the profiles that wait and are not loaded, the one whose
  oldest request is oldest goes first; any waiting profile that fits beside the residents is
  loaded without unloading anything.
* When the first in line does not fit, ``memory.decide`` names what to unload. Those residents are
  unloaded at once if nobody uses them; otherwise they keep serving until the oldest waiter has
  waited ``max_wait``, then they stop admitting, finish what is in flight, and are unloaded.
* One load or unload runs at a time, so every decision reads memory with nothing half-loaded.

Loads and stops go through :class:`~mcp_server.runtime.lifecycle.Runtime` (in a thread), the same
one the CLI and MCP use, so every door sees what serve runs; a sync every two seconds adopts what
other doors started and notices what died.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import deque
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from mcp_server.errors import LlamaPilotError
from mcp_server.profiles.config import Config, load_config
from mcp_server.serve import memory
from mcp_server.serve.policy import ProfilePolicy, ServeSettings, model_names, policy_for

_SYNC_EVERY_S = 2.0
_ROOM_WAIT_S = 5.0  # after an unload, how long NVML may take to show the memory free
_EVENTS_KEPT = 200


class SlotState(StrEnum):
    ABSENT = "absent"
    LOADING = "loading"
    READY = "ready"
    UNLOADING = "unloading"


class ServeHTTPError(Exception):
    """An answer decided before any byte went out: status, JSON body, extra headers."""

    def __init__(self, status: int, kind: str, message: str, headers: dict[str, str] | None = None,
                 **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.body = {"error": {"type": kind, "message": message, **extra}}
        self.headers = headers or {}


@dataclass
class Lease:
    profile: str
    instance: str
    base_url: str
    waited_s: float
    granted_at: float


@dataclass
class Waiter:
    profile: str
    enqueued: float
    future: asyncio.Future[Lease]
    notes: asyncio.Queue[str] | None = None


@dataclass
class Slot:
    profile: str
    state: SlotState = SlotState.ABSENT
    queue: deque[Waiter] = field(default_factory=deque)
    in_flight: int = 0
    instance: str | None = None
    base_url: str | None = None
    last_used: float = 0.0
    loaded_at: float | None = None
    draining: bool = False  # not admitting: it is to be unloaded for an overdue waiter
    unload_wanted: list[asyncio.Future[None]] = field(default_factory=list)
    pin_override: bool | None = None
    external: bool = False  # loading through another door (CLI, MCP): counted, not ours to decide
    progress: str | None = None
    served: int = 0
    last_error: dict[str, Any] | None = None


class SwapEvent(BaseModel):
    at: float = Field(description="unix time")
    action: str = Field(description="load | unload | lost | adopt | failed")
    profile: str
    reason: str = Field(description="fits-beside | unused | max-wait | idle-ttl | requested | exited | adopted | "
                                    "load-failed")
    unloaded: list[str] = Field(default_factory=list, description="what was unloaded to make room")
    waited_s: float | None = Field(default=None, description="the oldest waiter's wait when the load was decided")
    victims_idle: bool | None = Field(default=None, description="whether what was unloaded had nothing in flight "
                                                                "or queued when the swap was decided")
    load_s: float | None = None
    detail: str | None = None


class Scheduler:
    def __init__(self, config_path: Path, settings: ServeSettings) -> None:
        self.config_path = config_path
        self.settings = settings
        self.slots: dict[str, Slot] = {}
        self.events: deque[SwapEvent] = deque(maxlen=_EVENTS_KEPT)
        self.counters = {"requests": 0, "served": 0, "rejected": 0, "abandoned": 0, "failed": 0, "swaps": 0,
                         "loads": 0, "unloads": 0}
        self._config: Config = load_config(config_path)
        self._mtime = _mtime(config_path)
        self._runtime: Any = None
        self._footprints: dict[str, tuple[tuple[Any, ...], memory.Footprint]] = {}
        self._transition: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._kicked = False
        self._generation = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sync_task: asyncio.Task[None] | None = None
        self.gpus: list[tuple[str | None, float]] = []
        self.budget_mib: float | None = None
        self.started_at = time.time()

    # -- life ------------------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.gpus = await asyncio.to_thread(memory.gpu_totals)
        if self.settings.memory_budget:
            self.budget_mib = memory.parse_budget(self.settings.memory_budget)
        elif not self.gpus:
            import psutil

            self.budget_mib = psutil.virtual_memory().available / 2**20
        await self._sync()  # adopt what already runs before the first request
        self._sync_task = asyncio.create_task(self._sync_forever())

    async def close(self) -> None:
        """Stop deciding; the models keep running under their keepers for the next serve to adopt."""
        for task in (self._sync_task, self._transition):
            if task is not None:
                task.cancel()
        if self._timer:
            self._timer.cancel()

    # -- config ----------------------------------------------------------------------------

    @property
    def config(self) -> Config:
        mtime = _mtime(self.config_path)
        if mtime != self._mtime:
            try:
                self._config, self._mtime, self._runtime = load_config(self.config_path), mtime, None
            except LlamaPilotError:
                pass  # half-written or broken: keep serving the last good one; lint says what is wrong
        return self._config

    def runtime(self) -> Any:
        if self._runtime is None:
            from mcp_server.runtime.lifecycle import Runtime

            self._runtime = Runtime(self.config)
        return self._runtime

    def resolve(self, name: str) -> str | None:
        return model_names(self.config).get(name)

    def policy(self, profile: str) -> ProfilePolicy:
        config = self.config
        policy = policy_for(config.profile(profile)) if profile in config.profiles else ProfilePolicy(profile=profile)
        slot = self.slots.get(profile)
        if slot is not None and slot.pin_override is not None:
            policy = policy.model_copy(update={"pinned": slot.pin_override})
        return policy

    def slot(self, profile: str) -> Slot:
        if profile not in self.slots:
            self.slots[profile] = Slot(profile=profile)
        return self.slots[profile]

    # -- requests --------------------------------------------------------------------------

    async def acquire(self, profile: str, notes: asyncio.Queue[str] | None = None) -> Lease:
        """Wait for a ready instance of ``profile``; raises ServeHTTPError (429, a failed load)."""
        self.counters["requests"] += 1
        slot = self.slot(profile)
        now = time.monotonic()
        if self.admits_now(profile):
            return self._grant(slot, now, now)
        if len(slot.queue) >= self.settings.queue_limit:
            self.counters["rejected"] += 1
            retry = max(1, int(self.settings.max_wait_s))
            raise ServeHTTPError(429, "queue_full", f"{len(slot.queue)} requests already wait for {profile} "
                                 f"(SERVE_QUEUE_LIMIT={self.settings.queue_limit}); retry in {retry} s",
                                 headers={"Retry-After": str(retry)})
        waiter = Waiter(profile=profile, enqueued=now, future=asyncio.get_running_loop().create_future(), notes=notes)
        slot.queue.append(waiter)
        self._note(waiter, f"queued for {profile}: position {len(slot.queue)}, state {slot.state}")
        self.kick()
        try:
            return await asyncio.shield(waiter.future)
        except asyncio.CancelledError:
            self._abandon(slot, waiter)
            raise

    def _abandon(self, slot: Slot, waiter: Waiter) -> None:
        """The client went away while waiting: forget it, and give back a lease granted meanwhile."""
        if waiter in slot.queue:
            slot.queue.remove(waiter)
            self.counters["abandoned"] += 1
        elif waiter.future.done() and not waiter.future.cancelled() and waiter.future.exception() is None:
            self.release(waiter.future.result())
        if not waiter.future.done():
            waiter.future.cancel()
        self.kick()

    def release(self, lease: Lease) -> None:
        slot = self.slot(lease.profile)
        slot.in_flight = max(0, slot.in_flight - 1)
        slot.last_used = time.monotonic()
        slot.served += 1
        self.counters["served"] += 1
        self.kick()

    def admits_now(self, profile: str) -> bool:
        """A request for ``profile`` would be served without waiting."""
        slot = self.slots.get(profile)
        return slot is not None and self._admits(slot) and not slot.queue

    def _admits(self, slot: Slot) -> bool:
        return slot.state == SlotState.READY and not slot.draining and not slot.unload_wanted

    def _grant(self, slot: Slot, enqueued: float, now: float) -> Lease:
        slot.in_flight += 1
        slot.last_used = now
        assert slot.instance is not None and slot.base_url is not None
        return Lease(profile=slot.profile, instance=slot.instance, base_url=slot.base_url,
                     waited_s=now - enqueued, granted_at=now)

    def lost(self, lease: Lease, detail: str) -> None:
        """The proxy saw the upstream vanish: stop routing to it, and let the sync say how it ended."""
        slot = self.slot(lease.profile)
        if slot.instance == lease.instance and slot.state == SlotState.READY:
            slot.state, slot.instance, slot.base_url = SlotState.ABSENT, None, None
            self.events.append(SwapEvent(at=time.time(), action="lost", profile=slot.profile, reason="exited",
                                         detail=detail))
            self._generation += 1
        self.kick()

    # -- control ---------------------------------------------------------------------------

    async def load(self, profile: str) -> Lease:
        """Load through the same queue and rules as a request (and release at once)."""
        lease = await self.acquire(profile)
        self.counters["requests"] -= 1
        self.release(lease)
        self.slot(profile).served -= 1
        self.counters["served"] -= 1
        return lease

    async def unload(self, profile: str) -> None:
        slot = self.slot(profile)
        if slot.state == SlotState.ABSENT:
            return
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        slot.unload_wanted.append(done)
        self.kick()
        await done

    def pin(self, profile: str, pinned: bool | None) -> None:
        self.slot(profile).pin_override = pinned
        self.kick()

    # -- the decision ----------------------------------------------------------------------

    def kick(self) -> None:
        if not self._kicked and self._loop is not None:
            self._kicked = True
            self._loop.call_soon(self._schedule)

    def _schedule(self) -> None:
        self._kicked = False
        now = time.monotonic()
        for slot in self.slots.values():
            for waiter in [w for w in slot.queue if w.future.done()]:
                slot.queue.remove(waiter)
            if self._admits(slot):
                while slot.queue:
                    waiter = slot.queue.popleft()
                    waiter.future.set_result(self._grant(slot, waiter.enqueued, now))
        if self._transition is not None:
            return
        if self._timer:
            self._timer.cancel()
            self._timer = None
        if self._unload_requested(now) or self._load_next(now):
            return
        self._expire_idle(now)

    def _unload_requested(self, now: float) -> bool:
        for slot in self.slots.values():
            if slot.unload_wanted and slot.state in (SlotState.READY, SlotState.ABSENT) and slot.in_flight == 0:
                self._begin(self._unload(slot, "requested"))
                return True
        return False

    def _expire_idle(self, now: float) -> None:
        wake: float | None = None
        for slot in self.slots.values():
            policy = self.policy(slot.profile)
            if slot.state != SlotState.READY or policy.idle_ttl_s <= 0 or policy.pinned:
                continue
            if slot.in_flight or slot.queue:
                continue
            due = slot.last_used + policy.idle_ttl_s
            if now >= due:
                self._begin(self._unload(slot, "idle-ttl"))
                return
            wake = due if wake is None else min(wake, due)
        if wake is not None:
            self._wake_at(wake)

    def _load_next(self, now: float) -> bool:
        """Start the next load if one can start; returns True when a transition began."""
        drained = {p for p, s in self.slots.items() if s.draining}
        for slot in self.slots.values():
            slot.draining = False
        waiting = sorted((s for s in self.slots.values() if s.queue and s.state == SlotState.ABSENT),
                         key=lambda s: s.queue[0].enqueued)
        if not waiting:
            return False
        residents = self._residents()
        room = self._room(residents)
        for slot in waiting:  # anything that fits beside goes now: it costs nobody anything
            need = self._need(slot)
            if need is None:
                return self.kick() or False
            if memory.decide(need, residents, room).fits:
                self._begin(self._load(slot, [], "fits-beside", now - slot.queue[0].enqueued))
                return True
        head = waiting[0]
        need = self._need(head)
        assert need is not None
        decision = memory.decide(need, residents, room)
        if not decision.possible:
            self._fail_waiters(head, self._too_big(head.profile, need, decision, room))
            self.kick()
            return False
        victims = [self.slots[p] for p in decision.victims]
        waited = now - head.queue[0].enqueued
        if all(v.in_flight == 0 and not v.queue for v in victims):
            # Drained for this waiter (they had work when it came) or simply unused.
            reason = "max-wait" if drained & set(decision.victims) else "unused"
            self._begin(self._load(head, victims, reason, waited))
            return True
        if waited >= self.settings.max_wait_s:
            for victim in victims:
                victim.draining = True  # finish what is in flight, admit nothing new
            if all(v.in_flight == 0 for v in victims):
                self._begin(self._load(head, victims, "max-wait", waited))
                return True
            return False  # each release kicks; the last one starts the swap
        self._wake_at(head.queue[0].enqueued + self.settings.max_wait_s)
        return False

    def _wake_at(self, when: float) -> None:
        assert self._loop is not None
        delay = max(0.0, when - time.monotonic())
        if self._timer is None or self._timer.when() > self._loop.time() + delay:
            if self._timer:
                self._timer.cancel()
            self._timer = self._loop.call_later(delay + 0.001, self.kick)

    def _residents(self) -> list[memory.Resident]:
        out = []
        for slot in self.slots.values():
            if slot.state == SlotState.ABSENT:
                continue
            need = self._need(slot, quiet=True)
            if need is None:
                continue
            policy = self.policy(slot.profile)
            # Loading elsewhere or unloading: it holds memory but is not ours to unload now.
            movable = slot.state == SlotState.READY
            out.append(memory.Resident(profile=slot.profile, footprint=need, pinned=policy.pinned or not movable,
                                       priority=policy.priority, busy=bool(slot.in_flight or slot.queue),
                                       last_used=slot.last_used))
        return out

    def _room(self, residents: list[memory.Resident] | None = None) -> dict[str, float]:
        """Free MiB per checked device; ``residents`` when the caller has them already."""
        from mcp_server.placement.planner import DEFAULT_RESERVE_MIB

        room: dict[str, float] = {}
        if self.gpus:
            reserve = self.settings.reserve_mib if self.settings.reserve_mib is not None else DEFAULT_RESERVE_MIB
            room.update({d: free - reserve for d, free in memory.gpu_free().items()})
        workers = list(self.config.host.workers)
        if self.budget_mib is not None or workers:
            residents = residents if residents is not None else self._residents()
            if self.budget_mib is not None:
                room["host"] = self.budget_mib - sum(r.footprint.mib.get("host", 0.0) for r in residents)
            room.update(memory.worker_room(workers, residents))
        return room

    def _need(self, slot: Slot, quiet: bool = False) -> memory.Footprint | None:
        """The profile's footprint (cached per settings and file); None when it cannot be estimated,
        in which case (unless ``quiet``) its waiters get the reason."""
        config = self.config
        if slot.profile not in config.profiles:
            if not quiet:
                self._fail_waiters(slot, ServeHTTPError(404, "model_not_found", f"{slot.profile} is no longer in "
                                                        f"{self.config_path.name}"))
            return None
        profile = config.profile(slot.profile)
        model = config.model_path(profile)
        key = (tuple(sorted(profile.values.items())), tuple(sorted(profile.defaults.items())), _mtime(model))
        cached = self._footprints.get(slot.profile)
        if cached and cached[0] == key:
            return cached[1]
        try:
            found = memory.footprint(config, slot.profile, self.gpus)
        except LlamaPilotError as exc:
            if not quiet:
                self._fail_waiters(slot, ServeHTTPError(503, "model_load_failed", str(exc),
                                                        code=getattr(exc, "code", "error"), profile=slot.profile))
            return None
        self._footprints[slot.profile] = (key, found)
        return found

    def _too_big(self, profile: str, need: memory.Footprint, decision: memory.Decision,
                 room: dict[str, float]) -> ServeHTTPError:
        short = memory.describe_short(decision.short_mib)
        if decision.blocked_by_pins:
            return ServeHTTPError(503, "insufficient_memory", f"{profile} lacks {short} beside what is loaded, and "
                                  f"what holds it is pinned: {', '.join(decision.blocked_by_pins)}",
                                  fix="unpin one (serve_pin) or unload it (serve_unload)", need_mib=need.mib)
        return ServeHTTPError(507, "insufficient_memory", f"{profile} can never fit: even with every other model "
                              f"unloaded it lacks {short}", need_mib=need.mib,
                              fix="plan a placement that fits (plan_placement), raise SERVE_MEMORY_BUDGET, or lower "
                                  "CTX_SIZE")

    def _fail_waiters(self, slot: Slot, error: ServeHTTPError) -> None:
        slot.last_error = error.body["error"]
        while slot.queue:
            waiter = slot.queue.popleft()
            if not waiter.future.done():
                self.counters["failed"] += 1
                waiter.future.set_exception(error)

    # -- transitions -----------------------------------------------------------------------

    def _begin(self, work: Any) -> None:
        self._generation += 1
        self._transition = asyncio.create_task(self._transit(work))

    async def _transit(self, work: Any) -> None:
        try:
            await work
        finally:
            self._transition = None
            self._generation += 1
            self.kick()

    async def _stop(self, slot: Slot) -> None:
        from mcp_server.runtime.lifecycle import NotRunning

        slot.state = SlotState.UNLOADING
        try:
            if slot.instance:
                await asyncio.to_thread(self.runtime().stop_model, slot.instance)
        except NotRunning:
            pass
        finally:
            slot.state, slot.instance, slot.base_url, slot.loaded_at = SlotState.ABSENT, None, None, None
            self.counters["unloads"] += 1

    async def _unload(self, slot: Slot, reason: str) -> None:
        try:
            if slot.state == SlotState.READY:
                await self._stop(slot)
                self.events.append(SwapEvent(at=time.time(), action="unload", profile=slot.profile, reason=reason))
        finally:
            for done in slot.unload_wanted:
                if not done.done():
                    done.set_result(None)
            slot.unload_wanted.clear()

    async def _load(self, slot: Slot, victims: list[Slot], reason: str, waited: float) -> None:
        from mcp_server.runtime.lifecycle import StartFailed, StartRefused

        victims_idle = all(v.in_flight == 0 and not v.queue for v in victims) if victims else None
        unloaded = []
        for victim in victims:
            await self._stop(victim)
            victim.draining = False
            unloaded.append(victim.profile)
        need = self._need(slot, quiet=True)
        if victims and self.gpus and need is not None:
            await self._wait_room(need)
        slot.state, slot.progress, slot.last_error = SlotState.LOADING, "starting", None
        started = time.monotonic()
        assert self._loop is not None
        loop = self._loop

        def progress(p: Any) -> None:
            loop.call_soon_threadsafe(self._progress, slot, f"{p.stage} {p.fraction:.0%}")

        try:
            view = await asyncio.to_thread(self.runtime().ensure_ready, slot.profile, start=True, progress=progress)
        except (StartFailed, StartRefused) as exc:
            slot.state = SlotState.ABSENT
            diagnosis = exc.diagnosis
            body: dict[str, Any] = {"code": diagnosis.cause, "fix": diagnosis.fix, "profile": slot.profile}
            if isinstance(exc, StartFailed):
                body["log_tail"] = exc.log_tail[-8:]
            self.events.append(SwapEvent(at=time.time(), action="failed", profile=slot.profile, reason="load-failed",
                                         unloaded=unloaded, detail=diagnosis.summary))
            self._fail_waiters(slot, ServeHTTPError(503, "model_load_failed",
                                                    f"{slot.profile} failed to load: {diagnosis.summary}", **body))
            return
        except LlamaPilotError as exc:
            slot.state = SlotState.ABSENT
            self.events.append(SwapEvent(at=time.time(), action="failed", profile=slot.profile, reason="load-failed",
                                         unloaded=unloaded, detail=str(exc)))
            self._fail_waiters(slot, ServeHTTPError(503, "model_load_failed", f"{slot.profile} failed to load: {exc}",
                                                    code=getattr(exc, "code", "error"), profile=slot.profile))
            return
        slot.state, slot.instance, slot.base_url = SlotState.READY, view.id, view.url
        slot.loaded_at = slot.last_used = time.monotonic()
        slot.progress = None
        self.counters["loads"] += 1
        if unloaded:
            self.counters["swaps"] += 1
        self.events.append(SwapEvent(at=time.time(), action="load", profile=slot.profile, reason=reason,
                                     unloaded=unloaded, waited_s=round(waited, 3), victims_idle=victims_idle,
                                     load_s=round(time.monotonic() - started, 3)))

    async def _wait_room(self, need: memory.Footprint) -> None:
        deadline = time.monotonic() + _ROOM_WAIT_S
        while time.monotonic() < deadline:
            room = await asyncio.to_thread(self._room)
            if not memory.missing(need.mib, room):
                return
            await asyncio.sleep(0.1)

    def _progress(self, slot: Slot, text: str) -> None:
        slot.progress = text
        for position, waiter in enumerate(slot.queue, 1):
            self._note(waiter, f"loading {slot.profile}: {text}; queue position {position}")

    @staticmethod
    def _note(waiter: Waiter, text: str) -> None:
        if waiter.notes is not None:
            waiter.notes.put_nowait(text)

    # -- what other doors did --------------------------------------------------------------

    async def _sync_forever(self) -> None:
        while True:
            await asyncio.sleep(_SYNC_EVERY_S)
            try:
                await self._sync()
            except LlamaPilotError:
                pass
            for slot in self.slots.values():
                for position, waiter in enumerate(slot.queue, 1):
                    self._note(waiter, f"waiting for {slot.profile} ({slot.state}"
                                       f"{', ' + slot.progress if slot.progress else ''}); queue position {position}")

    async def _sync(self) -> None:
        """Adopt instances of our profiles that run without us; notice ours that ended."""
        generation = self._generation
        listing = await asyncio.to_thread(self.runtime().status)
        if generation != self._generation or self._transition is not None:
            return  # something changed while we looked: the next sync sees it settled
        known = self.config.profiles
        live = {i.profile: i for i in listing.instances if i.status in ("loading", "ready") and i.profile in known}
        ended = {i.profile: i for i in listing.instances if i.status not in ("loading", "ready")}
        for slot in list(self.slots.values()):
            inst = live.get(slot.profile)
            if slot.state == SlotState.READY and (inst is None or inst.id != slot.instance):
                cause = ended.get(slot.profile)
                detail = cause.diagnosis.summary if cause and cause.diagnosis else "the instance is gone"
                self.events.append(SwapEvent(at=time.time(), action="lost", profile=slot.profile, reason="exited",
                                             detail=detail))
                slot.state, slot.instance, slot.base_url = SlotState.ABSENT, None, None
            elif slot.state == SlotState.LOADING and slot.external and inst is None:
                slot.state, slot.external = SlotState.ABSENT, False
        for profile, inst in live.items():
            slot = self.slot(profile)
            if slot.state in (SlotState.ABSENT, SlotState.LOADING) and (slot.state == SlotState.ABSENT or slot.external):
                if inst.status == "ready":
                    slot.state, slot.instance, slot.base_url, slot.external = SlotState.READY, inst.id, inst.url, False
                    slot.loaded_at = slot.last_used = time.monotonic()
                    self.events.append(SwapEvent(at=time.time(), action="adopt", profile=profile, reason="adopted",
                                                 detail=f"instance {inst.id} on port {inst.port}"))
                else:
                    slot.state, slot.external = SlotState.LOADING, True
        self.kick()

    # -- reporting -------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        now = time.monotonic()
        config = self.config
        models = []
        for pid in config.profiles:
            slot = self.slots.get(pid) or Slot(profile=pid)
            policy = self.policy(pid)
            cached = self._footprints.get(pid)
            models.append({
                "profile": pid, "state": slot.state.value, "aliases": policy.aliases, "pinned": policy.pinned,
                "priority": policy.priority, "idle_ttl_s": policy.idle_ttl_s, "samplers": policy.samplers,
                "in_flight": slot.in_flight, "queued": len(slot.queue),
                "oldest_wait_s": round(now - slot.queue[0].enqueued, 3) if slot.queue else None,
                "draining": slot.draining, "instance": slot.instance, "url": slot.base_url,
                "memory_mib": cached[1].mib if cached else None,
                "memory_source": cached[1].source if cached else None,
                "idle_s": round(now - slot.last_used, 1) if slot.state == SlotState.READY and slot.last_used else None,
                "served": slot.served, "progress": slot.progress, "last_error": slot.last_error})
        try:
            room = self._room()
        except LlamaPilotError:
            room = {}
        return {"running": True, "url": self.settings.url, "pid": os.getpid(), "started_at": self.started_at,
                "max_wait_s": self.settings.max_wait_s, "queue_limit": self.settings.queue_limit,
                "budget_mib": self.budget_mib, "gpus": [{"name": n, "total_mib": t} for n, t in self.gpus],
                "room_mib": {d: round(v, 1) for d, v in room.items()}, "models": models,
                "counters": dict(self.counters), "swaps": [e.model_dump() for e in self.events],
                "busy": self._transition is not None}


def _mtime(path: Path | None) -> float | None:
    try:
        return path.stat().st_mtime if path is not None else None
    except OSError:
        return None
