"""Planner, fit replay and calibration on realistic model headers (sparse files: real headers, no data)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from mcp_server.placement import calibration
from mcp_server.cli.main import cli
from mcp_server.errors import ValidationError
from mcp_server.placement.estimate import Settings, estimate
from mcp_server.placement.fit_replay import emulate_fit
from mcp_server.model_files.layout import read_layout
from mcp_server.placement.operations import gpu_inventory, parse_gpu_sizes
from mcp_server.placement.planner import choose_placement
from mcp_server.profiles.config import load_config
from mcp_server.model_files.synthetic import MoeShape, write_sparse_moe, write_sparse_split

GIB = 1024.0

# The 30B-A3B shape (17.5 GB, Q4_K experts) and an 80B-A3B-like one (58 GiB, 512 experts, Q8_0).
MOE_30B = MoeShape(n_layer=48, n_embd=2048, n_head=32, n_head_kv=4, head_dim=128, n_expert=128, n_expert_used=8,
                   n_ff_expert=768, n_ctx_train=32768, n_vocab=151936)
MOE_80B = MoeShape(n_layer=36, n_embd=2048, n_head=32, n_head_kv=4, head_dim=128, n_expert=512, n_expert_used=10,
                   n_ff_expert=512, n_ctx_train=262144, n_vocab=151936, expert_type=8, attn_type=8)


def dense_8b(tmp_path):
    """A Llama-3-8B-shaped dense model in Q8_0 (8.5 GB), headers only."""
    e, ff, layers, vocab = 4096, 14336, 32, 128256
    tensors = [("token_embd.weight", [e, vocab], 8)]
    for i in range(layers):
        b = f"blk.{i}."
        tensors += [(b + "attn_norm.weight", [e], 0), (b + "attn_q.weight", [e, e], 8), (b + "attn_k.weight", [e, 1024], 8),
                    (b + "attn_v.weight", [e, 1024], 8), (b + "attn_output.weight", [e, e], 8),
                    (b + "ffn_norm.weight", [e], 0), (b + "ffn_gate.weight", [e, ff], 8),
                    (b + "ffn_up.weight", [e, ff], 8), (b + "ffn_down.weight", [ff, e], 8)]
    tensors += [("output_norm.weight", [e], 0), ("output.weight", [e, vocab], 8)]
    a = "llama"
    meta = {f"{a}.block_count": layers, f"{a}.context_length": 131072, f"{a}.embedding_length": e,
            f"{a}.feed_forward_length": ff, f"{a}.attention.head_count": 32, f"{a}.attention.head_count_kv": 8,
            f"{a}.attention.layer_norm_rms_epsilon": 1e-5, f"{a}.rope.freq_base": 500000.0}
    (path,) = write_sparse_split(tmp_path / "dense8b", 1, tensors, meta, a, n_vocab=vocab)
    return read_layout(path)


@pytest.fixture(scope="module")
def moe30(tmp_path_factory):
    return read_layout(write_sparse_moe(tmp_path_factory.mktemp("m30") / "moe30", MOE_30B, n_shards=3)[0])


@pytest.fixture(scope="module")
def moe80(tmp_path_factory):
    return read_layout(write_sparse_moe(tmp_path_factory.mktemp("m80") / "moe80", MOE_80B, n_shards=3)[0])


def _within_budget(p, free, reserve=384.0):
    for dev, f in zip(p.estimate.devices, free):
        assert dev.total_mib <= f - reserve, (dev.device, dev.total_mib, f)


@pytest.mark.parametrize("free,strategy", [
    ([24 * GIB, 16 * GIB], "single-gpu"), ([24 * GIB], "single-gpu"),
    ([16 * GIB], "moe-experts-cpu"), ([8 * GIB], "moe-experts-cpu")])
def test_moe_30b_on_declared_inventories(moe30, free, strategy):
    p = choose_placement(moe30, gpus_free_mib=free, ctx=16384)
    assert p.strategy == strategy
    _within_budget(p, free)
    if strategy == "single-gpu":
        assert p.settings["SPLIT_MODE"] == "none" and p.settings["MAIN_GPU"] == "0"  # the 24 GiB one
        assert p.gpu_weight_fraction > 0.98
    else:
        # Attention and KV of every layer stay on the GPU; only routed experts move.
        assert p.settings["N_GPU_LAYERS"] == "all"
        assert 0 < p.experts_on_cpu_layers < MOE_30B.n_layer
        assert "exps=CPU" in p.settings["OVERRIDE_TENSORS"] and "shexp" not in p.settings["OVERRIDE_TENSORS"]
        assert p.estimate.devices[0].kv_cache_mib > 0 and p.estimate.host.kv_cache_mib == 0


def test_moe_80b_two_gpus_beat_one_and_use_both(moe80):
    both = choose_placement(moe80, gpus_free_mib=[24 * GIB, 16 * GIB], ctx=32768)
    one = choose_placement(moe80, gpus_free_mib=[24 * GIB], ctx=32768)
    assert both.strategy == one.strategy == "moe-experts-cpu"
    _within_budget(both, [24 * GIB, 16 * GIB])
    assert both.gpu_weight_fraction > one.gpu_weight_fraction + 0.2
    assert all(d.weights_mib > 12 * GIB for d in both.estimate.devices)
    # Each GPU is filled to within about one expert layer (1.6 GiB) of its budget.
    for dev, free in zip(both.estimate.devices, [24 * GIB, 16 * GIB]):
        assert free - 384 - dev.total_mib < 1700
    # The plan's settings, replayed through the estimator, give the same numbers.
    from mcp_server.placement.estimate import settings_from_argv

    again = estimate(moe80, settings_from_argv(["llama-server", *both.argv]), [24 * GIB, 16 * GIB])
    assert [d.total_mib for d in again.devices] == [d.total_mib for d in both.estimate.devices]


def test_dense_that_spills_warns_and_keeps_the_output_on_gpu(tmp_path):
    info = dense_8b(tmp_path)
    assert choose_placement(info, gpus_free_mib=[24 * GIB], ctx=16384).strategy == "single-gpu"
    spill = choose_placement(info, gpus_free_mib=[8 * GIB], ctx=16384)
    assert spill.strategy == "dense-spill" and spill.layers_on_cpu > 0
    assert any("slower" in w for w in spill.warnings)
    _within_budget(spill, [8 * GIB])
    split = choose_placement(info, gpus_free_mib=[6 * GIB, 6 * GIB], ctx=8192)
    assert split.strategy == "layer-split"
    assert [int(x) for x in split.settings["TENSOR_SPLIT"].split(",")] and sum(
        int(x) for x in split.settings["TENSOR_SPLIT"].split(",")) == 33


def test_context_is_reduced_when_nothing_else_fits(tmp_path):
    info = dense_8b(tmp_path)
    p = choose_placement(info, gpus_free_mib=[2 * GIB], ctx=131072, min_ctx=4096)
    assert p.ctx < 131072 or p.strategy in ("dense-spill", "cpu-only")
    assert any("context reduced" in t for t in p.traded) or p.strategy == "dense-spill"


def test_without_a_gpu_the_plan_is_cpu_only_at_the_requested_context(moe30):
    p = choose_placement(moe30, gpus_free_mib=[], ctx=8192)
    assert p.strategy == "cpu-only" and p.ctx == 8192 and p.settings["N_GPU_LAYERS"] == "0"
    assert not any("context" in t for t in p.traded)


def test_bad_inputs_are_named(moe30):
    with pytest.raises(ValidationError, match="kv_type"):
        choose_placement(moe30, gpus_free_mib=[8 * GIB], kv_type="q3_k")
    with pytest.raises(ValidationError, match="gpus"):
        parse_gpu_sizes("24GiB,lots")
    assert parse_gpu_sizes("24GiB, 16 gib,8000MiB") == [24576.0, 16384.0, 8000.0]
    assert gpu_inventory("none").gpus == []


def test_fit_replay(moe80, moe30):
    # Fits with the margin: fit changes nothing.
    s, out = emulate_fit(moe30, Settings(n_ctx=8192, n_parallel=1), [80 * GIB], ctx_was_set=True)
    assert not out.changed and s.n_gpu_layers == -1
    # Too big, placement left to fit: layers on both GPUs, experts of some layers on the CPU, within the margins.
    s, out = emulate_fit(moe80, Settings(n_ctx=32768, n_parallel=1), [24 * GIB, 16 * GIB], ctx_was_set=True)
    assert out.changed and out.n_gpu_layers == MOE_80B.n_layer + 1 and all(c > 0 for c in out.tensor_split)
    assert 0 < len(out.experts_on_cpu_layers) < MOE_80B.n_layer
    # Fit counts buffers plus the context that existed when it measured, against free minus 1024 MiB.
    from mcp_server.placement.fit_replay import FIT_CONTEXT_MIB

    assert all(d.total_mib - d.overhead_mib + FIT_CONTEXT_MIB <= f - 1024
               for d, f in zip(out.estimate.devices, [24 * GIB, 16 * GIB]))
    # Measured on two H200s held to 24 + 16 GiB (docs/gpu-validation/placement-speed.md): fit chose
    # 13 layers on CUDA0 and 24 on CUDA1, 17 of them without their experts.
    real = emulate_fit(moe80, Settings(n_ctx=32768, n_parallel=1), [24575, 16383], ctx_was_set=True)[1]
    assert real.tensor_split == [13, 24] and abs(len(real.experts_on_cpu_layers) - 17) <= 1
    # The planner keeps less margin than fit's 1024 MiB, so it puts more on the GPUs.
    planned = choose_placement(moe80, gpus_free_mib=[24 * GIB, 16 * GIB], ctx=32768)
    assert planned.gpu_weight_fraction > sum(d.weights_mib for d in out.estimate.devices) / (
        sum(d.weights_mib for d in out.estimate.devices) + out.estimate.host.weights_mib)
    # Context left unset (0 = training 262144): fit shrinks it first.
    s, out = emulate_fit(moe80, Settings(n_ctx=0), [24 * GIB, 16 * GIB], ctx_was_set=False)
    assert out.n_ctx is not None and 4096 <= out.n_ctx < 262144 and out.n_ctx % 256 == 0
    # Pinned placement: fit leaves it alone.
    s, out = emulate_fit(moe80, Settings(n_ctx=32768, n_gpu_layers=99), [24 * GIB, 16 * GIB], ctx_was_set=True)
    assert s.n_gpu_layers == 99 and any("pinned" in n for n in out.notes)


def test_plan_cli_writes_the_profile_and_lint_accepts_it(tmp_path, write_conf):
    conf = write_conf("[global]\nMODELS_DIR=models\n\n# the big one\n[big]\nMODEL=big-00001-of-00003.gguf\n"
                      "N_CPU_MOE=10\nTEMP=0.7\n")
    models = conf.parent / "models"
    write_sparse_moe(models / "big", MOE_80B, n_shards=3)
    runner = CliRunner()
    before = conf.read_text()
    dry = runner.invoke(cli, ["--config", str(conf), "apply", "big", "--ctx", "32768", "--gpus", "24GiB,16GiB",
                              "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "+OVERRIDE_TENSORS=" in dry.output and "-N_CPU_MOE=10" in dry.output
    assert conf.read_text() == before  # dry run wrote nothing
    done = runner.invoke(cli, ["--config", str(conf), "apply-placement", "big", "--ctx", "32768", "--gpus",
                               "24GiB,16GiB", "--json"])
    assert done.exit_code == 0, done.output
    result = json.loads(done.output)
    text = conf.read_text()
    assert "# the big one" in text and "TEMP=0.7" in text and "N_CPU_MOE" not in text
    profile = load_config(conf).profile("big")
    assert profile.get("TENSOR_SPLIT") == result["plan"]["settings"]["TENSOR_SPLIT"]
    lint = runner.invoke(cli, ["--config", str(conf), "lint", "big", "--json"])
    assert json.loads(lint.output)["errors"] == 0, lint.output
    # The estimate of the written profile on the same GPUs matches the plan.
    est = runner.invoke(cli, ["--config", str(conf), "estimate", "big", "--gpus", "24GiB,16GiB", "--json"])
    totals = [d["total_mib"] for d in json.loads(est.output)["estimate"]["devices"]]
    assert totals == [d["total_mib"] for d in result["plan"]["estimate"]["devices"]]


def test_plan_refuses_a_profile_that_does_not_exist(tmp_path, write_conf):
    models = tmp_path / "models"
    write_sparse_moe(models / "big", MOE_30B)
    conf = write_conf("[global]\nMODELS_DIR=models\n")
    before = conf.read_text()
    out = CliRunner().invoke(cli, ["--config", str(conf), "apply-placement", "nope", "--model",
                                   str(models / "big-00001-of-00001.gguf"), "--gpus", "8GiB"])
    assert out.exit_code == 1 and "nope" in out.output
    assert conf.read_text() == before


def test_apply_placement_of_another_file_points_model_at_it_and_defaults_come_from_the_profile(tmp_path, write_conf):
    conf = write_conf("[global]\nMODELS_DIR=models\n\n[b]\nMODEL=b/b-00001-of-00001.gguf\nCTX_SIZE=4096\n")
    models = conf.parent / "models"
    write_sparse_moe(models / "a" / "a", MOE_30B)
    write_sparse_moe(models / "b" / "b", MOE_30B)
    runner = CliRunner()
    own = runner.invoke(cli, ["--config", str(conf), "apply-placement", "b", "--gpus", "24GiB", "--dry-run", "--json"])
    assert own.exit_code == 0, own.output
    planned = json.loads(own.output)
    assert planned["plan"]["ctx"] == 4096  # the profile's CTX_SIZE, not the training context
    assert "+MODEL=" not in planned["edit"]["diff"] and "-MODEL=" not in planned["edit"]["diff"]
    done = runner.invoke(cli, ["--config", str(conf), "apply-placement", "b", "--model", "a/a-00001-of-00001.gguf",
                               "--gpus", "24GiB", "--json"])
    assert done.exit_code == 0, done.output
    edit = json.loads(done.output)["edit"]
    assert "-MODEL=b/b-00001-of-00001.gguf" in edit["diff"] and "+MODEL=a/a-00001-of-00001.gguf" in edit["diff"]
    assert load_config(conf).profile("b").model == "a/a-00001-of-00001.gguf"


def test_calibration_overhead_is_the_median_of_measurements(moe30):
    assert calibration.overhead_for("NVIDIA GeForce RTX 4090")[1].startswith("default")
    key = calibration.key_for(moe30, ["llama-server", "--model", "x", "-c", "8192", "--port", "9"],
                              ["NVIDIA GeForce RTX 4090"])
    assert key.settings == "-c 8192"  # port and model path do not change memory
    est = estimate(moe30, Settings(n_ctx=8192), [24 * GIB])
    for gap in (400.0, 420.0, 700.0):
        logged = est.devices[0].total_mib - est.devices[0].overhead_mib
        m = calibration.compare(key, est, {"CUDA0": logged}, {"CUDA0": 90.0}, {"CUDA0": logged + gap},
                                build=11434, profile="p", at="2026-11-29T00:00:00+00:00")
        calibration.save(m)
    assert calibration.overhead_for("NVIDIA GeForce RTX 4090") == (
        420.0, "median of 3 measurement(s) on NVIDIA GeForce RTX 4090")
    assert calibration.latest(key).devices[0].unaccounted_mib == 700.0
    # A corrupt line does not lose the others.
    with open(calibration._store(), "a") as f:
        f.write("not json\n")
    assert len(calibration.measurements()) == 3


@pytest.mark.engine
def test_calibrate_a_running_profile_and_see_it_beside_the_estimate(demo_project, engine_path):
    """On a CPU-only machine: the host buffers llama.cpp logged are stored with the prediction."""
    from mcp_server.placement.operations import calibrate, estimate_fit
    from mcp_server.profiles.edits import update_profile
    from mcp_server.runtime.lifecycle import Runtime

    update_profile(load_config(demo_project), "global", set={"PORT": "18310"})
    config = load_config(demo_project)
    runtime = Runtime(config)
    runtime.start_model("demo", timeout_s=120)
    try:
        m = calibrate(config, "demo")
    finally:
        runtime.stop_model("all")
    report = runtime.load_report("demo")
    [host] = m.devices
    logged_host = sum(d.total_mib for d in report.devices if not d.device.startswith("CUDA"))
    assert host.device == "host" and host.logged_mib == round(logged_host, 2)
    # Weights and KV are exact; the host total differs only by the approximated compute buffer.
    assert abs(host.error_mib) < 64
    assert calibration.measurements()[-1].digest == m.digest
    shown = estimate_fit(load_config(demo_project), "demo", "none")
    assert shown.measured is not None and shown.measured.digest == m.digest
    with pytest.raises(Exception, match="not running"):
        calibrate(config, "demo")
