"""Workers seen from the machine that runs the model: list, status, start, stop, and what a profile's
start and stop do with them.

``prepare_workers`` runs before a profile's llama-server starts: it asks each worker the profile
names for its build (RPC needs the same llama.cpp build on both ends, so another build is refused
before anything starts) and starts its RPC server. ``release_workers`` runs when the instance ends:
it stops the RPC servers that start brought up and that no other running instance uses.
``lent_workers`` does both around a tune, whose loads are not instances.
"""

from __future__ import annotations

import concurrent.futures
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Iterator

from pydantic import BaseModel, Field

from mcp_server.errors import ValidationError
from mcp_server.profiles.config import Config
from mcp_server.workers.client import WorkerBusy, WorkerError, WorkerVersionMismatch, call
from mcp_server.workers.spec import WorkerSpec, WorkerUse

if TYPE_CHECKING:
    from mcp_server.runtime.registry import InstanceRecord
    from mcp_server.workers.agent import WorkerInfo

# What a worker's CPU device costs beyond the buffers llama-server logs for it: the RPC server's own
# process, 5 MiB resident when idle on the CPU build of 11434 (measured), rounded up to 16.
RPC_CPU_OVERHEAD_MIB = 16.0


class WorkerDevice(BaseModel):
    device: str = Field(description="llama.cpp's buffer name for it on this machine: RPC<k>[host:port] (the name "
                                    "OVERRIDE_TENSORS and the load report use)")
    worker: str
    name: str = Field(description="the device's name on the worker (CPU, CUDA0, ...)")
    description: str | None = None
    total_mib: float | None = None
    free_mib: float = Field(description="what the worker reports free now (GPU: NVML; CPU: available RAM)")
    gpu: bool


class WorkerView(BaseModel):
    id: str
    url: str
    endpoint: str = Field(description="the RPC endpoint llama-server's --rpc gets")
    reachable: bool
    error: str | None = Field(None, description="why the agent could not be asked (code: message)")
    build_number: int | None = None
    same_build: bool | None = Field(None, description="whether the worker's llama.cpp build is this machine's")
    rpc_running: bool = False
    rpc_clients: int = 0
    rpc_rss_mib: float | None = None
    rpc_gpu_used_mib: dict[str, float] = Field(default_factory=dict)
    devices: list[WorkerDevice] = Field(default_factory=list)
    used_by: list[str] = Field(default_factory=list, description="running profiles that use this worker")
    info: Any = Field(None, description="the agent's full worker_info answer")


class WorkerList(BaseModel):
    workers: list[WorkerView]
    local_build: int | None = None


def worker_spec(config: Config, worker: str) -> WorkerSpec:
    known = config.host.workers
    if worker not in known:
        raise ValidationError("worker", worker, f"is not in [global] (known: {', '.join(known) or 'none'}); "
                              "add WORKER_<id>=http://host:8765 there")
    return known[worker]


def _local_build(config: Config) -> int | None:
    from mcp_server.engine.binary import locate_engine

    try:
        return locate_engine(config.host.engine).build_number
    except Exception:  # noqa: BLE001 - a listing still shows the workers without a local engine
        return None


def devices_of(spec: WorkerSpec, info: "WorkerInfo | dict[str, Any]") -> list[WorkerDevice]:
    """The devices a worker lends: what its RPC server reports when it runs, else its GPUs (those
    ``devices`` names, or all), else its CPU with the RAM available."""
    data = info if isinstance(info, dict) else info.model_dump()
    rpc = data.get("rpc") or {}
    out = []
    if rpc.get("running") and rpc.get("devices"):
        for k, d in enumerate(rpc["devices"]):
            gpu = not d["name"].upper().startswith("CPU")
            free = float(d["free_mib"])
            if gpu:  # NVML now, not the figure the server printed when it started
                now = next((g for g in data.get("gpus") or [] if g["device"] == d["name"]), None)
                free = float(now["free_mib"]) if now and now.get("free_mib") is not None else free
            else:
                free = float(data["ram_available_mib"])
            out.append(WorkerDevice(device=f"RPC{k}[{spec.endpoint}]", worker=spec.id, name=d["name"],
                                    description=d["description"], total_mib=d["total_mib"], free_mib=free, gpu=gpu))
        return out
    gpus = [g for g in data.get("gpus") or [] if not spec.devices or g["device"] in spec.devices]
    if gpus:
        return [WorkerDevice(device=f"RPC{k}[{spec.endpoint}]", worker=spec.id, name=g["device"],
                             description=g.get("name"), total_mib=g.get("total_mib"),
                             free_mib=float(g.get("free_mib") or 0), gpu=True) for k, g in enumerate(gpus)]
    return [WorkerDevice(device=f"RPC0[{spec.endpoint}]", worker=spec.id, name="CPU", description=data.get("cpu"),
                         total_mib=data.get("ram_total_mib"), free_mib=float(data["ram_available_mib"]), gpu=False)]


def _view(config: Config, spec: WorkerSpec, local_build: int | None, used_by: list[str]) -> WorkerView:
    base = WorkerView(id=spec.id, url=spec.url, endpoint=spec.endpoint, reachable=False, used_by=used_by)
    try:
        info = call(spec, "worker_info")
    except WorkerError as exc:
        return base.model_copy(update={"error": f"{exc.code}: {exc}"})
    rpc = info.get("rpc") or {}
    build = info.get("build_number")
    return base.model_copy(update={
        "reachable": True, "build_number": build,
        "same_build": None if build is None or local_build is None else build == local_build,
        "rpc_running": bool(rpc.get("running")), "rpc_clients": int(rpc.get("clients") or 0),
        "rpc_rss_mib": rpc.get("rss_mib"), "rpc_gpu_used_mib": rpc.get("gpu_used_mib") or {},
        "devices": devices_of(spec, info), "info": info})


def _users(config: Config) -> dict[str, list[str]]:
    from mcp_server.runtime.registry import Registry, live_records

    users: dict[str, list[str]] = {}
    for record in live_records(Registry().all()):
        for use in record.workers:
            users.setdefault(use.id, []).append(record.profile)
    return users


def list_workers(config: Config) -> WorkerList:
    """Every worker [global] names, each asked at once (an unreachable one says why)."""
    local = _local_build(config)
    users = _users(config)
    specs = list(config.host.workers.values())
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, min(8, len(specs)))) as pool:
        views = list(pool.map(lambda s: _view(config, s, local, users.get(s.id, [])), specs))
    return WorkerList(workers=views, local_build=local)


def worker_status(config: Config, worker: str) -> WorkerView:
    return _view(config, worker_spec(config, worker), _local_build(config), _users(config).get(worker, []))


def _check_build(spec: WorkerSpec, info: dict[str, Any], local_build: int | None) -> None:
    build = info.get("build_number")
    if not info.get("rpc_server"):
        raise WorkerError(spec.id, "its engine has no ggml-rpc-server; run `llama-pilot engine build` there")
    if local_build is not None and build != local_build:
        raise WorkerVersionMismatch(spec.id, f"runs llama.cpp build {build}, this machine {local_build}: the RPC "
                                    "protocol needs the same build on both ends; build the same release there "
                                    "(`llama-pilot engine build`)")


def _start(spec: WorkerSpec, local_build: int | None, exclusive: bool = False) -> tuple[dict[str, Any], bool]:
    info = call(spec, "worker_info")
    _check_build(spec, info, local_build)
    rpc = info.get("rpc") or {}
    was_running = bool(rpc.get("running"))
    clients = int(rpc.get("clients") or 0)
    if exclusive and was_running and clients:
        # What the registry cannot see: a tune's llama-server, or another machine's, connected now.
        raise WorkerBusy(spec.id, f"its RPC server has {clients} client connection(s) open (a llama-server this "
                         "machine does not run as an instance: a tune's, or another machine's) and serves one at "
                         "a time", user="the llama-server connected to it")
    arguments: dict[str, Any] = {"port": spec.rpc_port, "cache": spec.cache}
    if spec.threads:
        arguments["threads"] = spec.threads
    if spec.devices:
        arguments["devices"] = spec.devices
    status = call(spec, "rpc_start", arguments, timeout_s=60)
    return {**info, "rpc": status}, not was_running


def start_worker(config: Config, worker: str) -> WorkerView:
    """Start a worker's RPC server (its build checked first)."""
    spec = worker_spec(config, worker)
    local = _local_build(config)
    _start(spec, local)
    return _view(config, spec, local, _users(config).get(worker, []))


def stop_worker(config: Config, worker: str, force: bool = False) -> WorkerView:
    """Stop a worker's RPC server; refused while a running profile uses it, unless ``force``."""
    spec = worker_spec(config, worker)
    users = _users(config).get(worker, [])
    if users and not force:
        raise ValidationError("worker", worker, f"is in use by {', '.join(users)}: stop those first, or force "
                              "(their llama-server loses its devices and fails)")
    call(spec, "rpc_stop")
    return _view(config, spec, _local_build(config), users)


def prepare_workers(config: Config, specs: list[WorkerSpec], local_build: int | None) -> list[WorkerUse]:
    """Before a start: every worker's build checked, then its RPC server started. A failure stops
    the RPC servers this call started, so a refused start leaves the workers as they were."""
    uses: list[WorkerUse] = []
    try:
        for spec in specs:
            info, started = _start(spec, local_build, exclusive=True)
            uses.append(WorkerUse(id=spec.id, endpoint=spec.endpoint, started=started,
                                  build_number=info.get("build_number"),
                                  devices=[d.device for d in devices_of(spec, info)]))
    except WorkerError:
        _stop_started(config, uses, set())
        raise
    return uses


def refuse_busy(profile: str, workers: list[str], live: "list[InstanceRecord]") -> None:
    """A worker a running instance uses cannot take another llama-server: its ggml-rpc-server
    serves one client at a time, and the second would hang at load waiting for the first."""
    for worker in workers:
        for record in live:
            if any(u.id == worker for u in record.workers):
                raise WorkerBusy(worker, f"its RPC server is serving {record.profile} (instance {record.id}) and "
                                 f"serves one llama-server at a time: stop {record.profile} first, or give "
                                 f"{profile} other WORKERS", user=record.profile)


@contextmanager
def lent_workers(config: Config, profile: str, specs: list[WorkerSpec]) -> Iterator[list[WorkerUse]]:
    """The workers' RPC servers up for work that is not a running instance (a tune's loads), and
    afterwards stopped again where this started them and no running profile uses them."""
    from mcp_server.runtime.registry import Registry, live_records

    refuse_busy(profile, [s.id for s in specs], live_records(Registry().all()))
    uses = prepare_workers(config, specs, _local_build(config))
    try:
        yield uses
    finally:
        return_workers(config, uses, live_records(Registry().all()))


def release_workers(config: Config, record: "InstanceRecord", live: "list[InstanceRecord]") -> list[str]:
    """After an instance ended: stop the RPC servers its start brought up that no other live
    instance uses. Returns what could not be stopped (a worker gone is not an error here)."""
    return return_workers(config, record.workers, [r for r in live if r.id != record.id])


def return_workers(config: Config, uses: list[WorkerUse], others: "list[InstanceRecord]") -> list[str]:
    """Stop the RPC servers ``uses`` started that none of ``others`` uses."""
    return _stop_started(config, uses, {u.id for r in others for u in r.workers})


def _stop_started(config: Config, uses: list[WorkerUse], busy: set[str]) -> list[str]:
    problems = []
    for use in uses:
        if not use.started or use.id in busy or use.id not in config.host.workers:
            continue
        try:
            call(config.host.workers[use.id], "rpc_stop")
        except WorkerError as exc:
            problems.append(str(exc))
    return problems


def lost_worker(config: Config, uses: list[WorkerUse]) -> str | None:
    """Which worker's RPC server is gone (after llama-server reported a lost RPC server)."""
    for use in uses:
        spec = config.host.workers.get(use.id)
        if spec is None:
            continue
        try:
            rpc = call(spec, "worker_info", timeout_s=10).get("rpc") or {}
        except WorkerError as exc:
            return f"{use.id} ({exc.code}: its agent does not answer either)"
        if not rpc.get("running"):
            ended = rpc.get("last_exit")
            return f"{use.id} (its RPC server is not running{'; last log line: ' + ended if ended else ''})"
    return None


def gpu_stats_with_workers(config: Config | None):  # type: ignore[no-untyped-def]
    """``gpu_stats`` with the devices the configured workers lend beside the local GPUs."""
    from mcp_server.monitoring.gpu import gpu_stats

    report = gpu_stats()
    if config is None or not config.host.workers:
        return report
    listing = list_workers(config)
    report.workers = [d for v in listing.workers for d in v.devices]
    report.worker_errors = [f"{v.id}: {v.error}" for v in listing.workers if not v.reachable]
    return report
