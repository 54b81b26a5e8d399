"""The tuner's search and its rules, driven by a fake measurement source (deterministic), and the
estimator's pruning on a real synthetic MoE."""

from __future__ import annotations

from pathlib import Path

import pytest

from mcp_server.tune.search import CandidateFailed, Knob, Sample, Values, canonical, paired, search


def surface(values: Values) -> Sample:
    """Generation peaks at 4 threads; a 1024 micro-batch helps the prompt a lot and generation a little."""
    threads = int(values.get("THREADS", "8"))
    gen = 20.0 - abs(threads - 4) * 2
    prompt = 300.0
    if values.get("UBATCH_SIZE") == "1024":
        gen *= 1.10
        prompt *= 1.5
    if values.get("FLASH_ATTN") == "on":
        gen *= 1.01  # a gain inside the noise: not worth a change
    return Sample(prompt_tps=prompt, gen_tps=gen)


KNOBS = [Knob(name="threads", options=[{"THREADS": "2"}, {"THREADS": "4"}, {"THREADS": "6"}]),
         Knob(name="ubatch", options=[{"UBATCH_SIZE": "1024"}, {"UBATCH_SIZE": "4096"}]),
         Knob(name="flash_attn", options=[{"FLASH_ATTN": "on"}])]


def _recording(measure):  # type: ignore[no-untyped-def]
    seen: list[str] = []

    def run(values: Values) -> Sample:
        seen.append(canonical(values))
        return measure(values)

    return run, seen


def test_the_search_finds_the_peak_never_measures_what_is_pruned_and_keeps_only_gains_above_the_noise() -> None:
    measure, seen = _recording(surface)

    def repair(values: Values, adjust: bool) -> tuple[Values | None, str | None]:
        if values.get("UBATCH_SIZE") == "4096":
            return None, "CUDA0 would keep 100 MiB free"
        return values, None

    out = search({"MODEL": "m.gguf"}, KNOBS, measure, repair, goal="generation", budget_s=1e9, noise_floor=0.05)
    assert out.best == {"MODEL": "m.gguf", "THREADS": "4", "UBATCH_SIZE": "1024"}
    assert out.noise == 0.05  # two identical measurements of the start: the floor applies
    assert not any("4096" in s for s in seen)  # pruned: never measured
    pruned = [t for t in out.tried if t.pruned]
    assert [t.values.get("UBATCH_SIZE") for t in pruned] == ["4096"] and "100 MiB" in (pruned[0].pruned or "")
    fa = [t for t in out.tried if t.knob == "flash_attn"][0]
    assert fa.sample is not None and not fa.kept  # 1% better, under the 5% noise: not a change
    assert out.runner_up is not None and out.stopped == "done"


def test_noise_measured_on_the_start_raises_the_bar() -> None:
    calls = {"n": 0}

    def jittery(values: Values) -> Sample:
        calls["n"] += 1
        base = surface(values)
        if calls["n"] == 2:  # the second look at the start is 30% off: noise 35%
            return Sample(prompt_tps=base.prompt_tps, gen_tps=base.gen_tps * 0.7)
        return base

    out = search({"MODEL": "m", "THREADS": "5"}, KNOBS[:1], jittery, lambda v, a: (v, None), goal="generation",
                 budget_s=1e9)
    assert out.noise > 0.3
    assert out.best["THREADS"] == "5"  # 4 threads: 20 against a mean of 15.3, 31% better, inside the noise


def test_the_budget_stops_the_search_and_a_failed_candidate_is_recorded_not_fatal() -> None:
    now = {"t": 0.0}

    def slow(values: Values) -> Sample:
        now["t"] += 10
        if values.get("THREADS") == "2":
            raise CandidateFailed("llama-server exited (1) while loading")
        return surface(values)

    out = search({"MODEL": "m"}, KNOBS, slow, lambda v, a: (v, None), goal="generation", budget_s=35,
                 clock=lambda: now["t"])
    assert out.stopped == "budget"
    assert any(t.pruned and "exited" in t.pruned for t in out.tried)
    assert len([t for t in out.tried if t.sample]) == 1  # 20 s for the start, 2 threads failed, 4 threads, then 40 s


def test_paired_rounds_alternate_and_report_the_median_ratio_and_its_range() -> None:
    order: list[str] = []
    gens = iter([10.0, 12.0, 12.5, 10.0, 10.0, 13.0])  # round 1: base, win; round 2: win, base; round 3: base, win

    def measure(values: Values) -> Sample:
        order.append(values["who"])
        return Sample(prompt_tps=100.0, gen_tps=next(gens))

    result = paired({"who": "win"}, {"who": "base"}, measure, 3, noise=0.05)
    assert order == ["base", "win", "win", "base", "base", "win"]
    assert result.gen_ratio == 1.25 and result.gen_ratio_range == (1.2, 1.3) and result.better
    assert result.prompt_ratio == 1.0


def test_the_estimator_prunes_and_repair_finds_the_tightest_safe_expert_placement(write_conf, tmp_path: Path) -> None:
    """A sparse ~7 GiB MoE on a declared 4 GiB GPU: every candidate the search measures is one the
    estimator accepts; one expert layer fewer on the CPU than the tightest is pruned."""
    from mcp_server.model_files.layout import read_layout
    from mcp_server.model_files.synthetic import write_model
    from mcp_server.placement.operations import gpu_inventory
    from mcp_server.profiles.config import load_config
    from mcp_server.tune.space import Space

    conf = write_conf("[global]\nMODELS_DIR=models\n\n[moe]\nMODEL=moe.gguf\nCTX_SIZE=8192\n")
    shape = dict(n_layer=16, n_embd=2048, n_head=16, n_head_kv=4, head_dim=128, n_expert=64, n_expert_used=4,
                 n_ff_expert=1024, n_ctx_train=32768, n_vocab=32000)
    (path,) = write_model("moe", conf.parent / "models" / "moe.gguf", shape, sparse=True)
    config = load_config(conf)
    space = Space(config=config, profile=config.profile("moe"), info=read_layout(path),
                  inventory=gpu_inventory("4GiB"), reserve_mib=384, threads=(4, 8))
    start, why = space.repair(space.start())
    assert start is not None and why is None
    n = int(start["N_CPU_MOE"])
    assert 0 < n < 16
    assert space.check({**start, "N_CPU_MOE": str(n - 1)}) is not None  # tightest: one fewer does not fit
    measured: list[Values] = []

    def fake(values: Values) -> Sample:
        measured.append(values)
        return Sample(prompt_tps=100.0, gen_tps=10.0 + 0.1 * (16 - int(values["N_CPU_MOE"])))

    knobs = [*space.knobs("generation", start), space.experts_knob(start)]
    out = search(space.start(), [k for k in knobs if k], fake, space.repair, goal="generation", budget_s=1e9)
    assert measured and all(space.check(v) is None for v in measured)
    assert any(t.knob == "experts" and t.pruned and "reserve" in t.pruned for t in out.tried)
    assert int(out.best["N_CPU_MOE"]) == n


def test_a_profile_on_the_second_gpu_is_pruned_against_that_gpu(write_conf) -> None:  # type: ignore[no-untyped-def]
    """VISIBLE_DEVICES=1 on a 24 + 8 GiB pair: tune narrows the inventory to the 8 GiB card once, and
    each candidate's estimate keeps it narrowed (narrowing again used to ask for a GPU 1 of one GPU)."""
    from mcp_server.model_files.layout import read_layout
    from mcp_server.model_files.synthetic import write_model
    from mcp_server.placement.operations import gpu_inventory, visible_to
    from mcp_server.profiles.config import load_config
    from mcp_server.tune.space import Space

    conf = write_conf("[global]\nMODELS_DIR=models\n\n[moe]\nMODEL=moe.gguf\nCTX_SIZE=8192\nVISIBLE_DEVICES=1\n")
    shape = dict(n_layer=16, n_embd=2048, n_head=16, n_head_kv=4, head_dim=128, n_expert=64, n_expert_used=4,
                 n_ff_expert=1024, n_ctx_train=32768, n_vocab=32000)
    (path,) = write_model("moe", conf.parent / "models" / "moe.gguf", shape, sparse=True)
    config = load_config(conf)
    inventory = visible_to(gpu_inventory("24GiB,4GiB"), [1])
    assert inventory.free == [4096.0] and inventory.visible == [1]
    assert visible_to(inventory, [1]) == inventory
    space = Space(config=config, profile=config.profile("moe"), info=read_layout(path), inventory=inventory,
                  reserve_mib=384, threads=(4, 8))
    start, why = space.repair(space.start())
    assert start is not None and why is None
    assert 0 < int(start["N_CPU_MOE"]) < 16  # placed against the 4 GiB card, not the 24 GiB one


@pytest.mark.parametrize("goal", ["generation", "prompt"])
def test_knob_order_follows_the_goal(goal: str, write_conf) -> None:  # type: ignore[no-untyped-def]
    from mcp_server.model_files.synthetic import DenseShape, write_dense
    from mcp_server.model_files.layout import read_layout
    from mcp_server.placement.operations import gpu_inventory
    from mcp_server.profiles.config import load_config
    from mcp_server.tune.space import Space

    conf = write_conf("[global]\nMODELS_DIR=models\n\n[d]\nMODEL=d.gguf\nCTX_SIZE=2048\n")
    path = write_dense(conf.parent / "models" / "d.gguf", DenseShape(), seed=1)
    config = load_config(conf)
    space = Space(config=config, profile=config.profile("d"), info=read_layout(path), inventory=gpu_inventory("none"),
                  reserve_mib=384, threads=(2, 4))
    names = [k.name for k in space.knobs(goal, space.start())]  # type: ignore[arg-type]
    assert names[0] == ("threads" if goal == "generation" else "ubatch")
    assert "kv" not in names  # only with allow_kv_quant
