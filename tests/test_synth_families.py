"""Synthetic model families against the real CPU llama-server: each loads and generates, and the
estimator's host weights, KV cache and recurrent state equal the buffers the server logs."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from mcp_server.placement.estimate import estimate, settings_from_argv
from mcp_server.model_files.layout import read_layout
from mcp_server.runtime.server_log import parse_load_report
from mcp_server.model_files.synthetic import (
    FAMILIES,
    MoeShape,
    family_model,
    routing_tensors,
    write_model,
    write_sparse_moe,
)

MIB = 2**20
# Tiny shapes with head sizes of at least 32, so a q8_0 K cache (32-element blocks) is accepted.
SHAPES: dict[str, dict] = {
    "dense": {"n_layer": 3, "n_embd": 128, "n_head": 4, "n_head_kv": 2, "n_ff": 256, "n_ctx_train": 8192,
              "weight_type": 1},
    "moe": {"n_layer": 3, "n_embd": 128, "n_head": 4, "n_head_kv": 2, "head_dim": 32, "n_expert": 8,
            "n_expert_used": 2, "n_ff_expert": 64, "n_ctx_train": 8192, "n_vocab": 512, "expert_type": 1,
            "attn_type": 1},
    "moe-shared": {},
    "swa": {},
    "mla": {},
    "hybrid-mamba2": {"n_layer": 5, "attention_layers": [2], "n_embd": 128, "n_head": 4, "n_head_kv": 2,
                      "ssm_state": 64, "ssm_groups": 2, "ssm_heads": 8},
    "hybrid-shortconv": {"n_layer": 5, "attention_layers": [1, 3], "n_embd": 512, "n_head": 8, "n_head_kv": 2,
                         "n_ff": 512, "conv_cache": 4},
}

MIXED_KV_HEADS = {"attention_layers": [1, 3], "n_head_kv": [0, 1, 0, 4, 0]}

# (family, shape overrides, llama-server flags): at least two settings per family, covering
# per-slot and unified caches, quantized K/V with flash attention, V padding without it, SWA.
CASES = [
    ("dense", {}, ["-c", "1024", "-np", "1"]),
    ("dense", {}, ["-c", "3000", "-np", "3", "-fa", "on", "-ctk", "q8_0", "-ctv", "q8_0"]),
    ("dense", {}, ["-c", "2048", "-np", "2", "-kvu", "-fa", "off"]),
    ("moe", {}, ["-c", "2048", "-np", "2"]),
    ("moe", {}, ["-c", "4096", "-fa", "on", "-ctk", "q8_0"]),
    ("moe-shared", {}, ["-c", "1024"]),
    ("moe-shared", {}, ["-c", "2048", "-np", "4", "-kvu", "-fa", "off"]),
    ("swa", {}, ["-c", "4096", "-np", "2"]),
    ("swa", {}, ["-c", "4096"]),
    ("swa", {}, ["-c", "4096", "--swa-full"]),
    ("swa", {}, ["-c", "2048", "-np", "3", "-kvu", "-ub", "128", "-fa", "on", "-ctk", "q8_0"]),
    ("swa", {"swa_pattern": [True, False, True, True, False, True], "sliding_window": 64}, ["-c", "2048", "-np", "2"]),
    ("mla", {}, ["-c", "1024", "-np", "1"]),
    # llama.cpp refuses different K and V cache types for MLA
    ("mla", {}, ["-c", "3000", "-np", "3", "-fa", "on", "-ctk", "q8_0", "-ctv", "q8_0"]),
    ("mla", {}, ["-c", "2048", "-fa", "off"]),
    ("hybrid-mamba2", {}, ["-c", "1024", "-np", "1"]),
    ("hybrid-mamba2", {}, ["-c", "2048", "-np", "4", "-kvu", "-fa", "on", "-ctk", "q8_0", "-ctv", "q8_0"]),
    # attention layers with 1 and 4 KV heads: without flash attention every V row is padded to the widest
    ("hybrid-mamba2", MIXED_KV_HEADS, ["-c", "2048", "-np", "2", "-fa", "off"]),
    ("hybrid-mamba2", MIXED_KV_HEADS, ["-c", "2048", "-np", "2", "-fa", "on"]),
    ("hybrid-shortconv", {}, ["-c", "1024", "-np", "1"]),
    ("hybrid-shortconv", {}, ["-c", "2048", "-np", "8"]),
]


def _model(family: str, folder: Path, overrides: dict | None = None) -> Path:
    shape = {**SHAPES[family], **(overrides or {})}
    (path,) = write_model(family, folder / f"{family}.gguf", shape)
    return path


# --- layout, from headers ----------------------------------------------------------------------


@pytest.mark.parametrize("family, expected", [
    ("dense", {"architecture": "llama", "swa_layers": [], "is_mla": False, "recurrent_layers": [],
               "expert_count": 0, "expert_shared_count": 0, "tied_embeddings": False}),
    ("moe", {"architecture": "qwen3moe", "expert_count": 8, "expert_used_count": 2, "expert_shared_count": 0,
             "recurrent_layers": [], "swa_layers": []}),
    ("moe-shared", {"architecture": "qwen2moe", "expert_count": 4, "expert_used_count": 2,
                    "expert_shared_count": 1}),
    ("swa", {"architecture": "gemma3", "swa_layers": [0, 1, 2, 3, 4], "sliding_window": 128, "is_mla": False,
             "tied_embeddings": True, "n_head_kv": [1] * 6, "key_length": 64}),
    ("mla", {"architecture": "deepseek2", "is_mla": True, "kv_lora_rank": 64, "key_length": 96,
             "n_head_kv": [1, 1, 1], "expert_count": 4, "expert_used_count": 2, "expert_shared_count": 1}),
    ("hybrid-mamba2", {"architecture": "granitehybrid", "recurrent_layers": [0, 1, 3, 4],
                       "n_head_kv": [0, 0, 2, 0, 0]}),
    ("hybrid-shortconv", {"architecture": "lfm2", "recurrent_layers": [0, 2, 4], "n_head_kv": [0, 2, 0, 2, 0],
                          "tied_embeddings": True}),
])
def test_inspection_reports_each_familys_layout(tmp_path, family, expected):
    path = _model(family, tmp_path)
    info = read_layout(path)
    assert {key: getattr(info, key) for key in expected} == expected
    arch, tensors, _ = family_model(family, SHAPES[family])
    assert [t.name for t in info.tensors] == [name for name, _, _ in tensors]
    assert info.total_bytes == sum(t.bytes for t in info.tensors)
    # random data everywhere: the file holds every tensor (plus its header), nothing is a hole
    assert path.stat().st_size >= info.total_bytes
    assert path.stat().st_blocks * 512 >= info.total_bytes


def test_swa_pattern_from_metadata(tmp_path):
    every_other = read_layout(_model("swa", tmp_path, {"swa_pattern": 2}))
    assert every_other.swa_layers == [0, 2, 4]
    (tmp_path / "b").mkdir()
    flags = read_layout(_model("swa", tmp_path / "b", {"swa_pattern": [True, False, True, True, False, True]}))
    assert flags.swa_layers == [0, 2, 3, 5]


def test_lfm2_final_norm_belongs_to_the_output_layer(tmp_path):
    info = read_layout(_model("hybrid-shortconv", tmp_path))
    norm = next(t for t in info.tensors if t.name == "token_embd_norm.weight")
    assert norm.kind == "output"
    gpu = estimate(info, settings_from_argv(["x", "-c", "1024", "-ngl", "99"]), [8192])
    embd = next(t for t in info.tensors if t.name == "token_embd.weight").bytes / MIB
    assert gpu.host.weights_mib == pytest.approx(embd, abs=1e-3)  # only the input embeddings stay on the host


def test_every_family_is_registered_with_its_architecture():
    assert {name: f.arch for name, f in FAMILIES.items()} == {
        "dense": "llama", "moe": "qwen3moe", "moe-shared": "qwen2moe", "swa": "gemma3", "mla": "deepseek2",
        "hybrid-mamba2": "granitehybrid", "hybrid-shortconv": "lfm2"}
    with pytest.raises(ValueError, match="unknown synthetic family"):
        family_model("nope")


# --- sparse files ------------------------------------------------------------------------------


def _tensor_data(info, name: str) -> bytes:
    t = next(t for t in info.tensors if t.name == name)
    with open(info.shards[t.shard].path, "rb") as f:
        f.seek(t.offset)
        return f.read(t.bytes)


def test_sparse_moe_has_random_routers_and_embeddings_and_holes_elsewhere(tmp_path):
    shape = MoeShape(n_layer=2, n_embd=256, n_expert=8, n_ff_expert=256, n_vocab=1024)
    paths = write_sparse_moe(tmp_path / "moe", shape, n_shards=2)
    info = read_layout(paths[0])
    for t in info.tensors:
        data = _tensor_data(info, t.name)
        assert len(data) == t.bytes
        assert any(data) == routing_tensors(t.name), t.name
    router = np.frombuffer(_tensor_data(info, "blk.1.ffn_gate_inp.weight"), dtype=np.float32)
    assert np.isfinite(router).all() and 0.01 < router.std() < 0.03
    experts = sum(t.bytes for t in info.tensors if t.kind == "experts")
    on_disk = sum(Path(p).stat().st_blocks * 512 for p in paths)
    assert on_disk < info.total_bytes - experts // 2  # the experts are holes
    nothing = write_sparse_moe(tmp_path / "zeros", shape, fill=lambda _: False)
    assert not any(_tensor_data(read_layout(nothing[0]), "blk.0.ffn_gate_inp.weight"))


def test_sparse_30b_a3b_shaped_moe_in_three_shards_estimates_from_headers(tmp_path):
    shape = MoeShape(n_layer=48, n_embd=2048, n_head=32, n_head_kv=4, head_dim=128, n_expert=128, n_expert_used=8,
                     n_ff_expert=768, n_ctx_train=262144, n_vocab=151936)
    started = time.monotonic()
    paths = write_model("moe", tmp_path / "q3-30b-a3b", shape, sparse=True, n_shards=3, fill=lambda _: False)
    assert [p.name for p in paths] == [f"q3-30b-a3b-0000{i}-of-00003.gguf" for i in (1, 2, 3)]
    info = read_layout(paths[1])
    assert len(info.shards) == 3 and info.n_layer == 48 and info.expert_count == 128
    assert 16e9 < info.total_bytes < 18e9  # the size of a Q4_K-experts 30B-A3B
    assert sum(p.stat().st_blocks * 512 for p in paths) < 64 * MIB  # headers only
    cpu = estimate(info, settings_from_argv(["x", "-c", "8192", "-ngl", "0"]), [])
    # every tensor on the host: the sum of the tensor bytes (the estimate rounds to 1 KiB)
    assert cpu.host.weights_mib == pytest.approx(sum(t.bytes for t in info.tensors) / MIB, abs=0.001)
    assert info.total_bytes == sum(t.bytes for t in info.tensors)
    # KV: 48 layers x 4 KV heads x 128 x (K + V) x f16 x 8192 cells
    assert cpu.host.kv_cache_mib == pytest.approx(48 * 4 * 128 * 2 * 2 * 8192 / MIB)
    gpu = estimate(info, settings_from_argv(["x", "-c", "8192", "-ngl", "99", "--cpu-moe"]), [81920])
    experts = info.bytes_by_kind["experts"] / MIB
    embd = info.bytes_by_kind["embeddings"] / MIB
    assert gpu.host.weights_mib == pytest.approx(experts + embd, abs=0.001)
    assert time.monotonic() - started < 30


# --- against the real server -------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(engine: str, model: Path, args: list[str], log: Path) -> tuple[list[str], str, dict]:
    """Start llama-server on ``model``, wait until it answers, generate four tokens, stop it."""
    port = _free_port()
    argv = [engine, "-m", str(model), "--host", "127.0.0.1", "--port", str(port), "-t", "2",
            "--log-verbosity", "4", *args]
    with open(log, "w") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.2)
        assert proc.poll() is None, f"llama-server exited:\n{log.read_text()[-3000:]}"
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/completion", headers={"Content-Type": "application/json"},
            data=json.dumps({"prompt": "hello world, the", "n_predict": 4, "ignore_eos": True,
                             "temperature": 0}).encode())
        with urllib.request.urlopen(request, timeout=120) as r:
            completion = json.load(r)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return argv, log.read_text(), completion


_CACHE_LINE = re.compile(r"llama_kv_cache: size =\s*[0-9.]+ MiB \(\s*(\d+) cells,\s*(\d+) layers,\s*(\d+)/(\d+) seqs\)")
_TENSORS_LINE = re.compile(r"loaded meta data with \d+ key-value pairs and (\d+) tensors")


@pytest.mark.engine
@pytest.mark.parametrize("family, overrides, args", CASES,
                         ids=[f"{f}:{' '.join(a)}{':custom' if o else ''}" for f, o, a in CASES])
def test_family_memory_matches_the_real_server(engine_path, tmp_path, family, overrides, args):
    model = _model(family, tmp_path, overrides)
    argv, log, completion = _serve(engine_path, model, args, tmp_path / "server.log")
    assert completion["tokens_predicted"] == 4 and completion["content"]

    report = parse_load_report(log)
    info = read_layout(model)
    predicted = estimate(info, settings_from_argv(argv), [])
    cpu = [d for d in report.devices if d.device.startswith("CPU")]
    assert {d.device for d in cpu} <= {"CPU", "CPU_Mapped"}  # float weights: no repacked copies
    # The mapped buffer spans the tensor data, which the writer aligns to 32 bytes: < 32 B per tensor.
    assert predicted.host.weights_mib == pytest.approx(sum(d.weights_mib for d in cpu), abs=0.006)
    assert predicted.host.kv_cache_mib == pytest.approx(sum(d.kv_cache_mib for d in cpu), abs=0.006)
    assert predicted.host.recurrent_mib == pytest.approx(sum(d.recurrent_state_mib for d in cpu), abs=0.006)
    assert (predicted.n_ctx, predicted.slots) == (report.n_ctx, report.slots)

    assert int(_TENSORS_LINE.search(log).group(1)) == len(info.tensors)
    caches = [tuple(map(int, m.groups())) for m in _CACHE_LINE.finditer(log)]
    attention = [il for il in range(info.n_layer) if info.n_head_kv[il] and il not in info.recurrent_layers]
    assert sum(layers for _, layers, _, _ in caches) == len(attention)
    unified = predicted.unified_kv
    streams = 1 if unified else predicted.slots
    assert all(seqs == predicted.slots and n_stream == streams for _, _, seqs, n_stream in caches)
    full_cells = predicted.n_ctx // streams
    swa = [il for il in attention if il in info.swa_layers]
    if swa and "--swa-full" not in args:
        # the iSWA cache logs the full-attention layers first, then the sliding-window ones
        assert [layers for _, layers, _, _ in caches] == [len(attention) - len(swa), len(swa)]
        assert caches[0][0] == full_cells and caches[1][0] < full_cells
    else:
        assert all(cells == full_cells for cells, _, _, _ in caches)
    if info.recurrent_layers:
        assert predicted.host.recurrent_mib > 0.01  # big enough that the comparison means something


@pytest.mark.engine
def test_sparse_moe_with_random_routers_loads_and_generates(engine_path, tmp_path):
    shape = MoeShape(n_layer=2, n_embd=256, n_head=4, n_head_kv=2, head_dim=64, n_expert=16, n_expert_used=4,
                     n_ff_expert=256, n_vocab=1024, n_ctx_train=4096)
    (model,) = write_sparse_moe(tmp_path / "moe", shape)
    argv, log, completion = _serve(engine_path, model, ["-c", "1024", "-np", "1"], tmp_path / "server.log")
    assert completion["tokens_predicted"] == 4
    report = parse_load_report(log)
    mapped = sum(d.weights_mib for d in report.devices if d.device == "CPU_Mapped")
    assert estimate(read_layout(model), settings_from_argv(argv), []).host.weights_mib == pytest.approx(
        mapped, abs=0.006)



@pytest.mark.engine
@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_family_loads_and_generates_as_a_sparse_file(engine_path, tmp_path, family):
    """The sparse form is what GPU measurements use at full size: zero weights must still load and run."""
    (model,) = write_model(family, tmp_path / f"{family}.gguf", SHAPES[family], sparse=True)
    info = read_layout(model)
    assert model.stat().st_blocks * 512 < info.total_bytes  # holes: less on disk than the tensors' size
    argv, log, completion = _serve(engine_path, model, ["-c", "512", "-np", "1"], tmp_path / "server.log")
    assert completion["tokens_predicted"] == 4
    mapped = sum(d.weights_mib for d in parse_load_report(log).devices if d.device.startswith("CPU"))
    assert estimate(info, settings_from_argv(argv), []).host.weights_mib == pytest.approx(mapped, abs=0.006)
