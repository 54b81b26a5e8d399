"""The live terminal dashboard (``llama-pilot dashboard``), built on Textual.

One screen: a header (the model shown, its state, port, uptime, the speed of the last reply), a
panel per GPU, a system panel, and the server log, followed as it grows. ``m`` picks a model and
switches to it through the runtime, ``s`` stops it, ``r`` stops it and returns to the picker,
``q`` stops it and exits, ``d`` exits and leaves it running, ``?`` lists the keys.

Nothing slow runs on Textual's event loop:

- a *poller* thread asks the runtime for the instances every ``interval_s`` and reads what the
  shown instance added to its log four times a second, and posts both as one message;
- start, stop and switch (seconds to minutes) each run in a thread worker, one at a time, and post
  their load progress and their outcome back as messages;
- the numbers of the GPU and system panels come from a :class:`mcp_server.monitoring.sampler.Sampler`, which
  samples in its own thread; the screen only reads its latest snapshot and its history.

Each thread builds its own :class:`Runtime`: a registry's lock counts its own re-entry, so one
registry must not be shared between threads.
"""

from __future__ import annotations

import codecs
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Protocol, Sequence

from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.table import Table
from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.events import Resize
from textual.message import Message
from textual.screen import ModalScreen, Screen
from textual.widgets import Footer, Log, OptionList, Static
from textual.widgets.option_list import Option

from mcp_server import paths
from mcp_server.profiles.listing import ProfileSummary, list_profiles
from mcp_server.runtime.registry import InstanceStatus
from mcp_server.errors import LlamaPilotError
from mcp_server.runtime.registry import LIVE
from mcp_server.runtime.server_log import LoadProgress, strip_ansi
from mcp_server.profiles.config import Config, load_config
from mcp_server.runtime.lifecycle import InstanceView, Runtime, SwitchFailed

# --- thresholds (docs/dashboard.md) ----------------------------------------------------------

VRAM_WARN_PCT, VRAM_CRIT_PCT = 70.0, 90.0  # the original dashboard's GPU memory colours
CPU_WARN_PCT, CPU_CRIT_PCT = 70.0, 90.0
RAM_WARN_PCT, RAM_CRIT_PCT = 70.0, 85.0  # the original's RAM colours
TEMP_WARN_C, TEMP_CRIT_C = 80.0, 90.0
POWER_WARN_PCT, POWER_CRIT_PCT = 90.0, 100.0  # of the power limit: at the cap the GPU throttles
SWAP_SHOWN_MIB, SWAP_CRIT_MIB = 100.0, 4096.0  # the original: "none" up to 100 MiB, red from 4 GiB

LOG_LINES = 2000  # lines kept in the log pane, as the original's buffer
LOG_TICK_S = 0.25  # how often the poller reads the log
NARROW_WIDTH = 100  # below this the GPU and system panels stack
SMALL_WIDTH, SMALL_HEIGHT = 60, 20  # below this only the header and the log are shown

_STYLES = {"ok": "green", "warn": "yellow", "crit": "bold red"}
_BLOCKS = "▁▂▃▄▅▆▇█"


def level(value: float | None, warn: float, crit: float) -> str:
    """'ok', 'warn' or 'crit' for a value against two thresholds (a missing value is 'ok')."""
    if value is None or value < warn:
        return "ok"
    return "warn" if value < crit else "crit"


def level_style(value: float | None, warn: float, crit: float) -> str:
    return _STYLES[level(value, warn, crit)]


def pct(part: float | None, whole: float | None) -> float | None:
    if part is None or not whole:
        return None
    return 100.0 * part / whole


def size_mib(mib: float | None) -> str:
    if mib is None:
        return "n/a"
    return f"{mib / 1024:.1f} GiB" if mib >= 1024 else f"{mib:.0f} MiB"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    days, rem = divmod(seconds, 86400)
    hours, rem = divmod(rem, 3600)
    minutes, secs = divmod(rem, 60)
    if days:
        return f"{days}d{hours:02d}h"
    return f"{hours}h{minutes:02d}m" if hours else (f"{minutes}m{secs:02d}s" if minutes else f"{secs}s")


class Meter:
    """``label ████████░░░░ right`` filling the width it is given, coloured by level."""

    def __init__(self, label: str, fraction: float | None, right: str, style: str, label_width: int = 5) -> None:
        self.label, self.fraction, self.right, self.style, self.label_width = label, fraction, right, style, label_width

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        width = options.max_width
        label = self.label.ljust(self.label_width)
        room = max(0, width - len(label) - len(self.right) - 2)
        text = Text(label, style="bold")
        if self.fraction is None:
            text.append("·" * room, style="dim")
        else:
            filled = round(max(0.0, min(1.0, self.fraction)) * room)
            text.append("█" * filled, style=self.style)
            text.append("░" * (room - filled), style="dim")
        text.append("  " + self.right, style=self.style)
        text.truncate(width)
        yield text


class Spark:
    """A one-line history on a fixed scale (0..top), newest on the right, one sample per column.

    Textual's Sparkline scales between the smallest and largest sample, which turns a VRAM
    figure that moves by 0.1% into a mountain range; a fixed scale shows how full things are."""

    def __init__(self, values: Sequence[float], top: float = 100.0,
                 style: Callable[[float], str] | str = "cyan") -> None:
        self.values, self.top, self.style = list(values), top, style

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        width = options.max_width
        values = self.values[-width:]
        text = Text(" " * (width - len(values)))
        for value in values:
            index = 0 if not self.top else round(max(0.0, min(1.0, value / self.top)) * (len(_BLOCKS) - 1))
            text.append(_BLOCKS[index], style=self.style(value) if callable(self.style) else self.style)
        yield text


def _row(label: str, renderable: RenderableType, width: int = 11) -> Table:
    grid = Table.grid(expand=True)
    grid.add_column(width=width, no_wrap=True)
    grid.add_column(ratio=1, no_wrap=True)
    grid.add_row(Text(label, style="dim"), renderable)
    return grid


# --- what the server logs about each reply ---------------------------------------------------

# "slot print_timing: id  1 | task 0 |        eval time =  7966.80 ms /  16 tokens (  531.12 ms per
# token,  1.88 tokens per second)", preceded by the same line for "prompt eval time".
_EVAL_RE = re.compile(r"(?<!prompt )eval time\s*=\s*[\d.]+ ms /\s*(\d+) tokens.*?([\d.]+) tokens per second")
_PROMPT_RE = re.compile(r"prompt eval time\s*=\s*[\d.]+ ms /\s*(\d+) tokens.*?([\d.]+) tokens per second")


@dataclass(frozen=True)
class ReplySpeed:
    """Generation speed of the last request, as llama-server logged it."""

    generation_tps: float
    generated_tokens: int
    prompt_tps: float | None = None
    prompt_tokens: int | None = None


class SpeedTracker:
    """Feeds on log lines; keeps the last reply's speed."""

    def __init__(self) -> None:
        self.last: ReplySpeed | None = None
        self._prompt: tuple[int, float] | None = None

    def feed(self, line: str) -> None:
        if "eval time" not in line:
            return
        if m := _PROMPT_RE.search(line):
            self._prompt = (int(m.group(1)), float(m.group(2)))
        elif m := _EVAL_RE.search(line):
            prompt_tokens, prompt_tps = self._prompt or (None, None)
            self.last = ReplySpeed(generation_tps=float(m.group(2)), generated_tokens=int(m.group(1)),
                                   prompt_tps=prompt_tps, prompt_tokens=prompt_tokens)
            self._prompt = None


# --- following one instance's log ------------------------------------------------------------

_RUN_SCAN_BYTES = 8 << 20  # where a run starts is looked for in the last 8 MiB of the log


class LogFollower:
    """The lines one instance adds to its log, from the separator that opened its run.

    Native instances are read from the file, from where the last call stopped. Docker instances
    write to the container's log, which the backend appends to the file's text; that text is
    read whole (``read_text``) and cut where the last call stopped."""

    def __init__(self) -> None:
        self.instance_id: str | None = None
        self.speed = SpeedTracker()
        self._path: Path | None = None
        self._offset = 0
        self._partial = ""
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._read_text: Callable[[], str] | None = None

    def follow(self, view: InstanceView, read_text: Callable[[], str] | None = None) -> None:
        """Start reading ``view``'s run; ``read_text`` gives the whole log (Docker) or None (a file)."""
        path = Path(view.log_path)
        same_file = path == self._path and read_text is None and self._read_text is None
        self.instance_id, self.speed = view.id, SpeedTracker()
        self._read_text = read_text
        start = _run_start(read_text(), view.id) if read_text is not None else _file_run_start(path, view.id)
        if same_file and self._offset > start:
            return  # the same file, already read past where the new run starts: those lines are shown
        self._path, self._offset, self._partial = path, start, ""
        self._decoder.reset()

    def read(self) -> list[str]:
        """Complete new lines (ANSI stripped); a partial last line waits for its end."""
        if self.instance_id is None:
            return []
        chunk = self._chunk()
        if not chunk:
            return []
        lines = (self._partial + chunk).split("\n")
        self._partial = lines.pop()
        out = [strip_ansi(line).rstrip("\r") for line in lines]
        for line in out:
            self.speed.feed(line)
        return out

    def _chunk(self) -> str:
        if self._read_text is not None:
            text = self._read_text()
            if len(text) < self._offset:  # container gone, log archived into the file: reread
                self._offset = _run_start(text, self.instance_id or "")
            chunk, self._offset = text[self._offset:], len(text)
            return chunk
        assert self._path is not None
        try:
            with open(self._path, "rb") as log:
                if log.seek(0, 2) < self._offset:  # truncated or replaced: start over
                    self._offset = 0
                    self._decoder.reset()
                log.seek(self._offset)
                data = log.read()
        except FileNotFoundError:
            return ""
        self._offset += len(data)
        return self._decoder.decode(data)  # keeps a UTF-8 sequence cut at the end for the next read


def _run_start(text: str, instance_id: str) -> int:
    """Offset of the separator line that opened ``instance_id``'s run (else the last one, else 0)."""
    index = text.rfind(f" as {instance_id}")
    if index < 0:
        index = text.rfind("----- llama-pilot ")
    return text.rfind("\n", 0, index) + 1 if index >= 0 else 0


def _file_run_start(path: Path, instance_id: str) -> int:
    try:
        with open(path, "rb") as log:
            size = log.seek(0, 2)
            base = max(0, size - _RUN_SCAN_BYTES)
            log.seek(base)
            data = log.read()
    except FileNotFoundError:
        return 0
    index = data.rfind(f" as {instance_id}".encode())
    if index < 0:
        index = data.rfind(b"----- llama-pilot ")
    if index < 0:
        return base
    return base + data.rfind(b"\n", 0, index) + 1


# --- the sampler, as the dashboard uses it ---------------------------------------------------


class SamplerLike(Protocol):
    """What the dashboard needs from :class:`mcp_server.monitoring.sampler.Sampler`."""

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def latest(self) -> Any: ...

    def history(self, key: str) -> list[float]: ...


# --- messages from the threads ---------------------------------------------------------------


class Polled(Message):
    """The poller's news: the instances (when asked this round), the one shown, its new log lines."""

    def __init__(self, views: list[InstanceView] | None, current: InstanceView | None, lines: list[str],
                 changed: bool, speed: ReplySpeed | None, error: str | None = None, serve: Any = None,
                 workers: Any = None) -> None:
        super().__init__()
        self.views, self.current, self.lines, self.changed = views, current, lines, changed
        self.speed, self.error, self.serve = speed, error, serve
        self.workers = workers


class OperationProgress(Message):
    def __init__(self, text: str, progress: LoadProgress | None = None) -> None:
        super().__init__()
        self.text, self.progress = text, progress


class OperationDone(Message):
    """How a start, stop or switch ended: one line for the header, the details for the log pane."""

    def __init__(self, kind: str, ok: bool, text: str, detail: list[str] | None = None,
                 shown: InstanceView | None = None) -> None:
        super().__init__()
        self.kind, self.ok, self.text, self.detail, self.shown = kind, ok, text, detail or [], shown


def choose_current(views: list[InstanceView], shown: InstanceView | None) -> InstanceView | None:
    """The instance to show: the newest live one; else a newer ended one (a start that just failed);
    else the one already shown, as it is now."""
    live = [v for v in views if v.status in LIVE]
    if live:
        return max(live, key=lambda v: v.started_at)
    if not views:
        return None
    newest = max(views, key=lambda v: v.started_at)
    if shown is None or newest.started_at > shown.started_at:
        return newest
    return next((v for v in views if v.id == shown.id), None)


WORKERS_EVERY_S = 10.0


class Poller:
    """Runs in a thread worker: status every ``interval_s``, the shown log every ``LOG_TICK_S``."""

    def __init__(self, config_path: Path, post: Callable[[Message], object], interval_s: float) -> None:
        self.config_path, self.post, self.interval_s = config_path, post, interval_s
        self.stopped = threading.Event()
        self._wake = threading.Event()

    def wake(self) -> None:
        """Ask for the instances now (after an operation ended)."""
        self._wake.set()

    def stop(self) -> None:
        self.stopped.set()
        self._wake.set()

    def run(self, cancelled: Callable[[], bool] = lambda: False) -> None:
        runtime: Runtime | None = None
        follower = LogFollower()
        current: InstanceView | None = None
        next_status = next_workers = 0.0
        workers = None
        while not (self.stopped.is_set() or cancelled()):
            views, changed, error, serve = None, False, None, None
            if self._wake.is_set() or time.monotonic() >= next_status:
                self._wake.clear()
                next_status = time.monotonic() + self.interval_s
                try:
                    runtime = runtime or Runtime(load_config(self.config_path))
                    views = runtime.status().instances
                    serve = _serve_status(runtime)
                    if runtime.config.host.workers and time.monotonic() >= next_workers:
                        # Each worker is an HTTP round trip to its agent: asked less often than status.
                        from mcp_server.workers.operations import list_workers

                        next_workers = time.monotonic() + WORKERS_EVERY_S
                        workers = list_workers(runtime.config)
                except LlamaPilotError as exc:
                    error = str(exc)
                except Exception as exc:  # a poll must never end the dashboard
                    error = f"status failed: {exc!r}"
                if views is not None:
                    current = choose_current(views, current)
                    if current is not None and current.id != follower.instance_id:
                        follower.follow(current, _text_reader(runtime, current))
                        changed = True
            try:
                lines = follower.read()
            except OSError as exc:
                lines, error = [], f"cannot read the log: {exc}"
            if views is not None or lines or error:
                self.post(Polled(views, current, lines, changed, follower.speed.last, error, serve, workers))
            self._wake.wait(LOG_TICK_S)


def _serve_status(runtime: Runtime) -> Any:
    """The endpoint's status when one runs for this home (its state file says so), else None."""
    if not (paths.state_dir() / "serve.json").exists():
        return None
    from mcp_server.serve.control import serve_status

    return serve_status(runtime.config)


def _text_reader(runtime: Runtime | None, view: InstanceView) -> Callable[[], str] | None:
    if runtime is None or view.backend == "native":
        return None
    record = runtime.registry.get(view.id)
    if record is None:
        return None
    backend = runtime.backend(view.backend)
    return lambda: backend.read_log(record)


# --- widgets ---------------------------------------------------------------------------------


class HeaderBar(Static):
    """Three lines: what is shown and its state; URL, progress or failure; the last event."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__("", **kwargs)
        self.text = Text()

    def show(self, text: Text) -> None:
        self.text = text
        self.update(text)


class Panel(Static):
    """A panel whose content is one Rich renderable; ``text`` keeps its plain text for tests."""

    def __init__(self, placeholder: str, **kwargs: Any) -> None:
        super().__init__(Text(placeholder, style="dim"), **kwargs)
        self.plain = placeholder

    def show(self, renderable: RenderableType, plain: str) -> None:
        self.plain = plain
        self.update(renderable)


def render_gpus(report: Any, history: Callable[[str], list[float]]) -> tuple[RenderableType, str]:
    """The GPU panel's content and its plain text, from a GpuReport (or None before the first sample)."""
    if report is None:
        return Text("Waiting for GPU data...", style="dim"), "Waiting for GPU data..."
    gpus = list(getattr(report, "gpus", None) or [])
    if not gpus:
        reason = getattr(report, "reason", None) or "no NVIDIA GPU found"
        text = Text.assemble(("No GPU to show: ", "bold yellow"), (reason, "yellow"),
                             ("\nModels run on the CPU; the system panel shows their memory.", "dim"))
        return text, text.plain
    parts: list[RenderableType] = []
    plain: list[str] = []
    for gpu in gpus:
        n = gpu.nvml_index
        mem_pct = pct(gpu.memory_used_mib, gpu.memory_total_mib)
        power_pct = pct(gpu.power_w, gpu.power_limit_w)
        head = Text.assemble((f"GPU{n}", "bold"), (f" {gpu.name or ''}", "bold"))
        if gpu.cuda_index is not None and gpu.cuda_index != n:
            head.append(f" (CUDA{gpu.cuda_index})", style="dim")
        temp = "n/a" if gpu.temperature_c is None else f"{gpu.temperature_c:.0f}°C"
        power = "n/a" if gpu.power_w is None else f"{gpu.power_w:.0f} W"
        if gpu.power_w is not None and gpu.power_limit_w:
            power += f" / {gpu.power_limit_w:.0f} W"
        right = Text.assemble(
            (temp, level_style(gpu.temperature_c, TEMP_WARN_C, TEMP_CRIT_C)), "  ",
            (power, level_style(power_pct, POWER_WARN_PCT, POWER_CRIT_PCT)))
        top = Table.grid(expand=True)
        top.add_column(ratio=1, no_wrap=True, overflow="ellipsis")
        top.add_column(justify="right", no_wrap=True)
        top.add_row(head, right)
        used = f"{size_mib(gpu.memory_used_mib)} / {size_mib(gpu.memory_total_mib)}"
        vram = Meter("VRAM", None if mem_pct is None else mem_pct / 100,
                     f"{used} {mem_pct:.0f}%" if mem_pct is not None else used,
                     level_style(mem_pct, VRAM_WARN_PCT, VRAM_CRIT_PCT))
        util = gpu.gpu_util_pct
        util_label = "util  n/a" if util is None else f"util {util:3.0f}%"
        mem_hist = history(f"gpu{n}.mem_used_mib")
        mem_hist_pct = [100.0 * v / gpu.memory_total_mib for v in mem_hist] if gpu.memory_total_mib else []
        rows: list[RenderableType] = [
            top, vram,
            _row(util_label, Spark(history(f"gpu{n}.util_pct"), 100.0, "cyan")),
            _row("vram hist", Spark(mem_hist_pct, 100.0,
                                    lambda v: level_style(v, VRAM_WARN_PCT, VRAM_CRIT_PCT))),
        ]
        plain.append(f"GPU{n} {gpu.name} {temp} {power} VRAM {used} {util_label}")
        for proc in gpu.processes or []:
            line = Text(f"  {proc.profile or 'not llama-pilot'}  pid {proc.pid}  {size_mib(proc.used_mib)}",
                        style="dim")
            rows.append(line)
            plain.append(line.plain)
        parts.append(Group(*rows))
        parts.append(Text(""))
    reason = getattr(report, "reason", None)
    if reason:  # some figure could not be read: say which, below the GPUs
        parts.append(Text(reason, style="dim yellow"))
        plain.append(reason)
    else:
        parts.pop()
    return Group(*parts), "\n".join(plain)


def render_system(system: Any, history: Callable[[str], list[float]]) -> tuple[RenderableType, str]:
    """The system panel's content and its plain text, from SystemStats (or None before the first sample)."""
    if system is None:
        return Text("Waiting for system data...", style="dim"), "Waiting for system data..."
    cpu = system.cpu_pct
    load = " ".join(f"{x:.2f}" for x in (system.load_avg or ()))
    cpu_text = "n/a" if cpu is None else f"{cpu:.0f}%"
    rows: list[RenderableType] = [
        Meter("CPU", None if cpu is None else cpu / 100, cpu_text, level_style(cpu, CPU_WARN_PCT, CPU_CRIT_PCT)),
        _row("cpu hist", Spark(history("cpu_pct"), 100.0, "cyan")),
    ]
    plain = [f"CPU {cpu_text} load {load}"]
    cores = system.per_core_pct or []
    core_text = Text()
    for value in cores:
        core_text.append(_BLOCKS[round(max(0.0, min(100.0, value)) / 100 * (len(_BLOCKS) - 1))],
                         style=level_style(value, CPU_WARN_PCT, CPU_CRIT_PCT))
    if load:
        core_text.append(f"  load {load}", style="dim")
    rows.append(_row(f"{len(cores)} cores", core_text))
    ram_pct = pct(system.ram_used_mib, system.ram_total_mib)
    ram = f"{size_mib(system.ram_used_mib)} / {size_mib(system.ram_total_mib)}"
    rows.append(Meter("RAM", None if ram_pct is None else ram_pct / 100,
                      f"{ram} {ram_pct:.0f}%" if ram_pct is not None else ram,
                      level_style(ram_pct, RAM_WARN_PCT, RAM_CRIT_PCT)))
    total = system.ram_total_mib or 0
    ram_hist = [100.0 * v / total for v in history("ram_used_mib")] if total else []
    rows.append(_row("ram hist", Spark(ram_hist, 100.0, lambda v: level_style(v, RAM_WARN_PCT, RAM_CRIT_PCT))))
    plain.append(f"RAM {ram}")
    swap = system.swap_used_mib or 0.0
    if swap > SWAP_SHOWN_MIB:
        swap_line = Text(f"Swap {size_mib(swap)} in use", style="yellow" if swap < SWAP_CRIT_MIB else "bold red")
    else:
        swap_line = Text("Swap none", style="dim")
    swap_line.append(f"   available {size_mib(system.ram_available_mib)}", style="dim")
    lines = [swap_line, Text("llama-server", style="bold")]
    instances = list(system.instances or [])
    if not instances:
        lines.append(Text("  not running", style="dim"))
    for inst in instances:
        memory = f"RSS {size_mib(inst.rss_mib)}"
        if inst.rss_mib is None and getattr(inst, "container_mem_mib", None) is not None:
            memory = f"container {size_mib(inst.container_mem_mib)}"
        cpu_part = "" if inst.cpu_pct is None else f"  CPU {inst.cpu_pct:.0f}%"
        lines.append(Text(f"  {inst.profile}  pid {inst.pid}  {memory}{cpu_part}"))
    rows.extend(lines)
    plain.extend(line.plain for line in lines)
    return Group(*rows), "\n".join(plain)


def render_serve(status: Any) -> tuple[RenderableType, str]:
    """The endpoint's queues and its last swaps (nothing when no endpoint runs)."""
    if status is None or not status.running:
        return Text(""), ""
    text = Text()
    text.append(f"\nEndpoint {status.url}\n", style="bold")
    for model in status.models:
        if model.state == "absent" and not model.queued:
            continue
        style = {"ready": "green", "loading": "yellow", "unloading": "yellow"}.get(model.state, "dim")
        text.append(f"  {model.profile:<18} ", style="bold")
        text.append(f"{model.state:<9}", style=style)
        text.append(f" {model.in_flight} busy, {model.queued} queued"
                    + (f", oldest {model.oldest_wait_s:.1f}s" if model.oldest_wait_s else "")
                    + (" (pinned)" if model.pinned else "") + (f"  {model.progress}" if model.progress else "") + "\n")
    swaps = [s for s in status.swaps if s.action in ("load", "unload", "lost", "failed")][-4:]
    for swap in swaps:
        when = time.strftime("%H:%M:%S", time.localtime(swap.at))
        gone = f" for {', '.join(swap.unloaded)}" if swap.unloaded else ""
        text.append(f"  {when} {swap.action} {swap.profile}{gone}: {swap.reason}\n", style="dim")
    counters = status.counters
    text.append(f"  served {counters.get('served', 0)}, swaps {counters.get('swaps', 0)}, "
                f"429 {counters.get('rejected', 0)}\n", style="dim")
    return text, text.plain


def render_workers(listing: Any) -> tuple[Text, str]:
    """The RPC workers' devices (models.conf's WORKER_<id> lines), as their agents last reported them."""
    if listing is None or not listing.workers:
        return Text(""), ""
    text = Text()
    text.append("\nWorkers (RPC devices lent to this machine)\n", style="bold")
    for w in listing.workers:
        if not w.reachable:
            text.append(f"  {w.id:<10} ", style="bold")
            text.append(f"unreachable: {w.error}\n", style="red")
            continue
        state = "RPC running" if w.rpc_running else "RPC stopped"
        users = f", used by {', '.join(w.used_by)}" if w.used_by else ""
        build = "" if w.same_build in (True, None) else f", build {w.build_number} (not this machine's)"
        text.append(f"  {w.id:<10} ", style="bold")
        text.append(f"{state}{users}{build}\n", style="green" if w.rpc_running else "dim")
        for d in w.devices:
            used = f"{size_mib((d.total_mib or 0) - d.free_mib)} / {size_mib(d.total_mib)}" if d.total_mib else \
                f"{size_mib(d.free_mib)} free"
            text.append(f"    {d.device}  {d.name}  {used}\n", style="dim")
    return text, text.plain


def header_text(current: InstanceView | None, name: str | None, *, busy: str | None,
                progress: LoadProgress | None, speed: ReplySpeed | None, message: tuple[str, str] | None,
                others: Iterable[InstanceView] = (), now: float | None = None) -> Text:
    """The header's three lines: the instance and its state; URL, progress or failure; the last event."""
    now = time.time() if now is None else now
    status = str(current.status) if current is not None else None
    text = Text()
    if current is None:
        text.append("no model", style="bold")
        text.append("   nothing is running", style="dim")
    else:
        text.append(current.profile, style="bold")
        if name and name != current.profile:
            text.append(f"  {name}")
        style = {"ready": "green", "loading": "yellow", "failed": "red"}.get(status or "", "bright_black")
        text.append("   ")
        text.append(f" {(status or '').upper()} ", style=f"bold black on {style}")
        text.append(f"   port {current.port}")
        if status == InstanceStatus.READY and current.ready_at:
            text.append(f"   up {duration(now - current.ready_at)}")
            if current.load_seconds:
                text.append(f" (loaded in {current.load_seconds:.1f} s)", style="dim")
        if speed is not None:
            text.append("   last reply ")
            text.append(f"{speed.generation_tps:.1f} t/s", style="bold cyan")
            detail = f" ({speed.generated_tokens} tokens"
            if speed.prompt_tps is not None:
                detail += f", prompt {speed.prompt_tps:.0f} t/s"
            text.append(detail + ")", style="dim")
    others = [o for o in others if current is None or o.id != current.id]
    if others:
        text.append("   also running: " + ", ".join(f"{o.profile} :{o.port}" for o in others), style="dim")
    text.append("\n")
    if busy or status == InstanceStatus.LOADING:
        shown = progress or (current.progress if current is not None else None)
        text.append(busy or f"loading {current.profile if current else ''}", style="yellow")
        if shown is not None:
            filled = round(max(0.0, min(1.0, shown.fraction)) * 30)
            text.append(f"  {shown.stage} ")
            text.append("█" * filled, style="yellow")
            text.append("░" * (30 - filled), style="dim")
            text.append(f" {shown.fraction:.0%}")
    elif status == InstanceStatus.FAILED and current is not None:
        d = current.diagnosis
        if d is not None:
            text.append(f"failed ({d.cause}): {d.summary}", style="red")
            text.append(f"  fix: {d.fix}", style="dim")
        else:
            text.append(f"failed (exit {current.exit_code})", style="red")
    elif status == InstanceStatus.READY and current is not None:
        text.append(f"{current.url}/v1/chat/completions", style="cyan")
        text.append(f"   {current.backend}, pid {current.pid or (current.container_id or '')[:12]}", style="dim")
    else:
        text.append("press m to choose a model", style="dim")
    text.append("\n")
    if message is not None:
        text.append(message[0], style=message[1])
    return text


# --- screens ---------------------------------------------------------------------------------


class PickerScreen(ModalScreen[str | None]):
    """The model picker: production profiles, then bench- ones; Enter switches, Esc cancels."""

    AUTO_FOCUS = "#picker-list"

    BINDINGS = [
        Binding("escape", "dismiss_none", "Cancel"),
        Binding("q", "app.stop_quit", "Quit"),
        *[Binding(str(i), f"pick_number({i})", show=False) for i in range(1, 10)],
    ]

    def __init__(self, models: list[ProfileSummary], current: str | None) -> None:
        super().__init__()
        self.models, self.current = models, current

    def compose(self) -> ComposeResult:
        production = [m for m in self.models if not m.is_bench]
        bench = [m for m in self.models if m.is_bench]
        width = max([len(m.name) for m in self.models] + [20])
        options: list[Option | None] = []
        for number, model in enumerate(production, start=1):
            options.append(self._option(model, width, number))
        if bench:
            options.append(None)
            options.append(Option(Text("Benchmark profiles", style="bold"), disabled=True))
            options.extend(self._option(m, width, None) for m in bench)
        option_list = OptionList(*options, id="picker-list")
        if self.current in [m.profile for m in self.models]:
            option_list.highlighted = option_list.get_option_index(self.current)
        with Vertical(id="picker"):
            yield Static(Text("Choose a model", style="bold"), id="picker-title")
            yield option_list
            yield Static(Text("Up/Down, Enter switch, 1-9 pick, Esc cancel, q quit", style="dim"),
                         id="picker-hint")

    def _option(self, model: ProfileSummary, width: int, number: int | None) -> Option:
        mark = "●" if model.profile == self.current else " "
        text = Text()
        text.append(f"{number}) " if number else "   ", style="dim")
        text.append(f"{mark} ", style="green")
        text.append(model.name.ljust(width), style="bold green" if model.profile == self.current else "bold")
        text.append(f"  {(model.speed or '').ljust(8)}")
        text.append(f"  {model.context} ctx".ljust(12), style="cyan")
        text.append(f"  [{model.profile}]", style="dim")
        if not model.file_present:
            text.append("  model file missing", style="red")
        if model.description:
            text.append(f"\n       {model.description}", style="dim")
        return Option(text, id=model.profile, disabled=not model.file_present)

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(event.option.id)

    def action_dismiss_none(self) -> None:
        self.dismiss(None)

    def action_pick_number(self, number: int) -> None:
        production = [m for m in self.models if not m.is_bench]
        if number <= len(production) and production[number - 1].file_present:
            self.dismiss(production[number - 1].profile)


HELP = """\
m        pick a model and switch to it (stops what holds its GPUs; rolls back on failure)
s        stop the model shown
r        stop it and return to the picker
q        stop it and quit
d        quit and leave the model running (llama-pilot stop stops it later)
?        this help
Up/Down PgUp/PgDn Home/End   scroll the server log (End follows new lines again)

While a switch runs the picker is closed to you; s, r, q and d wait for the switch to end.
Colours: VRAM and CPU yellow from 70%, red from 90%; RAM yellow from 70%, red from 85%;
temperature yellow from 80°C, red from 90°C; power yellow from 90% of the limit.
"""


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,q,question_mark,enter", "close", "Close")]

    def compose(self) -> ComposeResult:
        with Vertical(id="help"):
            yield Static(Text("llama-pilot dashboard: keys", style="bold"))
            yield Static(HELP)
            yield Static(Text("Esc closes", style="dim"))

    def action_close(self) -> None:
        self.dismiss(None)


class MainScreen(Screen[None]):
    AUTO_FOCUS = "#log"
    BINDINGS = [
        Binding("m", "app.pick", "Models"),
        Binding("s", "app.stop", "Stop"),
        Binding("r", "app.menu", "Stop+picker"),
        Binding("q", "app.stop_quit", "Stop+quit"),
        Binding("d", "app.detach", "Detach"),
        Binding("question_mark", "app.help", "Help", key_display="?"),
        Binding("up", "log('scroll_up')", show=False),
        Binding("down", "log('scroll_down')", show=False),
        Binding("pageup", "log('scroll_page_up')", show=False),
        Binding("pagedown", "log('scroll_page_down')", show=False),
        Binding("home", "log('scroll_home')", show=False),
        Binding("end", "log('scroll_end')", show=False),
    ]

    def compose(self) -> ComposeResult:
        yield HeaderBar(id="header")
        with Horizontal(id="panels"):
            with VerticalScroll(id="gpu-box", can_focus=False):
                yield Panel("Waiting for GPU data...", id="gpus")
            with VerticalScroll(id="system-box", can_focus=False):
                yield Panel("Waiting for system data...", id="system")
                yield Panel("", id="serve")
        yield Log(max_lines=LOG_LINES, id="log")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#gpu-box").border_title = "GPUs"
        self.query_one("#system-box").border_title = "System"
        self.query_one(Log).border_title = "Server log"
        self._fit(self.size.width, self.size.height)
        app = self.app
        if isinstance(app, Dashboard):
            app.begin()

    def on_resize(self, event: Resize) -> None:
        self._fit(event.size.width, event.size.height)

    def _fit(self, width: int, height: int) -> None:
        self.set_class(width < NARROW_WIDTH, "narrow")
        self.set_class(width < SMALL_WIDTH or height < SMALL_HEIGHT, "small")

    def action_log(self, method: str) -> None:
        log = self.query_one(Log)
        getattr(log, method)(animate=False)


class Dashboard(App[str | None]):
    """The dashboard; ``run()`` returns a line for the terminal (what was stopped or left running)."""

    TITLE = "llama-pilot"
    ENABLE_COMMAND_PALETTE = False
    CSS = """
    #header { height: auto; min-height: 5; border: round $primary; padding: 0 1; }
    #panels { height: 2fr; min-height: 8; }
    #gpu-box, #system-box { border: round $secondary; padding: 0 1; scrollbar-gutter: stable;
                            scrollbar-size-vertical: 1; }
    #gpu-box { width: 1fr; }
    #system-box { width: 1fr; max-width: 64; }
    #log { height: 3fr; min-height: 5; border: round $accent; }
    MainScreen.narrow #panels { layout: vertical; }
    MainScreen.narrow #system-box { max-width: 100%; }
    MainScreen.small #panels { display: none; }
    MainScreen.small #header { min-height: 3; border: none; }
    PickerScreen, HelpScreen { align: center middle; }
    #picker { width: 110; max-width: 96%; height: auto; max-height: 90%;
              border: thick $primary; background: $surface; padding: 0 1; }
    #picker-list { width: 100%; height: auto; max-height: 30; }
    #help { width: 100; max-width: 96%; height: auto; border: thick $primary; background: $surface;
            padding: 0 1; }
    """

    def __init__(self, config: Config, *, sampler: SamplerLike | None = None, interval_s: float = 1.0,
                 picker_when_idle: bool = True) -> None:
        super().__init__()
        self.config = config
        self.sampler = sampler
        self.interval_s = interval_s
        self.picker_when_idle = picker_when_idle
        self.views: list[InstanceView] = []
        self.current: InstanceView | None = None
        self.speed: ReplySpeed | None = None
        self.busy: str | None = None  # the operation running in a worker, in words
        self.progress: LoadProgress | None = None
        self.message: tuple[str, str] | None = None  # (text, style) of the last event
        self.pending: str | None = None  # a key pressed while busy: 'stop_quit', 'detach', 'stop', 'menu'
        self._after: str | None = None  # what a stop started by q or r leads to: 'exit' or 'pick'
        self._first_poll = True
        self._poller = Poller(config.path, self.post_message, interval_s)

    def get_default_screen(self) -> Screen[Any]:
        return MainScreen()

    @property
    def main(self) -> MainScreen:
        screen = self.screen_stack[0]
        assert isinstance(screen, MainScreen)
        return screen

    # -- start and end ----------------------------------------------------------------------

    def begin(self) -> None:
        """Called once the main screen is composed: start the sampler, the poller and the timers."""
        if self.sampler is not None:
            self.sampler.start()
        self.run_worker(self._poll_thread, thread=True, group="poll", name="poller", exit_on_error=False)
        self.set_interval(self.interval_s, self.refresh_panels)
        self.set_interval(1.0, self.refresh_header)  # uptime
        self.refresh_panels()
        self.refresh_header()

    def _poll_thread(self) -> None:
        from textual.worker import get_current_worker

        worker = get_current_worker()
        self._poller.run(cancelled=lambda: worker.is_cancelled)

    def on_unmount(self) -> None:
        self._poller.stop()
        if self.sampler is not None:
            self.sampler.stop()

    # -- what the threads report ------------------------------------------------------------

    def on_polled(self, message: Polled) -> None:
        if message.views is not None:
            self.views, self.current = message.views, message.current
            served, served_plain = render_serve(message.serve)
            lent, lent_plain = render_workers(message.workers)
            self.main.query_one("#serve", Panel).show(Group(served, lent), served_plain + lent_plain)
        if message.error:
            self.message = (message.error, "red")
        log = self.main.query_one(Log)
        if message.changed and message.current is not None:
            shown = message.current
            log.write_line(f"═════ {shown.profile} ({self._profile_name(shown.profile)}): instance {shown.id}, "
                           f"port {shown.port} ═════")
        if message.lines:
            log.write_lines(message.lines)
        self.speed = message.speed
        self._update_log_title()
        self.refresh_header()
        if message.views is not None and self._first_poll:
            self._first_poll = False
            if self.picker_when_idle and not self.busy and not any(v.status in LIVE for v in message.views):
                self.action_pick()

    def on_operation_progress(self, message: OperationProgress) -> None:
        self.busy, self.progress = message.text, message.progress
        self.refresh_header()

    def on_operation_done(self, message: OperationDone) -> None:
        self.busy, self.progress = None, None
        self.message = (message.text, "green" if message.ok else "bold red")
        if message.shown is not None:  # what the operation left running (or stopped), before the next poll
            self.current = message.shown
            self.views = [v for v in self.views if v.id != message.shown.id] + [message.shown]
        if not message.ok:
            log = self.main.query_one(Log)
            log.write_line(f"═════ {message.kind} failed ═════")
            log.write_lines(message.detail or message.text.splitlines())
            self.notify(message.text.splitlines()[0], severity="error", timeout=8)
        self._poller.wake()
        self.refresh_header()
        after, self._after = self._after, None
        pending, self.pending = self.pending, None
        if after == "exit":
            self.exit(message.text)
        elif pending:
            getattr(self, f"action_{pending}")()
        elif after == "pick":
            self.action_pick()

    # -- rendering --------------------------------------------------------------------------

    def refresh_header(self) -> None:
        name = self._profile_name(self.current.profile) if self.current else None
        text = header_text(self.current, name, busy=self.busy, progress=self.progress, speed=self.speed,
                           message=self.message, others=[v for v in self.views if v.status in LIVE])
        self.main.query_one(HeaderBar).show(text)

    def refresh_panels(self) -> None:
        gpus = self.main.query_one("#gpus", Panel)
        system = self.main.query_one("#system", Panel)
        if self.sampler is None:
            note = "No sampler: nothing is measured."
            gpus.show(Text(note, style="dim"), note)
            system.show(Text(note, style="dim"), note)
            return
        snapshot = self.sampler.latest()
        gpus.show(*render_gpus(snapshot.gpu if snapshot else None, self.sampler.history))
        system.show(*render_system(snapshot.system if snapshot else None, self.sampler.history))

    def _update_log_title(self) -> None:
        log = self.main.query_one(Log)
        total, height = log.line_count, log.scrollable_content_region.height
        if log.is_vertical_scroll_end or total <= height:
            log.border_subtitle = "following"
        else:
            top = int(log.scroll_y) + 1
            log.border_subtitle = f"lines {top}-{min(total, top + height - 1)} of {total}; End follows"

    def _profile_name(self, profile: str) -> str:
        found = self.config.profiles.get(profile)
        return found.name if found else profile

    # -- keys -------------------------------------------------------------------------------

    def _wait_for_busy(self, pending: str, what: str) -> bool:
        """While an operation runs, remember the key for afterwards; True if it was deferred."""
        if not self.busy:
            return False
        self.pending = pending
        self.notify(f"{self.busy}: {what} once that is done", severity="warning")
        return True

    def action_help(self) -> None:
        self.push_screen(HelpScreen())

    def action_pick(self) -> None:
        if self.busy:
            self.notify(f"{self.busy}: the picker is closed until that is done", severity="warning")
            return
        if isinstance(self.screen, PickerScreen):
            return
        try:
            self.config = load_config(self.config.path)  # profiles edited since the start show up
            models = list_profiles(self.config).profiles
        except LlamaPilotError as exc:
            self.notify(str(exc), severity="error", timeout=10)
            return
        current = self.current.profile if self.current and self.current.status in LIVE else None
        self.push_screen(PickerScreen(models, current), self._picked)

    def _picked(self, profile: str | None) -> None:
        if profile is None:
            return
        if self.current and self.current.profile == profile and self.current.status == InstanceStatus.READY:
            self.notify(f"{profile} is already running")
            return

        def switch(runtime: Runtime) -> OperationDone:
            def progress(p: LoadProgress) -> None:
                self.post_message(OperationProgress(f"starting {profile}", p))

            try:
                result = runtime.switch_model(profile, progress=progress)
            except SwitchFailed as exc:
                return _switch_failure(profile, exc)
            stopped = f"; stopped {', '.join(v.profile for v in result.stopped)}" if result.stopped else ""
            url = result.started.url if result.started else "?"
            return OperationDone("switch", True, f"{profile} ready at {url}{stopped}", shown=result.started)

        self.message = None
        self._operation("switch", f"switching to {profile} ({self._profile_name(profile)})", switch)

    def _stop_target(self) -> InstanceView | None:
        if self.current is not None and self.current.status in LIVE:
            return self.current
        live = [v for v in self.views if v.status in LIVE]
        return max(live, key=lambda v: v.started_at) if live else None

    def _stop(self, target: InstanceView, after: str | None) -> None:
        def stop(runtime: Runtime) -> OperationDone:
            views = runtime.stop_model(target.id).instances
            done = ", ".join(f"{v.profile} (port {v.port} free)" for v in views) or "nothing"
            return OperationDone("stop", True, f"stopped {done}", shown=views[0] if views else None)

        self._after = after
        self._operation("stop", f"stopping {target.profile}", stop)

    def action_stop(self) -> None:
        if self._wait_for_busy("stop", "will stop"):
            return
        target = self._stop_target()
        if target is None:
            self.notify("nothing is running")
        else:
            self._stop(target, after=None)

    def action_menu(self) -> None:
        if self._wait_for_busy("menu", "will stop and open the picker"):
            return
        target = self._stop_target()
        if target is None:
            self.action_pick()
        else:
            self._stop(target, after="pick")

    def action_stop_quit(self) -> None:
        if self._wait_for_busy("stop_quit", "will stop and quit"):
            return
        target = self._stop_target()
        if target is None:
            self.exit(None)
        else:
            self._stop(target, after="exit")

    def action_detach(self) -> None:
        if self._wait_for_busy("detach", "will quit"):
            return
        target = self._stop_target()
        self.exit(None if target is None else
                  f"{target.profile} keeps running at {target.url} (llama-pilot stop {target.profile} stops it)")

    async def action_quit(self) -> None:  # ctrl+q, Textual's own quit key: leave as d does
        self.action_detach()

    def _operation(self, kind: str, label: str, work: Callable[[Runtime], OperationDone]) -> None:
        """Run one start/stop/switch in a thread worker; its end comes back as OperationDone."""
        self.busy, self.progress = label, None
        self.refresh_header()

        def run() -> None:
            try:
                done = work(Runtime(load_config(self.config.path)))
            except LlamaPilotError as exc:
                done = OperationDone(kind, False, str(exc))
            except Exception as exc:  # shown, not raised: the dashboard outlives a bad operation
                done = OperationDone(kind, False, f"{label} failed unexpectedly: {exc!r}")
            self.post_message(done)

        self.run_worker(run, thread=True, group="lifecycle", name=label, exit_on_error=False)


def _switch_failure(profile: str, exc: SwitchFailed) -> OperationDone:
    """One line for the header (cause, rollback) and the whole error for the log pane."""
    result = exc.result
    diagnosis = getattr(exc.__cause__, "diagnosis", None)
    why = f"{diagnosis.cause}: {diagnosis.summary}" if diagnosis else str(exc.__cause__ or exc).splitlines()[0]
    text = f"switch to {profile} failed ({why})"
    if result.rolled_back:
        text += f"; rolled back to {', '.join(v.profile for v in result.rolled_back)}"
    elif result.stopped:
        text += f"; {', '.join(v.profile for v in result.stopped)} could not be restarted"
    return OperationDone("switch", False, text, detail=(result.error or text).splitlines(),
                         shown=result.rolled_back[0] if result.rolled_back else None)


def run_dashboard(config: Config, *, interval_s: float = 1.0) -> str | None:
    """Run the dashboard in this terminal; returns what to print once it is closed."""
    from mcp_server.runtime.registry import Registry
    from mcp_server.monitoring.sampler import Sampler

    sampler = Sampler(interval_s=interval_s, registry=Registry())
    return Dashboard(config, sampler=sampler, interval_s=interval_s).run()
