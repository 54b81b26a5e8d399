"""Measurements of real launches, and the corrections they give later estimates.

After a launch, ``record`` compares three numbers per device: what we predicted, what llama.cpp
logged (its buffers) and what NVML measured for the process. The gap between NVML and the logged
buffers is the runtime overhead llama.cpp does not track (CUDA context, cuBLAS, memory pool): it
depends on the GPU model, the driver and the build, so later estimates on the same GPU model use
the median of the measured gaps instead of the built-in default. A launch of the same model file,
settings and GPUs is shown beside a new estimate, so a user sees prediction and reality together.

Measurements are JSON lines under ``$LLAMA_PILOT_HOME/calibration/``; appends hold a lock, as
several processes (CLI, MCP server, benchmark jobs) may record at once.
"""

from __future__ import annotations

import hashlib
import statistics
from pathlib import Path

from pydantic import BaseModel, Field

from mcp_server import paths
from mcp_server.engine.argv import without_flags
from mcp_server.placement.estimate import Estimate
from mcp_server.files import exclusive_lock
from mcp_server.model_files.layout import GGUFInspection

# Flags that do not change memory: left out of the settings key.
_NOT_MEMORY = {"--model": 1, "-m": 1, "--host": 1, "--port": 1, "--log-verbosity": 1, "-lv": 1, "--temp": 1, "--top-p": 1, "--top-k": 1,
               "--min-p": 1, "--alias": 1, "--api-key": 1, "--metrics": 0, "--jinja": 0, "--no-context-shift": 0,
               "--threads": 1}


class CalibrationKey(BaseModel):
    model: str = Field(description="model file name")
    model_bytes: int
    settings: str = Field(description="memory-relevant llama-server flags, as one string")
    gpus: list[str] = Field(description="GPU model names, in CUDA order (empty: CPU only)")

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:16]


class DeviceMeasurement(BaseModel):
    device: str
    predicted_mib: float | None = None
    predicted_compute_mib: float | None = None
    logged_mib: float | None = Field(default=None, description="sum of llama.cpp's buffers on the device")
    logged_compute_mib: float | None = None
    nvml_mib: float | None = Field(default=None, description="NVML per-process memory (GPUs only)")
    unaccounted_mib: float | None = Field(default=None, description="NVML minus logged: the runtime overhead")
    error_mib: float | None = Field(default=None, description="predicted minus NVML (GPUs) or minus logged (host)")


class Measurement(BaseModel):
    key: CalibrationKey
    digest: str
    at: str
    build: int | None
    profile: str | None = None
    devices: list[DeviceMeasurement]
    note: str | None = None


def key_for(info: GGUFInspection, argv: list[str], gpu_names: list[str | None]) -> CalibrationKey:
    return CalibrationKey(model=Path(info.path).name, model_bytes=info.total_bytes, settings=_settings_text(argv),
                          gpus=[n or "unknown" for n in gpu_names])


def _settings_text(argv: list[str]) -> str:
    return " ".join(without_flags(argv, _NOT_MEMORY))


def _store() -> Path:
    folder = paths.home() / "calibration"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / "measurements.jsonl"


def measurements() -> list[Measurement]:
    store = _store()
    if not store.exists():
        return []
    out = []
    for line in store.read_text().splitlines():
        try:
            out.append(Measurement.model_validate_json(line))
        except ValueError:
            continue  # a line from another version: skip it, keep the rest
    return out


def save(measurement: Measurement) -> None:
    store = _store()
    with exclusive_lock(store.with_suffix(".lock")), open(store, "a") as f:
        f.write(measurement.model_dump_json() + "\n")


def latest(key: CalibrationKey) -> Measurement | None:
    same = [m for m in measurements() if m.digest == key.digest]
    return same[-1] if same else None


def overhead_for(gpu_name: str | None) -> tuple[float | None, str]:
    """Per-GPU runtime overhead (MiB) to add to a GPU's buffers, and where the number comes from
    (None: no measurement on this GPU model, the estimator's default for the model's kind applies)."""
    if gpu_name:
        gaps = [d.unaccounted_mib for m in measurements() if gpu_name in m.key.gpus for d in m.devices
                if d.unaccounted_mib is not None and d.device.startswith("CUDA")
                and m.key.gpus[int(d.device[4:])] == gpu_name]
        if gaps:
            return round(statistics.median(gaps), 1), f"median of {len(gaps)} measurement(s) on {gpu_name}"
    return None, ("default by model kind, measured on H200s with build 11434 (606 MiB attention-only, 706 MoE/MLA/"
                  "recurrent); `llama-pilot calibrate` measures this GPU")


# Buffers on these are a device's own (a local GPU, a worker's RPC device); the rest is host memory.
_DEVICES = ("CUDA", "RPC")


def compare(key: CalibrationKey, predicted: Estimate, logged_by_device: dict[str, float],
            logged_compute: dict[str, float], nvml_by_device: dict[str, float], *, build: int | None,
            profile: str | None, at: str, note: str | None = None) -> Measurement:
    """Line up prediction, log and NVML per device (host: prediction vs the CPU buffers logged)."""
    devices = []
    for d in predicted.devices:
        logged = logged_by_device.get(d.device)
        nvml = nvml_by_device.get(d.device)
        devices.append(DeviceMeasurement(
            device=d.device, predicted_mib=d.total_mib, predicted_compute_mib=d.compute_mib, logged_mib=logged,
            logged_compute_mib=logged_compute.get(d.device), nvml_mib=nvml,
            unaccounted_mib=round(nvml - logged, 1) if nvml is not None and logged is not None else None,
            error_mib=round(d.total_mib - nvml, 1) if nvml is not None else None))
    host_logged = sum(v for k, v in logged_by_device.items() if not k.startswith(_DEVICES))
    devices.append(DeviceMeasurement(
        device="host", predicted_mib=predicted.host.total_mib, predicted_compute_mib=predicted.host.compute_mib,
        logged_mib=round(host_logged, 2), logged_compute_mib=round(sum(v for k, v in logged_compute.items()
                                                                       if not k.startswith(_DEVICES)), 2),
        error_mib=round(predicted.host.total_mib - host_logged, 1)))
    return Measurement(key=key, digest=key.digest, at=at, build=build, profile=profile, devices=devices, note=note)
