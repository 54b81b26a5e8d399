"""The estimator's exact terms: placement rules by table, KV cache against what the real llama-server logs."""

from __future__ import annotations

import pytest

from mcp_server.placement.estimate import (
    KV_TYPES,
    Settings,
    cuda_alloc_bytes,
    estimate,
    layer_devices,
    settings_from_argv,
)
from mcp_server.model_files.layout import read_layout
from mcp_server.profiles.config import KV_CACHE_TYPES, load_config
from mcp_server.profiles.edits import create_profile, update_profile
from mcp_server.runtime.lifecycle import Runtime
from mcp_server.model_files.synthetic import DenseShape, write_dense, write_sparse_split


@pytest.mark.parametrize("n_layer, ngl, split, expected", [
    (48, 99, [24, 16], {0: 30, 1: 19}),  # 18 blocks + the output layer on the second GPU
    (48, 99, [1, 1], {0: 25, 1: 24}),
    (32, 10, [1], {-1: 23, 0: 10}),  # -ngl counts the output layer: 9 blocks + output
    (32, 1, [1], {-1: 32, 0: 1}),  # -ngl 1 offloads only the output layer
    (32, 0, [1], {-1: 33}),
])
def test_layer_devices_follow_llama_cpp(n_layer, ngl, split, expected):
    devices = layer_devices(n_layer, ngl, split)
    assert {d: devices.count(d) for d in set(devices)} == expected
    assert devices == sorted(devices)  # layers fill devices in order, CPU first


def test_cuda_padding_and_alignment():
    assert cuda_alloc_bytes("Q8_0", [576, 32768], 576 // 32 * 34 * 32768) == 20054528
    assert cuda_alloc_bytes("F16", [100, 3], 600) == 640  # no row padding for float types, 128-B aligned


def test_kv_cache_types_are_the_profile_choices_sized_by_ggml():
    assert tuple(KV_TYPES) == KV_CACHE_TYPES
    assert KV_TYPES == {"f32": (1, 4), "f16": (1, 2), "bf16": (1, 2), "q8_0": (32, 34), "q5_1": (32, 24),
                        "q5_0": (32, 22), "q4_1": (32, 20), "q4_0": (32, 18), "iq4_nl": (32, 18)}


def test_settings_from_argv_last_flag_wins_and_moe_expansion():
    s = settings_from_argv(["llama-server", "-c", "4096", "--ctx-size", "8192", "-np", "2", "-ngl", "auto",
                            "--n-cpu-moe", "2", "-ot", "exps=CUDA1", "-fa", "on", "--cpu-moe", "-ctk", "q8_0"])
    assert s.n_ctx == 8192 and s.n_parallel == 2 and not s.unified and s.n_gpu_layers == -1
    assert s.overrides[0][0].startswith(r"blk\.0\.") and s.overrides[1][0].startswith(r"blk\.1\.")
    assert s.overrides[2] == ("exps", "CUDA1") and s.overrides[3][1] == "CPU"
    assert s.flash_attn == "on" and s.cache_type_k == "q8_0"
    assert Settings().slots == 4 and Settings().unified  # llama-server's default: 4 slots, unified KV


def _moe(tmp_path):
    n_layer, n_embd, n_exp, ff = 8, 512, 16, 256
    tensors = [("token_embd.weight", [n_embd, 4096], 8)]
    for i in range(n_layer):
        tensors += [(f"blk.{i}.attn_q.weight", [n_embd, n_embd], 8), (f"blk.{i}.attn_k.weight", [n_embd, 128], 8),
                    (f"blk.{i}.attn_v.weight", [n_embd, 128], 8), (f"blk.{i}.attn_output.weight", [n_embd, n_embd], 8),
                    (f"blk.{i}.ffn_up_exps.weight", [n_embd, ff, n_exp], 12),
                    (f"blk.{i}.ffn_down_exps.weight", [ff, n_embd, n_exp], 12)]
    tensors += [("output.weight", [n_embd, 4096], 8)]
    meta = {"qwen3moe.block_count": n_layer, "qwen3moe.embedding_length": n_embd,
            "qwen3moe.attention.head_count": 8, "qwen3moe.attention.head_count_kv": 2,
            "qwen3moe.expert_count": n_exp, "qwen3moe.expert_used_count": 2, "qwen3moe.context_length": 8192}
    (path,) = write_sparse_split(tmp_path / "moe", 1, tensors, meta, "qwen3moe", n_vocab=4096)
    return read_layout(path)


def test_placement_moves_experts_and_keeps_attention(tmp_path):
    info = _moe(tmp_path)
    experts = info.bytes_by_kind["experts"] / 2**20
    full = estimate(info, settings_from_argv(["x", "-c", "4096", "-ngl", "99", "-fit", "off"]), [24576, 16384])
    assert full.host.weights_mib == pytest.approx(info.bytes_by_kind["embeddings"] / 2**20, abs=0.01)
    cpu_moe = estimate(info, settings_from_argv(["x", "-c", "4096", "-ngl", "99", "--cpu-moe"]), [24576, 16384])
    assert cpu_moe.host.weights_mib == pytest.approx(full.host.weights_mib + experts, abs=0.01)
    gpu_total = sum(d.weights_mib for d in cpu_moe.devices)
    assert gpu_total == pytest.approx(sum(d.weights_mib for d in full.devices) - experts, rel=0.01)
    # KV follows the layers, not -ot: unchanged by moving experts
    assert [d.kv_cache_mib for d in cpu_moe.devices] == [d.kv_cache_mib for d in full.devices]
    n2 = estimate(info, settings_from_argv(["x", "-c", "4096", "-ngl", "99", "--n-cpu-moe", "2"]), [24576, 16384])
    assert n2.host.weights_mib == pytest.approx(full.host.weights_mib + experts * 2 / 8, abs=0.01)
    assert n2.devices[0].weights_mib < full.devices[0].weights_mib  # the first blocks live on GPU0
    none = estimate(info, settings_from_argv(["x", "-c", "4096", "-sm", "none", "-mg", "1"]), [24576, 16384])
    assert none.devices[0].weights_mib == 0 and none.devices[1].weights_mib > 0


def test_tied_embeddings_are_duplicated_on_the_output_gpu(demo_gguf):
    info = read_layout(demo_gguf)
    embd = next(t for t in info.tensors if t.name == "token_embd.weight").bytes / 2**20
    e = estimate(info, settings_from_argv(["x", "-c", "4096", "-ngl", "99"]), [16384])
    assert e.host.weights_mib == pytest.approx(embd, abs=0.01)
    assert e.devices[0].weights_mib > embd  # its own copy for the output layer, plus the blocks


@pytest.mark.engine
@pytest.mark.parametrize("extra", [
    {"CTX_SIZE": "4096", "PARALLEL": "1"},
    {"CTX_SIZE": "8192", "PARALLEL": "2"},
    {"CTX_SIZE": "4096"},  # default slots: 4, unified KV
    {"CTX_SIZE": "3000", "PARALLEL": "3", "FLASH_ATTN": "on", "KV_CACHE_TYPE_K": "q8_0", "KV_CACHE_TYPE_V": "q8_0"},
])
def test_kv_cache_matches_the_real_server_to_the_byte(engine_path, demo_project, extra):
    write_dense(demo_project.parent / "models" / "synth" / "dense.gguf",
                DenseShape(n_layer=3, n_embd=128, n_head=4, n_head_kv=2, n_ff=256, n_ctx_train=16384))
    create_profile(load_config(demo_project), "dense", {"MODEL": "synth/dense.gguf"})
    runtime = Runtime(load_config(demo_project))
    try:
        for profile in ("demo", "dense"):
            update_profile(load_config(demo_project), profile, set=extra)
            config = load_config(demo_project)
            runtime = Runtime(config)
            view = runtime.start_model(profile)
            logged = runtime.load_report(profile)
            runtime.stop_model(view.id)
            record_argv = next(r.argv for r in runtime.registry.all() if r.id == view.id)
            info = read_layout(config.model_path(config.profile(profile)))
            predicted = estimate(info, settings_from_argv(record_argv), [])
            cpu = next(d for d in logged.devices if d.device == "CPU")
            assert predicted.host.kv_cache_mib == pytest.approx(cpu.kv_cache_mib, abs=0.006), profile
            assert predicted.n_ctx == logged.n_ctx and predicted.slots == logged.slots
    finally:
        runtime.stop_model("all")
