"""Profile + [global] defaults -> the exact llama-server argv. Pure: no I/O, no shell.

The order follows the original image's launch line (model, context, layers, host, port, split,
fit, ...), then the keys the original could only write inside EXTRA_ARGS, then EXTRA_ARGS itself,
last, so that a flag repeated there wins exactly as it did in the original.
"""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import TYPE_CHECKING

from pydantic import BaseModel, Field

from mcp_server.errors import ValidationError
from mcp_server.profiles.config import PROFILE_KEYS, Config, Profile, split_extra_args

if TYPE_CHECKING:
    from mcp_server.workers.spec import WorkerSpec

# Keys handled outside the flag loop: MODEL (path is resolved), PORT (chosen by the caller).
_SPECIAL = {"MODEL", "PORT", "WORKERS"}
# At verbosity 4 llama-server logs every buffer it allocates, per device: the load report and
# the estimator's calibration read them. EXTRA_ARGS comes later, so a profile can still lower it.
LOG_VERBOSITY = ["--log-verbosity", "4"]
# /metrics on every instance: `serve` merges them under a model label; it costs nothing until scraped.
METRICS = ["--metrics"]


class LaunchSpec(BaseModel):
    """Everything needed to start one llama-server for a profile."""

    profile: str
    argv: list[str] = Field(description="argv[0] is the engine; never joined into a shell string")
    env: dict[str, str] = Field(default_factory=dict, description="extra environment for the process")
    model_path: str
    host: str
    port: int
    visible_devices: list[int] | None = None


def _flag_values(profile: Profile) -> list[str]:
    args: list[str] = []
    for spec in PROFILE_KEYS:
        if spec.flag is None or spec.key in _SPECIAL:
            continue
        value = profile.get(spec.key)
        if value is None:
            continue
        # Flag injection: a structured value is a single argument and must not look like a flag.
        # (Negative numbers are already refused by the key's minimum.)
        if value.startswith("-"):
            raise ValidationError(spec.key, value, "must not start with '-' (it would be read as a flag)",
                                  f"[{profile.id}]")
        args += [spec.flag, value]
    return args


def launch_spec(profile: Profile, config: Config, *, engine: str = "llama-server", port: int | None = None,
                host: str | None = None, model_root: str | None = None) -> LaunchSpec:
    """How to start ``profile``: its argv, environment, model path, host and port.

    ``model_root`` replaces the models directory in the model path (Docker mounts it at /models);
    ``port``/``host`` default to the profile's PORT, then [global].
    """
    model = profile.model
    if not model:
        raise ValidationError("MODEL", "", "is required", f"[{profile.id}]")
    if model.startswith("-"):
        raise ValidationError("MODEL", model, "must not start with '-'", f"[{profile.id}]")
    if model_root is not None:
        model_path = str(PurePosixPath(model_root) / model)
    else:
        model_path = str(config.model_path(profile))
    chosen_port = port if port is not None else int(profile.get("PORT") or config.host.port)
    chosen_host = host or config.host.host
    argv = [engine, "--model", model_path]
    flags = _flag_values(profile)
    # Keep the original's order: context and layers come before host/port.
    head, rest = _split_after(flags, ("--ctx-size", "--n-gpu-layers"))
    argv += head + ["--host", chosen_host, "--port", str(chosen_port)] + rest + LOG_VERBOSITY + METRICS
    if workers := profile_workers(profile, config):
        # llama.cpp puts RPC devices before the local ones: TENSOR_SPLIT lists them first too.
        argv += ["--rpc", ",".join(w.endpoint for w in workers)]
    extra = profile.get("EXTRA_ARGS")
    if extra:
        argv += split_extra_args(extra, where=f"[{profile.id}]")
    devices = profile.get("VISIBLE_DEVICES")
    visible = [int(d) for d in devices.split(",")] if devices else None
    # PCI bus order makes CUDA's numbering (CUDA0 in llama.cpp's log, VISIBLE_DEVICES, -ts order)
    # the same as nvidia-smi's, NVML's and Docker's; CUDA's default "fastest first" need not be.
    env = {"CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
    if visible is not None:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(d) for d in visible)
    return LaunchSpec(profile=profile.id, argv=argv, env=env, model_path=model_path, host=chosen_host,
                      port=chosen_port, visible_devices=visible)


def profile_workers(profile: Profile, config: Config) -> "list[WorkerSpec]":
    """The workers a profile names (WORKERS), as [global] defines them; an unknown id is an error."""
    raw = profile.get("WORKERS")
    if not raw:
        return []
    known = config.host.workers
    chosen = []
    for worker_id in (w.strip() for w in raw.split(",")):
        if worker_id not in known:
            raise ValidationError("WORKERS", raw, f"no worker {worker_id!r} in [global] (known: "
                                  f"{', '.join(known) or 'none; add WORKER_<id>=http://host:8765'})", f"[{profile.id}]")
        chosen.append(known[worker_id])
    return chosen


def without_flags(argv: list[str], drop: dict[str, int]) -> list[str]:
    """argv[1:] without the flags in ``drop`` (flag -> how many values follow it)."""
    kept, i = [], 1
    while i < len(argv):
        if argv[i] in drop:
            i += 1 + drop[argv[i]]
            continue
        kept.append(argv[i])
        i += 1
    return kept


def _split_after(flags: list[str], leading: tuple[str, ...]) -> tuple[list[str], list[str]]:
    head: list[str] = []
    rest: list[str] = []
    for i in range(0, len(flags), 2):
        (head if flags[i] in leading else rest).extend(flags[i:i + 2])
    return head, rest
