"""Does one more profile fit beside what is resident, and if not, what should be unloaded?

Devices are keys: ``gpu0``, ``gpu1`` (NVML's, that is CUDA's PCI order) and ``host``. What a
profile occupies on each comes from the estimator, computed as if it had the machine to itself
(so a ``--fit`` profile is not squeezed by what happens to be loaded). What a device has room for
is read when serve decides (loads are one at a time, so nothing half-loaded skews it):

* a GPU: NVML's free memory now, minus the reserve the planner keeps;
* the host (checked when ``SERVE_MEMORY_BUDGET`` is set, or when there is no GPU): the budget
  minus what the residents are estimated to hold there.

An RPC worker a profile uses (``WORKERS``) is a device of its own, ``worker:<id>``, with room for
one: its ggml-rpc-server serves one llama-server at a time, so two profiles on one worker never sit
side by side and the one resident there is unloaded like any other. What the profile holds on the
worker's own memory was settled when it was planned; this machine's GPUs and host are counted as above.

The choice is pure arithmetic over these numbers (``decide``), so it is tested without a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pydantic import BaseModel, Field

from mcp_server.profiles.config import Config


class Footprint(BaseModel):
    profile: str
    mib: dict[str, float] = Field(description="device (gpu0, gpu1, host) -> MiB the profile occupies there; "
                                  "worker:<id> -> 1 for each RPC worker it uses (a worker takes one profile)")
    source: str = Field(description="estimate | measured (the calibration store's latest launch of these settings)")


@dataclass
class Resident:
    """A loaded profile as the decision sees it."""

    profile: str
    footprint: Footprint
    pinned: bool = False
    priority: int = 0
    busy: bool = False  # requests in flight or queued for it
    last_used: float = 0.0


@dataclass
class Decision:
    fits: bool
    victims: list[str] = field(default_factory=list)
    short_mib: dict[str, float] = field(default_factory=dict)  # still missing with every allowed unload
    blocked_by_pins: list[str] = field(default_factory=list)

    @property
    def possible(self) -> bool:
        return self.fits or bool(self.victims)


def missing(need: dict[str, float], room: dict[str, float]) -> dict[str, float]:
    """Per device that serve checks, the MiB ``need`` lacks in ``room`` (empty: it fits)."""
    return {d: need[d] - room.get(d, 0.0) for d in need if need[d] > 0 and d in room and need[d] > room[d] + 1e-6}


def _after(room: dict[str, float], unloaded: list[Resident]) -> dict[str, float]:
    """The room once ``unloaded`` are gone."""
    freed = dict(room)
    for resident in unloaded:
        for device, mib in resident.footprint.mib.items():
            if device in freed:
                freed[device] += mib
    return freed


def _holds(resident: Resident, devices: dict[str, float]) -> bool:
    return any(resident.footprint.mib.get(d, 0) > 0 for d in devices)


def _wanted(resident: Resident) -> tuple[bool, int, float]:
    """Least wanted first: idle before busy, lowest priority, least recently used."""
    return resident.busy, resident.priority, resident.last_used


def decide(need: Footprint, residents: list[Resident], room: dict[str, float]) -> Decision:
    """Whether ``need`` fits in ``room`` (device -> MiB free for it), else the fewest, least wanted
    residents whose unloading makes it fit: idle before busy, lowest priority first, least recently
    used first; never a pinned one, and only residents holding memory on a device that is short."""
    short = missing(need.mib, room)
    if not short:
        return Decision(fits=True)
    candidates = sorted((r for r in residents if not r.pinned and _holds(r, short)), key=_wanted)
    chosen: list[Resident] = []
    for resident in candidates:
        if not missing(need.mib, _after(room, chosen)):
            break
        chosen.append(resident)
    still = missing(need.mib, _after(room, chosen))
    if still:
        pins = [r.profile for r in residents if r.pinned and _holds(r, still)]
        return Decision(fits=False, short_mib=still, blocked_by_pins=pins)
    # Greedy order may have taken one that a later, bigger victim made unnecessary: drop those,
    # most wanted first, so only what is needed is unloaded.
    for resident in sorted(chosen, key=_wanted, reverse=True):
        rest = [r for r in chosen if r is not resident]
        if not missing(need.mib, _after(room, rest)):
            chosen = rest
    return Decision(fits=False, victims=[r.profile for r in chosen])


# --- what profiles occupy ---------------------------------------------------------------------


def gpu_totals() -> list[tuple[str | None, float]]:
    """(name, total MiB) of each GPU NVML sees, in CUDA's PCI order; [] without a GPU."""
    from mcp_server.monitoring.gpu import gpu_stats

    return [(g.name, float(g.memory_total_mib or 0)) for g in gpu_stats().in_cuda_order()]


def gpu_free() -> dict[str, float]:
    from mcp_server.monitoring.gpu import gpu_stats

    return {f"gpu{i}": float(g.memory_free_mib or 0) for i, g in enumerate(gpu_stats().in_cuda_order())}


def footprint(config: Config, profile_id: str, gpus: list[tuple[str | None, float]]) -> Footprint:
    """The profile's memory per device when it has the GPUs to itself (estimator + calibration)."""
    from mcp_server.engine.argv import launch_spec, profile_workers
    from mcp_server.placement.operations import GpuSlot, Inventory, estimate_fit

    inventory = Inventory(source="nvml" if gpus else "none",
                          gpus=[GpuSlot(device=f"CUDA{i}", name=n, total_mib=t, free_mib=t)
                                for i, (n, t) in enumerate(gpus)])
    result = estimate_fit(config, profile_id, inventory=inventory)
    visible = launch_spec(config.profile(profile_id), config).visible_devices or list(range(len(gpus)))
    mib: dict[str, float] = {"host": round(result.estimate.host.total_mib, 1)}
    source = "estimate"
    measured = {m.device: m.nvml_mib for m in result.measured.devices} if result.measured else {}
    for device in result.estimate.devices:
        if not device.device.startswith("CUDA"):
            continue  # a worker's RPC device: that machine's memory, not one of this machine's GPUs
        i = int(device.device[len("CUDA"):])
        value = device.total_mib
        if measured.get(device.device):  # a real launch of these exact settings beats the model of one
            value, source = float(measured[device.device] or 0), "measured"
        if value > 0 and i < len(visible):
            mib[f"gpu{visible[i]}"] = round(value, 1)
    for worker in profile_workers(config.profile(profile_id), config):
        mib[worker_device(worker.id)] = 1.0
    return Footprint(profile=profile_id, mib=mib, source=source)


WORKER_PREFIX = "worker:"


def worker_device(worker: str) -> str:
    return f"{WORKER_PREFIX}{worker}"


def worker_room(workers: list[str], residents: list[Resident]) -> dict[str, float]:
    """Each worker's room: one profile, less the resident that uses it."""
    room = {}
    for worker in workers:
        key = worker_device(worker)
        room[key] = 1.0 - sum(r.footprint.mib.get(key, 0.0) for r in residents)
    return room


def describe_short(short: dict[str, float]) -> str:
    """'gpu0 812 MiB, worker box2' for a message."""
    return ", ".join(f"worker {d[len(WORKER_PREFIX):]}" if d.startswith(WORKER_PREFIX) else f"{d} {mib:.0f} MiB"
                     for d, mib in short.items())


def parse_budget(text: str) -> float:
    """'12GiB' -> MiB; the error names the key."""
    from mcp_server.errors import ValidationError
    from mcp_server.placement.operations import parse_gpu_sizes

    try:
        (value,) = parse_gpu_sizes(text)
    except (ValidationError, ValueError) as exc:
        raise ValidationError("SERVE_MEMORY_BUDGET", text, "expected one size such as 12GiB or 1500MiB") from exc
    return value
