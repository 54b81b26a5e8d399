"""GPU stats from NVML (``nvidia-ml-py``): per GPU, per process, and which llama-pilot instance owns it.

:func:`gpu_stats` answers with a :class:`GpuReport`. Where there is no NVIDIA driver, no GPU, or
no ``pynvml``, the report says so (``gpus=[]`` and a plain ``reason``) instead of raising. A field
NVML refuses (a datacenter GPU has no fan, a laptop may not report power) is ``None``: nothing is
ever estimated or made up, and a field refused as *not supported* is not asked for again.

**One NVML initialisation per process.** ``nvmlInit`` is called once, lazily, per NVML source
and reused by every later read (the sampler reads every second); it is re-done only after NVML
reports that it was shut down or a GPU was lost. A failed start is remembered for
:data:`RETRY_INIT_S` seconds so a machine without a driver does not retry every second.

**Two indices per GPU.** ``nvml_index`` is NVML's and ``nvidia-smi``'s (PCI bus order).
``cuda_index`` is the index CUDA programs (llama.cpp's ``CUDA0``, ``CUDA1``) give the GPU under
*this* process's ``CUDA_DEVICE_ORDER`` and ``CUDA_VISIBLE_DEVICES``; ``None`` when the GPU is
hidden. Each GPU process additionally carries the index its owning instance sees (its own
``CUDA_VISIBLE_DEVICES``, or the container's devices). The CUDA order is found like this:

- ``CUDA_DEVICE_ORDER=PCI_BUS_ID``: PCI bus id order, which is NVML's order. Exact.
- the default, ``FASTEST_FIRST``: CUDA's rule is undocumented ("fastest first, using a simple
  heuristic"). When this process runs against the real NVML and has no ``CUDA_VISIBLE_DEVICES``,
  the CUDA driver itself is asked once (``libcuda``: ``cuInit`` + ``cuDeviceGetPCIBusId`` per
  ordinal; this creates no context and takes no GPU memory), which is exact. Otherwise (no
  libcuda, an injected source, or visibility already narrowed) the order is *estimated* by
  sorting on compute capability (highest first), then CUDA cores (``nvmlDeviceGetNumGpuCores``;
  total memory where the driver does not report cores), then PCI bus id. The orders people report
  (RTX 3090 before GTX 1660, Tesla P40 before GTX 970; "the greatest compute capability as 0")
  fit "newest architecture first", but none we found separates architecture from speed, so on an
  RTX 4090 (8.9, bus 01) + RTX 5070 Ti (12.0, bus 02) box the estimate makes the 5070 Ti
  ``CUDA0`` although the 4090 is faster, and that may be wrong. The report's
  ``cuda_order_source`` says how the order was found; ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` (for
  llama-server and for llama-pilot) makes CUDA, NVML and nvidia-smi agree everywhere.
- ``CUDA_VISIBLE_DEVICES`` is then applied as CUDA does: a comma-separated list of indices into
  that order and/or GPU UUIDs (``GPU-...``, any unique prefix; llama-pilot also takes them without
  ``GPU-``); the listed devices
  are renumbered 0.. in list order; an invalid, ambiguous or repeated entry hides it and every
  entry after it; an empty value hides all GPUs. MIG devices (``MIG-...``) are not mapped.

Memory is in whole MiB rounded to the nearest, as nvidia-smi prints it.

**Owners.** A GPU process belongs to a live instance when its pid is the record's server pid,
or it descends from the server or from its keeper (native), or it runs in the instance's container
(Docker: its ``/proc/<pid>/cgroup`` names the container id, or it descends from the container's
main process). A stale record whose pid now belongs to another program (start time differs)
owns nothing.
"""

from __future__ import annotations

import ctypes
import os
import threading
import time
import weakref
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, Callable, Iterable, Literal

from pydantic import BaseModel, Field

if TYPE_CHECKING:
    from mcp_server.runtime.registry import InstanceRecord

MIB = 1024 * 1024
RETRY_INIT_S = 30.0

# NVML return codes (nvml.h); an injected source's errors carry the same ``value``.
NVML_ERROR_UNINITIALIZED = 1
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NO_PERMISSION = 4
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_FUNCTION_NOT_FOUND = 13
NVML_ERROR_GPU_IS_LOST = 15

CudaOrderSource = Literal["pci-bus-id", "cuda-driver", "heuristic"]


class GpuProcess(BaseModel):
    """One process holding memory on one GPU."""

    pid: int
    used_mib: int | None = Field(description="GPU memory the process holds here; None where NVML cannot say")
    type: Literal["compute", "graphics", "compute+graphics"] = "compute"
    name: str | None = Field(default=None, description="process name, when visible from here")
    instance_id: str | None = Field(default=None, description="the llama-pilot instance that owns it")
    profile: str | None = None
    container_id: str | None = None
    cuda_index: int | None = Field(default=None, description="this GPU's CUDA<n> inside the owning instance")


class GpuInfo(BaseModel):
    """One GPU as NVML sees it; a field NVML refuses is None."""

    nvml_index: int = Field(description="NVML's and nvidia-smi's index (PCI bus order)")
    cuda_index: int | None = Field(description="CUDA's index under this process's CUDA_DEVICE_ORDER and "
                                               "CUDA_VISIBLE_DEVICES (llama.cpp's CUDA<n>); None when hidden")
    uuid: str | None
    pci_bus_id: str | None
    name: str | None
    compute_capability: str | None = Field(description='e.g. "8.9"')
    cuda_cores: int | None = None
    memory_total_mib: int | None
    memory_used_mib: int | None
    memory_free_mib: int | None
    memory_reserved_mib: int | None = Field(default=None, description="held by the driver (NVML memory v2)")
    gpu_util_pct: int | None
    mem_util_pct: int | None
    temperature_c: int | None
    power_w: float | None
    power_limit_w: float | None
    sm_clock_mhz: int | None
    mem_clock_mhz: int | None
    fan_pct: int | None
    processes: list[GpuProcess] = Field(default_factory=list)


class GpuReport(BaseModel):
    gpus: list[GpuInfo]
    reason: str | None = Field(default=None, description="why gpus is empty, or what could not be read")
    driver_version: str | None = None
    cuda_driver_version: str | None = Field(default=None, description='highest CUDA the driver supports, e.g. "12.8"')
    cuda_device_order: str = Field(default="FASTEST_FIRST", description="CUDA_DEVICE_ORDER in effect here")
    cuda_visible_devices: str | None = Field(default=None, description="CUDA_VISIBLE_DEVICES in effect here")
    cuda_order_source: CudaOrderSource | None = Field(
        default=None, description="pci-bus-id: exact; cuda-driver: asked libcuda, exact; heuristic: estimated")
    at: float
    workers: list[Any] = Field(default_factory=list, description="devices RPC workers lend (models.conf's "
                                                                 "WORKER_<id> lines), as each agent reports them now")
    worker_errors: list[str] = Field(default_factory=list, description="workers whose agent could not be asked")

    def in_cuda_order(self) -> list[GpuInfo]:
        """The GPUs as a CUDA program numbers them (CUDA0, CUDA1, ...), NVML order where unknown."""
        return sorted(self.gpus, key=lambda g: g.cuda_index if g.cuda_index is not None else g.nvml_index)


# -- NVML session -------------------------------------------------------------------------------


class _Static(SimpleNamespace):
    """What does not change while the driver runs: read once per device per session."""


class _Session:
    """One NVML initialisation for one source, with static facts and refused fields cached."""

    def __init__(self, source: Any) -> None:
        self.source = source
        self.lock = threading.Lock()
        self.ready = False
        self.failed: tuple[float, str] | None = None
        self.static: dict[int, _Static] = {}
        self.unsupported: set[tuple[int, str]] = set()
        self.driver_version: str | None = None
        self.cuda_driver_version: str | None = None
        self.memory_v2: bool | None = None  # None: not tried yet

    @property
    def error(self) -> type[BaseException]:
        return getattr(self.source, "NVMLError", Exception)

    def start(self) -> str | None:
        """Initialise NVML if needed; returns a reason when it cannot be used."""
        if self.ready:
            return None
        if self.failed and time.monotonic() - self.failed[0] < RETRY_INIT_S:
            return self.failed[1]
        try:
            self.source.nvmlInit()
        except self.error as exc:
            reason = _init_reason(exc)
            self.failed = (time.monotonic(), reason)
            return reason
        except OSError as exc:  # a fake or an old binding that lets the loader's error through
            reason = f"no NVIDIA driver: the NVML library could not be loaded ({exc})"
            self.failed = (time.monotonic(), reason)
            return reason
        self.ready, self.failed = True, None
        self.static.clear()
        self.driver_version = _text(self._call(-1, "driver", self.source.nvmlSystemGetDriverVersion))
        self.cuda_driver_version = _cuda_version(self._cuda_driver_int())
        return None

    def reset(self) -> None:
        self.ready = False
        self.static.clear()

    def _cuda_driver_int(self) -> int | None:
        for name in ("nvmlSystemGetCudaDriverVersion_v2", "nvmlSystemGetCudaDriverVersion"):
            fn = getattr(self.source, name, None)
            if fn is not None:
                value = self._call(-1, name, fn)
                if value is not None:
                    return int(value)
        return None

    def _call(self, index: int, field: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """One NVML call: its value, or None when refused (and never asked again if unsupported)."""
        if (index, field) in self.unsupported:
            return None
        try:
            return fn(*args, **kwargs)
        except self.error as exc:
            code = getattr(exc, "value", None)
            if code in (NVML_ERROR_NOT_SUPPORTED, NVML_ERROR_FUNCTION_NOT_FOUND):
                self.unsupported.add((index, field))
            elif code in (NVML_ERROR_UNINITIALIZED, NVML_ERROR_GPU_IS_LOST):
                raise _SessionLost(str(exc)) from exc
            return None


class _SessionLost(Exception):
    pass


_sessions: "weakref.WeakKeyDictionary[Any, _Session]" = weakref.WeakKeyDictionary()
_sessions_by_id: dict[int, _Session] = {}  # sources that cannot be weakly referenced
_sessions_lock = threading.Lock()


def _session(source: Any) -> _Session:
    with _sessions_lock:
        try:
            session = _sessions.get(source)
            if session is None:
                session = _sessions[source] = _Session(source)
        except TypeError:
            session = _sessions_by_id.setdefault(id(source), _Session(source))
        return session


def _init_reason(exc: BaseException) -> str:
    code = getattr(exc, "value", None)
    if code == NVML_ERROR_LIBRARY_NOT_FOUND:
        return "no NVIDIA driver: libnvidia-ml.so.1 (NVML) was not found, so there is no GPU to report"
    if code == NVML_ERROR_DRIVER_NOT_LOADED:
        return "the NVIDIA driver is not loaded (NVML: Driver Not Loaded); no GPU can be read"
    if code == NVML_ERROR_NO_PERMISSION:
        return "NVML refused access to the GPUs (no permission on /dev/nvidia*)"
    return f"NVML could not start: {exc}"


def _default_source() -> tuple[Any | None, str | None]:
    try:
        import pynvml
    except ImportError:
        return None, "the nvidia-ml-py package is not installed (pip install nvidia-ml-py); GPUs cannot be read"
    return pynvml, None


def close(source: Any | None = None) -> None:
    """Shut NVML down for ``source`` (default: pynvml). Only needed by tests and long-lived tools."""
    if source is None:
        source, _ = _default_source()
        if source is None:
            return
    session = _session(source)
    with session.lock:
        if session.ready:
            try:
                source.nvmlShutdown()
            except session.error:
                pass
        session.reset()
        session.failed = None


# -- reading ------------------------------------------------------------------------------------


def gpu_stats(source: Any | None = None, instances: "Iterable[InstanceRecord] | None" = None, *,
              env: dict[str, str] | None = None,
              cuda_probe: Callable[[], list[str] | None] | None = None) -> GpuReport:
    """Every GPU NVML reports, with its processes mapped to llama-pilot instances.

    ``source``: an NVML-like object with pynvml's function names (default: ``pynvml``).
    ``instances``: instance records (default: the live ones in the registry).
    ``env``: the environment whose CUDA_DEVICE_ORDER / CUDA_VISIBLE_DEVICES apply (default: ours).
    ``cuda_probe``: returns the PCI bus ids of the GPUs CUDA sees, in CUDA order (default: ask
    libcuda once per process, only with the real pynvml; an injected source gets the heuristic).
    """
    env = dict(os.environ if env is None else env)
    order_name = "PCI_BUS_ID" if env.get("CUDA_DEVICE_ORDER", "").strip().upper() == "PCI_BUS_ID" else "FASTEST_FIRST"
    visible = env.get("CUDA_VISIBLE_DEVICES")
    base = dict(cuda_device_order=order_name, cuda_visible_devices=visible)
    real = source is None
    if source is None:
        source, missing = _default_source()
        if source is None:
            return GpuReport(gpus=[], reason=missing, at=time.time(), **base)
    if cuda_probe is None and real:
        cuda_probe = cuda_driver_order
    session = _session(source)
    gpus: list[GpuInfo] = []
    problems: list[str] = []
    for attempt in (1, 2):
        with session.lock:
            try:
                reason = session.start()
                if reason:
                    return GpuReport(gpus=[], reason=reason, at=time.time(), **base)
                gpus, problems = _read_all(session)
            except _SessionLost as exc:
                session.reset()
                if attempt == 2:
                    return GpuReport(gpus=[], reason=f"NVML stopped answering: {exc}", at=time.time(), **base)
                continue
            driver, cuda_driver = session.driver_version, session.cuda_driver_version
        break
    if not gpus and not problems:
        problems.append("NVML found no NVIDIA GPU")
    orders, order_source = cuda_orders(gpus, order_name, visible, cuda_probe)
    mapping = apply_visible_devices(orders[order_name], gpus, visible)
    for gpu in gpus:
        gpu.cuda_index = mapping.get(gpu.nvml_index)
    _map_processes(gpus, _live(instances), env, orders)
    return GpuReport(gpus=gpus, reason="; ".join(problems) or None, driver_version=driver,
                     cuda_driver_version=cuda_driver, cuda_order_source=order_source if gpus else None,
                     at=time.time(), **base)


def gpu_pids(source: Any | None = None) -> set[int] | None:
    """The pids holding memory on any GPU (compute or graphics), through the one NVML session.

    None when GPUs cannot be read (no pynvml, no driver, NVML refused): the caller cannot tell.
    Cheaper than :func:`gpu_stats`: no device facts, no process names, no owners."""
    if source is None:
        source, _ = _default_source()
        if source is None:
            return None
    session = _session(source)
    for _attempt in (1, 2):
        with session.lock:
            try:
                if session.start():
                    return None
                return _holder_pids(session)
            except _SessionLost:
                session.reset()  # the driver restarted or a GPU was lost: start again once
    return None


def _holder_pids(session: _Session) -> set[int] | None:
    src = session.source
    count = session._call(-1, "count", src.nvmlDeviceGetCount)
    if count is None:
        return None
    pids: set[int] = set()
    for index in range(int(count)):
        handle = session._call(index, "handle", src.nvmlDeviceGetHandleByIndex, index)
        if handle is None:
            continue
        for fn_name in ("nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetGraphicsRunningProcesses"):
            fn = getattr(src, fn_name, None)
            if fn is not None:
                pids |= {int(proc.pid) for proc in session._call(index, fn_name, fn, handle) or []}
    return pids


def _read_all(session: _Session) -> tuple[list[GpuInfo], list[str]]:
    src = session.source
    count = session._call(-1, "count", src.nvmlDeviceGetCount)
    if count is None:
        return [], ["NVML could not count the GPUs"]
    if len(session.static) and max(session.static) >= count:
        session.static.clear()  # a GPU went away
    gpus, problems = [], []
    for index in range(int(count)):
        handle = session._call(index, "handle", src.nvmlDeviceGetHandleByIndex, index)
        if handle is None:
            problems.append(f"NVML could not open GPU {index}")
            continue
        gpus.append(_read_one(session, index, handle))
    return gpus, problems


def _static(session: _Session, index: int, handle: Any) -> _Static:
    cached = session.static.get(index)
    if cached is not None:
        return cached
    src, call = session.source, session._call
    pci = call(index, "pci", src.nvmlDeviceGetPciInfo, handle)
    cc = call(index, "cc", src.nvmlDeviceGetCudaComputeCapability, handle)
    cores_fn = getattr(src, "nvmlDeviceGetNumGpuCores", None)
    static = _Static(
        uuid=_text(call(index, "uuid", src.nvmlDeviceGetUUID, handle)),
        name=_text(call(index, "name", src.nvmlDeviceGetName, handle)),
        pci_bus_id=_text(getattr(pci, "busId", None)) if pci is not None else None,
        cc=(int(cc[0]), int(cc[1])) if cc else None,
        cores=call(index, "cores", cores_fn, handle) if cores_fn else None,
    )
    session.static[index] = static
    return static


def _memory(session: _Session, index: int, handle: Any) -> Any:
    src = session.source
    version = getattr(src, "nvmlMemory_v2", None)
    if version is not None and session.memory_v2 is not False:
        # v2 separates what the driver reserves from "used", as nvidia-smi shows it.
        try:
            mem = src.nvmlDeviceGetMemoryInfo(handle, version=version)
            session.memory_v2 = True
            return mem
        except (session.error, TypeError) as exc:
            if getattr(exc, "value", None) in (NVML_ERROR_UNINITIALIZED, NVML_ERROR_GPU_IS_LOST):
                raise _SessionLost(str(exc)) from exc
            session.memory_v2 = False
    return session._call(index, "memory", src.nvmlDeviceGetMemoryInfo, handle)


def _read_one(session: _Session, index: int, handle: Any) -> GpuInfo:
    src, call = session.source, session._call
    static = _static(session, index, handle)
    mem = _memory(session, index, handle)
    util = call(index, "util", src.nvmlDeviceGetUtilizationRates, handle)
    temp = call(index, "temp", src.nvmlDeviceGetTemperature, handle, getattr(src, "NVML_TEMPERATURE_GPU", 0))
    power = call(index, "power", src.nvmlDeviceGetPowerUsage, handle)
    limit = call(index, "power_limit", src.nvmlDeviceGetEnforcedPowerLimit, handle)
    sm = call(index, "sm_clock", src.nvmlDeviceGetClockInfo, handle, getattr(src, "NVML_CLOCK_SM", 1))
    memclk = call(index, "mem_clock", src.nvmlDeviceGetClockInfo, handle, getattr(src, "NVML_CLOCK_MEM", 2))
    fan = call(index, "fan", src.nvmlDeviceGetFanSpeed, handle)
    return GpuInfo(
        nvml_index=index, cuda_index=None, uuid=static.uuid, pci_bus_id=static.pci_bus_id, name=static.name,
        compute_capability=f"{static.cc[0]}.{static.cc[1]}" if static.cc else None, cuda_cores=static.cores,
        memory_total_mib=_mib(getattr(mem, "total", None)), memory_used_mib=_mib(getattr(mem, "used", None)),
        memory_free_mib=_mib(getattr(mem, "free", None)), memory_reserved_mib=_mib(getattr(mem, "reserved", None)),
        gpu_util_pct=_int(getattr(util, "gpu", None)), mem_util_pct=_int(getattr(util, "memory", None)),
        temperature_c=_int(temp), power_w=_watts(power), power_limit_w=_watts(limit),
        sm_clock_mhz=_int(sm), mem_clock_mhz=_int(memclk), fan_pct=_int(fan),
        processes=_processes(session, index, handle),
    )


def _processes(session: _Session, index: int, handle: Any) -> list[GpuProcess]:
    src = session.source
    found: dict[int, GpuProcess] = {}
    for kind, fn_name in (("compute", "nvmlDeviceGetComputeRunningProcesses"),
                          ("graphics", "nvmlDeviceGetGraphicsRunningProcesses")):
        fn = getattr(src, fn_name, None)
        if fn is None:
            continue
        for proc in session._call(index, fn_name, fn, handle) or []:
            pid = int(proc.pid)
            used = _mib(getattr(proc, "usedGpuMemory", None))
            known = found.get(pid)
            if known is None:
                found[pid] = GpuProcess(pid=pid, used_mib=used, type=kind)  # type: ignore[arg-type]
            else:
                if known.type != kind:
                    known.type = "compute+graphics"
                if used is not None and (known.used_mib is None or used > known.used_mib):
                    known.used_mib = used
    for proc in found.values():
        proc.name = _process_name(proc.pid)
    return sorted(found.values(), key=lambda p: p.pid)


# -- CUDA order ---------------------------------------------------------------------------------


def _bus_key(bus_id: str | None) -> tuple[int, int, int, int]:
    """'00000000:01:00.0' (NVML) and '0000:01:00.0' (CUDA) compare equal."""
    if not bus_id:
        return (1 << 32, 0, 0, 0)
    try:
        domain, bus, rest = bus_id.strip().lower().split(":")
        device, function = rest.split(".")
        return (int(domain, 16), int(bus, 16), int(device, 16), int(function, 16))
    except ValueError:
        return (1 << 32, 0, 0, 0)


def heuristic_fastest_first(gpus: list[GpuInfo]) -> list[int]:
    """NVML indices in the order CUDA's FASTEST_FIRST is estimated to enumerate them.

    Compute capability (highest first), then CUDA cores (or, unless every GPU reports cores,
    total memory), then PCI bus id. See the module docstring for how good an estimate this is.
    """
    use_cores = all(g.cuda_cores for g in gpus)

    def key(g: GpuInfo) -> tuple[Any, ...]:
        cc = tuple(int(x) for x in g.compute_capability.split(".")) if g.compute_capability else (0, 0)
        size = (g.cuda_cores if use_cores else g.memory_total_mib) or 0
        return (-cc[0], -cc[1], -size, _bus_key(g.pci_bus_id))

    return [g.nvml_index for g in sorted(gpus, key=key)]


def pci_order(gpus: list[GpuInfo]) -> list[int]:
    return [g.nvml_index for g in sorted(gpus, key=lambda g: (_bus_key(g.pci_bus_id), g.nvml_index))]


def apply_visible_devices(order: list[int], gpus: list[GpuInfo], visible: str | None) -> dict[int, int]:
    """CUDA_VISIBLE_DEVICES over ``order`` (NVML indices in CUDA order) -> {nvml index: cuda index}."""
    if visible is None:
        return {nvml: cuda for cuda, nvml in enumerate(order)}
    by_nvml = {g.nvml_index: g for g in gpus}
    chosen: list[int] = []
    for raw in visible.split(","):
        entry = raw.strip()
        match: int | None = None
        if entry.lstrip("+").isdigit():
            position = int(entry)
            match = order[position] if position < len(order) else None
        elif entry and not entry.upper().startswith("MIG-"):
            wanted = entry.lower().removeprefix("gpu-")
            hits = [n for n in order if (by_nvml[n].uuid or "").lower().removeprefix("gpu-").startswith(wanted)]
            match = hits[0] if len(hits) == 1 and wanted else None
        if match is None or match in chosen:
            break  # CUDA ignores this entry and every one after it
        chosen.append(match)
    return {nvml: cuda for cuda, nvml in enumerate(chosen)}


def cuda_orders(gpus: list[GpuInfo], order_name: str, visible: str | None,
                probe: Callable[[], list[str] | None] | None) -> tuple[dict[str, list[int]], CudaOrderSource]:
    """The full CUDA enumeration (NVML indices, before CUDA_VISIBLE_DEVICES) for both orders, and
    how the one in effect here was found. The driver is asked only where its answer is the full
    FASTEST_FIRST order: this process uses that order and hides nothing."""
    fastest, fastest_source = heuristic_fastest_first(gpus), "heuristic"
    if probe is not None and order_name == "FASTEST_FIRST" and visible is None and gpus:
        bus_ids = probe()
        if bus_ids is not None:
            by_bus = {_bus_key(g.pci_bus_id): g.nvml_index for g in gpus}
            order = [by_bus.get(_bus_key(b)) for b in bus_ids]
            if len(order) == len(gpus) and None not in order and len(set(order)) == len(order):
                fastest, fastest_source = [o for o in order if o is not None], "cuda-driver"
    orders = {"PCI_BUS_ID": pci_order(gpus), "FASTEST_FIRST": fastest}
    used = "pci-bus-id" if order_name == "PCI_BUS_ID" else fastest_source
    return orders, used  # type: ignore[return-value]


_probe_lock = threading.Lock()
_probe_result: list[list[str] | None] = []


def cuda_driver_order() -> list[str] | None:
    """PCI bus ids of the GPUs this process's CUDA driver enumerates, in its order; asked once.

    None when libcuda is missing or fails. ``cuInit`` creates no context and allocates no GPU
    memory; the answer reflects this process's CUDA_DEVICE_ORDER and CUDA_VISIBLE_DEVICES, fixed
    by the driver at ``cuInit``.
    """
    with _probe_lock:
        if not _probe_result:
            _probe_result.append(_ask_libcuda())
        return _probe_result[0]


def _ask_libcuda() -> list[str] | None:
    try:
        lib = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None
    try:
        status = lib.cuInit(0)
        if status == 100:  # CUDA_ERROR_NO_DEVICE
            return []
        if status != 0:
            return None
        count = ctypes.c_int(0)
        if lib.cuDeviceGetCount(ctypes.byref(count)) != 0:
            return None
        bus_ids = []
        for ordinal in range(count.value):
            device = ctypes.c_int(0)
            buffer = ctypes.create_string_buffer(64)
            if lib.cuDeviceGet(ctypes.byref(device), ordinal) != 0:
                return None
            if lib.cuDeviceGetPCIBusId(buffer, 64, device) != 0:
                return None
            bus_ids.append(buffer.value.decode())
        return bus_ids
    except (AttributeError, OSError):
        return None


# -- owners -------------------------------------------------------------------------------------


def _live(instances: "Iterable[InstanceRecord] | None") -> "list[InstanceRecord]":
    from mcp_server.runtime.registry import live_records

    return live_records(instances)


def _cgroup_text(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cgroup").read_text()
    except OSError:
        return ""


def _process_name(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip() or None
    except OSError:
        return None


def _parent(pid: int) -> int | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    try:
        return int(text[text.rfind(")") + 2:].split()[1])
    except (IndexError, ValueError):
        return None


def _genuine(record: "InstanceRecord") -> bool:
    """The record's pid is still the process it started (not a reused pid)."""
    if not record.pid:
        return False
    if record.pid_create_time is None:
        return True
    import psutil

    try:
        return abs(psutil.Process(record.pid).create_time() - record.pid_create_time) < 0.01
    except psutil.Error:
        return False


class Owners:
    """Maps a pid to the live instance that owns it (see the module docstring)."""

    def __init__(self, records: "Iterable[InstanceRecord]") -> None:
        self.roots: dict[int, InstanceRecord] = {}
        self.containers: list[InstanceRecord] = []
        for record in records:
            if not record.is_live:
                continue
            if record.pid and _genuine(record):
                self.roots[record.pid] = record
            if record.backend == "native" and record.supervisor_pid:
                self.roots.setdefault(record.supervisor_pid, record)
            if record.backend == "docker" and record.container_id:
                self.containers.append(record)
        self._cache: dict[int, InstanceRecord | None] = {}

    def __call__(self, pid: int) -> "InstanceRecord | None":
        if pid not in self._cache:
            self._cache[pid] = self._find(pid)
        return self._cache[pid]

    def _find(self, pid: int) -> "InstanceRecord | None":
        if pid in self.roots:
            return self.roots[pid]
        if self.containers:
            cgroup = _cgroup_text(pid)
            for record in self.containers:
                if record.container_id and record.container_id in cgroup:
                    return record
        current: int | None = pid
        for _ in range(64):  # up the parent chain to init
            current = _parent(current)
            if current is None or current <= 1:
                return None
            if current in self.roots:
                return self.roots[current]
        return None


def _map_processes(gpus: list[GpuInfo], records: "list[InstanceRecord]", env: dict[str, str],
                   orders: dict[str, list[int]]) -> None:
    if not records:
        return
    owners = Owners(records)
    views: dict[str, dict[int, int]] = {}
    for gpu in gpus:
        for proc in gpu.processes:
            record = owners(proc.pid)
            if record is None:
                continue
            proc.instance_id, proc.profile = record.id, record.profile
            proc.container_id = record.container_id
            if record.id not in views:
                views[record.id] = instance_cuda_view(gpus, record, env, orders)
            proc.cuda_index = views[record.id].get(gpu.nvml_index)


def instance_cuda_view(gpus: list[GpuInfo], record: "InstanceRecord", env: dict[str, str],
                       orders: dict[str, list[int]] | None = None) -> dict[int, int]:
    """{nvml index: the CUDA index that instance's llama-server gives the GPU}.

    Native: the record's CUDA_VISIBLE_DEVICES (else ours) over the CUDA order chosen by the
    record's CUDA_DEVICE_ORDER (else ours). Docker: the container gets exactly
    ``visible_devices`` (NVML indices, as Docker's device requests count them; every GPU when
    unset) and its CUDA numbers those in the chosen order.
    """
    if orders is None:
        orders, _ = cuda_orders(gpus, "FASTEST_FIRST", "", None)
    order_name = (record.env.get("CUDA_DEVICE_ORDER") or env.get("CUDA_DEVICE_ORDER") or "").strip().upper()
    order = orders["PCI_BUS_ID" if order_name == "PCI_BUS_ID" else "FASTEST_FIRST"]
    if record.backend == "docker":
        allowed = set(record.visible_devices) if record.visible_devices is not None else set(order)
        return {nvml: cuda for cuda, nvml in enumerate(n for n in order if n in allowed)}
    visible = record.env.get("CUDA_VISIBLE_DEVICES", env.get("CUDA_VISIBLE_DEVICES"))
    return apply_visible_devices(order, gpus, visible)


# -- small helpers ------------------------------------------------------------------------------


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    return str(value).strip("\x00 ") or None


def _mib(value: Any) -> int | None:
    """Bytes -> whole MiB, rounded to the nearest as nvidia-smi shows them (825032704 B: 787)."""
    return (int(value) + MIB // 2) // MIB if isinstance(value, (int, float)) and value >= 0 else None


def _int(value: Any) -> int | None:
    return int(value) if isinstance(value, (int, float)) else None


def _watts(milliwatts: Any) -> float | None:
    return round(milliwatts / 1000.0, 1) if isinstance(milliwatts, (int, float)) else None


def _cuda_version(value: int | None) -> str | None:
    if not value:
        return None
    return f"{value // 1000}.{(value % 1000) // 10}"


# -- a fake NVML --------------------------------------------------------------------------------


class FakeNvmlError(Exception):
    """pynvml.NVMLError's shape: ``value`` is the NVML return code."""

    def __init__(self, value: int) -> None:
        self.value = value
        super().__init__({1: "Uninitialized", 3: "Not Supported", 4: "Insufficient Permissions",
                          9: "Driver Not Loaded", 12: "NVML Shared Library Not Found",
                          15: "GPU is lost"}.get(value, f"NVML error {value}"))


def fake_gpu(name: str, bus: str, cc: tuple[int, int], cores: int, total_mib: int, power_limit_w: float,
             uuid: str, **values: Any) -> dict[str, Any]:
    """One fake GPU: static facts plus any dynamic value (used_mib, util, temp, power_w, ...)."""
    return {"name": name, "bus": bus, "cc": cc, "cores": cores, "total_mib": total_mib,
            "power_limit_w": power_limit_w, "uuid": uuid, "used_mib": 512, "reserved_mib": 300, "util": 0,
            "mem_util": 0, "temp": 35, "power_w": 20.0, "sm_clock": 210, "mem_clock": 405, "fan": 30,
            "processes": [], "graphics": [], **values}


def rtx_4090_and_5070_ti() -> list[dict[str, Any]]:
    """A mixed desktop pair: the 4090 on bus 01 (NVML 0), the 5070 Ti on bus 02 (NVML 1)."""
    return [
        fake_gpu("NVIDIA GeForce RTX 4090", "00000000:01:00.0", (8, 9), 16384, 24564, 450.0,
                 "GPU-4090a1b2-0000-1111-2222-333344445555"),
        fake_gpu("NVIDIA GeForce RTX 5070 Ti", "00000000:02:00.0", (12, 0), 8960, 16303, 300.0,
                 "GPU-5070c3d4-6666-7777-8888-9999aaaabbbb"),
    ]


class FakeNvml:
    """An NVML-like source for tests, benchmarks and UI work without a GPU.

    ``gpus`` are :func:`fake_gpu` dicts (default: :func:`rtx_4090_and_5070_ti`); edit them
    between reads to change what the next read sees. ``fail`` maps a field name ("fan",
    "power", "temp", "util", "uuid", "cc", "cores", "memory", "handle:1", ...) to an NVML error
    code that calls for it raise; ``init_error`` makes nvmlInit fail. ``calls`` counts calls.
    """

    NVMLError = FakeNvmlError
    NVML_TEMPERATURE_GPU = 0
    NVML_CLOCK_SM = 1
    NVML_CLOCK_MEM = 2
    nvmlMemory_v2 = 0x02000028

    def __init__(self, gpus: list[dict[str, Any]] | None = None, *, driver: str = "575.64.03",
                 cuda_driver: int = 12090, init_error: int | None = None,
                 fail: dict[str, int] | None = None) -> None:
        self.gpus = gpus if gpus is not None else rtx_4090_and_5070_ti()
        self.driver, self.cuda_driver = driver, cuda_driver
        self.init_error = init_error
        self.fail = dict(fail or {})
        self.calls: dict[str, int] = {}
        self.initialised = 0

    def _count(self, name: str) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1

    def _gpu(self, handle: int, field: str) -> dict[str, Any]:
        if not self.initialised:
            raise FakeNvmlError(NVML_ERROR_UNINITIALIZED)
        code = self.fail.get(field, self.fail.get(f"{field}:{handle}"))
        if code is not None:
            raise FakeNvmlError(code)
        return self.gpus[handle]

    def nvmlInit(self) -> None:
        self._count("nvmlInit")
        if self.init_error is not None:
            raise FakeNvmlError(self.init_error)
        self.initialised += 1

    def nvmlShutdown(self) -> None:
        self._count("nvmlShutdown")
        self.initialised = max(0, self.initialised - 1)

    def nvmlSystemGetDriverVersion(self) -> str:
        return self.driver

    def nvmlSystemGetCudaDriverVersion_v2(self) -> int:
        return self.cuda_driver

    def nvmlDeviceGetCount(self) -> int:
        self._count("nvmlDeviceGetCount")
        if not self.initialised:
            raise FakeNvmlError(NVML_ERROR_UNINITIALIZED)
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        self._gpu(index, "handle")
        return index

    def nvmlDeviceGetUUID(self, h: int) -> str:
        self._count("nvmlDeviceGetUUID")
        return self._gpu(h, "uuid")["uuid"]

    def nvmlDeviceGetName(self, h: int) -> bytes:
        return self._gpu(h, "name")["name"].encode()  # older pynvml returned bytes

    def nvmlDeviceGetPciInfo(self, h: int) -> Any:
        return SimpleNamespace(busId=self._gpu(h, "pci")["bus"].encode())

    def nvmlDeviceGetCudaComputeCapability(self, h: int) -> tuple[int, int]:
        return self._gpu(h, "cc")["cc"]

    def nvmlDeviceGetNumGpuCores(self, h: int) -> int:
        return self._gpu(h, "cores")["cores"]

    def nvmlDeviceGetMemoryInfo(self, h: int, version: int | None = None) -> Any:
        g = self._gpu(h, "memory")
        total, used = g["total_mib"] * MIB, g["used_mib"] * MIB
        reserved = g["reserved_mib"] * MIB if version else 0
        return SimpleNamespace(total=total, used=used, free=total - used - reserved, reserved=reserved)

    def nvmlDeviceGetUtilizationRates(self, h: int) -> Any:
        g = self._gpu(h, "util")
        return SimpleNamespace(gpu=g["util"], memory=g["mem_util"])

    def nvmlDeviceGetTemperature(self, h: int, sensor: int) -> int:
        return self._gpu(h, "temp")["temp"]

    def nvmlDeviceGetPowerUsage(self, h: int) -> int:
        return int(self._gpu(h, "power")["power_w"] * 1000)

    def nvmlDeviceGetEnforcedPowerLimit(self, h: int) -> int:
        return int(self._gpu(h, "power_limit")["power_limit_w"] * 1000)

    def nvmlDeviceGetClockInfo(self, h: int, clock: int) -> int:
        g = self._gpu(h, "sm_clock" if clock == self.NVML_CLOCK_SM else "mem_clock")
        return g["sm_clock" if clock == self.NVML_CLOCK_SM else "mem_clock"]

    def nvmlDeviceGetFanSpeed(self, h: int) -> int:
        self._count("nvmlDeviceGetFanSpeed")
        return self._gpu(h, "fan")["fan"]

    def nvmlDeviceGetComputeRunningProcesses(self, h: int) -> list[Any]:
        return [SimpleNamespace(pid=pid, usedGpuMemory=None if mib is None else mib * MIB)
                for pid, mib in self._gpu(h, "processes")["processes"]]

    def nvmlDeviceGetGraphicsRunningProcesses(self, h: int) -> list[Any]:
        return [SimpleNamespace(pid=pid, usedGpuMemory=None if mib is None else mib * MIB)
                for pid, mib in self._gpu(h, "graphics")["graphics"]]
