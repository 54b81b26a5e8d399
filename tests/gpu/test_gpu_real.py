"""On a real NVIDIA GPU: llama-pilot's GPU monitoring against nvidia-smi, with a model running.

CI machines have no GPU, so there this module skips (also under CI=true: it can only run on a
GPU machine). On a GPU machine:

    LLAMA_SERVER=/path/to/a/CUDA/build/bin/llama-server \\
    LLAMA_PILOT_CONFIG=/path/to/models.conf \\
        python -m pytest tests/gpu/test_gpu_real.py -m gpu -s

It starts ``$MONITORING_PROFILE`` (default ``demo``) from ``$LLAMA_PILOT_CONFIG`` (default: the
repo's models.conf with the demo model that `llama-pilot setup` installed; where that model is
missing too, a random-weight 4-layer model it writes itself) on a copy of that file whose profile gets ``N_GPU_LAYERS=$N_GPU_LAYERS`` (default 99; ``fit`` leaves llama.cpp's
own fit in charge), then checks:

- NVML's per-process memory for the server pid equals ``nvidia-smi --query-compute-apps`` to
  the MiB, and the process is mapped to the instance and profile;
- NVML's per-GPU used memory equals ``nvidia-smi --query-gpu=memory.used`` (to 1 MiB);
- the CUDA indices llama-pilot reports for the server's GPUs are those llama.cpp logged
  buffers on (``CUDA<n>``), and the CUDA order came from the CUDA driver;
- 30 s (``$MONITORING_SAMPLE_S``) of sampling at 1 s with a chat load in the middle: no errors,
  one sample a second, and the sampler's CPU cost;

and writes everything as Markdown to ``$MONITORING_REPORT`` (default
docs/gpu-validation/monitoring.md), before asserting, so a failed check is documented too.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# Read now: tests/conftest.py's autouse fixture removes LLAMA_PILOT_CONFIG from each test's env.
CONFIG = os.environ.get("LLAMA_PILOT_CONFIG")
ENGINE = os.environ.get("LLAMA_SERVER")
PROFILE = os.environ.get("MONITORING_PROFILE", "demo")
REPORT = Path(os.environ.get("MONITORING_REPORT", str(REPO / "docs" / "gpu-validation" / "monitoring.md")))
SAMPLE_S = float(os.environ.get("MONITORING_SAMPLE_S", "30"))
N_GPU_LAYERS = os.environ.get("N_GPU_LAYERS", "99")


def _nvml_problem() -> str | None:
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            count = pynvml.nvmlDeviceGetCount()
        finally:
            pynvml.nvmlShutdown()
    except Exception as exc:  # ImportError, NVMLError_LibraryNotFound, DriverNotLoaded, ...
        return f"{type(exc).__name__}: {exc}"
    return None if count else "NVML reports no GPU"


NVML_PROBLEM = _nvml_problem()

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(NVML_PROBLEM is not None, reason=(
        f"needs an NVIDIA GPU with NVML ({NVML_PROBLEM}). CI machines have no GPU, so this module is skipped "
        "there by design; run it on a GPU machine: LLAMA_SERVER=<CUDA llama-server> LLAMA_PILOT_CONFIG=<models.conf> "
        "python -m pytest tests/gpu/test_gpu_real.py -m gpu -s")),
]


def smi(query: str, fields: str) -> list[list[str]]:
    out = subprocess.run(["nvidia-smi", f"--query-{query}={fields}", "--format=csv,noheader,nounits"],
                         capture_output=True, text=True, timeout=30, check=True).stdout
    return [[c.strip() for c in line.split(",")] for line in out.splitlines() if line.strip()]


def raw_used_bytes(index: int) -> int | None:
    """NVML's used memory in bytes (v2, as llama-pilot reads it), to show how MiB were rounded."""
    import pynvml

    pynvml.nvmlInit()
    try:
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        return int(pynvml.nvmlDeviceGetMemoryInfo(handle, version=pynvml.nvmlMemory_v2).used)
    except (pynvml.NVMLError, AttributeError, TypeError):
        return None
    finally:
        pynvml.nvmlShutdown()


def bus_key(bus: str) -> str:
    """nvidia-smi and NVML write 00000000:01:00.0; compare without the domain's width and case."""
    domain, rest = bus.strip().lower().split(":", 1)
    return f"{int(domain, 16):x}:{rest}"


def synthetic_project(folder: Path) -> Path:
    """Where no demo model exists (it is too big to carry to a GPU machine without network): a
    random-weight llama model (~130 MB at f16) as the profile, so the run needs no download."""
    from mcp_server.model_files.synthetic import DenseShape, write_dense

    write_dense(folder / "models" / "synth" / "gpu-check.gguf",
                DenseShape(n_layer=4, n_embd=1024, n_head=16, n_head_kv=8, n_ff=4096, n_ctx_train=8192),
                seed=7, name="gpu-check", dtype="f16")
    conf = folder / "models.conf"
    conf.write_text(f"[global]\nMODELS_DIR=models\n\n[{PROFILE}]\nNAME=Synthetic 4-layer model (GPU check)\n"
                    "MODEL=synth/gpu-check.gguf\nCTX_SIZE=4096\nPARALLEL=1\n")
    return conf


@pytest.fixture
def gpu_config(tmp_path, request) -> Path:
    """A private copy of the config (absolute MODELS_DIR) whose profile is forced onto the GPU."""
    from mcp_server.profiles.config import load_config
    from mcp_server.profiles.edits import update_profile

    from ..conftest import REAL_DEMO_MODEL

    if CONFIG:
        source = load_config(CONFIG)
    elif REAL_DEMO_MODEL:
        source = load_config(request.getfixturevalue("demo_project"))
    else:
        source = load_config(synthetic_project(tmp_path / "synth-project"))
    copy = tmp_path / "gpu-models.conf"
    copy.write_text(Path(source.path).read_text())
    update_profile(load_config(copy), "global", set={"MODELS_DIR": source.host.models_dir})
    if N_GPU_LAYERS.lower() != "fit":
        update_profile(load_config(copy), PROFILE, set={"N_GPU_LAYERS": N_GPU_LAYERS})
    return copy


def test_monitoring_against_nvidia_smi(gpu_config, engine_path):
    from mcp_server.monitoring.gpu import cuda_driver_order, heuristic_fastest_first, gpu_stats
    from mcp_server.profiles.config import load_config
    from mcp_server.runtime.lifecycle import Runtime
    from mcp_server.monitoring.sampler import Sampler

    assert shutil.which("nvidia-smi"), "nvidia-smi is needed for the comparison"
    runtime = Runtime(load_config(gpu_config))
    checks: list[tuple[str, bool, str]] = []
    lines: list[str] = []
    view = runtime.start_model(PROFILE)
    try:
        load = runtime.load_report(PROFILE)
        # CUDA0, CUDA1, ... (not CUDA_Host, the pinned host memory llama.cpp also logs)
        cuda_devices = sorted({d.device for d in load.devices if re.fullmatch(r"CUDA\d+", d.device) and d.total_mib > 0})
        checks.append(("llama.cpp put buffers on a CUDA device (the engine is a CUDA build)", bool(cuda_devices),
                       ", ".join(f"{d.device} {d.total_mib:.0f} MiB" for d in load.devices) or "no buffers logged"))

        deadline = time.monotonic() + 15  # the context exists once /health is 200; allow the driver a moment
        while time.monotonic() < deadline:
            before = gpu_stats()
            if any(p.pid == view.pid for g in before.gpus for p in g.processes):
                break
            time.sleep(0.2)
        apps = smi("compute-apps", "pid,used_memory,gpu_bus_id")
        smi_gpus = smi("gpu", "index,pci.bus_id,uuid,name,memory.used,memory.total,driver_version")
        after = gpu_stats()

        # -- per process --------------------------------------------------------------------
        ours = [(g, p) for g in after.gpus for p in g.processes if p.pid == view.pid]
        smi_ours = {bus_key(bus): int(mib) for pid, mib, bus in apps if int(pid) == view.pid}
        proc_rows = []
        for g, p in ours:
            smi_mib = smi_ours.get(bus_key(g.pci_bus_id or ""))
            proc_rows.append(f"| {p.pid} | {g.nvml_index} | {g.cuda_index} | {p.cuda_index} | {p.used_mib} | {smi_mib} "
                             f"| {p.name} | {p.profile} | {p.instance_id} |")
            checks.append((f"GPU {g.nvml_index}: NVML per-process MiB == nvidia-smi --query-compute-apps",
                           p.used_mib == smi_mib, f"{p.used_mib} vs {smi_mib}"))
            checks.append((f"GPU {g.nvml_index}: process mapped to the instance",
                           (p.profile, p.instance_id) == (PROFILE, view.id), f"{p.profile} / {p.instance_id}"))
        checks.append(("the server pid is listed by both NVML and nvidia-smi",
                       bool(ours) and len(ours) == len(smi_ours), f"NVML on {len(ours)} GPU(s), nvidia-smi on {len(smi_ours)}"))
        checks.append(("this test process (which asked libcuda for the CUDA order) holds no GPU context",
                       all(int(pid) != os.getpid() for pid, _, _ in apps), f"pid {os.getpid()}"))

        # -- per GPU ------------------------------------------------------------------------
        smi_by_bus = {bus_key(row[1]): row for row in smi_gpus}
        gpu_rows = []
        for g in after.gpus:
            raw = raw_used_bytes(g.nvml_index)
            row = smi_by_bus.get(bus_key(g.pci_bus_id or ""))
            smi_used = int(row[4]) if row else None
            prev = next((b.memory_used_mib for b in before.gpus if b.nvml_index == g.nvml_index), None)
            ok = smi_used is not None and any(v is not None and abs(v - smi_used) <= 1 for v in (g.memory_used_mib, prev))
            gpu_rows.append(f"| {g.nvml_index} | {row[0] if row else '-'} | {g.cuda_index} | {g.pci_bus_id} | {g.name} | "
                            f"{g.compute_capability} | {g.memory_total_mib} | {g.memory_reserved_mib} | {prev} / {g.memory_used_mib} ({raw} B) "
                            f"| {smi_used} | {g.gpu_util_pct} | {g.temperature_c} | {g.power_w} / {g.power_limit_w} "
                            f"| {g.sm_clock_mhz} / {g.mem_clock_mhz} | {g.fan_pct} |")
            checks.append((f"GPU {g.nvml_index}: NVML memory used == nvidia-smi memory.used (±1 MiB)", ok,
                           f"{prev} / {g.memory_used_mib} vs {smi_used}"))
            checks.append((f"GPU {g.nvml_index}: NVML index == nvidia-smi index", row is not None and int(row[0]) == g.nvml_index,
                           row[0] if row else "not listed"))

        # -- CUDA indices ---------------------------------------------------------------------
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        server_cuda = sorted(f"CUDA{p.cuda_index}" for _, p in ours if p.cuda_index is not None)
        checks.append(("the server's GPUs, by CUDA index, are where llama.cpp logged CUDA buffers",
                       set(cuda_devices) <= set(server_cuda), f"llama-pilot {server_cuda}, llama.cpp {cuda_devices}"))
        if visible is None and after.cuda_device_order == "FASTEST_FIRST":
            checks.append(("the CUDA order came from the CUDA driver (libcuda)", after.cuda_order_source == "cuda-driver",
                           f"{after.cuda_order_source}; libcuda order {cuda_driver_order()}"))
        estimate = heuristic_fastest_first(after.gpus)
        driver = sorted(after.gpus, key=lambda g: g.cuda_index if g.cuda_index is not None else 99)
        estimate_note = ("agrees" if [g.nvml_index for g in driver] == estimate else "DIFFERS") + \
            f" (estimate {estimate}, reported {[g.nvml_index for g in driver]})"

        # -- 30 s of sampling -----------------------------------------------------------------
        load_script = ("import sys,time\nfrom mcp_server.runtime.server_api import chat\nend=time.time()+float(sys.argv[2])\n"
                       "while time.time()<end:\n chat(sys.argv[1],'Count from 1 to 50.',max_tokens=96,temperature=0)")
        sampler = Sampler(interval_s=1.0)
        sampler.sample_once()
        cpu0, wall0, samples0 = time.process_time(), time.monotonic(), sampler.samples
        sampler.start()
        time.sleep(SAMPLE_S / 3)
        subprocess.run([sys.executable, "-c", load_script, view.url, str(SAMPLE_S / 3)], cwd=REPO, check=True,
                       timeout=SAMPLE_S + 60)
        time.sleep(max(0.0, wall0 + SAMPLE_S - time.monotonic()))
        sampler.stop()
        cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
        taken = sampler.samples - samples0
        key_rows = []
        for key in sampler.keys():
            if not (key.startswith("gpu") or key.startswith(f"instance.{PROFILE}.") or key in ("cpu_pct", "ram_used_mib")):
                continue
            values = sampler.history(key)
            key_rows.append(f"| `{key}` | {len(values)} | {min(values):g} | {statistics.fmean(values):.1f} | {max(values):g} |")
        server_gpu_mem = sampler.history(f"instance.{PROFILE}.gpu_mem_mib")
        checks.append(("sampler: one sample a second, no errors", sampler.errors == 0 and taken >= int(SAMPLE_S) - 2,
                       f"{taken} samples in {wall:.1f} s, {sampler.errors} errors"))
        checks.append(("sampler: the instance's GPU memory was followed every sample",
                       len(server_gpu_mem) >= taken and min(server_gpu_mem) > 0, f"{len(server_gpu_mem)} values"))
        util = [v for k in sampler.keys() if k.endswith(".util_pct") for v in sampler.history(k)]
        checks.append(("sampler: GPU utilisation rose under the chat load", bool(util) and max(util) > 0,
                       f"max {max(util) if util else None}%"))
        last_took_ms = 1000 * sampler.latest().took_s
    finally:
        runtime.stop_model("all", grace_s=5)
    gone = gpu_stats()
    checks.append(("after stop, NVML no longer lists the server", all(p.pid != view.pid for g in gone.gpus for p in g.processes),
                   f"pid {view.pid}"))

    # -- report -------------------------------------------------------------------------------
    names = ", ".join(sorted({g.name or "?" for g in after.gpus}))
    lines += [
        "# GPU monitoring validated on a real GPU",
        "",
        f"Produced by `tests/gpu/test_gpu_real.py` on {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC.",
        "",
        f"- GPU: {len(after.gpus)} x {names}; driver {after.driver_version}, CUDA {after.cuda_driver_version}",
        f"- host: {platform.node()}, {platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        f"- engine: {engine_path} (build {load.build_number})",
        f"- profile `{PROFILE}`: pid {view.pid}, layers on GPU {load.layers_offloaded}/{load.layers_total}, "
        f"N_GPU_LAYERS={N_GPU_LAYERS}, load {view.load_seconds} s",
        f"- CUDA_DEVICE_ORDER={after.cuda_device_order}, CUDA_VISIBLE_DEVICES={visible}; CUDA order source: "
        f"{after.cuda_order_source}; the compute-capability estimate {estimate_note}",
        "",
        "## Checks",
        "",
        "| check | result | detail |",
        "| --- | --- | --- |",
        *[f"| {name} | {'pass' if ok else 'FAIL'} | {detail} |" for name, ok, detail in checks],
        "",
        "## Per GPU: NVML vs nvidia-smi (MiB)",
        "",
        "| NVML | smi index | CUDA | PCI bus | name | CC | total | reserved | NVML used (before / after smi; bytes) | smi used "
        "| util % | temp C | power / limit W | SM / mem MHz | fan % |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        *gpu_rows,
        "",
        "## The server's process: NVML vs nvidia-smi --query-compute-apps (MiB)",
        "",
        "| pid | NVML GPU | CUDA (here) | CUDA (in the instance) | NVML MiB | smi MiB | process | profile | instance |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        *(proc_rows or ["| - | - | - | - | - | - | - | - | - |"]),
        "",
        f"## Sampler: {taken} samples at 1 s over {wall:.1f} s (chat load from {SAMPLE_S / 3:.0f} s to {2 * SAMPLE_S / 3:.0f} s)",
        "",
        f"Sampler CPU: {100 * cpu / wall:.2f}% of one core ({1000 * cpu / max(1, taken):.2f} ms CPU per sample); "
        f"the last sample took {last_took_ms:.1f} ms wall.",
        "",
        "| key | values | min | mean | max |",
        "| --- | --- | --- | --- | --- |",
        *key_rows,
        "",
    ]
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text("\n".join(lines))
    print(f"\nwrote {REPORT}\n" + "\n".join(lines))
    failed = [f"{name}: {detail}" for name, ok, detail in checks if not ok]
    assert not failed, "\n".join(failed)
