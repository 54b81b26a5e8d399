"""Lean GGUF header reading: metadata key/values straight from the file, never the tensor data.

The ``gguf`` package's GGUFReader maps and indexes the whole tokenizer (150k-entry arrays in real
models) before answering anything; here arrays we do not need are skipped by length, so asking a
60 GB model for its architecture costs a few small reads. :class:`GGUFHeader` is the one parser of
the format: the layout reader (``layout.py``) uses it for the tensor table too.
"""

from __future__ import annotations

import re
import struct
from pathlib import Path
from typing import Any, BinaryIO, Callable

from mcp_server.errors import GGUFFormatError

GGUF_MAGIC = b"GGUF"

# GGUF value types (gguf spec): fixed-size scalars, then string (8) and array (9).
_SCALARS: dict[int, str] = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
                            10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
_U64 = struct.Struct("<Q")

SHARD_RE = re.compile(r"^(?P<stem>.*)-(?P<index>\d{5})-of-(?P<count>\d{5})\.gguf$")


class SkippedArray:
    """Placeholder for an array that was skipped: its element type and length are kept."""

    def __init__(self, itype: int, count: int) -> None:
        self.itype = itype
        self.count = count

    def __repr__(self) -> str:
        return f"<array of {self.count}>"


class GGUFHeader:
    """The start of a GGUF file (magic, version, counts), then its key/values and tensor infos as asked.

    The one GGUF parser: :func:`read_metadata` reads key/values with it, the layout reader also
    the tensor table that follows. The file is read in blocks, growing from ``block`` bytes, and
    parsed in memory, so skipping a 150k-entry string array costs no system call per string.
    ``pos`` is the offset in the file of the next byte to parse.
    """

    def __init__(self, f: BinaryIO, path: str | Path, *, block: int = 1 << 16) -> None:
        self._f = f
        self._buf = f.read(block)
        self.pos = 0
        if self.unpack("<4s")[0] != GGUF_MAGIC:
            raise GGUFFormatError(f"{path}: not a GGUF file (bad magic)")
        (self.version,) = self.unpack("<I")
        if self.version < 2:
            raise GGUFFormatError(f"{path}: GGUF version {self.version} is too old")
        self.tensor_count, self.kv_count = self.unpack("<QQ")

    def _need(self, n: int) -> None:
        while self.pos + n > len(self._buf):
            # Doubling keeps the reads few for a large header and small for a lean one.
            more = self._f.read(max(len(self._buf), self.pos + n - len(self._buf)))
            if not more:
                raise GGUFFormatError("file ends inside the GGUF header")
            self._buf += more

    def unpack(self, fmt: str) -> tuple[Any, ...]:
        size = struct.calcsize(fmt)
        self._need(size)
        values = struct.unpack_from(fmt, self._buf, self.pos)
        self.pos += size
        return values

    def string(self) -> str:
        (n,) = self.unpack("<Q")
        self._need(n)
        text = self._buf[self.pos:self.pos + n].decode("utf-8", errors="replace")
        self.pos += n
        return text

    def key_values(self, meta: dict[str, Any], *, keep_arrays: Callable[[str], bool] | None = None,
                   stop_when: Callable[[dict[str, Any]], bool] | None = None) -> dict[str, Any]:
        """Every key/value into ``meta`` (returned), or up to where ``stop_when(meta)`` is true.

        Arrays become a :class:`SkippedArray` unless ``keep_arrays(key)``. Call it first, once:
        the key/values follow the counts.
        """
        for _ in range(self.kv_count):
            key = self.string()
            (vtype,) = self.unpack("<I")
            meta[key] = self._value(vtype, bool(keep_arrays and keep_arrays(key)))
            if stop_when and stop_when(meta):
                break
        return meta

    def _value(self, vtype: int, keep: bool) -> Any:
        if vtype in _SCALARS:
            return self.unpack(_SCALARS[vtype])[0]
        if vtype == _STRING:
            return self.string()
        if vtype != _ARRAY:
            raise GGUFFormatError(f"unknown GGUF value type {vtype}")
        itype, count = self.unpack("<IQ")
        if itype in _SCALARS:
            fmt = _SCALARS[itype]
            size = struct.calcsize(fmt) * count
            self._need(size)
            values = list(struct.unpack_from(f"<{count}{fmt[1]}", self._buf, self.pos)) if keep else None
            self.pos += size
            return values if keep else SkippedArray(itype, count)
        if itype == _STRING:
            if keep:
                return [self.string() for _ in range(count)]
            self._skip_strings(count)
            return SkippedArray(itype, count)
        raise GGUFFormatError(f"unsupported array element type {itype}")

    def _skip_strings(self, count: int) -> None:
        # The hot loop of a tokenizer (150k strings): locals, and the buffer checked only near its end.
        buf, pos, length = self._buf, self.pos, _U64.unpack_from
        for _ in range(count):
            if pos + 8 > len(buf):
                self.pos = pos
                self._need(8)
                buf = self._buf
            pos += 8 + length(buf, pos)[0]
        self.pos = pos
        self._need(0)


def read_metadata(path: str | Path, *, keep_arrays: Callable[[str], bool] | None = None,
                  stop_when: Callable[[dict[str, Any]], bool] | None = None) -> dict[str, Any]:
    """Metadata key/values of one GGUF file, after ``GGUF.version`` and ``GGUF.tensor_count``.

    Arrays are skipped (replaced by a placeholder with their length) unless ``keep_arrays(key)``
    says otherwise; ``stop_when(meta)`` ends reading early once the caller has what it needs.
    """
    with open(path, "rb", buffering=0) as f:
        header = GGUFHeader(f, path)
        meta: dict[str, Any] = {"GGUF.version": header.version, "GGUF.tensor_count": header.tensor_count}
        return header.key_values(meta, keep_arrays=keep_arrays, stop_when=stop_when)


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
