"""Profiles: the typed view of models.conf, and the edits people and agents make to it.

A profile is one ``[section]``. The special ``[global]`` section holds host settings (models
directory, host, port, engine, backend) and defaults for any profile key: a profile's own value
wins, then ``[global]``, then llama-server's built-in default (the flag is simply not passed).

The file itself is read and written by :mod:`mcp_server.profiles.conffile`, which keeps every byte we do
not change; this module only decides what the keys mean.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from mcp_server import paths
from mcp_server.profiles.conffile import ConfDocument, Section
from mcp_server.errors import ConfigError, ProfileNotFound, ValidationError
from mcp_server.workers.spec import WorkerSpec, is_worker_key, parse_worker

GLOBAL_SECTION = "global"
# Where a profile's llama-server runs (the BACKEND key). The runtime's Backend protocol implements each.
BackendName = Literal["native", "docker"]
BENCH_PREFIX = "bench-"


@dataclass(frozen=True)
class KeySpec:
    """One models.conf key: its meaning, the llama-server flag it becomes, and its value kind."""

    key: str
    kind: str  # "text" | "int" | "float" | "int_or_auto" | "choice" | "list" | "path" | "args" | "onoff"
    help: str
    flag: str | None = None
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    scope: str = "profile"  # "profile" keys may also be set in [global] as defaults; "host" only in [global]


# The KV cache types llama-server accepts (-ctk/-ctv), and the -ot buffer types of a local machine
# (a remote RPC buffer, RPC[host:port], is not among them).
KV_CACHE_TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "iq4_nl", "q5_0", "q5_1")
LOCAL_BUFFER_TYPES = (r"CPU|CPU_REPACK|CPU_Mapped|CUDA[0-9]+|CUDA_Host|CUDA_Split|Vulkan[0-9]+|Vulkan_Host|Metal|"
                      r"SYCL[0-9]+|ROCm[0-9]+")

# Order matters: it is the order of flags in the argv (the original image's order first, then the
# keys the original could only express inside EXTRA_ARGS), and of keys in docs and `show`.
PROFILE_KEYS: tuple[KeySpec, ...] = (
    KeySpec("NAME", "text", "display name"),
    KeySpec("DESCRIPTION", "text", "what the profile is for"),
    KeySpec("SPEED", "text", "measured generation speed, free text such as '~147 t/s'"),
    KeySpec("MODEL", "path", "GGUF file relative to MODELS_DIR; for split files the -00001-of-0000N part", "--model"),
    KeySpec("CTX_SIZE", "int", "context size in tokens (0 = the model's training context)", "--ctx-size", minimum=0,
            maximum=1 << 24),
    KeySpec("N_GPU_LAYERS", "int_or_auto", "layers on GPU: a number, 'auto' or 'all'", "--n-gpu-layers", minimum=0,
            maximum=4096),
    KeySpec("SPLIT_MODE", "choice", "how to use several GPUs", "--split-mode", choices=("none", "layer", "row")),
    KeySpec("TENSOR_SPLIT", "list", "share of the model per GPU, e.g. 3,1 or 24,16", "--tensor-split", minimum=0,
            maximum=1e6),
    KeySpec("MAIN_GPU", "int", "GPU for the whole model with SPLIT_MODE=none", "--main-gpu", minimum=0, maximum=63),
    KeySpec("FLASH_ATTN", "choice", "flash attention", "--flash-attn", choices=("on", "off", "auto")),
    KeySpec("KV_CACHE_TYPE_K", "choice", "K cache type", "--cache-type-k", choices=KV_CACHE_TYPES),
    KeySpec("KV_CACHE_TYPE_V", "choice", "V cache type", "--cache-type-v", choices=KV_CACHE_TYPES),
    KeySpec("FIT", "onoff", "let llama.cpp fit the model to free memory", "--fit", choices=("on", "off")),
    KeySpec("FIT_TARGET", "list", "MiB to leave free per GPU when fitting: one value or one per GPU", "--fit-target",
            minimum=0, maximum=1 << 20),
    KeySpec("FIT_CTX", "int", "smallest context --fit may shrink to", "--fit-ctx", minimum=0, maximum=1 << 24),
    KeySpec("LOAD_MODE", "choice", "how the model file is loaded: auto (memory-mapped), none (read into RAM, "
            "which lets llama.cpp repack CPU-resident weights for its faster CPU kernels), mlock, ...", "--load-mode",
            choices=("auto", "none", "mmap", "mlock", "mmap+mlock", "dio")),
    KeySpec("OVERRIDE_TENSORS", "list", "tensor overrides, pattern=buffer, comma separated, first match wins",
            "--override-tensor"),
    KeySpec("N_CPU_MOE", "int", "keep the experts of the first N layers on the CPU", "--n-cpu-moe", minimum=0,
            maximum=4096),
    KeySpec("PARALLEL", "int", "server slots (parallel requests)", "--parallel", minimum=1, maximum=256),
    KeySpec("THREADS", "int", "CPU threads for the CPU-resident layers and experts (llama-server's default: "
            "the physical cores)", "--threads", minimum=1, maximum=1024),
    KeySpec("BATCH_SIZE", "int", "logical batch size", "--batch-size", minimum=1, maximum=1 << 20),
    KeySpec("UBATCH_SIZE", "int", "physical batch size (sizes the compute buffer)", "--ubatch-size", minimum=1,
            maximum=1 << 20),
    KeySpec("TEMP", "float", "default temperature", "--temp", minimum=0, maximum=100),
    KeySpec("TOP_P", "float", "default top_p", "--top-p", minimum=0, maximum=1),
    KeySpec("TOP_K", "int", "default top_k (0 = off)", "--top-k", minimum=0, maximum=1 << 20),
    KeySpec("MIN_P", "float", "default min_p", "--min-p", minimum=0, maximum=1),
    KeySpec("VISIBLE_DEVICES", "list", "GPUs this profile may use (CUDA_VISIBLE_DEVICES / Docker device request)",
            minimum=0, maximum=63),
    KeySpec("BACKEND", "choice", "run llama-server natively or in Docker", choices=("native", "docker")),
    # Below 1024 are the system's ports (22 is ssh): a model server never belongs there.
    KeySpec("PORT", "int", "port for this profile (else the global PORT)", minimum=1024, maximum=65535),
    KeySpec("EXTRA_ARGS", "args", "any other llama-server flags; appended last, so they win"),
    # Read by `llama-pilot serve` only; none of them reaches llama-server's argv.
    KeySpec("ALIASES", "list", "other names clients may send as `model` for this profile (serve)"),
    KeySpec("PIN", "onoff", "serve never unloads this profile to make room (serve)", choices=("on", "off")),
    KeySpec("PRIORITY", "int", "serve unloads lower priorities first when memory is short (default 0)", minimum=-100,
            maximum=100),
    KeySpec("IDLE_TTL", "int", "serve unloads the profile after this many seconds without a request (0 = never)",
            minimum=0, maximum=1 << 24),
    KeySpec("WORKERS", "list", "worker ids from [global]'s WORKER_<id> lines: their devices join this profile's "
            "(llama-server --rpc, remote devices first); start brings their RPC servers up, stop takes them down"),
    KeySpec("SAMPLERS", "choice", "client: the sampler fields a client sends win over the profile's TEMP/TOP_P/...; "
            "profile: serve strips them, so the profile's own settings apply (serve)", choices=("client", "profile")),
)

HOST_KEYS: tuple[KeySpec, ...] = (
    KeySpec("MODELS_DIR", "text", "folder holding the GGUF files (relative to this file's folder)", scope="host"),
    KeySpec("HOST", "text", "address llama-server listens on", scope="host"),
    KeySpec("ENGINE", "text", "llama-server binary: a path or a name on PATH (else auto-detected)", scope="host"),
    KeySpec("DOCKER_IMAGE", "text", "image for BACKEND=docker", scope="host"),
    KeySpec("SERVE_HOST", "text", "address `llama-pilot serve` listens on (default 127.0.0.1; any other needs "
            "SERVE_API_KEY)", scope="host"),
    KeySpec("SERVE_PORT", "int", "port of `llama-pilot serve` (default 8000)", minimum=1024, maximum=65535, scope="host"),
    KeySpec("SERVE_API_KEY", "text", "key clients must send (Authorization: Bearer or x-api-key); the environment "
            "variable LLAMA_PILOT_API_KEY overrides it", scope="host"),
    KeySpec("SERVE_MAX_WAIT", "float", "seconds a request for an unloaded model waits at most before serve stops "
            "admitting new requests to the models it must unload (default 30)", minimum=0, maximum=86400, scope="host"),
    KeySpec("SERVE_QUEUE_LIMIT", "int", "requests queued per model before serve answers 429 (default 64)", minimum=1,
            maximum=100000, scope="host"),
    KeySpec("SERVE_MEMORY_BUDGET", "text", "host memory serve may fill with models, e.g. 12GiB; on a machine "
            "without a GPU this is what co-residency is decided against (default: available RAM)", scope="host"),
    KeySpec("SERVE_RESERVE_MIB", "int", "MiB serve keeps free on each GPU (default: the planner's reserve)", minimum=0,
            maximum=1 << 20, scope="host"),
)

KEYS: dict[str, KeySpec] = {s.key: s for s in (*PROFILE_KEYS, *HOST_KEYS)}
PROFILE_KEY_NAMES = tuple(s.key for s in PROFILE_KEYS)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
DEFAULT_SERVE_PORT = 8000
DEFAULT_MODELS_DIR = "models"
DEFAULT_DOCKER_IMAGE = "llama-pilot/llama-server:cpu"

_INT_RE = re.compile(r"^-?[0-9]+$")
_FLOAT_RE = re.compile(r"^-?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?$")


def validate_value(key: str, value: str, where: str = "") -> None:
    """Raise ValidationError if ``value`` is not acceptable for a known ``key``; unknown keys pass."""
    if "\0" in value:
        raise ValidationError(key, value.replace("\0", "\\0"), "contains a NUL byte", where)
    spec = KEYS.get(key)
    if "\n" in value or "\r" in value:
        raise ValidationError(key, value, "a value must fit on one line", where)
    if spec is None:
        return
    kind = spec.kind
    if kind in ("int", "int_or_auto"):
        if kind == "int_or_auto" and value in ("auto", "all"):
            return
        if not _INT_RE.match(value):
            expected = "a whole number, 'auto' or 'all'" if kind == "int_or_auto" else "a whole number"
            raise ValidationError(key, value, f"expected {expected}", where)
        _check_range(spec, float(value), value, where)
    elif kind == "float":
        if not _FLOAT_RE.match(value):
            raise ValidationError(key, value, "expected a number", where)
        _check_range(spec, float(value), value, where)
    elif kind in ("choice", "onoff"):
        if value not in spec.choices:
            raise ValidationError(key, value, f"expected one of {', '.join(spec.choices)}", where)
    elif kind == "list":
        if not value or any(not part.strip() for part in value.split(",")):
            raise ValidationError(key, value, "expected a comma separated list with no empty items", where)
        if key in ("TENSOR_SPLIT",) and not all(_FLOAT_RE.match(p.strip()) for p in value.split(",")):
            raise ValidationError(key, value, "expected numbers such as 3,1", where)
        if key in ("FIT_TARGET", "VISIBLE_DEVICES") and not all(_INT_RE.match(p.strip()) for p in value.split(",")):
            raise ValidationError(key, value, "expected whole numbers such as 128,1024", where)
        # Numeric lists carry their range in the KeySpec, like single numbers; it holds for each item.
        low, high = spec.minimum, spec.maximum
        if low is not None and high is not None and not all(low <= float(p) <= high for p in value.split(",")):
            raise ValidationError(key, value, f"each number must be from {low:g} to {high:g}", where)
    elif kind == "path":
        if not value:
            raise ValidationError(key, value, "expected a file path", where)
    elif kind == "args":
        split_extra_args(value, key=key, where=where)


# Keys whose value becomes one llama-server argument (or the engine, argv[0]). EXTRA_ARGS is the one
# key that holds flags on purpose; NAME, DESCRIPTION, SPEED and the Docker image never reach argv.
ARGV_KEYS = frozenset({s.key for s in PROFILE_KEYS if s.flag} | {"HOST", "ENGINE"})
# A word that starts with '-' ("x.gguf --rpc host", "-ot"), at the start or after whitespace.
_FLAG_WORD_RE = re.compile(r"(?:^|\s)-")


def check_not_a_flag(key: str, value: str, where: str = "") -> None:
    """Refuse a value for an argv key that contains a word that looks like a flag.

    The argv is a list, so ``MODEL=x.gguf --rpc evil`` would reach llama-server as one odd file
    name, not as a flag; but a value like that is never meant, and it would become a real flag the
    moment anything joins the argv (a shell line, a compose file). Edits refuse it outright.
    """
    if key in ARGV_KEYS and _FLAG_WORD_RE.search(value):
        raise ValidationError(key, value, "must not contain a word starting with '-' (it would be read as a flag); "
                              "put llama-server flags in EXTRA_ARGS", where)


# Settings that name a program, a folder or a network address for the whole host. Agents (the MCP
# tools) may not change them: an agent picks among profiles and files under MODELS_DIR, nothing else.
HOST_ONLY_FOR_PEOPLE = frozenset({"ENGINE", "MODELS_DIR", "HOST", "DOCKER_IMAGE", "SERVE_HOST", "SERVE_PORT",
                                  "SERVE_API_KEY"})
def check_agent_edit(config: "Config", key: str, value: str | None, where: str = "") -> None:
    """The extra rules for edits made by an agent (MCP).

    Host settings (HOST_ONLY_FOR_PEOPLE) stay with people; MODEL must be a relative path that
    stays inside MODELS_DIR; EXTRA_ARGS may hold only the flags on
    :mod:`mcp_server.engine.flags`' allow-list, each with a value of the kind it expects (numbers are
    numbers, enums are enums, nothing is a path or a URL); OVERRIDE_TENSORS may name only local
    buffers.
    """
    if key in HOST_ONLY_FOR_PEOPLE or is_worker_key(key):
        raise ValidationError(key, value or "", "is a host setting only a person may change "
                              "(llama-pilot set global ...)", where)
    if value is None:
        return
    if key == "MODEL":
        model_path_inside(config, value, where)
    if key == "EXTRA_ARGS":
        from mcp_server.engine.flags import ArgsError, check_agent_args

        try:
            check_agent_args(split_extra_args(value, where=where))
        except ArgsError as exc:
            raise ValidationError(key, value, str(exc), where) from None
    elif key == "OVERRIDE_TENSORS":
        from mcp_server.engine.flags import Value

        if problem := Value("overrides").check(value):
            raise ValidationError(key, value, problem, where)


def model_path_inside(config: "Config", relative: str, where: str = "", key: str = "MODEL") -> Path:
    """``relative`` resolved under MODELS_DIR; refuses absolute paths, '..' and symlinks leading out."""
    root = Path(config.host.models_dir).resolve()
    if not relative or relative.startswith(("/", "~")) or "\\" in relative or "\0" in relative:
        raise ValidationError(key, relative, f"must be a path relative to MODELS_DIR ({root})", where)
    if any(part == ".." for part in Path(relative).parts):
        raise ValidationError(key, relative, "must not contain '..': paths stay inside MODELS_DIR", where)
    resolved = (root / relative).resolve()
    if resolved != root and root not in resolved.parents:
        raise ValidationError(key, relative, "leads outside MODELS_DIR (through a symlink)", where)
    return resolved


def _check_range(spec: KeySpec, number: float, raw: str, where: str) -> None:
    if spec.minimum is not None and number < spec.minimum:
        raise ValidationError(spec.key, raw, f"must be at least {spec.minimum:g}", where)
    if spec.maximum is not None and number > spec.maximum:
        raise ValidationError(spec.key, raw, f"must be at most {spec.maximum:g}", where)


def split_extra_args(value: str, key: str = "EXTRA_ARGS", where: str = "") -> list[str]:
    """Split EXTRA_ARGS like a POSIX shell would (quotes group, backslashes escape); no expansion."""
    try:
        return list(_shell_split(value))
    except ValueError as exc:  # unbalanced quotes
        raise ValidationError(key, value, f"cannot be split into arguments: {exc}", where) from exc


@lru_cache(maxsize=4096)
def _shell_split(value: str) -> tuple[str, ...]:
    # shlex is slow (~70 us a value) and a big models.conf repeats the same EXTRA_ARGS many times.
    import shlex

    return tuple(shlex.split(value, posix=True))


class TensorOverride(BaseModel):
    """One ``-ot`` rule: tensors whose name matches ``pattern`` go to ``buffer`` (CPU, CUDA0, ...)."""

    pattern: str
    buffer: str


class Profile(BaseModel):
    """One runnable configuration: a model file and how llama-server should run it."""

    model_config = ConfigDict(frozen=True)

    id: str
    line: int = Field(description="line of the [id] header in models.conf")
    is_bench: bool
    values: dict[str, str] = Field(description="the profile's own keys, as written")
    defaults: dict[str, str] = Field(default_factory=dict, description="keys inherited from [global]")

    def get(self, key: str) -> str | None:
        """The effective value: the profile's own, else the global default."""
        if key in self.values:
            return self.values[key]
        return self.defaults.get(key)

    @property
    def name(self) -> str:
        return self.values.get("NAME") or self.id

    @property
    def description(self) -> str | None:
        return self.values.get("DESCRIPTION")

    @property
    def speed(self) -> str | None:
        return self.values.get("SPEED")

    @property
    def model(self) -> str | None:
        return self.get("MODEL")

    @property
    def ctx_size(self) -> int | None:
        raw = self.get("CTX_SIZE")
        return int(raw) if raw is not None and _INT_RE.match(raw) else None

    @property
    def unknown_keys(self) -> list[str]:
        return [k for k in self.values if k not in KEYS]

    @property
    def tensor_overrides(self) -> list[TensorOverride]:
        raw = self.get("OVERRIDE_TENSORS")
        return parse_tensor_overrides(raw) if raw else []


def parse_tensor_overrides(raw: str) -> list[TensorOverride]:
    """Split ``pat=buf,pat2=buf2`` the way llama.cpp does (on commas, then on the last '=')."""
    rules = []
    for item in raw.split(","):
        item = item.strip()
        if not item:
            continue
        pattern, sep, buffer = item.rpartition("=")
        if not sep or not pattern:
            raise ValidationError("OVERRIDE_TENSORS", raw, f"{item!r} is not pattern=buffer")
        rules.append(TensorOverride(pattern=pattern, buffer=buffer))
    return rules


class HostSettings(BaseModel):
    """The [global] section's host settings, resolved against the config file's folder."""

    model_config = ConfigDict(frozen=True)

    models_dir: str
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    engine: str | None = None
    backend: BackendName = "native"
    docker_image: str = DEFAULT_DOCKER_IMAGE
    defaults: dict[str, str] = Field(default_factory=dict, description="profile keys set in [global]")
    serve_host: str = DEFAULT_HOST
    serve_port: int = DEFAULT_SERVE_PORT
    serve_api_key: str | None = None
    serve_max_wait_s: float = 30.0
    serve_queue_limit: int = 64
    serve_memory_budget: str | None = None
    serve_reserve_mib: int | None = None
    workers: dict[str, WorkerSpec] = Field(default_factory=dict, description="[global]'s WORKER_<id> lines")


@dataclass
class Config:
    """A loaded models.conf: its document (for edits) and the typed view of it."""

    path: Path
    document: ConfDocument
    host: HostSettings
    profiles: dict[str, Profile] = field(default_factory=dict)

    def profile(self, profile_id: str) -> Profile:
        try:
            return self.profiles[profile_id]
        except KeyError:
            raise ProfileNotFound(profile_id, list(self.profiles)) from None

    def model_path(self, profile: Profile) -> Path | None:
        """Absolute path of the profile's model file (not checked for existence)."""
        if not profile.model:
            return None
        return (Path(self.host.models_dir) / profile.model).resolve()


def load_config(path: str | Path | None = None) -> Config:
    """Read and type-check models.conf (see :func:`mcp_server.paths.config_path` for which file)."""
    conf_path = paths.config_path(path)
    try:
        document = ConfDocument.load(conf_path)
    except FileNotFoundError:
        raise ConfigError(
            f"{conf_path}: no such file. Pass --config PATH, set LLAMA_PILOT_CONFIG, or run from the folder "
            "holding models.conf."
        ) from None
    return config_from_document(document, conf_path)


def config_from_document(document: ConfDocument, conf_path: Path) -> Config:
    where_file = str(conf_path)
    glob = document.section(GLOBAL_SECTION)
    glob_values = glob.as_dict() if glob else {}
    workers: dict[str, WorkerSpec] = {}
    for entry in glob.entries if glob else ():
        spec = KEYS.get(entry.key)
        where = f"{where_file}:{entry.line}"
        if spec is None and is_worker_key(entry.key):
            worker = parse_worker(entry.key, entry.value, where)
            workers[worker.id] = worker
            continue
        if spec is None:
            raise ConfigError(f"{where}: unknown key {entry.key!r} in [global]; known: "
                              f"{', '.join(KEYS)}, and WORKER_<id> lines")
        if entry.key == "MODEL":
            raise ConfigError(f"{where}: MODEL belongs in a profile, not in [global]")
        validate_value(entry.key, entry.value, where)
    host = _host_settings({k: v for k, v in glob_values.items() if not is_worker_key(k)}, conf_path)
    host = host.model_copy(update={"workers": workers})
    profiles: dict[str, Profile] = {}
    for section in document.sections():
        if section.id == GLOBAL_SECTION:
            continue
        profiles[section.id] = _profile_from_section(section, host, where_file)
    return Config(path=conf_path, document=document, host=host, profiles=profiles)


def _host_settings(values: dict[str, str], conf_path: Path) -> HostSettings:
    models_dir = Path(values.get("MODELS_DIR", DEFAULT_MODELS_DIR)).expanduser()
    if not models_dir.is_absolute():
        models_dir = conf_path.resolve().parent / models_dir
    defaults = {k: v for k, v in values.items() if KEYS[k].scope == "profile"}
    return HostSettings(
        models_dir=str(models_dir),
        host=values.get("HOST", DEFAULT_HOST),
        port=int(values.get("PORT", DEFAULT_PORT)),
        engine=values.get("ENGINE"),
        backend=values.get("BACKEND", "native"),  # type: ignore[arg-type]
        docker_image=values.get("DOCKER_IMAGE", DEFAULT_DOCKER_IMAGE),
        defaults=defaults,
        serve_host=values.get("SERVE_HOST", DEFAULT_HOST),
        serve_port=int(values.get("SERVE_PORT", DEFAULT_SERVE_PORT)),
        serve_api_key=values.get("SERVE_API_KEY") or None,
        serve_max_wait_s=float(values.get("SERVE_MAX_WAIT", 30)),
        serve_queue_limit=int(values.get("SERVE_QUEUE_LIMIT", 64)),
        serve_memory_budget=values.get("SERVE_MEMORY_BUDGET") or None,
        serve_reserve_mib=int(values["SERVE_RESERVE_MIB"]) if "SERVE_RESERVE_MIB" in values else None,
    )


def _profile_from_section(section: Section, host: HostSettings, where_file: str) -> Profile:
    values = section.as_dict()
    for entry in section.entries:
        where = f"{where_file}:{entry.line} [{section.id}]"
        spec = KEYS.get(entry.key)
        if spec is not None and spec.scope == "host":
            raise ConfigError(f"{where}: {entry.key} is a host setting; put it under [global]")
        validate_value(entry.key, entry.value, where)
    if "MODEL" not in values:
        raise ConfigError(f"{where_file}:{section.line}: profile [{section.id}] has no MODEL (required)")
    return Profile(
        id=section.id,
        line=section.line,
        is_bench=section.id.startswith(BENCH_PREFIX),
        values=values,
        defaults=dict(host.defaults),
    )


# --- edits ---------------------------------------------------------------------------------


# A profile id names files (its log, its instances' state) and is typed on command lines: it starts
# with a letter, digit or '_' (so never '.', '..' or '-rf') and is at most 64 characters, the limit
# the MCP tools accept too.
PROFILE_ID_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$"
PROFILE_ID_RE = re.compile(PROFILE_ID_PATTERN)


def check_profile_id(profile_id: str) -> None:
    if not PROFILE_ID_RE.match(profile_id) or profile_id == GLOBAL_SECTION:
        shown = profile_id if len(profile_id) <= 80 else profile_id[:77] + "..."
        raise ValidationError("profile", shown, "ids start with a letter, digit or '_', then letters, digits, "
                              "'-', '_' and '.', at most 64 characters; 'global' is reserved")


def context_label(ctx: int | None) -> str:
    """Short context label for lists: 131072 -> '128K', 10240 -> '10K'."""
    if ctx is None:
        return "default"
    if ctx == 0:
        return "model max"
    if ctx >= 1024 and ctx % 1024 == 0:
        return f"{ctx // 1024}K"
    return str(ctx)
