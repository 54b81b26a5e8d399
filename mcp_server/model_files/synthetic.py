"""Synthetic GGUF models with random weights: real files llama-server loads and runs.

No model can be downloaded on a machine without internet, yet tests and measurements need real
loads, real memory and real speed. A model with random weights of the right shapes gives all
three; only its answers are nonsense.

Each family (dense, MoE, MoE with a shared expert, sliding-window, MLA, two hybrid recurrent
kinds) is a pydantic shape plus a ``<family>_tensors(shape) -> (tensors, metadata)`` function
that lists what llama.cpp's loader for that architecture asks for. One writer turns that list
into a file: either with small random data everywhere (tiny models for CPU tests), or sparse,
where tensor data is a hole that takes no disk (huge shapes for GPU memory measurements) except
for chosen tensors that still get random data, such as the MoE router and the token embeddings,
so that expert choice varies per token as in a real model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
from pydantic import BaseModel, Field

# (name, ggml shape with ne0 first, ggml type id)
Tensor = tuple[str, list[int], int]
F32, F16, Q8_0, Q4_K, BF16 = 0, 1, 8, 12, 30
ALIGNMENT = 32  # GGUF's default data alignment; the writer does not change it

# A byte-level SentencePiece vocabulary: three specials, 256 byte tokens, a few plain pieces.
_SPECIALS = ["<unk>", "<s>", "</s>"]
_PIECES = ["\u2581"] + [chr(c) for c in range(ord("a"), ord("z") + 1)] + ["\u2581" + w for w in (
    "the", "a", "is", "of", "and", "to", "in", "it", "hello", "world")]
MIN_VOCAB = len(_SPECIALS) + 256 + len(_PIECES)  # smaller vocabularies are padded up to this


def _vocab(extra: int) -> tuple[list[str], list[float], list[int]]:
    tokens = list(_SPECIALS) + [f"<0x{b:02X}>" for b in range(256)] + list(_PIECES)
    tokens += [f"\u2581tok{i}" for i in range(extra)]
    scores = [0.0] * 3 + [0.0] * 256 + [-float(i) for i in range(len(tokens) - 259)]
    types = [2, 3, 3] + [6] * 256 + [1] * (len(tokens) - 259)  # unknown, control, byte, normal
    return tokens, scores, types


# --- random tensor data --------------------------------------------------------------------

# Quantized blocks are random bytes (every bit pattern of the integer fields is a valid value)
# with their f16 scale fields overwritten by a small number, so weights stay small and finite:
# type id -> [(byte offset of an f16 field in the block, its value)], from ggml's block structs.
_QUANT_SCALES: dict[int, list[tuple[int, float]]] = {
    2: [(0, 3e-3)], 3: [(0, 3e-3), (2, -0.024)], 6: [(0, 1.5e-3)], 7: [(0, 1.5e-3), (2, -0.024)],
    8: [(0, 3e-4)], 10: [(80, 1e-3), (82, 1e-3)], 11: [(108, 1e-3)], 12: [(0, 5e-5), (2, 5e-5)],
    13: [(0, 3e-5), (2, 3e-5)], 14: [(208, 1e-5)],
}
_CHUNK_ELEMENTS = 1 << 22


def _values(name: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """float32 values for ``n`` elements of tensor ``name``: what keeps a random model finite."""
    last = name.rsplit(".", 1)[0].rsplit(".", 1)[-1]  # "blk.3.attn_norm.weight" -> "attn_norm"
    if last.endswith("norm") and name.endswith(".weight"):
        return np.ones(n, dtype=np.float32)  # norm scales of 1
    if last == "ssm_a":
        return -rng.uniform(1.0, 2.0, n).astype(np.float32)  # state decay must be negative
    if last == "ssm_d":
        return np.ones(n, dtype=np.float32)
    if name.endswith(".bias"):
        return np.zeros(n, dtype=np.float32)
    # Small values keep activations finite, so the server can generate (nonsense) text.
    return (rng.standard_normal(n) * 0.02).astype(np.float32)


def _data_chunks(name: str, shape: list[int], type_id: int, rng: np.random.Generator) -> Iterator[bytes]:
    """The tensor's data in the ggml type, a few MB at a time (a sparse model's embeddings are big)."""
    from mcp_server.model_files.ggml_types import GGML_TYPES

    n = int(np.prod(shape, dtype=np.int64))
    if type_id in (F32, F16, BF16):
        for start in range(0, n, _CHUNK_ELEMENTS):
            values = _values(name, min(_CHUNK_ELEMENTS, n - start), rng)
            if type_id == F32:
                yield values.tobytes()
            elif type_id == F16:
                yield values.astype(np.float16).tobytes()
            else:
                yield (values.view(np.uint32) >> 16).astype(np.uint16).tobytes()
        return
    if type_id not in _QUANT_SCALES:
        raise ValueError(f"{name}: random data for ggml type {GGML_TYPES.get(type_id, (type_id,))[0]} "
                         "is not supported (use F32, F16, BF16, Q4_0..Q8_0 or Q2_K..Q6_K)")
    _, block, size = GGML_TYPES[type_id]
    n_blocks = n // block
    per_chunk = max(1, _CHUNK_ELEMENTS // block)
    for start in range(0, n_blocks, per_chunk):
        blocks = rng.integers(0, 256, (min(per_chunk, n_blocks - start), size), dtype=np.uint8)
        for offset, value in _QUANT_SCALES[type_id]:
            blocks[:, offset:offset + 2] = np.frombuffer(np.float16(value).tobytes(), dtype=np.uint8)
        yield blocks.tobytes()


# --- the writer ------------------------------------------------------------------------------


def routing_tensors(name: str) -> bool:
    """Default random tensors of a sparse model: the routers and the token embeddings.

    With everything else zero, the hidden state stays the (normalised) token embedding, so each
    router sees a different input per token and picks experts the way a trained model would:
    varied, not always the same few.
    """
    return name.startswith("token_embd.") or ".ffn_gate_inp." in name


def write_gguf(path: str | Path, tensors: list[Tensor], metadata: dict[str, object], arch: str, *,
               sparse: bool = False, n_shards: int = 1, seed: int = 0,
               fill: Callable[[str], bool] | None = routing_tensors, n_vocab: int | None = None) -> list[Path]:
    """Write ``tensors`` and ``metadata`` as a GGUF; returns the file paths (one per shard).

    Not sparse: every tensor gets small random data. Sparse: tensor data are holes (the file has
    the real model's size but takes almost no disk; llama.cpp reads zeros), except tensors for
    which ``fill(name)`` is true. A single shard goes to ``path`` as given; several become
    ``<stem>-0000i-of-0000N.gguf`` next to it. The tokenizer is a byte-level SentencePiece
    vocabulary padded to ``n_vocab`` (default: the token embedding's row count).
    """
    path = Path(path)
    if n_vocab is None:
        embd = next((s for name, s, _ in tensors if name == "token_embd.weight"), None)
        n_vocab = embd[1] if embd else MIN_VOCAB
    if n_shards == 1 and path.suffix == ".gguf":
        paths = [path]
    else:
        stem = path.with_suffix("") if path.suffix == ".gguf" else path
        paths = [stem.with_name(f"{stem.name}-{i + 1:05d}-of-{n_shards:05d}.gguf") for i in range(n_shards)]
    return _write(paths, tensors, metadata, arch, n_vocab, split=len(paths) > 1 or path.suffix != ".gguf",
                  fill=(fill or (lambda _: False)) if sparse else (lambda _: True), seed=seed)


def write_sparse_split(stem: str | Path, n_shards: int, tensors: list[Tensor], metadata: dict[str, object],
                       arch: str, n_vocab: int = 151_936, *, fill: Callable[[str], bool] | None = None,
                       seed: int = 0) -> list[Path]:
    """A split GGUF (``<stem>-0000i-of-0000N.gguf``, even for one shard) whose headers are real
    (with a full-size tokenizer) and whose data is a hole, except tensors where ``fill(name)`` is
    true: those get small random data (float, Q4_0..Q8_0 or K-quant types).

    The files take the size the real model would, but almost no disk: for inspecting and
    estimating huge models quickly, and for loading them on a GPU.
    """
    stem = Path(stem)
    paths = [stem.with_name(f"{stem.name}-{i + 1:05d}-of-{n_shards:05d}.gguf") for i in range(n_shards)]
    return _write(paths, tensors, metadata, arch, n_vocab, split=True, fill=fill or (lambda _: False), seed=seed)


def _write(paths: list[Path], tensors: list[Tensor], metadata: dict[str, object], arch: str, n_vocab: int, *,
           split: bool, fill: Callable[[str], bool], seed: int) -> list[Path]:
    import gguf

    from mcp_server.model_files.ggml_types import tensor_bytes

    rng = np.random.default_rng(seed)
    paths[0].parent.mkdir(parents=True, exist_ok=True)
    per_shard = -(-len(tensors) // len(paths))
    for i, path in enumerate(paths):
        part = tensors[i * per_shard:(i + 1) * per_shard]
        writer = gguf.GGUFWriter(str(path), arch)
        if split:
            writer.add_uint16("split.no", i)
            writer.add_uint16("split.count", len(paths))
            writer.add_int32("split.tensors.count", len(tensors))
        if i == 0:
            for key, value in metadata.items():
                _add_value(writer, key, value)
            # llama.cpp loads this vocabulary, so the model really runs (nonsense text).
            tokens, scores, types = _vocab(max(0, n_vocab - MIN_VOCAB))
            writer.add_tokenizer_model("llama")
            writer.add_token_list(tokens)
            writer.add_token_scores(scores)
            writer.add_token_types(types)
            writer.add_bos_token_id(1)
            writer.add_eos_token_id(2)
            writer.add_unk_token_id(0)
            writer.add_add_bos_token(True)
        for name, shape, type_id in part:
            # numpy order is the reverse of ggml's; a non-uint8 dtype makes the writer take element shapes.
            writer.add_tensor_info(name, list(reversed(shape)), np.dtype(np.float32), tensor_bytes(type_id, shape),
                                   raw_dtype=gguf.GGMLQuantizationType(type_id))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        writer.close()
        with open(path, "r+b") as f:
            offset = -(-f.seek(0, 2) // ALIGNMENT) * ALIGNMENT  # where tensor data starts
            for name, shape, type_id in part:
                if fill(name):
                    f.seek(offset)
                    for chunk in _data_chunks(name, shape, type_id, rng):
                        f.write(chunk)
                offset += -(-tensor_bytes(type_id, shape) // ALIGNMENT) * ALIGNMENT
            f.truncate(offset)  # whatever was not written stays a hole
    return paths


def _add_value(writer, key: str, value: object) -> None:  # type: ignore[no-untyped-def]
    if isinstance(value, bool):
        writer.add_bool(key, value)
    elif isinstance(value, int):
        writer.add_uint32(key, value)
    elif isinstance(value, float):
        writer.add_float32(key, value)
    elif isinstance(value, str):
        writer.add_string(key, value)
    elif isinstance(value, list):
        writer.add_array(key, value)  # ints become INT32, bools BOOL: both are what llama.cpp reads
    else:
        raise TypeError(f"cannot write {key}={value!r}")


def _common(arch: str, name: str, n_layer: int, n_ctx: int, n_embd: int, n_head: int,
            n_head_kv: int | list[int]) -> dict[str, object]:
    return {"general.name": name, f"{arch}.block_count": n_layer, f"{arch}.context_length": n_ctx,
            f"{arch}.embedding_length": n_embd, f"{arch}.attention.head_count": n_head,
            f"{arch}.attention.head_count_kv": n_head_kv, f"{arch}.attention.layer_norm_rms_epsilon": 1e-6,
            f"{arch}.rope.freq_base": 10000.0}


def _ffn(b: str, e: int, ff: int, t: int) -> list[Tensor]:
    return [(b + "ffn_gate.weight", [e, ff], t), (b + "ffn_up.weight", [e, ff], t),
            (b + "ffn_down.weight", [ff, e], t)]


def _attn(b: str, e: int, n_q: int, n_kv: int, t: int) -> list[Tensor]:
    return [(b + "attn_q.weight", [e, n_q], t), (b + "attn_k.weight", [e, n_kv], t),
            (b + "attn_v.weight", [e, n_kv], t), (b + "attn_output.weight", [n_q, e], t)]


# --- dense (llama) ---------------------------------------------------------------------------


class DenseShape(BaseModel):
    """A llama-architecture dense model."""

    n_layer: int = 2
    n_embd: int = 64
    n_head: int = 4
    n_head_kv: int = 2
    n_ff: int = 128
    n_ctx_train: int = 2048
    extra_vocab: int = 0  # pad the vocabulary (bigger embeddings / output)
    weight_type: int = F32  # of the matrices; norms are always F32


def dense_tensors(shape: DenseShape) -> tuple[list[Tensor], dict[str, object]]:
    e, t = shape.n_embd, shape.weight_type
    head_dim = e // shape.n_head
    n_vocab = MIN_VOCAB + shape.extra_vocab
    tensors: list[Tensor] = [("token_embd.weight", [e, n_vocab], t), ("output_norm.weight", [e], F32),
                             ("output.weight", [e, n_vocab], t)]
    for i in range(shape.n_layer):
        b = f"blk.{i}."
        tensors += [(b + "attn_norm.weight", [e], F32), *_attn(b, e, e, head_dim * shape.n_head_kv, t),
                    (b + "ffn_norm.weight", [e], F32), *_ffn(b, e, shape.n_ff, t)]
    meta = _common("llama", "synthetic-dense", shape.n_layer, shape.n_ctx_train, e, shape.n_head, shape.n_head_kv)
    meta.update({"llama.feed_forward_length": shape.n_ff, "llama.rope.dimension_count": head_dim,
                 "llama.attention.layer_norm_rms_epsilon": 1e-5, "general.file_type": 1 if t == F16 else 0})
    return tensors, meta


def write_dense(path: str | Path, shape: DenseShape | None = None, *, seed: int = 0, name: str = "synthetic-dense",
                dtype: str = "f32") -> Path:
    """Write a random-weight llama-style GGUF; returns its path."""
    shape = (shape or DenseShape()).model_copy(update={"weight_type": F16 if dtype == "f16" else F32})
    tensors, meta = dense_tensors(shape)
    meta["general.name"] = name
    (written,) = write_gguf(path, tensors, meta, "llama", seed=seed)
    return written


# --- MoE with routed experts (qwen3moe) ------------------------------------------------------


class MoeShape(BaseModel):
    """A qwen3moe-architecture MoE model (routed experts only; see SharedMoeShape for a shared expert)."""

    n_layer: int = 4
    n_embd: int = 256
    n_head: int = 8
    n_head_kv: int = 2
    head_dim: int = 64
    n_expert: int = 8
    n_expert_used: int = 2
    n_ff_expert: int = 256
    n_ctx_train: int = 32768
    n_vocab: int = 2048
    expert_type: int = Q4_K
    attn_type: int = Q8_0


def moe_tensors(shape: MoeShape) -> tuple[list[Tensor], dict[str, object]]:
    """Tensor list and metadata of a qwen3moe model of this shape."""
    e, h, kv, d = shape.n_embd, shape.n_head, shape.n_head_kv, shape.head_dim
    tensors: list[Tensor] = [("token_embd.weight", [e, shape.n_vocab], shape.attn_type)]
    for i in range(shape.n_layer):
        b = f"blk.{i}."
        tensors += [(b + "attn_norm.weight", [e], 0), (b + "attn_q.weight", [e, h * d], shape.attn_type),
                    (b + "attn_k.weight", [e, kv * d], shape.attn_type), (b + "attn_v.weight", [e, kv * d], shape.attn_type),
                    (b + "attn_output.weight", [h * d, e], shape.attn_type), (b + "attn_q_norm.weight", [d], 0),
                    (b + "attn_k_norm.weight", [d], 0), (b + "ffn_norm.weight", [e], 0),
                    (b + "ffn_gate_inp.weight", [e, shape.n_expert], 0),
                    (b + "ffn_gate_exps.weight", [e, shape.n_ff_expert, shape.n_expert], shape.expert_type),
                    (b + "ffn_up_exps.weight", [e, shape.n_ff_expert, shape.n_expert], shape.expert_type),
                    (b + "ffn_down_exps.weight", [shape.n_ff_expert, e, shape.n_expert], shape.expert_type)]
    tensors += [("output_norm.weight", [e], 0), ("output.weight", [e, shape.n_vocab], shape.attn_type)]
    a = "qwen3moe"
    meta: dict[str, object] = {
        f"{a}.block_count": shape.n_layer, f"{a}.context_length": shape.n_ctx_train, f"{a}.embedding_length": e,
        f"{a}.feed_forward_length": shape.n_ff_expert, f"{a}.attention.head_count": h,
        f"{a}.attention.head_count_kv": kv, f"{a}.attention.key_length": d, f"{a}.attention.value_length": d,
        f"{a}.attention.layer_norm_rms_epsilon": 1e-6, f"{a}.rope.freq_base": 1000000.0,
        f"{a}.expert_count": shape.n_expert, f"{a}.expert_used_count": shape.n_expert_used,
        f"{a}.expert_feed_forward_length": shape.n_ff_expert, "general.name": "synthetic-qwen3moe"}
    return tensors, meta


def write_sparse_moe(stem: str | Path, shape: MoeShape | None = None, n_shards: int = 1, *,
                     fill: Callable[[str], bool] | None = routing_tensors, seed: int = 0) -> list[Path]:
    """A loadable qwen3moe split GGUF whose weights take no disk (holes, read as zeros), except the
    routers and token embeddings, which are random so expert choice varies per token (``fill``)."""
    shape = shape or MoeShape()
    tensors, meta = moe_tensors(shape)
    return write_sparse_split(stem, n_shards, tensors, meta, "qwen3moe", n_vocab=shape.n_vocab, fill=fill,
                              seed=seed)


# --- MoE with routed and shared experts (qwen2moe) -------------------------------------------


class SharedMoeShape(BaseModel):
    """A qwen2moe model: routed experts plus one always-on shared expert with its own sigmoid gate
    (Qwen1.5-MoE / Qwen2-57B-A14B layout). Head size is n_embd / n_head in this architecture."""

    n_layer: int = 2
    n_embd: int = 128
    n_head: int = 4
    n_head_kv: int = 2
    n_expert: int = 4
    n_expert_used: int = 2
    n_ff_expert: int = 64
    n_ff_shared: int = 128
    n_ctx_train: int = 8192
    n_vocab: int = 512
    expert_type: int = F16
    attn_type: int = F16


def shared_moe_tensors(shape: SharedMoeShape) -> tuple[list[Tensor], dict[str, object]]:
    e, t, x = shape.n_embd, shape.attn_type, shape.expert_type
    kv = e // shape.n_head * shape.n_head_kv
    tensors: list[Tensor] = [("token_embd.weight", [e, shape.n_vocab], t), ("output_norm.weight", [e], F32),
                             ("output.weight", [e, shape.n_vocab], t)]
    for i in range(shape.n_layer):
        b = f"blk.{i}."
        tensors += [(b + "attn_norm.weight", [e], F32), *_attn(b, e, e, kv, t),
                    (b + "attn_q.bias", [e], F32), (b + "attn_k.bias", [kv], F32), (b + "attn_v.bias", [kv], F32),
                    (b + "ffn_norm.weight", [e], F32), (b + "ffn_gate_inp.weight", [e, shape.n_expert], F32),
                    (b + "ffn_gate_exps.weight", [e, shape.n_ff_expert, shape.n_expert], x),
                    (b + "ffn_up_exps.weight", [e, shape.n_ff_expert, shape.n_expert], x),
                    (b + "ffn_down_exps.weight", [shape.n_ff_expert, e, shape.n_expert], x),
                    (b + "ffn_gate_inp_shexp.weight", [e], F32),
                    (b + "ffn_gate_shexp.weight", [e, shape.n_ff_shared], x),
                    (b + "ffn_up_shexp.weight", [e, shape.n_ff_shared], x),
                    (b + "ffn_down_shexp.weight", [shape.n_ff_shared, e], x)]
    a = "qwen2moe"
    meta = _common(a, "synthetic-qwen2moe", shape.n_layer, shape.n_ctx_train, e, shape.n_head, shape.n_head_kv)
    meta.update({f"{a}.feed_forward_length": shape.n_ff_shared, f"{a}.expert_count": shape.n_expert,
                 f"{a}.expert_used_count": shape.n_expert_used,
                 f"{a}.expert_feed_forward_length": shape.n_ff_expert,
                 f"{a}.expert_shared_feed_forward_length": shape.n_ff_shared})
    return tensors, meta


# --- sliding-window attention (gemma3) -------------------------------------------------------


class SwaShape(BaseModel):
    """A gemma3 model: interleaved sliding-window and global layers, tied embeddings (no output.weight)."""

    n_layer: int = 6
    n_embd: int = 128
    n_head: int = 4
    n_head_kv: int = 1
    head_dim: int = 64
    n_ff: int = 256
    sliding_window: int = 128
    swa_pattern: int | list[bool] | None = Field(
        default=None, description="None: gemma3's default (5 SWA layers, then a global one); an int N: the "
                                  "same rule with period N; a bool list: per layer, true = SWA")
    n_ctx_train: int = 8192
    n_vocab: int = 512
    weight_type: int = F16


def swa_tensors(shape: SwaShape) -> tuple[list[Tensor], dict[str, object]]:
    e, d, t = shape.n_embd, shape.head_dim, shape.weight_type
    tensors: list[Tensor] = [("token_embd.weight", [e, shape.n_vocab], t), ("output_norm.weight", [e], F32)]
    for i in range(shape.n_layer):
        b = f"blk.{i}."
        tensors += [(b + "attn_norm.weight", [e], F32), *_attn(b, e, d * shape.n_head, d * shape.n_head_kv, t),
                    (b + "post_attention_norm.weight", [e], F32), (b + "attn_k_norm.weight", [d], F32),
                    (b + "attn_q_norm.weight", [d], F32), (b + "ffn_norm.weight", [e], F32),
                    *_ffn(b, e, shape.n_ff, t), (b + "post_ffw_norm.weight", [e], F32)]
    a = "gemma3"
    meta = _common(a, "synthetic-gemma3", shape.n_layer, shape.n_ctx_train, e, shape.n_head, shape.n_head_kv)
    meta.update({f"{a}.feed_forward_length": shape.n_ff, f"{a}.attention.key_length": d,
                 f"{a}.attention.value_length": d, f"{a}.attention.sliding_window": shape.sliding_window,
                 f"{a}.rope.freq_base": 1000000.0, f"{a}.rope.freq_base_swa": 10000.0})
    if shape.swa_pattern is not None:
        meta[f"{a}.attention.sliding_window_pattern"] = shape.swa_pattern
    return tensors, meta


# --- multi-head latent attention (deepseek2) -------------------------------------------------


class MlaShape(BaseModel):
    """A deepseek2 model with MLA (K-only latent cache of kv_lora_rank + rope dims per token and layer),
    leading dense layers, then MoE layers with routed and shared experts."""

    n_layer: int = 3
    n_layer_dense_lead: int = 1
    n_embd: int = 128
    n_head: int = 4
    q_lora_rank: int = 64  # llama.cpp requires it except for the V2-Lite layer counts (26, 27)
    kv_lora_rank: int = 64
    qk_rope_dim: int = 32
    qk_nope_dim: int = 32
    v_head_dim: int = 32
    n_ff: int = 256  # of the leading dense layers
    n_expert: int = 4
    n_expert_used: int = 2
    n_expert_shared: int = 1
    n_ff_expert: int = 64
    n_ctx_train: int = 8192
    n_vocab: int = 512
    weight_type: int = F16


def mla_tensors(shape: MlaShape) -> tuple[list[Tensor], dict[str, object]]:
    s, e, t, h = shape, shape.n_embd, shape.weight_type, shape.n_head
    k_mla = s.qk_nope_dim + s.qk_rope_dim
    tensors: list[Tensor] = [("token_embd.weight", [e, s.n_vocab], t), ("output_norm.weight", [e], F32),
                             ("output.weight", [e, s.n_vocab], t)]
    for i in range(s.n_layer):
        b = f"blk.{i}."
        tensors += [(b + "attn_norm.weight", [e], F32), (b + "attn_kv_a_norm.weight", [s.kv_lora_rank], F32)]
        if s.q_lora_rank:
            tensors += [(b + "attn_q_a_norm.weight", [s.q_lora_rank], F32),
                        (b + "attn_q_a.weight", [e, s.q_lora_rank], t),
                        (b + "attn_q_b.weight", [s.q_lora_rank, h * k_mla], t)]
        else:
            tensors += [(b + "attn_q.weight", [e, h * k_mla], t)]
        tensors += [(b + "attn_kv_a_mqa.weight", [e, s.kv_lora_rank + s.qk_rope_dim], t),
                    (b + "attn_k_b.weight", [s.qk_nope_dim, s.kv_lora_rank, h], t),
                    (b + "attn_v_b.weight", [s.kv_lora_rank, s.v_head_dim, h], t),
                    (b + "attn_output.weight", [h * s.v_head_dim, e], t), (b + "ffn_norm.weight", [e], F32)]
        if i < s.n_layer_dense_lead:
            tensors += _ffn(b, e, s.n_ff, t)
        else:
            shared = s.n_ff_expert * s.n_expert_shared
            tensors += [(b + "ffn_gate_inp.weight", [e, s.n_expert], F32),
                        (b + "ffn_gate_exps.weight", [e, s.n_ff_expert, s.n_expert], t),
                        (b + "ffn_up_exps.weight", [e, s.n_ff_expert, s.n_expert], t),
                        (b + "ffn_down_exps.weight", [s.n_ff_expert, e, s.n_expert], t),
                        (b + "ffn_gate_shexp.weight", [e, shared], t), (b + "ffn_up_shexp.weight", [e, shared], t),
                        (b + "ffn_down_shexp.weight", [shared, e], t)]
    a = "deepseek2"
    meta = _common(a, "synthetic-deepseek2", s.n_layer, s.n_ctx_train, e, h, 1)
    meta.update({
        # What the converter writes for MLA: one latent "KV head" of kv_lora_rank + rope dims (K only),
        # the per-head sizes after decompression in the *_mla keys.
        f"{a}.attention.key_length": s.kv_lora_rank + s.qk_rope_dim, f"{a}.attention.value_length": s.kv_lora_rank,
        f"{a}.attention.key_length_mla": k_mla, f"{a}.attention.value_length_mla": s.v_head_dim,
        f"{a}.rope.dimension_count": s.qk_rope_dim, f"{a}.attention.kv_lora_rank": s.kv_lora_rank,
        f"{a}.feed_forward_length": s.n_ff, f"{a}.leading_dense_block_count": s.n_layer_dense_lead,
        f"{a}.expert_count": s.n_expert, f"{a}.expert_used_count": s.n_expert_used,
        f"{a}.expert_shared_count": s.n_expert_shared, f"{a}.expert_feed_forward_length": s.n_ff_expert,
        f"{a}.expert_weights_scale": 1.0, f"{a}.expert_weights_norm": True,
        f"{a}.expert_gating_func": 1})  # softmax
    if s.q_lora_rank:
        meta[f"{a}.attention.q_lora_rank"] = s.q_lora_rank
    return tensors, meta


# --- hybrid: Mamba-2 + attention (granitehybrid) ---------------------------------------------


class Mamba2HybridShape(BaseModel):
    """A granitehybrid (Granite-4.0-H) model: Mamba-2 layers with a few attention layers among them.
    A layer is attention iff its head_count_kv is non-zero; llama.cpp requires d_inner = 2 * n_embd."""

    n_layer: int = 4
    attention_layers: list[int] = Field(default_factory=lambda: [1, 3])
    n_embd: int = 64
    n_head: int = 4
    n_head_kv: int | list[int] = Field(default=2, description="KV heads of the attention layers, or per layer")
    n_ff: int = 128
    ssm_conv_kernel: int = 4
    ssm_state: int = 16
    ssm_groups: int = 1
    ssm_heads: int = 4  # ssm.time_step_rank: Mamba-2 heads
    n_ctx_train: int = 8192
    n_vocab: int = 512
    weight_type: int = F16


def mamba2_hybrid_tensors(shape: Mamba2HybridShape) -> tuple[list[Tensor], dict[str, object]]:
    s, e, t = shape, shape.n_embd, shape.weight_type
    d_inner = 2 * e
    conv_dim = d_inner + 2 * s.ssm_groups * s.ssm_state
    head_dim = e // s.n_head
    # head_count_kv 0 is what makes a layer recurrent for llama.cpp
    heads_kv = [(s.n_head_kv[i] if isinstance(s.n_head_kv, list) else s.n_head_kv) if i in s.attention_layers else 0
                for i in range(s.n_layer)]
    tensors: list[Tensor] = [("token_embd.weight", [e, s.n_vocab], t), ("output_norm.weight", [e], F32),
                             ("output.weight", [e, s.n_vocab], t)]
    for i in range(s.n_layer):
        b = f"blk.{i}."
        tensors += [(b + "attn_norm.weight", [e], F32)]
        if i in s.attention_layers:
            tensors += _attn(b, e, e, head_dim * heads_kv[i], t)
        else:
            tensors += [(b + "ssm_in.weight", [e, 2 * d_inner + 2 * s.ssm_groups * s.ssm_state + s.ssm_heads], t),
                        (b + "ssm_conv1d.weight", [s.ssm_conv_kernel, conv_dim], F32),
                        (b + "ssm_conv1d.bias", [conv_dim], F32), (b + "ssm_dt.bias", [s.ssm_heads], F32),
                        (b + "ssm_a", [1, s.ssm_heads], F32), (b + "ssm_d", [1, s.ssm_heads], F32),
                        (b + "ssm_norm.weight", [d_inner // s.ssm_groups, s.ssm_groups], F32),
                        (b + "ssm_out.weight", [d_inner, e], t)]
        tensors += [(b + "ffn_norm.weight", [e], F32), *_ffn(b, e, s.n_ff, t)]
    a = "granitehybrid"
    meta = _common(a, "synthetic-granitehybrid", s.n_layer, s.n_ctx_train, e, s.n_head, heads_kv)
    meta.update({f"{a}.feed_forward_length": s.n_ff, f"{a}.ssm.conv_kernel": s.ssm_conv_kernel,
                 f"{a}.ssm.inner_size": d_inner, f"{a}.ssm.state_size": s.ssm_state,
                 f"{a}.ssm.time_step_rank": s.ssm_heads, f"{a}.ssm.group_count": s.ssm_groups,
                 f"{a}.rope.dimension_count": head_dim})
    return tensors, meta


# --- hybrid: short convolutions + attention (lfm2) -------------------------------------------


class ShortConvHybridShape(BaseModel):
    """An lfm2 (Liquid LFM2) model: gated short-convolution layers and attention layers (head_count_kv
    non-zero), tied embeddings; its final norm is stored as token_embd_norm."""

    n_layer: int = 4
    attention_layers: list[int] = Field(default_factory=lambda: [1, 3])
    n_embd: int = 64
    n_head: int = 4
    n_head_kv: int = 2
    n_ff: int = 128
    conv_cache: int = 3  # shortconv.l_cache: the convolution's kernel length
    n_ctx_train: int = 8192
    n_vocab: int = 512
    weight_type: int = F16


def shortconv_hybrid_tensors(shape: ShortConvHybridShape) -> tuple[list[Tensor], dict[str, object]]:
    s, e, t = shape, shape.n_embd, shape.weight_type
    head_dim = e // s.n_head
    tensors: list[Tensor] = [("token_embd.weight", [e, s.n_vocab], t), ("token_embd_norm.weight", [e], F32)]
    for i in range(s.n_layer):
        b = f"blk.{i}."
        tensors += [(b + "attn_norm.weight", [e], F32), (b + "ffn_norm.weight", [e], F32), *_ffn(b, e, s.n_ff, t)]
        if i in s.attention_layers:
            tensors += [(b + "attn_q_norm.weight", [head_dim], F32), (b + "attn_k_norm.weight", [head_dim], F32),
                        *_attn(b, e, e, head_dim * s.n_head_kv, t)]
        else:
            tensors += [(b + "shortconv.conv.weight", [s.conv_cache, e], F32),
                        (b + "shortconv.in_proj.weight", [e, 3 * e], t),
                        (b + "shortconv.out_proj.weight", [e, e], t)]
    a = "lfm2"
    heads_kv = [s.n_head_kv if i in s.attention_layers else 0 for i in range(s.n_layer)]
    meta = _common(a, "synthetic-lfm2", s.n_layer, s.n_ctx_train, e, s.n_head, heads_kv)
    meta.update({f"{a}.feed_forward_length": s.n_ff, f"{a}.shortconv.l_cache": s.conv_cache,
                 f"{a}.vocab_size": s.n_vocab})
    return tensors, meta


# --- registry --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Family:
    name: str
    arch: str
    shape: type[BaseModel]
    tensors: Callable[[Any], tuple[list[Tensor], dict[str, object]]]
    summary: str


FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("dense", "llama", DenseShape, dense_tensors, "llama-style dense transformer"),
    Family("moe", "qwen3moe", MoeShape, moe_tensors, "routed experts (Qwen3-30B-A3B style)"),
    Family("moe-shared", "qwen2moe", SharedMoeShape, shared_moe_tensors,
           "routed experts plus a gated shared expert (Qwen1.5-MoE / Qwen2-57B style)"),
    Family("swa", "gemma3", SwaShape, swa_tensors, "sliding-window layers 5:1 with global ones, tied embeddings"),
    Family("mla", "deepseek2", MlaShape, mla_tensors,
           "multi-head latent attention, leading dense layers, routed + shared experts"),
    Family("hybrid-mamba2", "granitehybrid", Mamba2HybridShape, mamba2_hybrid_tensors,
           "Mamba-2 layers mixed with attention layers"),
    Family("hybrid-shortconv", "lfm2", ShortConvHybridShape, shortconv_hybrid_tensors,
           "short-convolution layers mixed with attention layers"),
)}


def family_model(family: str, shape: BaseModel | dict[str, Any] | None = None
                 ) -> tuple[str, list[Tensor], dict[str, object]]:
    """(architecture, tensors, metadata) of a family at a shape (its defaults: tiny)."""
    if family not in FAMILIES:
        raise ValueError(f"unknown synthetic family {family!r}; known: {', '.join(FAMILIES)}")
    f = FAMILIES[family]
    if shape is None or isinstance(shape, dict):
        shape = f.shape(**(shape or {}))
    elif not isinstance(shape, f.shape):
        raise TypeError(f"family {family!r} takes a {f.shape.__name__}, not a {type(shape).__name__}")
    tensors, meta = f.tensors(shape)
    return f.arch, tensors, meta


def write_model(family: str, path: str | Path, shape: BaseModel | dict[str, Any] | None = None, *,
                sparse: bool = False, n_shards: int = 1, seed: int = 0,
                fill: Callable[[str], bool] | None = routing_tensors) -> list[Path]:
    """Write a synthetic model of ``family`` (see FAMILIES) at ``path``; returns its files.

    Small shapes with ``sparse=False`` give real random weights that the CPU server runs; huge
    shapes want ``sparse=True`` (holes, except the ``fill`` tensors: routers and embeddings).
    """
    arch, tensors, meta = family_model(family, shape)
    return write_gguf(path, tensors, meta, arch, sparse=sparse, n_shards=n_shards, seed=seed, fill=fill)
