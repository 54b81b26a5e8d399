"""Reading llama-server's start-up log: load progress, the load report, and why a start failed.

llama.cpp prints everything we need while it loads: the build, how many layers went to which
device, every buffer it allocated (model weights, KV cache, recurrent state, compute, output),
graph splits, the context and slots it settled on, and a precise error when something fails.
The log file holds several runs; each function looks only at the last one.
"""

from __future__ import annotations

import re
from pydantic import BaseModel, ConfigDict, Field

from mcp_server.runtime.registry import Diagnosis

SEPARATOR = "----- llama-pilot "
_ANSI_RE = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
# Recent builds prefix each line with elapsed time and a level letter: "0.01.681.626 I load_tensors: ...".
_PREFIX_RE = re.compile(r"^\d+\.\d{2}\.\d{3}\.\d{3} [A-Z] ")


def strip_ansi(text: str) -> str:
    return _ANSI_RE.sub("", text)


def _lines(text: str) -> list[str]:
    """The last run's lines without colour codes or timestamp prefixes, stripped."""
    return [_PREFIX_RE.sub("", line).strip() for line in strip_ansi(last_run(text)).splitlines()]


def last_run(text: str) -> str:
    """The part of a log after the last llama-pilot separator line."""
    index = text.rfind(SEPARATOR)
    if index < 0:
        return text
    newline = text.find("\n", index)
    return text[newline + 1:] if newline >= 0 else ""


# --- load report ---------------------------------------------------------------------------

_BUFFER_RE = re.compile(
    r"^(?P<src>\w+):\s+(?P<dev>[A-Za-z0-9_\[\]:.-]+?)\s+(?P<kind>model|KV|RS|compute|output)\s+buffer size\s*=\s*"
    r"(?P<mib>[0-9.]+) MiB")
_OFFLOAD_RE = re.compile(r"offloaded (\d+)/(\d+) layers to GPU")
_BUILD_RE = re.compile(r"\bbuild:? (\d+) \(([^)]*)\)")
_KV_INT_RE = re.compile(r"^(?:llama_context|print_info|llama_model_loader):\s+(\w+)\s+=\s+(\S+)")
_SPLITS_RE = re.compile(r"(?:graph splits|graph: nodes = \d+, splits)\s*=\s*(\d+)")
_NODES_RE = re.compile(r"graph(?: nodes|: nodes)\s*=\s*(\d+)")
_FILE_SIZE_RE = re.compile(r"file size\s*=\s*([0-9.]+) (MiB|GiB)")
_LISTEN_RE = re.compile(r"listening on (http\S+)")

KINDS = {"model": "weights", "KV": "kv_cache", "RS": "recurrent_state", "compute": "compute", "output": "output"}


class DeviceBuffers(BaseModel):
    # Built on first use, not at import: most commands never need it (start-up is measured).
    model_config = ConfigDict(defer_build=True)

    device: str
    weights_mib: float = 0.0
    kv_cache_mib: float = 0.0
    recurrent_state_mib: float = 0.0
    compute_mib: float = 0.0
    output_mib: float = 0.0

    @property
    def total_mib(self) -> float:
        return round(self.weights_mib + self.kv_cache_mib + self.recurrent_state_mib + self.compute_mib
                     + self.output_mib, 2)


class LoadReport(BaseModel):
    # Built on first use, not at import: most commands never need it (start-up is measured).
    model_config = ConfigDict(defer_build=True)

    build_number: int | None = None
    build_commit: str | None = None
    architecture: str | None = None
    model_file_mib: float | None = None
    layers_offloaded: int | None = None
    layers_total: int | None = None
    devices: list[DeviceBuffers] = Field(default_factory=list)
    total_by_device_mib: dict[str, float] = Field(default_factory=dict)
    graph_splits: int | None = None
    graph_nodes: int | None = None
    n_ctx: int | None = None
    n_ctx_seq: int | None = Field(default=None, description="context per slot")
    slots: int | None = Field(default=None, description="n_seq_max: parallel sequences")
    n_batch: int | None = None
    n_ubatch: int | None = None
    flash_attn: str | None = None
    listening: str | None = None
    loaded: bool = False
    load_seconds: float | None = None


def parse_load_report(text: str) -> LoadReport:
    """Everything llama.cpp logged about the last load."""
    report = LoadReport()
    devices: dict[str, DeviceBuffers] = {}
    for line in _lines(text):
        if m := _BUILD_RE.search(line):
            report.build_number, report.build_commit = int(m.group(1)), m.group(2)
        elif m := _BUFFER_RE.match(line):
            dev = devices.setdefault(m.group("dev"), DeviceBuffers(device=m.group("dev")))
            field = f"{KINDS[m.group('kind')]}_mib"
            setattr(dev, field, round(getattr(dev, field) + float(m.group("mib")), 2))
        elif m := _OFFLOAD_RE.search(line):
            report.layers_offloaded, report.layers_total = int(m.group(1)), int(m.group(2))
        elif m := _SPLITS_RE.search(line):
            report.graph_splits = int(m.group(1))
            if n := _NODES_RE.search(line):
                report.graph_nodes = int(n.group(1))
        elif m := _FILE_SIZE_RE.search(line):
            size = float(m.group(1))
            report.model_file_mib = size * 1024 if m.group(2) == "GiB" else size
        elif m := _LISTEN_RE.search(line):
            report.listening = m.group(1)
        elif line.endswith("model loaded"):
            report.loaded = True
        elif m := _KV_INT_RE.match(line):
            _take_setting(report, m.group(1), m.group(2))
    report.devices = list(devices.values())
    report.total_by_device_mib = {d.device: d.total_mib for d in report.devices}
    return report


def _take_setting(report: LoadReport, key: str, value: str) -> None:
    ints = {"n_ctx": "n_ctx", "n_ctx_seq": "n_ctx_seq", "n_seq_max": "slots", "n_batch": "n_batch",
            "n_ubatch": "n_ubatch"}
    if key in ints and value.isdigit():
        setattr(report, ints[key], int(value))
    elif key == "flash_attn":
        report.flash_attn = value
    elif key == "arch":
        report.architecture = value


# --- progress ------------------------------------------------------------------------------


class LoadProgress(BaseModel):
    stage: str
    fraction: float


# Stages in the order llama-server goes through them, with the share of load time each
# typically ends at; loading tensors dominates and reports its own dots (one per percent).
_STAGES = (
    ("fitting params to device memory", "fitting to free memory", 0.02),
    ("llama_model_loader: loaded meta data", "reading metadata", 0.05),
    ("load_tensors: loading model tensors", "loading weights", 0.10),
    ("llama_context:", "creating context", 0.90),
    ("llama_kv_cache", "allocating KV cache", 0.93),
    ("compute buffer size", "reserving compute buffers", 0.96),
    ("warming up the model", "warming up", 0.98),
    ("listening on http", "listening", 1.0),
)


def load_progress(text: str) -> LoadProgress:
    """Where the last load is, from the log alone (``/health`` only says 503 until it is done)."""
    run = "\n".join(_lines(text))
    stage, fraction = "starting", 0.0
    for marker, name, end in _STAGES:
        if marker in run:
            stage, fraction = name, end
    if stage == "loading weights":
        start = run.find("load_tensors: loading model tensors")
        dots = _progress_dots(run[start:])
        fraction = 0.10 + 0.80 * min(dots, 100) / 100
    return LoadProgress(stage=stage, fraction=round(fraction, 3))


def _progress_dots(segment: str) -> int:
    # llama.cpp's default load callback prints one '.' per percent on lines of their own.
    return sum(len(line) for line in segment.splitlines() if line and set(line) == {"."})


# --- diagnosis -----------------------------------------------------------------------------

_OOM_PATTERNS = (
    re.compile(r"(?:cudaMalloc|cuMemCreate|allocating .* on device (?P<devnum>\d+)).*out of memory", re.I),
    re.compile(r"failed to allocate (?P<dev>\S+) buffer of size", re.I),
    re.compile(r"unable to allocate (?P<dev>\S+) buffer", re.I),
    re.compile(r"out of memory", re.I),
    re.compile(r"failed to allocate buffer for kv cache", re.I),
    re.compile(r"failed to allocate compute (?:pp |tg )?buffers", re.I),
)


def _find(lines: list[str], *needles: str) -> list[str]:
    return [line for line in lines if any(n.lower() in line.lower() for n in needles)]


def explain_exit(text: str, exit_code: int | None, *, timed_out: bool = False, port: int | None = None) -> Diagnosis:
    """Classify why the last start failed, with a fix; unknown failures carry the last log lines."""
    lines = [line for line in _lines(text) if line]
    tail = lines[-12:]

    oom = [line for line in lines if any(p.search(line) for p in _OOM_PATTERNS)]
    if oom:
        return _oom_diagnosis(lines, oom)
    if hits := _find(lines, "failed to connect to"):
        where = re.search(r"[Ff]ailed to connect to (\S+)", hits[0])
        return Diagnosis(cause="worker-unreachable", summary="no RPC server answered at "
                         f"{where.group(1) if where else 'a worker endpoint'}",
                         fix="start the worker's RPC server (start_worker / `llama-pilot start-worker ID`), or check "
                             "the tunnel to it; worker_status says what its agent sees",
                         device=where.group(1) if where else None, evidence=hits[:2])
    if hits := _find(lines, "remote rpc server crashed", "rpc server crashed or returned malformed"):
        return Diagnosis(cause="worker-lost", summary="an RPC worker went away while llama-server was using it",
                         fix="restart the worker's agent or RPC server (worker_status shows which), then start the "
                             "profile again", evidence=hits[:2])
    if hits := _find(lines, "failed to open gguf file", "no such file or directory"):
        return Diagnosis(cause="model-missing", summary="the model file could not be opened",
                         fix="check MODEL in the profile (lint_profiles / `llama-pilot lint` shows missing files and shards)",
                         evidence=hits[:3])
    if hits := _find(lines, "unknown model architecture"):
        arch = re.search(r"unknown model architecture: '([^']+)'", hits[0])
        name = arch.group(1) if arch else "this architecture"
        return Diagnosis(cause="unknown-architecture",
                         summary=f"this llama.cpp build does not know {name}",
                         fix="build a newer engine (build_engine; from a newer llama.cpp checkout: `llama-pilot engine build --source DIR`)",
                         evidence=hits[:2])
    if hits := _find(lines, "not within the file bounds", "corrupted or incomplete"):
        return Diagnosis(cause="model-incomplete", summary="the model file is shorter than its header says "
                         "(a download that was cut off)", fix="download the file again; list_model_files shows "
                         "complete=false until it is whole", evidence=hits[:2])
    if hits := _find(lines, "invalid magic", "failed to read magic", "failed to read key-value", "gguf_init_from_file",
                     "error loading model", "failed to load model"):
        return Diagnosis(cause="model-unreadable", summary="llama.cpp could not read the model file",
                         fix="the file is truncated, corrupt or not a GGUF: re-download it and compare its sha256",
                         evidence=hits[:3])
    if hits := _find(lines, "couldn't bind", "address already in use", "exiting due to http server error"):
        where = f" {port}" if port else ""
        return Diagnosis(cause="port-in-use", summary=f"the port{where} is taken by another program",
                         fix="stop what uses it, or set another PORT for the profile", evidence=hits[:2])
    if hits := _find(lines, "invalid argument", "error while handling argument", "unknown argument",
                     "invalid value", "error: unrecognized"):
        return Diagnosis(cause="invalid-argument", summary="llama-server rejected an argument",
                         fix="fix the flag in the profile (get_profile / `llama-pilot args PROFILE` shows the argv; "
                             "llama-server --help lists what this build accepts)", evidence=hits[:3])
    if timed_out:
        progress = load_progress(text)
        return Diagnosis(cause="timeout", summary=f"still {progress.stage} ({progress.fraction:.0%}) when the "
                         "start timed out: the log had stopped growing", fix="allow a longer silence while loading "
                         "(start_model timeout_s, `--timeout` on the command line: the longest stretch without a new "
                         "log line) or check that the disk is not the bottleneck", evidence=tail[-3:])
    if exit_code is not None and (exit_code < 0 or 128 < exit_code < 160):
        import signal

        # A negative code is Python's "killed by signal N"; Docker and shells report 128 + N.
        number = -exit_code if exit_code < 0 else exit_code - 128
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = f"signal {number}"
        if name in _CRASH_SIGNALS:
            return _crash_diagnosis(lines, name)
        fix = "the kernel's OOM killer may have ended it: check host RAM" if name == "SIGKILL" else \
            "something outside llama-pilot ended it"
        return Diagnosis(cause="killed", summary=f"llama-server was killed by {name}", fix=fix, evidence=tail[-3:])
    return Diagnosis(cause="exited" if exit_code is not None else "unknown",
                     summary=f"llama-server ended with exit code {exit_code}" if exit_code is not None
                     else "llama-server ended and left no exit status",
                     fix="read the last log lines below", evidence=tail)


# Signals a process raises on itself when it fails (abort() after an assertion, a bad memory access,
# an arithmetic or instruction fault): a crash of llama-server, not something from outside.
_CRASH_SIGNALS = frozenset({"SIGABRT", "SIGSEGV", "SIGBUS", "SIGFPE", "SIGILL"})
_CRASH_LINE_RE = re.compile(r"GGML_ASSERT|GGML_ABORT|\berror:|terminate called|what\(\):|CUDA error|"
                            r"Segmentation fault|Aborted", re.I)


def _crash_diagnosis(lines: list[str], signal_name: str) -> Diagnosis:
    """A crash: the assertion or error line that explains it, when the log has one."""
    reasons = [line.strip() for line in lines if _CRASH_LINE_RE.search(line)]
    what = f": {reasons[0][:200]}" if reasons else ""
    return Diagnosis(cause="crashed", summary=f"llama-server crashed ({signal_name}){what}",
                     fix="llama.cpp stopped on an error of its own; the evidence names it. Check the settings it "
                         "points at (context, batch, tensor overrides), try a newer engine, and if it persists "
                         "report the log to llama.cpp",
                     evidence=(reasons[:3] + lines[-3:]) if reasons else lines[-6:])


def _oom_diagnosis(lines: list[str], oom: list[str]) -> Diagnosis:
    device = None
    for line in oom:
        if m := re.search(r"(RPC\d+\[[^\]]+\])", line):  # a worker's device: RPC0[10.0.0.2:50052]
            device = m.group(1)
            break
        if m := re.search(r"(CUDA\d+|Vulkan\d+|CPU|Metal|ROCm\d+)", line):
            device = m.group(1)
            break
        if m := re.search(r"on device (\d+)", line):
            device = f"CUDA{m.group(1)}"
            break
    stage = _oom_stage(lines, lines.index(oom[0]))
    fix = {"kv-cache": "lower CTX_SIZE or PARALLEL, or use KV_CACHE_TYPE_K/V=q8_0",
           "compute-buffers": "lower UBATCH_SIZE, or leave more room with FIT_TARGET",
           "weights": "put fewer layers/experts on that GPU (N_GPU_LAYERS, N_CPU_MOE, OVERRIDE_TENSORS) or turn FIT on"}
    where = f" on {device}" if device else ""
    return Diagnosis(cause="oom", summary=f"out of memory{where} while allocating {stage.replace('-', ' ')}",
                     fix=fix[stage], device=device, stage=stage, evidence=oom[:3])


def _oom_stage(lines: list[str], first: int) -> str:
    """What was being allocated: the error chain right after the OOM says it, else the last stage marker."""
    after = " ".join(lines[first:first + 5]).lower()
    if "kv cache" in after:
        return "kv-cache"
    if "compute" in after or "graph_reserve" in after:
        return "compute-buffers"
    for line in reversed(lines[:first]):
        low = line.lower()
        if "sched_reserve" in low or "graph_reserve" in low:
            return "compute-buffers"
        if "kv cache" in low or "llama_kv_cache" in low:
            return "kv-cache"
        if "load_tensors" in low:
            return "weights"
    return "weights"
