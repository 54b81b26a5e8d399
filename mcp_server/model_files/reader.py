"""Lean GGUF header reading: metadata key/values only, straight from the file, never the tensors.

The ``gguf`` package's GGUFReader maps and indexes the whole tokenizer (150k-entry arrays in real
models) before answering anything; here arrays we do not need are skipped by length, so asking a
60 GB model for its architecture costs a few small reads.
"""

from __future__ import annotations

import re
import struct
from pathlib import Path
from typing import Any, BinaryIO, Callable

GGUF_MAGIC = b"GGUF"

# GGUF value types (gguf spec): fixed-size scalars, then string (8) and array (9).
_SCALARS: dict[int, str] = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
                            10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9

SHARD_RE = re.compile(r"^(?P<stem>.*)-(?P<index>\d{5})-of-(?P<count>\d{5})\.gguf$")


class GGUFFormatError(ValueError):
    """The file is not a GGUF we can read."""


def _read(f: BinaryIO, n: int) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise GGUFFormatError("file ends inside the GGUF header")
    return data


def _read_str(f: BinaryIO) -> str:
    (length,) = struct.unpack("<Q", _read(f, 8))
    return _read(f, length).decode("utf-8", errors="replace")


def _read_value(f: BinaryIO, vtype: int, keep_arrays: bool) -> Any:
    if vtype in _SCALARS:
        fmt = _SCALARS[vtype]
        return struct.unpack(fmt, _read(f, struct.calcsize(fmt)))[0]
    if vtype == _STRING:
        return _read_str(f)
    if vtype == _ARRAY:
        (itype,) = struct.unpack("<I", _read(f, 4))
        (count,) = struct.unpack("<Q", _read(f, 8))
        if itype in _SCALARS:
            size = struct.calcsize(_SCALARS[itype])
            if keep_arrays:
                raw = _read(f, size * count)
                return list(struct.unpack(f"<{count}{_SCALARS[itype][1]}", raw))
            f.seek(size * count, 1)
            return _Skipped(itype, count)
        if itype == _STRING:
            if keep_arrays:
                return [_read_str(f) for _ in range(count)]
            for _ in range(count):
                (length,) = struct.unpack("<Q", _read(f, 8))
                f.seek(length, 1)
            return _Skipped(itype, count)
        raise GGUFFormatError(f"unsupported array element type {itype}")
    raise GGUFFormatError(f"unknown GGUF value type {vtype}")


class _Skipped:
    """Placeholder for an array that was skipped: its element type and length are kept."""

    def __init__(self, itype: int, count: int) -> None:
        self.itype = itype
        self.count = count

    def __repr__(self) -> str:
        return f"<array of {self.count}>"


def read_metadata(path: str | Path, *, keep_arrays: Callable[[str], bool] | None = None,
                  stop_when: Callable[[dict[str, Any]], bool] | None = None) -> dict[str, Any]:
    """Metadata key/values of one GGUF file.

    Arrays are skipped (replaced by a placeholder with their length) unless ``keep_arrays(key)``
    says otherwise; ``stop_when(meta)`` ends reading early once the caller has what it needs.
    """
    with open(path, "rb", buffering=1 << 16) as f:
        if _read(f, 4) != GGUF_MAGIC:
            raise GGUFFormatError(f"{path}: not a GGUF file (bad magic)")
        (version,) = struct.unpack("<I", _read(f, 4))
        if version < 2:
            raise GGUFFormatError(f"{path}: GGUF version {version} is too old")
        _n_tensors, n_kv = struct.unpack("<QQ", _read(f, 16))
        meta: dict[str, Any] = {"GGUF.version": version, "GGUF.tensor_count": _n_tensors}
        for _ in range(n_kv):
            key = _read_str(f)
            (vtype,) = struct.unpack("<I", _read(f, 4))
            meta[key] = _read_value(f, vtype, bool(keep_arrays and keep_arrays(key)))
            if stop_when and stop_when(meta):
                break
        return meta


def architecture(path: str | Path) -> str | None:
    """``general.architecture`` of a GGUF, reading as little as possible."""
    meta = read_metadata(path, stop_when=lambda m: "general.architecture" in m)
    arch = meta.get("general.architecture")
    return arch if isinstance(arch, str) else None


def model_keys(path: str | Path) -> dict[str, Any]:
    """``general.*`` and the architecture's own keys, reading no further than the first tokenizer key.

    Writers (gguf-py, llama-quantize) put the tokenizer last, and walking past its 150k-entry arrays
    is what makes a full read cost ~0.1 s; lint needs only what comes before it. A file that puts a
    model key after the tokenizer only loses that key here (lint's recurrent check also knows the
    recurrent architectures by name).
    """
    return read_metadata(path, stop_when=lambda m: next(reversed(m)).startswith("tokenizer."))


# Architectures whose layers keep recurrent state (Mamba, DeltaNet, RWKV, short convolutions):
# llama.cpp cannot shift their context, so they need --no-context-shift.
RECURRENT_KEY_PARTS = (".ssm.", ".wkv.", ".shortconv.", ".linear_attn", ".full_attention_interval")
RECURRENT_ARCHES = {"mamba", "mamba2", "jamba", "falcon-h1", "nemotron_h", "nemotron_h_moe", "granitehybrid",
                    "qwen3next", "qwen35", "qwen35moe", "rwkv6", "rwkv6qwen2", "rwkv7", "arwkv7", "lfm2",
                    "lfm2moe", "plamo2", "kimi-linear"}


def is_recurrent(meta: dict[str, Any]) -> bool:
    """True when the model has recurrent (state space / linear attention) layers."""
    arch = meta.get("general.architecture")
    if arch in RECURRENT_ARCHES:
        return True
    prefix = f"{arch}."
    return any(k.startswith(prefix) and any(p in k[len(prefix) - 1:] for p in RECURRENT_KEY_PARTS)
               for k in meta)


def shard_paths(first: str | Path) -> list[Path]:
    """All shards of a split GGUF named ``...-00001-of-0000N.gguf`` (just ``[first]`` otherwise)."""
    first = Path(first)
    m = SHARD_RE.match(first.name)
    if not m:
        return [first]
    count = int(m.group("count"))
    return [first.with_name(f"{m.group('stem')}-{i:05d}-of-{count:05d}.gguf") for i in range(1, count + 1)]
