"""Checks on profiles: what would fail at start, and the original project's hard-won lessons.

Every finding has a stable code, a severity, the profile and line it is about, and a message that
says what to change. Errors mean the profile will not start as written; warnings mean it will
start but probably not the way its author intended.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from mcp_server.model_files import reader as ggufmeta
from mcp_server.errors import LlamaPilotError
from mcp_server.profiles.config import (LOCAL_BUFFER_TYPES, PROFILE_ID_RE, Config, Profile, parse_tensor_overrides,
                       split_extra_args)

Severity = Literal["error", "warning", "info"]


class Finding(BaseModel):
    code: str
    severity: Severity
    profile: str
    line: int
    message: str


# Buffer types llama.cpp's -ot accepts on the backends llama-pilot targets.
_BUFFER_RE = re.compile(rf"^({LOCAL_BUFFER_TYPES}|RPC\[[^\]]+\]\w*)$")
_GPU_BUFFER_RE = re.compile(r"^(CUDA|Vulkan|SYCL|ROCm|Metal)")

# Flags in EXTRA_ARGS that duplicate a structured key (short and long forms).
_FLAG_KEYS: dict[str, str] = {
    "-c": "CTX_SIZE", "--ctx-size": "CTX_SIZE", "-ngl": "N_GPU_LAYERS", "--gpu-layers": "N_GPU_LAYERS",
    "--n-gpu-layers": "N_GPU_LAYERS", "-sm": "SPLIT_MODE", "--split-mode": "SPLIT_MODE",
    "-ts": "TENSOR_SPLIT", "--tensor-split": "TENSOR_SPLIT", "-mg": "MAIN_GPU", "--main-gpu": "MAIN_GPU",
    "-fa": "FLASH_ATTN", "--flash-attn": "FLASH_ATTN", "-ctk": "KV_CACHE_TYPE_K",
    "--cache-type-k": "KV_CACHE_TYPE_K", "-ctv": "KV_CACHE_TYPE_V", "--cache-type-v": "KV_CACHE_TYPE_V",
    "-fit": "FIT", "--fit": "FIT", "-fitt": "FIT_TARGET", "--fit-target": "FIT_TARGET", "-ot": "OVERRIDE_TENSORS",
    "--override-tensor": "OVERRIDE_TENSORS", "-ncmoe": "N_CPU_MOE", "--n-cpu-moe": "N_CPU_MOE",
    "-np": "PARALLEL", "--parallel": "PARALLEL", "-b": "BATCH_SIZE", "--batch-size": "BATCH_SIZE",
    "-ub": "UBATCH_SIZE", "--ubatch-size": "UBATCH_SIZE", "--temp": "TEMP", "--top-p": "TOP_P",
    "--top-k": "TOP_K", "--min-p": "MIN_P", "-m": "MODEL", "--model": "MODEL", "--port": "PORT",
}


def _extra_flags(profile: Profile) -> dict[str, str]:
    """Structured key -> value for each flag EXTRA_ARGS sets (last occurrence wins, as in llama.cpp)."""
    raw = profile.get("EXTRA_ARGS")
    if not raw:
        return {}
    try:
        args = split_extra_args(raw)
    except LlamaPilotError:
        return {}
    found: dict[str, str] = {}
    for i, arg in enumerate(args):
        flag, eq, inline = arg.partition("=")
        key = _FLAG_KEYS.get(flag)
        if key is None:
            continue
        value = inline if eq else (args[i + 1] if i + 1 < len(args) and not args[i + 1].startswith("-") else "")
        found[key] = f"{found[key]},{value}" if key == "OVERRIDE_TENSORS" and key in found else value
    return found


def _line_of(profile: Profile, config: Config, key: str) -> int:
    section = config.document.section(profile.id)
    if section is not None:
        for entry in section.entries:
            if entry.key == key:
                return entry.line
    return profile.line


def lint_profile(profile: Profile, config: Config, cache: "MetaCache | None" = None) -> list[Finding]:
    findings: list[Finding] = []

    def add(code: str, severity: Severity, key: str | None, message: str) -> None:
        line = _line_of(profile, config, key) if key else profile.line
        findings.append(Finding(code=code, severity=severity, profile=profile.id, line=line, message=message))

    extra = _extra_flags(profile)
    meta = _check_model(profile, config, add, {} if cache is None else cache)

    # -ot rules, from OVERRIDE_TENSORS and from -ot inside EXTRA_ARGS.
    sources = [("OVERRIDE_TENSORS", profile.get("OVERRIDE_TENSORS")), ("EXTRA_ARGS", extra.get("OVERRIDE_TENSORS"))]
    gpu_assigned = False
    for key, raw in sources:
        if not raw:
            continue
        try:
            rules = parse_tensor_overrides(raw)
        except LlamaPilotError as exc:
            add("ot-syntax", "error", key, str(exc))
            continue
        for rule in rules:
            try:
                re.compile(rule.pattern)
            except re.error as exc:
                add("ot-regex", "error", key, f"-ot pattern {rule.pattern!r} does not compile: {exc}")
            if not _BUFFER_RE.match(rule.buffer):
                add("ot-buffer", "error", key, f"-ot buffer {rule.buffer!r} is not a buffer type llama.cpp knows "
                    "(CPU, CUDA0, CUDA1, ...)")
            elif _GPU_BUFFER_RE.match(rule.buffer):
                gpu_assigned = True
    fit_on = (extra.get("FIT") or profile.get("FIT") or "on") != "off"
    if gpu_assigned and fit_on:
        add("ot-gpu-with-fit", "warning", "OVERRIDE_TENSORS",
            "-ot assigns layers to GPUs while --fit is on; let fit place layers (keep -ot for CPU only) or set "
            "FIT=off with explicit placement")
    elif gpu_assigned:
        add("ot-gpu", "warning", "OVERRIDE_TENSORS",
            "-ot assigns layers to GPUs by hand; fit (or `llama-pilot plan`) usually finds a faster split with "
            "fewer graph splits")

    ngl = extra.get("N_GPU_LAYERS") or profile.get("N_GPU_LAYERS")
    if ngl not in (None, "auto") and fit_on:
        add("ngl-with-fit", "warning", "N_GPU_LAYERS",
            f"N_GPU_LAYERS={ngl} with fit on: fit only adjusts settings left at their default, so it will not "
            "move layers; use N_GPU_LAYERS=auto (or remove it)")
    if not fit_on and not (ngl or profile.get("OVERRIDE_TENSORS") or extra.get("OVERRIDE_TENSORS")
                           or profile.get("TENSOR_SPLIT") or profile.get("N_CPU_MOE")):
        add("fit-off-no-placement", "warning", "FIT",
            "FIT=off without N_GPU_LAYERS, TENSOR_SPLIT, OVERRIDE_TENSORS or N_CPU_MOE leaves placement to "
            "llama.cpp's fallback; give an explicit placement or turn fit on")

    for key, value in extra.items():
        if key in profile.values and key != "OVERRIDE_TENSORS":
            add("extra-overrides-key", "warning", "EXTRA_ARGS",
                f"EXTRA_ARGS sets {key} again ({value!r}); it wins over {key}={profile.values[key]} because it comes "
                "last. Keep one of them")
    split_mode = extra.get("SPLIT_MODE") or profile.get("SPLIT_MODE")
    if split_mode == "none" and (profile.get("TENSOR_SPLIT") or extra.get("TENSOR_SPLIT")):
        add("split-none-with-ts", "error", "TENSOR_SPLIT",
            "TENSOR_SPLIT has no effect with SPLIT_MODE=none (the whole model goes to MAIN_GPU); remove one")
    batch = _int(extra.get("BATCH_SIZE") or profile.get("BATCH_SIZE"))
    ubatch = _int(extra.get("UBATCH_SIZE") or profile.get("UBATCH_SIZE"))
    if batch is not None and ubatch is not None and ubatch > batch:
        add("ubatch-over-batch", "error", "UBATCH_SIZE",
            f"UBATCH_SIZE={ubatch} is larger than BATCH_SIZE={batch}; llama.cpp clamps it")
    if profile.get("N_CPU_MOE") and any("exps" in r for r in (profile.get("OVERRIDE_TENSORS") or "",
                                                            extra.get("OVERRIDE_TENSORS") or "")):
        add("ncmoe-with-ot-exps", "warning", "N_CPU_MOE",
            "N_CPU_MOE and an -ot rule on experts both move experts to the CPU; the -ot rule matches first")

    if meta is not None and ggufmeta.is_recurrent(meta):
        args = profile.get("EXTRA_ARGS") or ""
        if "--no-context-shift" not in args:
            add("recurrent-context-shift", "warning", "EXTRA_ARGS",
                f"{meta.get('general.architecture')} has recurrent (DeltaNet/Mamba-style) layers; add "
                "--no-context-shift to EXTRA_ARGS, context shifting is not supported for them")

    if profile.is_bench:
        samplers = [k for k in ("TEMP", "TOP_P", "TOP_K", "MIN_P") if k in profile.values]
        samplers += [k for k in ("TEMP", "TOP_P", "TOP_K", "MIN_P") if k in extra]
        if samplers:
            add("bench-samplers", "warning", samplers[0],
                "benchmark profiles should leave sampling to the client (greedy decoding); remove "
                + ", ".join(sorted(set(samplers))))
    if not PROFILE_ID_RE.match(profile.id):
        add("bad-id", "error", None,
            f"profile id {profile.id[:80]!r} {'is longer than 64 characters' if len(profile.id) > 64 else 'must start with a letter, digit or _'}: "
            "it names files and is typed on command lines (and MCP tools cannot address it); rename the section")
    if raw_extra := profile.get("EXTRA_ARGS"):
        from mcp_server.engine.flags import risky_uses

        try:
            words = split_extra_args(raw_extra)
        except LlamaPilotError:
            words = []
        for spelling, what in risky_uses(words):
            add("risky-flag", "warning", "EXTRA_ARGS",
                f"EXTRA_ARGS uses {spelling}, which {what}: make sure you trust what it names (agents cannot "
                "set it; only a person can)")
    for key in profile.unknown_keys:
        add("unknown-key", "warning", key, f"{key} is not a key llama-pilot knows, so it does nothing"
            + _closest(key) + "; keep it only as a note")
    _check_context(profile, meta, add)
    for key, value in profile.values.items():
        if " #" in value:
            add("inline-comment", "warning", key,
                f"{key} contains ' #': models.conf has no inline comments, so it is part of the value")
    return findings


def _closest(key: str) -> str:
    import difflib

    from mcp_server.profiles.config import KEYS

    near = difflib.get_close_matches(key.upper(), list(KEYS), n=1, cutoff=0.6)
    return f" (did you mean {near[0]}?)" if near else ""


def _check_context(profile: Profile, meta: dict | None, add) -> None:  # type: ignore[no-untyped-def]
    """A context above the one the model was trained for: llama-server accepts it and the model degrades
    (without RoPE scaling set, quality falls off past the trained length)."""
    if not meta or not profile.ctx_size:
        return
    arch = meta.get("general.architecture")
    trained = meta.get(f"{arch}.context_length") if isinstance(arch, str) else None
    if isinstance(trained, int) and profile.ctx_size > trained and "--rope-scaling" not in (profile.get("EXTRA_ARGS") or ""):
        add("ctx-above-training", "warning", "CTX_SIZE",
            f"CTX_SIZE={profile.ctx_size} is above the {trained} tokens the model was trained for: answers degrade "
            f"past {trained} without RoPE scaling; set CTX_SIZE={trained} (or 0 for the model's own) unless the "
            "model card says it extends")


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _check_model(profile: Profile, config: Config, add, cache: MetaCache) -> dict | None:  # type: ignore[no-untyped-def]
    """Existence, containment and shards of the model file; returns its metadata when readable."""
    path = config.model_path(profile)
    if path is None:
        return None
    models_dir = Path(config.host.models_dir).resolve()
    if not path.is_relative_to(models_dir):
        add("model-outside", "error", "MODEL",
            f"MODEL {profile.model!r} resolves to {path}, outside the models directory {models_dir}")
        return None
    missing = [p for p in ggufmeta.shard_paths(path) if not p.is_file()]
    if missing:
        shards = len(ggufmeta.shard_paths(path))
        what = "the model file" if shards == 1 else f"{len(missing)} of {shards} shards"
        add("model-missing", "error", "MODEL",
            f"{what} missing: {', '.join(p.name for p in missing[:5])}{' ...' if len(missing) > 5 else ''} "
            f"(looked in {path.parent})")
        return None
    try:
        meta = _metadata(path, cache)
    except (OSError, ggufmeta.GGUFFormatError) as exc:
        add("model-unreadable", "error", "MODEL", f"cannot read the GGUF header of {path.name}: {exc}")
        return None
    missing = _missing_bytes(path, cache)
    if missing:
        add("model-incomplete", "error", "MODEL",
            f"{path.name} is {missing:,} bytes short of the tensor data its header describes: the download was "
            "cut off; download it again")
    return meta


MetaCache = dict[tuple[str, int, int], dict]


def _missing_bytes(path: Path, cache: MetaCache) -> int:
    """Bytes the file's shards lack (0: whole), from their tensor tables, read once per file per lint run."""
    from mcp_server.model_files.layout import missing_bytes

    st = path.stat()
    key = ("extent:" + str(path), st.st_size, st.st_mtime_ns)
    if key not in cache:
        try:
            cache[key] = {"missing": missing_bytes(ggufmeta.shard_paths(path))}
        except (OSError, ggufmeta.GGUFFormatError):
            cache[key] = {"missing": 0}  # unreadable is reported by the header check
    return cache[key]["missing"]


def _metadata(path: Path, cache: MetaCache) -> dict:
    """The file's model keys (up to the tokenizer, see ggufmeta.model_keys), read once per lint run for
    each (file, size, mtime): profiles share files."""
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in cache:
        cache[key] = ggufmeta.model_keys(path)
    return cache[key]


class LintReport(BaseModel):
    """What ``lint_profiles`` found, with the counts a caller gates on."""

    findings: list[Finding]
    errors: int
    warnings: int


def lint_profiles(config: Config, profile_id: str | None = None) -> LintReport:
    """Findings for one profile, or for every profile in file order."""
    profiles = [config.profile(profile_id)] if profile_id else list(config.profiles.values())
    findings: list[Finding] = []
    cache: MetaCache = {}
    for profile in profiles:
        findings.extend(lint_profile(profile, config, cache))
    return LintReport(findings=findings, errors=sum(f.severity == "error" for f in findings),
                      warnings=sum(f.severity == "warning" for f in findings))
