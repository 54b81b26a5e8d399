"""The placement operations: ``estimate_fit`` (a profile's memory per device), ``plan_placement``
(settings for a model file, optionally written into a profile) and ``calibrate`` (a running profile
measured against the estimate).

The MCP tools and CLI commands of the same names call these and only format what they return. The
arithmetic lives in ``estimate`` (one launch's memory), ``fit_replay`` (what llama-server's default
``--fit`` changes), ``planner`` (choosing settings) and ``calibration`` (what earlier launches
measured).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, Field

from mcp_server.placement import calibration
from mcp_server.engine.argv import launch_spec, profile_workers, without_flags
from mcp_server.errors import LlamaPilotError, ValidationError
from mcp_server.placement.estimate import Estimate, default_overhead, settings_from_argv, estimate as core_estimate
from mcp_server.placement.fit_replay import FitOutcome, emulate_fit
from mcp_server.model_files.layout import read_layout, require_complete
from mcp_server.placement.planner import DEFAULT_RESERVE_MIB, Plan, choose_placement
from mcp_server.profiles.config import Config
from mcp_server.profiles.edits import EditResult, update_profile

if TYPE_CHECKING:
    from mcp_server.runtime.server_log import LoadReport

_SIZE_UNITS = (("gib", 1024.0), ("gb", 1000**3 / 2**20), ("mib", 1.0), ("mb", 1000**2 / 2**20), ("g", 1024.0))


class GpuSlot(BaseModel):
    device: str = Field(description="llama.cpp's name for it: CUDA0, CUDA1, ..., or a worker's RPC0[host:port]")
    name: str | None = None
    total_mib: float | None = None
    free_mib: float = Field(description="what a new llama-server may use")
    worker: str | None = Field(None, description="the RPC worker lending it (None: a local GPU)")
    overhead_mib: float | None = Field(None, description="its own runtime overhead, where it differs from a local "
                                                         "GPU's (a worker's CPU device)")


class Inventory(BaseModel):
    source: Literal["declared", "nvml", "none"]
    gpus: list[GpuSlot]
    note: str | None = None
    visible: list[int] | None = Field(None, description="the physical GPUs these are, when narrowed to "
                                      "VISIBLE_DEVICES (renumbered CUDA0..)")

    @property
    def free(self) -> list[float]:
        return [g.free_mib for g in self.gpus]

    @property
    def names(self) -> list[str]:
        return [g.device for g in self.gpus]

    @property
    def overheads(self) -> list[float | None]:
        return [g.overhead_mib for g in self.gpus]

    def overhead(self) -> tuple[float | None, str]:
        """The calibrated per-GPU overhead for these GPUs (real ones only: a declared size has no model)."""
        return calibration.overhead_for(self.gpus[0].name if self.gpus and self.source == "nvml" else None)


def parse_gpu_sizes(spec: str) -> list[float]:
    """'24GiB,16GiB' -> [24576.0, 16384.0] (MiB). GiB, GB, MiB, MB and a bare G are understood."""
    sizes = []
    for part in spec.split(","):
        text = part.strip().lower()
        for unit, factor in _SIZE_UNITS:
            if text.endswith(unit):
                try:
                    value = float(text[: -len(unit)]) * factor
                except ValueError:
                    break
                if value <= 0:
                    break
                sizes.append(value)
                break
        else:
            raise ValidationError("gpus", spec, f"{part.strip()!r} is not a size like 24GiB (use e.g. 24GiB,16GiB)")
    return sizes


def gpu_inventory(declared: str | None = None) -> Inventory:
    """Declared sizes when given, else the GPUs NVML sees (free memory now, in CUDA order)."""
    if declared is not None:
        if declared.strip().lower() in ("", "none", "cpu", "0"):
            return Inventory(source="none", gpus=[], note="declared: no GPU")
        sizes = parse_gpu_sizes(declared)
        return Inventory(source="declared", gpus=[GpuSlot(device=f"CUDA{i}", total_mib=s, free_mib=s)
                                                   for i, s in enumerate(sizes)])
    from mcp_server.monitoring.gpu import gpu_stats

    report = gpu_stats()
    gpus = report.in_cuda_order()
    slots = [GpuSlot(device=f"CUDA{i}", name=g.name, total_mib=g.memory_total_mib,
                     free_mib=float(g.memory_free_mib or 0)) for i, g in enumerate(gpus)]
    return Inventory(source="nvml" if slots else "none", gpus=slots, note=None if slots else report.reason)


def with_workers(inventory: Inventory, config: Config, workers: list[str]) -> Inventory:
    """The devices ``workers`` lend, with their free memory as each agent reports it now, before the
    local GPUs (llama.cpp's order: RPC devices first)."""
    present = {g.worker for g in inventory.gpus if g.worker}
    workers = [w for w in workers if w not in present]  # a tune passes its workers in, asked once
    if not workers:
        return inventory
    from mcp_server.workers.client import call
    from mcp_server.workers.operations import RPC_CPU_OVERHEAD_MIB, devices_of, worker_spec

    specs = [worker_spec(config, w) for w in workers]
    slots = []
    for spec in specs:
        for d in devices_of(spec, call(spec, "worker_info")):
            slots.append(GpuSlot(device=d.device, name=f"{spec.id}: {d.name} ({d.description or '?'})",
                                 total_mib=d.total_mib, free_mib=d.free_mib, worker=spec.id,
                                 overhead_mib=None if d.gpu else RPC_CPU_OVERHEAD_MIB))
    source = inventory.source if inventory.gpus else "nvml"
    note = f"RPC workers {', '.join(workers)} first" + (f"; {inventory.note}" if inventory.note else "")
    return Inventory(source=source, gpus=slots + inventory.gpus, note=note, visible=inventory.visible)


def visible_to(inventory: Inventory, visible: list[int] | None) -> Inventory:
    """The GPUs a process with CUDA_VISIBLE_DEVICES=visible sees, renumbered CUDA0.. as llama.cpp does."""
    if visible is None or not inventory.gpus or inventory.visible is not None:
        return inventory  # already narrowed (a tune narrows once, then estimates many drafts)
    missing = [v for v in visible if v >= len(inventory.gpus)]
    if missing:
        raise ValidationError("VISIBLE_DEVICES", ",".join(map(str, visible)),
                              f"GPU {missing[0]} is not in the inventory ({len(inventory.gpus)} GPU(s))")
    gpus = [inventory.gpus[v].model_copy(update={"device": f"CUDA{i}"}) for i, v in enumerate(visible)]
    note = f"VISIBLE_DEVICES={','.join(map(str, visible))}" + (f"; {inventory.note}" if inventory.note else "")
    return Inventory(source=inventory.source, gpus=gpus, note=note, visible=visible)


# --- estimate -----------------------------------------------------------------------------------


class ProfileEstimate(BaseModel):
    profile: str
    draft: bool = Field(default=False, description="true when the estimate is of unsaved settings (model and/or "
                                                   "values given): nothing was written to models.conf")
    changes: dict[str, str] = Field(default_factory=dict, description="the draft's settings on top of the profile")
    model: str
    inventory: Inventory
    argv: list[str]
    estimate: Estimate = Field(description="per device, for the settings llama-server ends up with")
    fit: FitOutcome | None = Field(default=None, description="what llama-server's --fit would change (replayed)")
    overhead_mib: float
    overhead_source: str
    measured: calibration.Measurement | None = Field(
        default=None, description="the latest real launch of the same model file, build and settings")
    oracle: dict[str, dict[str, int]] | None = Field(
        default=None, description="llama-fit-params --fit-print: MiB per device (model, context, compute)")


def estimate_fit(config: Config, profile: str | None = None, gpus: str | None = None, *, oracle: bool = False,
                 replay_fit: bool = True, model: str | None = None, values: dict[str, str] | None = None,
                 agent: bool = False, inventory: Inventory | None = None) -> ProfileEstimate:
    """Predict what ``profile`` will use per GPU and in host RAM on the given (or the real) GPUs.

    With ``model`` and/or ``values`` it estimates a draft instead (see
    :func:`~mcp_server.profiles.edits.draft_profile`): a model file before its profile exists, or an
    existing profile with changed settings, without writing anything. ``inventory`` replaces the GPUs
    ``gpus`` would name (serve passes the real GPUs at their full size: what a model takes alone)."""
    from mcp_server.profiles.edits import draft_profile

    changes = {**(values or {}), **({"MODEL": model} if model is not None else {})}
    if profile is None or changes or profile not in config.profiles:
        # An unknown id without a model is refused there, with the hint to give the file.
        config, profile, draft = draft_profile(config, profile, dict(values or {}), model=model, agent=agent)
    else:
        draft = False
    spec = launch_spec(config.profile(profile), config)
    info = read_layout(spec.model_path)
    require_complete(info, config.profile(profile).model or spec.model_path)
    inventory = visible_to(inventory or gpu_inventory(gpus), spec.visible_devices)
    overhead, source = inventory.overhead()
    inventory = with_workers(inventory, config, [w.id for w in profile_workers(config.profile(profile), config)])
    settings = settings_from_argv(spec.argv)
    names = [g.name for g in inventory.gpus if g.worker is None]
    fit_outcome = None
    if replay_fit and settings.fit and inventory.gpus:
        settings, fit_outcome = emulate_fit(info, settings, inventory.free, overhead_mib=overhead,
                                            ctx_was_set=settings.n_ctx > 0)
    result = core_estimate(info, settings, inventory.free, overhead, device_names=inventory.names,
                           device_overheads=inventory.overheads)
    if fit_outcome is not None:  # the replay already answered what fit does
        result.notes = [n for n in result.notes if not n.startswith("fit is on")]
    measured = calibration.latest(calibration.key_for(info, spec.argv, names))
    return ProfileEstimate(profile=profile, draft=draft, changes=changes if draft else {}, model=spec.model_path,
                           inventory=inventory, argv=spec.argv,
                           estimate=result, fit=fit_outcome,
                           overhead_mib=overhead if overhead is not None else default_overhead(info),
                           overhead_source=source,
                           measured=measured, oracle=fit_params_oracle(config, spec.argv) if oracle else None)


# llama-fit-params parses its arguments as its own example: these server flags are not accepted there.
_ORACLE_DROP = {"--host": 1, "--port": 1, "--log-verbosity": 1, "-lv": 1, "--kv-unified": 0, "-kvu": 0,
                "--temp": 1, "--top-p": 1, "--top-k": 1, "--min-p": 1, "--no-context-shift": 0, "--jinja": 0,
                "--alias": 1, "-a": 1, "--metrics": 0, "--api-key": 1}
_ORACLE_LINE = re.compile(r"^(\S+)\s+(\d+)\s+(\d+)\s+(\d+)\s*$")


def fit_params_oracle(config: Config, argv: list[str]) -> dict[str, dict[str, int]]:
    """Ask llama.cpp itself (``llama-fit-params --fit-print on``, a dry run that allocates nothing)."""
    from mcp_server.engine.binary import locate_engine

    tool = locate_engine(config.host.engine).tools.get("llama-fit-params")
    if not tool:
        raise LlamaPilotError("llama-fit-params is not next to this llama-server; build_engine (`llama-pilot engine build`) makes it")
    args = [tool, *without_flags(argv, _ORACLE_DROP)]
    try:
        proc = subprocess.run([*args, "--fit-print", "on"], capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired as exc:
        raise LlamaPilotError("llama-fit-params took over 300 s") from exc
    rows = {}
    for line in proc.stdout.splitlines():
        m = _ORACLE_LINE.match(line.strip())
        if m:
            rows[m.group(1)] = {"model": int(m.group(2)), "context": int(m.group(3)), "compute": int(m.group(4))}
    if proc.returncode != 0 or not rows:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise LlamaPilotError(f"llama-fit-params failed (exit {proc.returncode}): {' | '.join(tail)}")
    return rows


def calibrate(config: Config, profile: str, note: str | None = None) -> calibration.Measurement:
    """Measure the profile's running instance (log + NVML), compare with the estimate, and store it."""
    from mcp_server.runtime.lifecycle import Runtime

    runtime = Runtime(config)
    view = runtime.ensure_ready(profile)  # a loading model is waited for; none running: NotRunning
    record = next(r for r in runtime.registry.all() if r.id == view.id)
    report = runtime.load_report(profile)
    return record_launch(record.model_path, record.argv, report, view.pid, profile=profile, note=note)


def record_launch(model_path: str | Path, argv: list[str], report: "LoadReport", pid: int | None, *,
                  profile: str | None, note: str | None = None,
                  remote: "list[GpuSlot] | None" = None) -> calibration.Measurement:
    """Line up what a loaded llama-server logged (its buffers) and NVML (its process, per GPU) with
    the estimate for its argv, and store the measurement: later estimates of the same GPU model use
    the measured overhead, and an estimate of the same settings shows it. ``calibrate`` and every
    load ``tune`` measures go through here. ``remote``: the RPC workers' devices the argv's ``--rpc``
    lends (a tune knows them), predicted first as llama.cpp orders them."""
    import datetime as dt

    from mcp_server.monitoring.gpu import gpu_stats

    ordered = gpu_stats().in_cuda_order()
    nvml = {f"CUDA{i}": float(p.used_mib) for i, g in enumerate(ordered) for p in g.processes
            if pid is not None and p.pid == pid and p.used_mib is not None}
    info = read_layout(model_path)
    names = [g.name for g in ordered]
    overhead, _ = calibration.overhead_for(names[0] if names else None)
    settings = settings_from_argv(argv)
    capacity = [float(g.memory_total_mib or 0) for g in ordered]
    remote = remote or []
    predicted = core_estimate(info, settings, [g.free_mib for g in remote] + capacity, overhead,
                              device_names=[g.device for g in remote] + [f"CUDA{i}" for i in range(len(ordered))],
                              device_overheads=[g.overhead_mib for g in remote] + [None] * len(ordered))
    logged = {b.device: b.total_mib for b in report.devices}
    logged_compute = {b.device: b.compute_mib + b.output_mib for b in report.devices}
    measurement = calibration.compare(
        calibration.key_for(info, argv, names), predicted, logged, logged_compute, nvml,
        build=report.build_number, profile=profile, at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        note=note or ("fit was on and placed layers itself: predicted placement may differ" if settings.fit and
                      settings.n_gpu_layers < 0 and not settings.tensor_split and not settings.overrides and ordered
                      else None))
    calibration.save(measurement)
    return measurement


# --- plan ----------------------------------------------------------------------------------------


class PlanResult(BaseModel):
    plan: Plan
    inventory: Inventory
    edit: EditResult | None = Field(default=None, description="the profile edit (apply_placement only)")


def plan_placement(config: Config | None, model: str, ctx: int = 0, gpus: str | None = None, *,
                   kv_type: str = "f16", slots: int = 1, ubatch: int = 512,
                   reserve_mib: float = DEFAULT_RESERVE_MIB, agent: bool = True,
                   workers: list[str] | None = None) -> PlanResult:
    """Choose placement settings for a model file. Reads only; :func:`apply_placement` writes them.

    ``model`` is found as :func:`~mcp_server.model_files.local.model_file` finds it (agents: only
    under MODELS_DIR)."""
    from mcp_server.model_files.local import model_file

    if workers and config is None:
        raise ValidationError("workers", ",".join(workers), "needs a models.conf whose [global] names them")
    return _plan(model_file(config, model, agent=agent), model, ctx, gpus, kv_type, slots, ubatch, reserve_mib,
                 config if workers else None, workers or [])


def _plan(path: Path, name: str, ctx: int, gpus: str | None, kv_type: str, slots: int, ubatch: int,
          reserve_mib: float, config: Config | None = None, workers: list[str] | None = None) -> PlanResult:
    info = read_layout(path)
    require_complete(info, name)  # a plan for a half-downloaded file would only fail at start
    inventory = gpu_inventory(gpus)
    overhead, _ = inventory.overhead()
    if workers and config is not None:
        inventory = with_workers(inventory, config, workers)
    remote = sum(1 for g in inventory.gpus if g.worker)
    result = choose_placement(info, gpus_free_mib=inventory.free, ctx=ctx, kv_type=kv_type, slots=slots,
                              ubatch=ubatch, reserve_mib=reserve_mib, overhead_mib=overhead,
                              host_free_mib=_host_available_mib(), device_names=inventory.names,
                              device_overheads=inventory.overheads, remote=remote)
    if workers:
        result.settings["WORKERS"] = ",".join(workers)
    return PlanResult(plan=result, inventory=inventory)


def apply_placement(config: Config, profile: str, model: str | None = None, ctx: int | None = None,
                    gpus: str | None = None, *, kv_type: str | None = None, slots: int | None = None,
                    ubatch: int = 512, reserve_mib: float = DEFAULT_RESERVE_MIB, dry_run: bool = False,
                    agent: bool = True) -> PlanResult:
    """Plan placement for ``profile``'s model file and write the settings into it, in one edit.

    What is not given comes from the profile as it is: its MODEL, CTX_SIZE (0: the training
    context), KV_CACHE_TYPE_K and PARALLEL, so applying a plan changes placement and nothing the
    user chose. A ``model`` other than the profile's points MODEL at it in the same edit (the diff
    shows it); placement keys that would contradict the plan are removed."""
    from mcp_server.model_files.local import model_file

    current = config.profile(profile)
    name = model if model is not None else current.model
    if not name:
        raise ValidationError("model", "", f"[{profile}] has no MODEL; give the model file to plan")
    path = model_file(config, name, agent=agent) if model is not None else config.model_path(current)
    if path is None:
        raise ValidationError("model", name, f"[{profile}]'s MODEL cannot be found; give the model file to plan")
    planned = _plan(path, name, ctx if ctx is not None else _int(current.get("CTX_SIZE"), 0), gpus,
                    kv_type or current.get("KV_CACHE_TYPE_K") or "f16",
                    slots if slots is not None else _int(current.get("PARALLEL"), 1), ubatch, reserve_mib,
                    config, [w.id for w in profile_workers(current, config)])
    existing = config.model_path(current)
    moves = existing is None or existing.resolve() != path.resolve()
    planned.edit = write_plan(config, profile, planned.plan, dry_run=dry_run,
                              model=_model_value(config, path) if moves else None, agent=agent)
    return planned


def _int(value: str | None, default: int) -> int:
    try:
        return int(value) if value is not None else default
    except ValueError:
        return default


def _model_value(config: Config, path: Path) -> str:
    """MODEL as written in models.conf: relative to MODELS_DIR when the file is inside it."""
    root = Path(config.host.models_dir).resolve()
    resolved = path.resolve()
    return str(resolved.relative_to(root)) if root in resolved.parents else str(resolved)


def write_plan(config: Config, profile: str, result: Plan, dry_run: bool = False,
               model: str | None = None, agent: bool = False) -> EditResult:
    """Set the plan's keys in ``profile`` (and MODEL, when given) and remove placement keys that would
    contradict it, in one edit."""
    section = config.document.section(config.profile(profile).id)
    present = {e.key for e in section.entries} if section is not None else set()
    values = {**({"MODEL": model} if model is not None else {}), **result.settings}
    return update_profile(config, profile, set=values, unset=[k for k in result.unset if k in present],
                          dry_run=dry_run, agent=agent)


def _host_available_mib() -> float | None:
    try:
        import psutil

        return psutil.virtual_memory().available / 2**20
    except Exception:  # noqa: BLE001 - host RAM is advice only
        return None


__all__ = ["Inventory", "PlanResult", "ProfileEstimate", "apply_placement", "estimate_fit",
           "fit_params_oracle", "gpu_inventory", "parse_gpu_sizes", "plan_placement", "write_plan"]
