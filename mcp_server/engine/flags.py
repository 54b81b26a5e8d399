"""Every llama-server flag of the pinned build, classified: which ones an agent may put in EXTRA_ARGS.

An agent (an MCP client) edits profiles, and whatever lands in EXTRA_ARGS reaches llama-server's
argv. Some flags load files (``--mmproj``, ``--grammar-file``), write files (``--slot-save-path``),
reach the network (``-hf``, ``--rpc``), start programs (``--mcp-servers-json`` with a ``command``,
``--tools exec_shell_command``) or move the server off the address llama-pilot chose. A deny-list
of those misses aliases and every flag a newer build adds, so this is an allow-list: a flag an agent
may set is listed here with a check of its value; everything else, known or not, is refused.

People editing models.conf by hand, or with ``llama-pilot set``, are not limited by this table;
``lint`` only warns when a profile uses a flag that reads files or starts programs.

How a new flag gets classified: the engine pin (``engine.LLAMA_CPP_BUILD_NUMBER``) and
:data:`CLASSIFIED_FOR_BUILD` must agree, and ``tests/test_server_flags.py`` parses the real
``llama-server --help`` and fails on any spelling that is not in :data:`FLAGS` (or is there but no
longer in the build). Add the flag to one of the two groups below, with its value rule or the reason
people keep it, and bump :data:`CLASSIFIED_FOR_BUILD`.

The argv is parsed the way llama.cpp's ``common_params_parse`` does (``common/arg.cpp``): a token
in flag position is looked up after replacing ``_`` with ``-`` in ``--`` names (so ``--mmproj_url``
is ``--mmproj-url``); there is no ``--flag=value`` form (llama.cpp rejects it); a flag then takes
exactly as many following tokens as values as it declares (0, 1 or 2), whatever they look like.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterator, Literal

from mcp_server.profiles.config import KV_CACHE_TYPES, LOCAL_BUFFER_TYPES

CLASSIFIED_FOR_BUILD = 11434

# Why people keep a flag to themselves. The first four are what lint warns about.
Reason = Literal["reads-files", "writes-files", "network", "runs-programs", "server-address", "managed",
                 "secret", "exits", "removed", "router"]
RISKY_REASONS: frozenset[str] = frozenset({"reads-files", "writes-files", "network", "runs-programs"})
REASON_TEXT: dict[str, str] = {
    "reads-files": "reads files named in its value",
    "writes-files": "writes files",
    "network": "reaches the network (downloads, remote servers or cross-origin access)",
    "runs-programs": "can start programs",
    "server-address": "moves the server off the address and port llama-pilot chose",
    "managed": "is set by llama-pilot itself (the model path, the port, the log it reads)",
    "secret": "carries a secret",
    "exits": "makes llama-server print something and exit instead of serving",
    "removed": "was removed from llama.cpp and fails at start",
    "router": "turns llama-server into a router that starts other servers",
}


# --- value rules ------------------------------------------------------------------------------

# Free text may not look like a path or a URL: no slash, no backslash, no control characters.
_TEXT_RE = re.compile(r"^[^/\\\x00-\x1f\x7f]{0,512}$")
_NAME_RE = re.compile(r"^[A-Za-z0-9_.+-]{1,128}$")
_INT_RE = re.compile(r"^[+-]?[0-9]{1,10}$")
_FLOAT_RE = re.compile(r"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?$")
# A device llama.cpp names (CPU, CUDA0, Vulkan1, ...); RPC devices (RPC0[host:port]) are not names.
_DEVICE_RE = re.compile(r"^(none|[A-Za-z]+[0-9]*)$")
# -ot buffer types without RPC[host:port] (a remote buffer is a network path).
_BUFFER_RE = re.compile(rf"^({LOCAL_BUFFER_TYPES})$")
_KV_OVERRIDE_RE = re.compile(r"^[A-Za-z0-9_.-]+=(int|float|bool|str):[A-Za-z0-9_.+-]*$")
_LOGIT_BIAS_RE = re.compile(r"^[0-9]+[+-]([0-9]+\.?[0-9]*|inf)$")


@dataclass(frozen=True)
class Value:
    """What one value of a flag must look like; ``check`` returns the reason it is wrong, or None."""

    kind: Literal["int", "float", "choice", "name", "text", "ints", "floats", "devices", "overrides",
                  "kv-overrides", "logit-bias", "hex", "cpu-range", "names"]
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] = ()
    also: tuple[str, ...] = ()  # words accepted besides numbers ("auto", "all")

    def check(self, value: str) -> str | None:
        if "\0" in value:
            return "contains a NUL byte"
        if value in self.also:
            return None
        kind = self.kind
        if kind in ("int", "float"):
            pattern = _INT_RE if kind == "int" else _FLOAT_RE
            if not pattern.match(value):
                words = f" or {', '.join(self.also)}" if self.also else ""
                return f"expected {'a whole number' if kind == 'int' else 'a number'}{words}"
            return self._range(float(value))
        if kind in ("ints", "floats"):
            pattern = _INT_RE if kind == "ints" else _FLOAT_RE
            parts = value.split(",")
            if not all(pattern.match(p.strip()) for p in parts):
                return "expected comma separated numbers such as 3,1"
            return next((r for r in (self._range(float(p)) for p in parts) if r), None)
        if kind == "choice":
            return None if value in self.choices else f"expected one of {', '.join(self.choices)}"
        if kind == "names":
            bad = [p for p in value.split(",") if p not in self.choices]
            return f"{bad[0]!r} is not one of {', '.join(self.choices)}" if bad else None
        if kind == "name":
            ok = all(_NAME_RE.match(p) for p in value.split(","))
            return None if ok else "expected a name (letters, digits, '_', '.', '+', '-'; comma separated)"
        if kind == "text":
            return None if _TEXT_RE.match(value) else "free text may not contain '/', '\\' or control characters"
        if kind == "devices":
            ok = all(_DEVICE_RE.match(p) and not p.upper().startswith("RPC") for p in value.split(","))
            return None if ok else "expected device names such as CUDA0,CUDA1 or none (no RPC devices)"
        if kind == "overrides":
            return _check_overrides(value)
        if kind == "kv-overrides":
            ok = all(_KV_OVERRIDE_RE.match(p) for p in value.split(","))
            return None if ok else "expected KEY=TYPE:VALUE with TYPE int, float, bool or str"
        if kind == "logit-bias":
            ok = all(_LOGIT_BIAS_RE.match(p) for p in value.split(","))
            return None if ok else "expected TOKEN_ID+BIAS or TOKEN_ID-BIAS"
        if kind == "hex":
            return None if re.fullmatch(r"(0x)?[0-9A-Fa-f]{1,256}", value) else "expected a hexadecimal mask"
        if kind == "cpu-range":
            return None if re.fullmatch(r"[0-9]{1,5}-[0-9]{1,5}", value) else "expected lo-hi, e.g. 0-7"
        raise AssertionError(kind)

    def _range(self, number: float) -> str | None:
        if self.low is not None and number < self.low:
            return f"must be at least {self.low:g}"
        if self.high is not None and number > self.high:
            return f"must be at most {self.high:g}"
        return None


def _check_overrides(value: str) -> str | None:
    for item in value.split(","):
        pattern, sep, buffer = item.rpartition("=")
        if not sep or not pattern:
            return f"{item!r} is not pattern=buffer"
        if "/" in pattern:  # tensor names have no '/'; backslashes are regex escapes and stay
            return f"pattern {pattern!r} may not contain '/'"
        try:
            re.compile(pattern)
        except re.error as exc:
            return f"pattern {pattern!r} does not compile: {exc}"
        if not _BUFFER_RE.match(buffer):
            return f"buffer {buffer!r} is not a local buffer type (CPU, CUDA0, ...)"
    return None


SWITCH: tuple[Value, ...] = ()


def INT(low: float | None = None, high: float | None = None, also: tuple[str, ...] = ()) -> tuple[Value, ...]:
    return (Value("int", low, high, also=also),)


def FLOAT(low: float | None = None, high: float | None = None) -> tuple[Value, ...]:
    return (Value("float", low, high),)


def CHOICE(*choices: str) -> tuple[Value, ...]:
    return (Value("choice", choices=choices),)


def ONE(kind: str, **kw: object) -> tuple[Value, ...]:
    return (Value(kind, **kw),)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Flag:
    """One llama-server option: every spelling, how many values it takes, who may set it."""

    names: tuple[str, ...]
    values: tuple[Value, ...] = ()  # what an agent may give; for people-only flags, only the count matters
    people_only: Reason | None = None
    n_values: int | None = None  # for people-only flags: how many values follow (default 1)

    @property
    def arity(self) -> int:
        if self.people_only is None:
            return len(self.values)
        return 1 if self.n_values is None else self.n_values


def agent(*names: str, values: tuple[Value, ...] = SWITCH) -> Flag:
    return Flag(names, values)


def people(reason: Reason, *names: str, n_values: int = 1) -> Flag:
    return Flag(names, people_only=reason, n_values=n_values)


ON_OFF_AUTO = CHOICE("on", "off", "auto")
THREADS = INT(-1, 4096)
PRIO = INT(-1, 3)
ZERO_ONE = CHOICE("0", "1")
UNIT = FLOAT(0, 1)
COUNT = INT(-1, 1 << 20)
SPEC_TYPES = ("none", "draft-simple", "draft-eagle3", "draft-mtp", "draft-dflash", "draft-dspark", "ngram-simple",
              "ngram-map-k", "ngram-map-k4v", "ngram-mod", "ngram-cache")

FLAGS: tuple[Flag, ...] = (
    # --- agents may set these: numbers, enums, switches and names; no value is a path or a URL ---
    agent("-t", "--threads", values=THREADS),
    agent("-tb", "--threads-batch", values=THREADS),
    agent("-C", "--cpu-mask", values=ONE("hex")),
    agent("-Cr", "--cpu-range", values=ONE("cpu-range")),
    agent("--cpu-strict", values=ZERO_ONE),
    agent("--prio", values=PRIO),
    agent("--poll", values=INT(0, 100)),
    agent("-Cb", "--cpu-mask-batch", values=ONE("hex")),
    agent("-Crb", "--cpu-range-batch", values=ONE("cpu-range")),
    agent("--cpu-strict-batch", values=ZERO_ONE),
    agent("--prio-batch", values=PRIO),
    agent("--poll-batch", values=INT(0, 100)),
    agent("-c", "--ctx-size", values=INT(0, 1 << 24)),
    agent("-n", "--predict", "--n-predict", values=INT(-2, 1 << 24)),
    agent("-b", "--batch-size", values=INT(1, 1 << 20)),
    agent("-ub", "--ubatch-size", values=INT(1, 1 << 20)),
    agent("--keep", values=INT(-1, 1 << 24)),
    agent("--swa-full"),
    agent("-fa", "--flash-attn", values=ON_OFF_AUTO),
    agent("--perf", "--no-perf"),
    agent("-e", "--escape", "--no-escape"),
    agent("--rope-scaling", values=CHOICE("none", "linear", "yarn")),
    agent("--rope-scale", values=FLOAT(0, 1024)),
    agent("--rope-freq-base", values=FLOAT(0, 1e12)),
    agent("--rope-freq-scale", values=FLOAT(0, 1024)),
    agent("--yarn-orig-ctx", values=INT(0, 1 << 24)),
    agent("--yarn-ext-factor", values=FLOAT(-1, 1024)),
    agent("--yarn-attn-factor", values=FLOAT(-1, 1024)),
    agent("--yarn-beta-slow", values=FLOAT(-1, 1024)),
    agent("--yarn-beta-fast", values=FLOAT(-1, 1024)),
    agent("-kvo", "--kv-offload", "-nkvo", "--no-kv-offload"),
    agent("--repack", "-nr", "--no-repack"),
    agent("--no-host"),
    agent("-ctk", "--cache-type-k", values=CHOICE(*KV_CACHE_TYPES)),
    agent("-ctv", "--cache-type-v", values=CHOICE(*KV_CACHE_TYPES)),
    agent("-dt", "--defrag-thold", values=FLOAT(-1, 1)),
    agent("-lm", "--load-mode", values=CHOICE("auto", "none", "mmap", "mlock", "mmap+mlock", "dio")),
    agent("-lzm", "--lazy-mode", values=CHOICE("on", "off", "auto")),
    agent("--numa", values=CHOICE("distribute", "isolate", "numactl")),
    agent("-dev", "--device", values=ONE("devices")),
    agent("-ot", "--override-tensor", values=ONE("overrides")),
    agent("-cmoe", "--cpu-moe"),
    agent("-ncmoe", "--n-cpu-moe", values=INT(0, 4096)),
    agent("-ncffn", "--n-cpu-ffn", values=INT(0, 4096)),
    agent("-ngl", "--gpu-layers", "--n-gpu-layers", values=INT(-1, 4096, also=("auto", "all"))),
    agent("-sm", "--split-mode", values=CHOICE("none", "layer", "row", "tensor")),
    agent("-ts", "--tensor-split", values=ONE("floats", low=0, high=1e6)),
    agent("-mg", "--main-gpu", values=INT(0, 63)),
    agent("-fit", "--fit", values=CHOICE("on", "off")),
    agent("-fitt", "--fit-target", values=ONE("ints", low=0, high=1 << 20)),
    agent("-fitc", "--fit-ctx", values=INT(0, 1 << 24)),
    agent("--check-tensors"),
    agent("--override-kv", values=ONE("kv-overrides")),
    agent("--op-offload", "--no-op-offload"),
    agent("--control-vector-layer-range", values=INT(0, 4096) + INT(0, 4096)),
    agent("--log-colors", values=ON_OFF_AUTO),
    agent("-v", "--verbose", "--log-verbose"),
    agent("--offline"),
    agent("--log-prefix", "--no-log-prefix"),
    agent("--log-timestamps", "--no-log-timestamps"),
    agent("--spec-draft-type-k", "-ctkd", "--cache-type-k-draft", values=CHOICE(*KV_CACHE_TYPES)),
    agent("--spec-draft-type-v", "-ctvd", "--cache-type-v-draft", values=CHOICE(*KV_CACHE_TYPES)),
    agent("--samplers", values=ONE("text")),
    agent("-s", "--seed", values=INT(-1, 4294967295)),
    agent("--sampler-seq", "--sampling-seq", values=ONE("name")),
    agent("--ignore-eos"),
    agent("--temp", "--temperature", values=FLOAT(0, 100)),
    agent("--top-k", values=INT(0, 1 << 20)),
    agent("--top-p", values=UNIT),
    agent("--min-p", values=UNIT),
    agent("--top-nsigma", "--top-n-sigma", values=FLOAT(-1, 100)),
    agent("--xtc-probability", values=UNIT),
    agent("--xtc-threshold", values=UNIT),
    agent("--typical", "--typical-p", values=UNIT),
    agent("--repeat-last-n", values=COUNT),
    agent("--repeat-penalty", values=FLOAT(0, 100)),
    agent("--presence-penalty", values=FLOAT(-100, 100)),
    agent("--frequency-penalty", values=FLOAT(-100, 100)),
    agent("--dry-multiplier", values=FLOAT(0, 100)),
    agent("--dry-base", values=FLOAT(0, 100)),
    agent("--dry-allowed-length", values=INT(0, 1 << 20)),
    agent("--dry-penalty-last-n", values=COUNT),
    agent("--dry-sequence-breaker", values=ONE("text")),
    agent("--adaptive-target", values=FLOAT(-1, 1)),
    agent("--adaptive-decay", values=UNIT),
    agent("--dynatemp-range", values=FLOAT(0, 100)),
    agent("--dynatemp-exp", values=FLOAT(0, 100)),
    agent("--mirostat", values=CHOICE("0", "1", "2")),
    agent("--mirostat-lr", values=FLOAT(0, 100)),
    agent("--mirostat-ent", values=FLOAT(0, 100)),
    agent("-l", "--logit-bias", values=ONE("logit-bias")),
    agent("--grammar", values=ONE("text")),
    agent("-j", "--json-schema", values=ONE("text")),
    agent("-bs", "--backend-sampling"),
    agent("--spec-draft-threads", "-td", "--threads-draft", values=THREADS),
    agent("--spec-draft-threads-batch", "-tbd", "--threads-batch-draft", values=THREADS),
    agent("--spec-draft-cpu-mask", "-Cd", "--cpu-mask-draft", values=ONE("hex")),
    agent("--spec-draft-cpu-range", "-Crd", "--cpu-range-draft", values=ONE("cpu-range")),
    agent("--spec-draft-cpu-strict", "--cpu-strict-draft", values=ZERO_ONE),
    agent("--spec-draft-prio", "--prio-draft", values=PRIO),
    agent("--spec-draft-poll", "--poll-draft", values=INT(0, 100)),
    agent("--spec-draft-cpu-mask-batch", "-Cbd", "--cpu-mask-batch-draft", values=ONE("hex")),
    agent("--spec-draft-cpu-strict-batch", "--cpu-strict-batch-draft", values=ZERO_ONE),
    agent("--spec-draft-prio-batch", "--prio-batch-draft", values=PRIO),
    agent("--spec-draft-poll-batch", "--poll-batch-draft", values=INT(0, 100)),
    agent("--spec-draft-override-tensor", "-otd", "--override-tensor-draft", values=ONE("overrides")),
    agent("--spec-draft-cpu-moe", "-cmoed", "--cpu-moe-draft"),
    agent("--spec-draft-n-cpu-moe", "--spec-draft-ncmoe", "-ncmoed", "--n-cpu-moe-draft", values=INT(0, 4096)),
    agent("--spec-draft-n-max", values=INT(0, 1024)),
    agent("--spec-draft-n-min", values=INT(0, 1024)),
    agent("--spec-synth-len", values=FLOAT(0, 1024)),
    agent("--spec-synth-rates", values=ONE("floats", low=0, high=1)),
    agent("--spec-draft-p-split", "--draft-p-split", values=UNIT),
    agent("--spec-draft-p-min", "--draft-p-min", values=UNIT),
    agent("--spec-draft-backend-sampling", "--no-spec-draft-backend-sampling"),
    agent("--spec-draft-sampling", values=CHOICE("greedy", "probabilistic")),
    agent("--spec-draft-device", "-devd", "--device-draft", values=ONE("devices")),
    agent("--spec-draft-ngl", "-ngld", "--gpu-layers-draft", "--n-gpu-layers-draft",
          values=INT(-1, 4096, also=("auto", "all"))),
    agent("--spec-type", values=ONE("names", choices=SPEC_TYPES)),
    agent("--spec-ngram-mod-n-min", values=INT(0, 1024)),
    agent("--spec-ngram-mod-n-max", values=INT(0, 1024)),
    agent("--spec-ngram-mod-n-match", values=INT(0, 1024)),
    agent("--spec-ngram-simple-size-n", values=INT(0, 1024)),
    agent("--spec-ngram-simple-size-m", values=INT(0, 1024)),
    agent("--spec-ngram-simple-min-hits", values=INT(0, 1024)),
    agent("--spec-ngram-map-k-size-n", values=INT(0, 1024)),
    agent("--spec-ngram-map-k-size-m", values=INT(0, 1024)),
    agent("--spec-ngram-map-k-min-hits", values=INT(0, 1024)),
    agent("--spec-ngram-map-k4v-size-n", values=INT(0, 1024)),
    agent("--spec-ngram-map-k4v-size-m", values=INT(0, 1024)),
    agent("--spec-ngram-map-k4v-min-hits", values=INT(0, 1024)),
    agent("--kv-unified-per-slot", values=INT(0, 1 << 24)),
    agent("-ctxcp", "--ctx-checkpoints", "--swa-checkpoints", values=INT(0, 1024)),
    agent("-cms", "--checkpoint-min-step", values=INT(0, 1 << 24)),
    agent("-cram", "--cache-ram", values=INT(-1, 1 << 24)),
    agent("-kvu", "--kv-unified", "-no-kvu", "--no-kv-unified"),
    agent("--cache-idle-slots", "--no-cache-idle-slots"),
    agent("--context-shift", "--no-context-shift"),
    agent("-r", "--reverse-prompt", values=ONE("text")),
    agent("-sp", "--special"),
    agent("--warmup", "--no-warmup"),
    agent("--spm-infill"),
    agent("--pooling", values=CHOICE("none", "mean", "cls", "last", "rank")),
    agent("-np", "--parallel", values=INT(-1, 256)),
    agent("-cb", "--cont-batching", "-nocb", "--no-cont-batching"),
    agent("--mmproj-auto", "--no-mmproj", "--no-mmproj-auto"),
    agent("--mmproj-offload", "--no-mmproj-offload"),
    agent("-mmdev", "--mmproj-device", values=ONE("devices")),
    agent("--image-min-tokens", values=INT(0, 1 << 20)),
    agent("--image-max-tokens", values=INT(0, 1 << 20)),
    agent("--mtmd-batch-max-tokens", values=INT(0, 1 << 20)),
    agent("--video-fps", values=FLOAT(0, 1000)),
    agent("--video-timestamp-interval", values=INT(0, 1 << 24)),
    agent("-a", "--alias", values=ONE("name")),
    agent("--tags", values=ONE("name")),
    agent("--embd-normalize", values=INT(-1, 100)),
    agent("--ui", "--webui", "--no-ui", "--no-webui"),
    agent("--embedding", "--embeddings"),
    agent("--rerank", "--reranking"),
    agent("--chat-template-kwargs", values=ONE("text")),
    agent("-to", "--timeout", values=INT(1, 1 << 24)),
    agent("--sse-ping-interval", values=INT(-1, 86400)),
    agent("--threads-http", values=THREADS),
    agent("--cache-prompt", "--no-cache-prompt"),
    agent("--cache-reuse", values=INT(0, 1 << 24)),
    agent("--metrics"),
    agent("--slots", "--no-slots"),
    agent("--jinja", "--no-jinja"),
    agent("--reasoning-format", values=CHOICE("none", "deepseek", "deepseek-legacy", "auto")),
    agent("-rea", "--reasoning", values=ON_OFF_AUTO),
    agent("--reasoning-effort", values=ONE("name")),
    agent("--reasoning-budget", values=INT(-1, 1 << 24)),
    agent("--reasoning-budget-message", values=ONE("text")),
    agent("--reasoning-preserve", "--no-reasoning-preserve"),
    # A built-in template's name; an inline Jinja template is for people to write.
    agent("--chat-template", values=ONE("name")),
    agent("--skip-chat-parsing", "--no-skip-chat-parsing"),
    agent("--prefill-assistant", "--no-prefill-assistant"),
    agent("-sps", "--slot-prompt-similarity", values=UNIT),
    agent("--lora-init-without-apply"),
    agent("--sleep-idle-seconds", values=INT(-1, 1 << 24)),
    agent("--spec-default"),

    # --- people only ---
    people("exits", "-h", "--help", "--usage", n_values=0),
    people("exits", "--version", n_values=0),
    people("exits", "-cl", "--cache-list", n_values=0),
    people("exits", "--completion-bash", n_values=0),
    people("exits", "--list-devices", n_values=0),
    people("network", "--rpc"),
    people("reads-files", "--lora"),
    people("reads-files", "--lora-scaled"),
    people("reads-files", "--control-vector"),
    people("reads-files", "--control-vector-scaled"),
    people("managed", "-m", "--model"),
    people("network", "-mu", "--model-url"),
    people("network", "-dr", "--docker-repo"),
    people("network", "-hf", "-hfr", "--hf-repo"),
    people("network", "-hff", "--hf-file"),
    people("secret", "-hft", "--hf-token"),
    # llama-pilot reads llama-server's log (load report, diagnosis, calibration): it keeps the log.
    people("managed", "--log-disable", n_values=0),
    people("writes-files", "--log-file"),
    people("managed", "--log-jsonl", "--no-log-jsonl", n_values=0),
    people("managed", "-lv", "--verbosity", "--log-verbosity"),
    people("reads-files", "--grammar-file"),
    people("reads-files", "-jf", "--json-schema-file"),
    people("network", "--spec-draft-hf", "-hfd", "-hfrd", "--hf-repo-draft"),
    people("reads-files", "--spec-draft-model", "-md", "--model-draft"),
    people("removed", "--draft", "--draft-n", "--draft-max"),
    people("removed", "--draft-min", "--draft-n-min"),
    people("removed", "--spec-ngram-size-n"),
    people("removed", "--spec-ngram-size-m"),
    people("removed", "--spec-ngram-min-hits"),
    people("writes-files", "-lcs", "--lookup-cache-static"),
    people("writes-files", "-lcd", "--lookup-cache-dynamic"),
    people("reads-files", "-mm", "--mmproj"),
    people("network", "-mmu", "--mmproj-url"),
    people("runs-programs", "--video-ffmpeg-dir"),
    people("server-address", "--host"),
    people("server-address", "--port"),
    people("server-address", "--reuse-port", n_values=0),
    people("reads-files", "--path"),
    people("network", "--cors-origins"),
    people("network", "--cors-methods"),
    people("network", "--cors-headers"),
    people("network", "--cors-credentials", "--no-cors-credentials", n_values=0),
    people("server-address", "--api-prefix"),
    # The web UI's settings can name MCP servers for the UI to reach through the proxy.
    people("network", "--ui-config", "--webui-config"),
    people("reads-files", "--ui-config-file", "--webui-config-file"),
    people("network", "--ui-mcp-proxy", "--webui-mcp-proxy", "--no-ui-mcp-proxy", "--no-webui-mcp-proxy",
           n_values=0),
    people("runs-programs", "--tools"),
    people("runs-programs", "--tools-runtime"),
    people("runs-programs", "--mcp-servers-config"),
    people("runs-programs", "--mcp-servers-json"),
    people("runs-programs", "-ag", "--agent", "-no-ag", "--no-agent", n_values=0),
    people("secret", "--api-key"),
    people("reads-files", "--api-key-file"),
    people("reads-files", "--ssl-key-file"),
    people("reads-files", "--ssl-cert-file"),
    # POST /props changes the running server's settings from any local client.
    people("server-address", "--props", n_values=0),
    people("writes-files", "--slot-save-path"),
    people("reads-files", "--media-path"),
    people("router", "--models-dir"),
    people("router", "--models-preset"),
    people("router", "--models-max"),
    people("router", "--models-autoload", "--no-models-autoload", n_values=0),
    people("reads-files", "--chat-template-file"),
    people("writes-files", "--log-prompts-dir"),
    people("network", "--embd-gemma-default", n_values=0),
    people("network", "--fim-qwen-1.5b-default", n_values=0),
    people("network", "--fim-qwen-3b-default", n_values=0),
    people("network", "--fim-qwen-7b-default", n_values=0),
    people("network", "--fim-qwen-7b-spec", n_values=0),
    people("network", "--fim-qwen-14b-spec", n_values=0),
    people("network", "--fim-qwen-30b-default", n_values=0),
    people("network", "--gpt-oss-20b-default", n_values=0),
    people("network", "--gpt-oss-120b-default", n_values=0),
    people("network", "--vision-gemma-4b-default", n_values=0),
    people("network", "--vision-gemma-12b-default", n_values=0),
)

BY_NAME: dict[str, Flag] = {name: flag for flag in FLAGS for name in flag.names}
AGENT_FLAGS = frozenset(name for flag in FLAGS if flag.people_only is None for name in flag.names)
PEOPLE_FLAGS = frozenset(name for flag in FLAGS if flag.people_only is not None for name in flag.names)


def normalize(token: str) -> str:
    """A token as llama.cpp looks it up: '_' becomes '-' in a '--' name."""
    return token.replace("_", "-") if token.startswith("--") else token


@dataclass(frozen=True)
class Use:
    """One flag found in an argument list, with its values."""

    flag: Flag
    spelling: str
    values: tuple[str, ...]


class ArgsError(ValueError):
    """The argument list breaks a rule; ``str()`` says which token and why."""


def _walk(args: list[str]) -> Iterator[tuple[str, Flag | None, tuple[str, ...]]]:
    """(token, its flag or None when unknown, the values it takes) for each flag position in ``args``.

    An unknown token takes no values; a flag whose values run past the end gets what is there."""
    i = 0
    while i < len(args):
        flag = BY_NAME.get(normalize(args[i]))
        arity = flag.arity if flag else 0
        yield args[i], flag, tuple(args[i + 1:i + 1 + arity])
        i += 1 + arity


def parse(args: list[str]) -> list[Use]:
    """Walk ``args`` as llama.cpp would, naming each flag and its values; unknown tokens are errors."""
    uses: list[Use] = []
    for token, flag, values in _walk(args):
        if flag is None:
            if not token.startswith("-"):
                raise ArgsError(f"{token!r} is not a flag (llama-server takes no positional arguments)")
            if "=" in token:
                raise ArgsError(f"{token}: llama-server has no --flag=value form; write the flag and its value "
                                "as two words")
            raise ArgsError(f"{token} is not a flag of llama-server build {CLASSIFIED_FOR_BUILD}")
        if len(values) < flag.arity:
            raise ArgsError(f"{token} expects {flag.arity} value(s)")
        uses.append(Use(flag, token, values))
    return uses


def check_agent_args(args: list[str]) -> None:
    """Raise ArgsError unless every flag in ``args`` is on the agent allow-list with valid values."""
    for use in parse(args):
        flag = use.flag
        if flag.people_only is not None:
            raise ArgsError(f"{use.spelling} {REASON_TEXT[flag.people_only]}; agents may not set it "
                            "(a person can, with llama-pilot set or by editing models.conf)")
        for rule, value in zip(flag.values, use.values):
            problem = rule.check(value)
            if problem:
                raise ArgsError(f"{use.spelling} {value!r}: {problem}")


def risky_uses(args: list[str]) -> list[tuple[str, str]]:
    """(spelling, reason) for each flag that reads or writes files, reaches the network or starts programs.

    Tolerant of what it cannot parse (lint reports only what it recognises): an unknown token is
    skipped, as if it took no value."""
    return [(token, REASON_TEXT[flag.people_only]) for token, flag, _ in _walk(args)
            if flag is not None and flag.people_only in RISKY_REASONS]


# --- the pinned build's --help --------------------------------------------------------------

_HELP_NAME_RE = re.compile(r"-{1,2}[A-Za-z0-9][\w.-]*")


@dataclass(frozen=True)
class HelpEntry:
    names: tuple[str, ...]
    hint: str  # the value placeholder(s) after the names ("N", "FNAME", "START END"), "" for switches

    @property
    def arity(self) -> int:
        if not self.hint:
            return 0
        # Two placeholders in capitals ("START END") are two values; any other hint is one value,
        # spaces and all ("<tensor name pattern>=<buffer type>,...").
        return 2 if re.fullmatch(r"[A-Z_]+ [A-Z_]+", self.hint) else 1


def parse_help(text: str) -> list[HelpEntry]:
    """The options ``llama-server --help`` lists: each line that starts with '-' names one option."""
    entries = []
    for line in text.splitlines():
        if not line.startswith("-") or line.startswith("-----"):
            continue
        names, pos = [], 0
        while True:
            match = _HELP_NAME_RE.match(line, pos)
            if match is None:
                break
            names.append(match.group())
            pos = match.end()
            comma = re.match(r",\s+(?=-)", line[pos:])
            if comma is None:
                break
            pos += comma.end()
        rest = line[pos:]
        hint = ""
        if rest.startswith(" ") and not rest.startswith("  "):
            hint = re.split(r"\s{2,}", rest.strip(), maxsplit=1)[0]
        if names:
            entries.append(HelpEntry(tuple(names), hint))
    return entries
