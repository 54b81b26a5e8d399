"""Synthetic GGUF models with random weights: real files llama-server loads and runs.

No model can be downloaded on a machine without internet, yet tests and measurements need real
loads, real memory and real speed. A model with random weights of the right shapes gives all
three; only its answers are nonsense.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydantic import BaseModel

# A byte-level SentencePiece vocabulary: three specials, 256 byte tokens, a few plain pieces.
_SPECIALS = ["<unk>", "<s>", "</s>"]
_PIECES = ["\u2581"] + [chr(c) for c in range(ord("a"), ord("z") + 1)] + ["\u2581" + w for w in (
    "the", "a", "is", "of", "and", "to", "in", "it", "hello", "world")]


class DenseShape(BaseModel):
    """A llama-architecture dense model."""

    n_layer: int = 2
    n_embd: int = 64
    n_head: int = 4
    n_head_kv: int = 2
    n_ff: int = 128
    n_ctx_train: int = 2048
    extra_vocab: int = 0  # pad the vocabulary (bigger embeddings / output)


def _vocab(extra: int) -> tuple[list[str], list[float], list[int]]:
    tokens = list(_SPECIALS) + [f"<0x{b:02X}>" for b in range(256)] + list(_PIECES)
    tokens += [f"\u2581tok{i}" for i in range(extra)]
    scores = [0.0] * 3 + [0.0] * 256 + [-float(i) for i in range(len(tokens) - 259)]
    types = [2, 3, 3] + [6] * 256 + [1] * (len(tokens) - 259)  # unknown, control, byte, normal
    return tokens, scores, types


def write_dense(path: str | Path, shape: DenseShape | None = None, *, seed: int = 0, name: str = "synthetic-dense",
                dtype: str = "f32") -> Path:
    """Write a random-weight llama-style GGUF; returns its path."""
    import gguf

    shape = shape or DenseShape()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    tokens, scores, types = _vocab(shape.extra_vocab)
    n_vocab = len(tokens)
    head_dim = shape.n_embd // shape.n_head
    kv_dim = head_dim * shape.n_head_kv
    np_dtype = np.float16 if dtype == "f16" else np.float32

    def weight(rows: int, cols: int) -> np.ndarray:
        # Small values keep activations finite, so the server can generate (nonsense) text.
        return (rng.standard_normal((rows, cols)) * 0.02).astype(np_dtype)

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name(name)
    writer.add_context_length(shape.n_ctx_train)
    writer.add_embedding_length(shape.n_embd)
    writer.add_block_count(shape.n_layer)
    writer.add_feed_forward_length(shape.n_ff)
    writer.add_head_count(shape.n_head)
    writer.add_head_count_kv(shape.n_head_kv)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(head_dim)
    writer.add_file_type(1 if dtype == "f16" else 0)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_add_bos_token(True)

    ones = np.ones(shape.n_embd, dtype=np.float32)
    # numpy shapes are (rows, cols) = (ggml ne1, ne0): a matrix mapping n_embd -> n is (n, n_embd).
    writer.add_tensor("token_embd.weight", weight(n_vocab, shape.n_embd))
    writer.add_tensor("output_norm.weight", ones)
    writer.add_tensor("output.weight", weight(n_vocab, shape.n_embd))
    for i in range(shape.n_layer):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", ones)
        writer.add_tensor(f"blk.{i}.attn_q.weight", weight(shape.n_embd, shape.n_embd))
        writer.add_tensor(f"blk.{i}.attn_k.weight", weight(kv_dim, shape.n_embd))
        writer.add_tensor(f"blk.{i}.attn_v.weight", weight(kv_dim, shape.n_embd))
        writer.add_tensor(f"blk.{i}.attn_output.weight", weight(shape.n_embd, shape.n_embd))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", ones)
        writer.add_tensor(f"blk.{i}.ffn_gate.weight", weight(shape.n_ff, shape.n_embd))
        writer.add_tensor(f"blk.{i}.ffn_up.weight", weight(shape.n_ff, shape.n_embd))
        writer.add_tensor(f"blk.{i}.ffn_down.weight", weight(shape.n_embd, shape.n_ff))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def write_sparse_split(stem: str | Path, n_shards: int, tensors: list[tuple[str, list[int], int]],
                       metadata: dict[str, object], arch: str, n_vocab: int = 151_936) -> list[Path]:
    """A split GGUF whose headers are real (with a full-size tokenizer) and whose data is a hole.

    ``tensors`` are (name, ggml shape with ne0 first, ggml type id). The files take the size the
    real model would, but almost no disk: for inspecting and estimating huge models quickly.
    """
    import gguf

    from .gguf_inspect import tensor_bytes

    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    per_shard = -(-len(tensors) // n_shards)
    paths = []
    for i in range(n_shards):
        path = stem.with_name(f"{stem.name}-{i + 1:05d}-of-{n_shards:05d}.gguf")
        part = tensors[i * per_shard:(i + 1) * per_shard]
        writer = gguf.GGUFWriter(str(path), arch)
        writer.add_uint16("split.no", i)
        writer.add_uint16("split.count", n_shards)
        writer.add_int32("split.tensors.count", len(tensors))
        if i == 0:
            for key, value in metadata.items():
                _add_value(writer, key, value)
            # The same byte-level SentencePiece vocabulary as write_dense, padded to n_vocab:
            # llama.cpp loads it, so a sparse model (all-zero weights) really runs.
            tokens, scores, types = _vocab(max(0, n_vocab - 259 - len(_PIECES)))
            writer.add_tokenizer_model("llama")
            writer.add_token_list(tokens)
            writer.add_token_scores(scores)
            writer.add_token_types(types)
            writer.add_bos_token_id(1)
            writer.add_eos_token_id(2)
            writer.add_unk_token_id(0)
        for name, shape, type_id in part:
            nbytes = tensor_bytes(type_id, shape)
            # numpy order is the reverse of ggml's; a non-uint8 dtype makes the writer take element shapes.
            writer.add_tensor_info(name, list(reversed(shape)), np.dtype(np.float32), nbytes,
                                   raw_dtype=gguf.GGMLQuantizationType(type_id))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        writer.close()
        with open(path, "r+b") as f:
            data_start = -(-f.seek(0, 2) // 32) * 32
            offsets_end = data_start + sum(-(-tensor_bytes(t, s) // 32) * 32 for _, s, t in part)
            f.truncate(offsets_end)  # a hole: no data written
        paths.append(path)
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
        writer.add_array(key, value)
    else:
        raise TypeError(f"cannot write {key}={value!r}")


class MoeShape(BaseModel):
    """A qwen3moe-architecture MoE model (routed experts, optional shared expert)."""

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
    expert_type: int = 12  # Q4_K
    attn_type: int = 8  # Q8_0


def moe_tensors(shape: MoeShape) -> tuple[list[tuple[str, list[int], int]], dict[str, object]]:
    """Tensor list and metadata of a qwen3moe model of this shape (for write_sparse_split)."""
    e, h, kv, d = shape.n_embd, shape.n_head, shape.n_head_kv, shape.head_dim
    tensors: list[tuple[str, list[int], int]] = [("token_embd.weight", [e, shape.n_vocab], shape.attn_type)]
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


def write_sparse_moe(stem: str | Path, shape: MoeShape | None = None, n_shards: int = 1) -> list[Path]:
    """A loadable qwen3moe GGUF whose weights are all zero and take no disk (holes)."""
    shape = shape or MoeShape()
    tensors, meta = moe_tensors(shape)
    return write_sparse_split(stem, n_shards, tensors, meta, "qwen3moe", n_vocab=shape.n_vocab)
