"""What a GGUF model is made of: metadata, attention layout and the full tensor table, from headers only.

Reads every shard of a split model. Only the header of each file is read (metadata and tensor
infos, a few MB even for a 150k-token tokenizer), never tensor data, so a 60 GB model inspects
in a fraction of a second. Parsing is reader.GGUFHeader's: the header is read in large blocks and
skipped arrays are walked in memory rather than with one system call per string.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from mcp_server.errors import ModelFileError
from mcp_server.model_files.ggml_types import GGML_TYPES, tensor_bytes
from mcp_server.model_files.reader import SHARD_RE, GGUFFormatError, GGUFHeader, SkippedArray, shard_paths

_CHUNK = 8 << 20  # the whole header, tensor table included, in one read for all but huge tokenizers


def _keep(key: str) -> bool:
    # Per-layer arrays matter; tokenizer arrays only for their length.
    return not key.startswith("tokenizer.")


class TensorInfo(BaseModel):
    name: str
    type: str
    shape: list[int] = Field(description="ggml order: ne0 (row length) first")
    bytes: int
    shard: int = Field(description="0-based index of the file holding it")
    offset: int = Field(description="absolute offset of its data in that file")
    kind: str
    layer: int | None


class ShardInfo(BaseModel):
    path: str
    size_bytes: int
    tensor_count: int
    data_offset: int
    data_end: int = Field(0, description="where the last tensor's data ends: the least size of a whole file")

    @property
    def missing_bytes(self) -> int:
        return max(0, self.data_end - self.size_bytes)


class GGUFInspection(BaseModel):
    path: str
    shards: list[ShardInfo]
    architecture: str
    name: str | None
    file_type: int | None
    n_layer: int
    n_ctx_train: int | None
    n_embd: int | None
    n_vocab: int | None
    n_head: list[int] = Field(description="query heads per layer")
    n_head_kv: list[int] = Field(description="KV heads per layer (0 = no attention in that layer)")
    key_length: int | None
    value_length: int | None
    key_length_swa: int | None = None
    value_length_swa: int | None = None
    sliding_window: int | None = None
    swa_layers: list[int] = Field(default_factory=list, description="layers using sliding-window attention")
    is_mla: bool = False
    kv_lora_rank: int | None = None
    recurrent_layers: list[int] = Field(default_factory=list)
    expert_count: int = 0
    expert_used_count: int = 0
    expert_shared_count: int = 0
    tied_embeddings: bool
    metadata: dict[str, Any] = Field(description="every key; tokenizer arrays as their length")
    tensors: list[TensorInfo]
    bytes_by_kind: dict[str, int]
    total_bytes: int
    parameters: int
    complete: bool = Field(True, description="every shard is at least as long as its header says its tensor data "
                                             "is; false: a truncated (interrupted) download")
    missing_bytes: int = Field(0, description="bytes the shards lack, summed")


_LAYER_RE = re.compile(r"^blk\.(\d+)\.")


def tensor_kind(name: str) -> str:
    """attention | ffn_dense | experts | shared_experts | router | recurrent | norm | embeddings | output | other."""
    if name.startswith(("token_embd", "per_layer_token_embd", "pos_embd", "token_types")):
        return "embeddings"
    if name.startswith(("output.", "output_norm", "cls")):
        return "output"
    part = _LAYER_RE.sub("", name)
    if "_exps" in part or "_chexps" in part:
        return "experts"
    if "_shexp" in part:
        return "shared_experts"
    if part.startswith("ffn_gate_inp") or "exp_probs" in part:
        return "router"
    if part.startswith(("ssm_", "time_mix", "channel_mix", "shortconv", "conv")):
        return "recurrent"
    if part.startswith(("attn_norm", "ffn_norm", "post_", "layer_output_norm")) or part.endswith("_norm.weight"):
        return "norm"
    if part.startswith(("attn", "wq", "wk", "wv", "wo")) or "attn_" in part:
        return "attention"
    if part.startswith("ffn_"):
        return "ffn_dense"
    return "other"


def read_shard(path: Path, shard: int = 0) -> tuple[dict[str, Any], list[TensorInfo], ShardInfo]:
    """One file's header: its key/values (long arrays as their length), its tensors, its extent."""
    with open(path, "rb", buffering=0) as f:
        h = GGUFHeader(f, path, block=_CHUNK)
        n_tensors = h.tensor_count
        # Skipped arrays (the tokenizer's) are reported by their length.
        meta = {key: value.count if isinstance(value, SkippedArray) else value
                for key, value in h.key_values({}, keep_arrays=_keep).items()}
        raw = []
        for _ in range(n_tensors):
            name = h.string()
            (n_dims,) = h.unpack("<I")
            shape = list(h.unpack(f"<{n_dims}Q"))
            type_id, offset = h.unpack("<IQ")
            raw.append((name, shape, type_id, offset))
        align = int(meta.get("general.alignment", 32))
        header_end = h.pos
        data_offset = -(-header_end // align) * align
    tensors = [TensorInfo(name=name, type=GGML_TYPES.get(t, (f"type{t}", 0, 0))[0], shape=shape,
                          bytes=tensor_bytes(t, shape), shard=shard, offset=data_offset + off,
                          kind=tensor_kind(name), layer=int(m.group(1)) if (m := _LAYER_RE.match(name)) else None)
               for name, shape, t, off in raw]
    # Without tensors nothing follows the header: the padding to the data section is not owed.
    data_end = max((t.offset + t.bytes for t in tensors), default=header_end)
    info = ShardInfo(path=str(path), size_bytes=path.stat().st_size, tensor_count=n_tensors, data_offset=data_offset,
                     data_end=data_end)
    return meta, tensors, info


def _per_layer(value: Any, n_layer: int, default: int = 0) -> list[int]:
    if isinstance(value, list):
        return [int(v) for v in value][:n_layer] + [0] * max(0, n_layer - len(value))
    return [int(value if value is not None else default)] * n_layer


def read_layout(path: str | Path) -> GGUFInspection:
    """Inspect a GGUF (for a split model, pass any shard: all of them are read)."""
    path = Path(path)
    m = SHARD_RE.match(path.name)
    first = path.with_name(f"{m.group('stem')}-00001-of-{m.group('count')}.gguf") if m else path
    files = shard_paths(first)
    missing = [p.name for p in files if not p.is_file()]
    if missing:
        raise GGUFFormatError(f"missing shards of {first.name}: {', '.join(missing)}")
    meta: dict[str, Any] = {}
    tensors: list[TensorInfo] = []
    shards = []
    for i, file in enumerate(files):
        file_meta, file_tensors, info = read_shard(file, i)
        if i == 0:
            meta = file_meta  # only the first split carries the model's metadata
        tensors += file_tensors
        shards.append(info)
    info = _describe(first, meta, tensors, shards)
    missing = sum(s.missing_bytes for s in shards)
    return info.model_copy(update={"complete": missing == 0, "missing_bytes": missing})


def require_complete(info: GGUFInspection, name: str) -> None:
    """Refuse a truncated model file: the header promises more tensor data than the file holds."""
    short = [s for s in info.shards if s.missing_bytes]
    if short:
        s = short[0]
        raise ModelFileError(f"{name} is incomplete: {Path(s.path).name} holds {s.size_bytes:,} bytes but its header "
                             f"places tensor data up to byte {s.data_end:,} ({s.missing_bytes:,} missing"
                             f"{f', and {len(short) - 1} more shard(s) short' if len(short) > 1 else ''}). The "
                             "download was cut off: download it again (list_model_files shows complete=false "
                             "until it is whole)")


def _describe(path: Path, meta: dict[str, Any], tensors: list[TensorInfo], shards: list[ShardInfo]) -> GGUFInspection:
    arch = meta.get("general.architecture")
    if not isinstance(arch, str):
        raise GGUFFormatError(f"{path}: no general.architecture")

    def get(key: str, default: Any = None) -> Any:
        return meta.get(f"{arch}.{key}", default)

    n_layer = int(get("block_count", 0))
    n_embd = get("embedding_length")
    heads = _per_layer(get("attention.head_count", 0), n_layer)
    heads_kv = _per_layer(get("attention.head_count_kv", get("attention.head_count", 0)), n_layer)
    head_dim = (n_embd // heads[0]) if n_embd and heads and heads[0] else None
    key_len = get("attention.key_length", head_dim)
    value_len = get("attention.value_length", head_dim)
    window = get("attention.sliding_window")
    pattern = get("attention.sliding_window_pattern")
    swa_layers = _swa_layers(arch, n_layer, window, pattern)
    recurrent = _recurrent_layers(arch, n_layer, meta, heads_kv)
    if arch in _OUTPUT_NORM_AS_EMBD_NORM:
        # LFM2 stores its final norm under the input-norm name; llama.cpp loads it as part of the
        # output layer, so it follows the output layer's device, not the input's.
        tensors = [t.model_copy(update={"kind": "output"}) if t.name == "token_embd_norm.weight" else t
                   for t in tensors]
    n_vocab = get("vocab_size")
    if n_vocab is None and isinstance(meta.get("tokenizer.ggml.tokens"), int):
        n_vocab = meta["tokenizer.ggml.tokens"]
    by_kind: dict[str, int] = {}
    params = 0
    for t in tensors:
        by_kind[t.kind] = by_kind.get(t.kind, 0) + t.bytes
        count = 1
        for dim in t.shape:
            count *= dim
        params += count
    return GGUFInspection(
        path=str(path), shards=shards, architecture=arch,
        name=meta.get("general.name") if isinstance(meta.get("general.name"), str) else None,
        file_type=meta.get("general.file_type"), n_layer=n_layer, n_ctx_train=get("context_length"),
        n_embd=n_embd, n_vocab=n_vocab, n_head=heads, n_head_kv=heads_kv, key_length=key_len, value_length=value_len,
        key_length_swa=get("attention.key_length_swa"), value_length_swa=get("attention.value_length_swa"),
        sliding_window=window, swa_layers=swa_layers,
        is_mla=get("attention.key_length_mla") is not None and get("attention.value_length_mla") is not None,
        kv_lora_rank=get("attention.kv_lora_rank"), recurrent_layers=recurrent,
        expert_count=int(get("expert_count", 0) or 0), expert_used_count=int(get("expert_used_count", 0) or 0),
        expert_shared_count=int(get("expert_shared_count", 0) or 0) or _implicit_shared_experts(tensors),
        tied_embeddings=not any(t.name == "output.weight" for t in tensors),
        metadata=meta, tensors=tensors, bytes_by_kind=by_kind, total_bytes=sum(t.bytes for t in tensors),
        parameters=params)


_OUTPUT_NORM_AS_EMBD_NORM = {"lfm2", "lfm2moe"}


def _implicit_shared_experts(tensors: list[TensorInfo]) -> int:
    """Architectures with one shared expert (qwen2moe, llama4, granite MoE shared) write no
    expert_shared_count; their shared-expert tensors say it."""
    return 1 if any(re.search(r"\.ffn_(up|gate|down)_shexp\.", t.name) for t in tensors) else 0


# Architectures whose default SWA pattern applies when the GGUF has no explicit one
# (llama.cpp set_swa_pattern(N): layer il is SWA unless il % N == N - 1).
_SWA_DEFAULT_PERIOD = {"gemma2": 2, "gemma3": 6, "cohere2": 4, "gpt-oss": 2, "openai-moe": 2, "llama4": 4,
                       "exaone4": 4}


def _swa_layers(arch: str, n_layer: int, window: Any, pattern: Any) -> list[int]:
    if not window:
        return []
    if isinstance(pattern, list):
        return [i for i, flag in enumerate(pattern[:n_layer]) if flag]
    period = int(pattern) if isinstance(pattern, int) and pattern > 0 else _SWA_DEFAULT_PERIOD.get(arch)
    if not period:
        return []
    return [i for i in range(n_layer) if i % period < period - 1]


def _recurrent_layers(arch: str, n_layer: int, meta: dict[str, Any], heads_kv: list[int]) -> list[int]:
    flags = meta.get(f"{arch}.attention.recurrent_layers")
    if isinstance(flags, list):
        return [i for i, flag in enumerate(flags[:n_layer]) if flag]
    interval = meta.get(f"{arch}.full_attention_interval")
    if isinstance(interval, int) and interval > 0:
        return [i for i in range(n_layer) if (i + 1) % interval != 0]
    if any(k.startswith(f"{arch}.ssm.") or k.startswith(f"{arch}.rwkv.") or k.startswith(f"{arch}.shortconv.")
           for k in meta):
        if any(heads_kv):
            return [i for i, h in enumerate(heads_kv) if h == 0]  # hybrids: layers without KV heads
        return list(range(n_layer))
    return []


def missing_bytes(shards: list[Path], start: int = 0) -> int:
    """Bytes the given shards (all present; ``start`` is the first one's index) lack against the tensor
    data their headers place."""
    return sum(read_shard(path, start + i)[2].missing_bytes for i, path in enumerate(shards))
