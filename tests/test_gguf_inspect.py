"""GGUF inspection from headers: the same tensor table as the gguf package, attention layouts, split files."""

from __future__ import annotations

import gguf
import pytest

from mcp_server.model_files.reader import GGUFFormatError, SkippedArray, read_metadata
from mcp_server.model_files.layout import read_layout, tensor_kind
from mcp_server.model_files.synthetic import DenseShape, write_dense, write_sparse_split


def moe_tensors(n_layer: int = 4, n_embd: int = 256, n_exp: int = 8, ff: int = 256) -> list:
    tensors = [("token_embd.weight", [n_embd, 1000], 12)]
    for i in range(n_layer):
        tensors += [(f"blk.{i}.attn_norm.weight", [n_embd], 0), (f"blk.{i}.attn_q.weight", [n_embd, n_embd], 12),
                    (f"blk.{i}.attn_k.weight", [n_embd, 64], 12), (f"blk.{i}.attn_v.weight", [n_embd, 64], 14),
                    (f"blk.{i}.attn_output.weight", [n_embd, n_embd], 12),
                    (f"blk.{i}.ffn_gate_inp.weight", [n_embd, n_exp], 0),
                    (f"blk.{i}.ffn_up_exps.weight", [n_embd, ff, n_exp], 12),
                    (f"blk.{i}.ffn_down_exps.weight", [ff, n_embd, n_exp], 14),
                    (f"blk.{i}.ffn_up_shexp.weight", [n_embd, ff], 8)]
    return tensors + [("output_norm.weight", [n_embd], 0), ("output.weight", [n_embd, 1000], 14)]


def test_tensor_table_matches_the_gguf_package(demo_gguf):
    ours = read_layout(demo_gguf)
    reader = gguf.GGUFReader(str(demo_gguf))
    expected = {t.name: (t.tensor_type.name, [int(d) for d in t.shape], int(t.n_bytes), int(t.data_offset))
                for t in reader.tensors}
    assert {t.name: (t.type, t.shape, t.bytes, t.offset) for t in ours.tensors} == expected


def test_layout_and_metadata_reader_parse_alike(demo_gguf):
    """One parser: the layout's metadata is read_metadata's, skipped arrays given as their length."""
    meta = read_metadata(demo_gguf, keep_arrays=lambda key: not key.startswith("tokenizer."))
    assert (meta.pop("GGUF.version"), meta.pop("GGUF.tensor_count")) == (3, len(read_layout(demo_gguf).tensors))
    assert isinstance(meta["tokenizer.ggml.tokens"], SkippedArray)
    expected = {k: v.count if isinstance(v, SkippedArray) else v for k, v in meta.items()}
    assert read_layout(demo_gguf).metadata == expected


def test_gemma3_layout_from_the_demo_model(demo_gguf):
    info = read_layout(demo_gguf)
    assert (info.architecture, info.n_layer, info.n_ctx_train, info.n_vocab) == ("gemma3", 18, 32768, 262144)
    assert info.n_head == [4] * 18 and info.n_head_kv == [1] * 18 and info.key_length == 256
    # gemma3: 5 sliding-window layers, then a global one (as llama.cpp logs: 15 SWA + 3 full)
    assert info.sliding_window == 512 and len(info.swa_layers) == 15 and 5 not in info.swa_layers
    assert info.tied_embeddings and info.bytes_by_kind["embeddings"] > info.bytes_by_kind["ffn_dense"]
    assert info.total_bytes == sum(info.bytes_by_kind.values())


def test_dense_synthetic_and_parameter_count(tmp_path):
    shape = DenseShape(n_layer=3, n_embd=64, n_head=4, n_head_kv=2, n_ff=128)
    info = read_layout(write_dense(tmp_path / "d.gguf", shape))
    assert info.n_layer == 3 and info.n_head_kv == [2, 2, 2] and not info.tied_embeddings
    assert info.key_length == 16 and info.expert_count == 0
    assert info.parameters == sum(t.bytes // 4 for t in info.tensors)  # all F32


def test_split_moe_reads_every_shard_from_any_shard(tmp_path):
    meta = {"qwen3moe.block_count": 4, "qwen3moe.embedding_length": 256, "qwen3moe.attention.head_count": 4,
            "qwen3moe.attention.head_count_kv": 1, "qwen3moe.expert_count": 8, "qwen3moe.expert_used_count": 2,
            "qwen3moe.context_length": 32768}
    tensors = moe_tensors()
    paths = write_sparse_split(tmp_path / "m", 3, tensors, meta, "qwen3moe", n_vocab=1000)
    info = read_layout(paths[2])
    assert info.path == str(paths[0]) and len(info.shards) == 3
    assert [t.name for t in info.tensors] == [t[0] for t in tensors]
    assert {t.shard for t in info.tensors} == {0, 1, 2}
    assert info.expert_count == 8 and info.n_vocab == 1000
    assert set(info.bytes_by_kind) == {"embeddings", "norm", "attention", "router", "experts", "shared_experts",
                                       "output"}
    for shard in info.shards:  # each tensor's data lies inside its own file
        inside = [t for t in info.tensors if t.shard == info.shards.index(shard)]
        assert all(shard.data_offset <= t.offset and t.offset + t.bytes <= shard.size_bytes for t in inside)


def test_missing_shard_is_named(tmp_path):
    paths = write_sparse_split(tmp_path / "m", 3, moe_tensors(), {"qwen3moe.block_count": 4}, "qwen3moe",
                               n_vocab=100)
    paths[1].unlink()
    with pytest.raises(GGUFFormatError, match="m-00002-of-00003.gguf"):
        read_layout(paths[0])


def test_mla_recurrent_and_per_layer_heads_from_metadata(tmp_path):
    mla = {"deepseek2.block_count": 2, "deepseek2.embedding_length": 128, "deepseek2.attention.head_count": 8,
           "deepseek2.attention.head_count_kv": 1, "deepseek2.attention.key_length": 576,
           "deepseek2.attention.value_length": 512, "deepseek2.attention.key_length_mla": 192,
           "deepseek2.attention.value_length_mla": 128, "deepseek2.attention.kv_lora_rank": 512}
    (path,) = write_sparse_split(tmp_path / "ds", 1, [("blk.0.attn_kv_a_mqa.weight", [128, 576], 0)], mla,
                                 "deepseek2", n_vocab=10)
    info = read_layout(path)
    assert info.is_mla and info.kv_lora_rank == 512 and info.key_length == 576

    hybrid = {"qwen3next.block_count": 8, "qwen3next.embedding_length": 64, "qwen3next.attention.head_count": 4,
              "qwen3next.attention.head_count_kv": 2, "qwen3next.full_attention_interval": 4,
              "qwen3next.ssm.conv_kernel": 4}
    (path,) = write_sparse_split(tmp_path / "qn", 1, [("blk.0.ssm_conv1d.weight", [4, 64], 0)], hybrid, "qwen3next",
                                 n_vocab=10)
    assert read_layout(path).recurrent_layers == [0, 1, 2, 4, 5, 6]

    per_layer = {"nemotron_h.block_count": 4, "nemotron_h.embedding_length": 64,
                 "nemotron_h.attention.head_count": [0, 8, 0, 8], "nemotron_h.attention.head_count_kv": [0, 2, 0, 2],
                 "nemotron_h.ssm.state_size": 16}
    (path,) = write_sparse_split(tmp_path / "nh", 1, [("blk.0.ssm_in.weight", [64, 64], 0)], per_layer,
                                 "nemotron_h", n_vocab=10)
    info = read_layout(path)
    assert info.n_head_kv == [0, 2, 0, 2] and info.recurrent_layers == [0, 2]


@pytest.mark.parametrize("name, kind", [
    ("token_embd.weight", "embeddings"), ("output.weight", "output"), ("output_norm.weight", "output"),
    ("blk.3.attn_q.weight", "attention"), ("blk.3.attn_kv_a_mqa.weight", "attention"),
    ("blk.3.ffn_up_exps.weight", "experts"), ("blk.3.ffn_gate_shexp.weight", "shared_experts"),
    ("blk.3.ffn_gate_inp.weight", "router"), ("blk.3.ffn_down.weight", "ffn_dense"),
    ("blk.3.ssm_conv1d.weight", "recurrent"), ("blk.3.attn_norm.weight", "norm"),
])
def test_tensor_kinds(name, kind):
    assert tensor_kind(name) == kind
