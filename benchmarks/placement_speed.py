"""Placement speed: the planner's placement vs llama.cpp's --fit vs a naive -ngl split, same model, same GPUs.

A ~59 GiB synthetic MoE shaped like the original's 80B-A3B models (qwen3moe, 36 layers, 512
experts, 10 used, Q8_0; sparse file with random routers and embeddings, so expert choice varies
per token) on two H200s held to 24 GiB + 16 GiB free (the rest of each GPU is occupied by a
helper process), context 32768, one slot. For each placement: load, one warm-up request, then
``--reps`` requests of a ~512-token prompt and 128 generated tokens; prompt and generation
tokens/s come from llama-server's own timings (median, min, max). Then one prompt that fills
the context (about 32,000 tokens) to show the placement survives it.

    LLAMA_SERVER=<CUDA llama-server> python benchmarks/placement_speed.py --out speed.jsonl
    python benchmarks/placement_speed.py --table speed.jsonl > docs/gpu-validation/placement-speed.md
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpu_accuracy import held_budget, long_prompt, process_mib  # noqa: E402

from mcp_server.model_files.synthetic import Q8_0, write_model  # noqa: E402

SHAPE = dict(n_layer=36, n_embd=2048, n_head=32, n_head_kv=4, head_dim=128, n_expert=512, n_expert_used=10,
             n_ff_expert=512, n_ctx_train=262144, n_vocab=151936, expert_type=Q8_0, attn_type=Q8_0)
BUDGET = [24 * 1024, 16 * 1024]
CTX = 32768


def post(url: str, payload: dict[str, Any], timeout: float = 600) -> dict[str, Any]:
    req = urllib.request.Request(url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


def prompt_of(url: str, n_tokens: int) -> str:
    """A prompt of about n_tokens tokens for this model's tokenizer."""
    probe = long_prompt(200)
    per_word = len(post(f"{url}/tokenize", {"content": probe})["tokens"]) / 200
    return long_prompt(max(1, int(n_tokens / per_word)))


def complete(url: str, prompt: str, n_predict: int) -> dict[str, Any]:
    return post(f"{url}/completion", {"prompt": prompt, "n_predict": n_predict, "ignore_eos": True, "temperature": 0,
                                      "cache_prompt": False})


def naive_settings(info: Any, free: list[float], reserve: float) -> dict[str, str]:
    """What a user splitting by -ngl would pick: whole layers, -ts by GPU size, as many layers as fit."""
    from mcp_server.placement.estimate import Settings, estimate

    budgets = [f - reserve for f in free]
    for ngl in range(info.n_layer + 1, 0, -1):
        s = Settings(n_ctx=CTX, n_parallel=1, n_gpu_layers=ngl, tensor_split=[24.0, 16.0], fit=False)
        est = estimate(info, s, budgets)
        if all(d.total_mib <= b for d, b in zip(est.devices, budgets)):
            return {"CTX_SIZE": str(CTX), "PARALLEL": "1", "N_GPU_LAYERS": str(ngl), "TENSOR_SPLIT": "24,16",
                    "FIT": "off"}
    raise RuntimeError("not even one layer fits")


def measure(runtime: Any, pid: str, reps: int, full: bool, warmup_tokens: int = 512,
            warm_full: bool = False) -> dict[str, Any]:
    view = runtime.start_model(pid, timeout_s=900)
    row: dict[str, Any] = {"load_s": round((view.ready_at or time.time()) - view.started_at, 1)}
    try:
        short = prompt_of(view.url, 512)
        # Warm-up long enough to touch most experts: with a memory-mapped file the CPU experts are
        # faulted in on first use, which otherwise slows the first measured requests.
        if warm_full:  # a prompt that fills the context touches (pages in) every expert first
            complete(view.url, prompt_of(view.url, CTX - 600), 16)
        else:
            complete(view.url, short, warmup_tokens)
        runs = []
        for _ in range(reps):
            t = complete(view.url, short, 128)["timings"]
            runs.append({"prompt_n": t["prompt_n"], "prompt_tps": t["prompt_per_second"],
                         "gen_n": t["predicted_n"], "gen_tps": t["predicted_per_second"]})
        row["runs"] = runs
        row["nvml_mib"] = process_mib(view.pid, [0, 1])
        if full:
            try:
                t = complete(view.url, prompt_of(view.url, CTX - 600), 64)["timings"]
                row["full_context"] = {"ok": True, "prompt_n": t["prompt_n"], "prompt_tps": t["prompt_per_second"],
                                       "gen_tps": t["predicted_per_second"]}
            except Exception as exc:  # noqa: BLE001 - running out of memory here is the result
                row["full_context"] = {"ok": False, "error": str(exc)[:300]}
            row["nvml_after_full_mib"] = process_mib(view.pid, [0, 1])
            row["alive_after_full"] = any(v.status == "ready" for v in runtime.status().instances if v.id == view.id)
        row["logged"] = runtime.load_report(pid).total_by_device_mib
    finally:
        runtime.stop_model(view.id)
    return row


def run(args: argparse.Namespace) -> None:
    from mcp_server.model_files.layout import read_layout
    from mcp_server.placement.operations import plan_placement
    from mcp_server.profiles.config import load_config
    from mcp_server.profiles.edits import create_profile
    from mcp_server.runtime.lifecycle import Runtime

    work = Path(tempfile.mkdtemp(prefix="placement-"))
    paths = write_model("moe", work / "models" / "moe80", SHAPE, sparse=True, n_shards=3)
    info = read_layout(paths[0])
    conf = work / "models.conf"
    conf.write_text("[global]\nMODELS_DIR=models\n")
    declared = ",".join(f"{b}MiB" for b in BUDGET)
    planned = plan_placement(None, str(paths[0]), CTX, declared, reserve_mib=args.reserve, agent=False)
    placements = {
        "planner": planned.plan.settings,
        "planner-pinned": {**planned.plan.settings, "LOAD_MODE": "none"},
        "fit-default": {"CTX_SIZE": str(CTX), "PARALLEL": "1", "FIT": "on"},
        "fit-target-256": {"CTX_SIZE": str(CTX), "PARALLEL": "1", "FIT": "on", "FIT_TARGET": "256"},
        "naive-ngl": naive_settings(info, BUDGET, args.reserve),
    }
    if args.only:
        placements = {k: v for k, v in placements.items() if k in args.only.split(",")}
    for name, values in placements.items():
        create_profile(load_config(conf), name, {"MODEL": paths[0].name, "VISIBLE_DEVICES": "0,1", **values})
    # Rounds alternate the placements, so slow drift of the machine does not favour one of them.
    order = [(r, name) for r in range(args.rounds) for name in placements]
    with open(args.out, "a") as out:
        for round_no, name in order:
            values = placements[name]
            row: dict[str, Any] = {"placement": name, "round": round_no, "values": values,
                                   "model_gib": round(info.total_bytes / 2**30, 2)}
            if name == "planner":
                row["predicted"] = [(d.device, d.total_mib) for d in planned.plan.estimate.devices]
                row["traded"] = planned.plan.traded
            with held_budget(BUDGET) as held:
                row["free_mib"] = held
                try:
                    row.update(measure(Runtime(load_config(conf)), name, args.reps,
                                       full=name != "naive-ngl" and round_no == 0 and not args.warm_full,
                                       warm_full=args.warm_full))
                    row["warm_full"] = args.warm_full
                    row["status"] = "ok"
                except Exception as exc:  # noqa: BLE001 - an out-of-memory load is a result too
                    row.update(status="failed", error=str(exc)[:500])
            out.write(json.dumps(row) + "\n")
            out.flush()
            gens = [r["gen_tps"] for r in row.get("runs", [])]
            print(name, row["status"], "gen t/s", gens, "nvml", row.get("nvml_mib"), flush=True)


def table(path: str) -> str:
    """One row per load; then planner / fit-default generation, paired by round (loads alternate)."""
    rows = [json.loads(line) for line in open(path) if line.strip()]
    out = ["| placement | round | settings | prompt t/s (median, min-max) | generation t/s (median, min-max) | "
           "GPU MiB (0; 1) | full 32k-token prompt |", "| --- | --- | --- | ---: | ---: | --- | --- |"]
    by_round: dict[int, dict[str, float]] = {}
    for r in rows:
        settings = ", ".join(f"{k}={v}" for k, v in r["values"].items())
        load = r.get("round", 0) + 1
        if r.get("status") != "ok":
            out.append(f"| {r['placement']} | {load} | `{settings}` | — | — | — | failed: {r.get('error', '')[:100]} |")
            continue
        p = [x["prompt_tps"] for x in r["runs"]]
        g = [x["gen_tps"] for x in r["runs"]]
        by_round.setdefault(load, {})[r["placement"]] = statistics.median(g)
        nv = r.get("nvml_mib", {})
        full = r.get("full_context")
        full_text = ("not run" if full is None else
                     f"ok ({full['prompt_n']} tokens at {full['prompt_tps']:.0f} t/s, then "
                     f"{full['gen_tps']:.1f} t/s)" if full["ok"] else f"FAILED: {full['error'][:80]}")
        out.append(f"| {r['placement']} | {load} | `{settings}` | {statistics.median(p):.0f} ({min(p):.0f}-{max(p):.0f}) | "
                   f"{statistics.median(g):.1f} ({min(g):.1f}-{max(g):.1f}) | {nv.get('CUDA0', '—')}; {nv.get('CUDA1', '—')} | "
                   f"{full_text} |")
    ratios = [m["planner"] / m["fit-default"] for _, m in sorted(by_round.items()) if {"planner", "fit-default"} <= set(m)]
    summary = (f"planner / --fit (defaults) generation, paired by round: "
               f"{', '.join(f'{x:.2f}' for x in ratios)} (median **{statistics.median(ratios):.2f}x**)" if ratios else "")
    return "\n".join(out) + "\n\n" + summary + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out")
    parser.add_argument("--table")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--reserve", type=float, default=384.0)
    parser.add_argument("--only")
    parser.add_argument("--warm-full", action="store_true",
                        help="warm up with a prompt that fills the context (every expert paged in) before measuring")
    parser.add_argument("--rounds", type=int, default=1, help="load each placement this many times, alternating")
    args = parser.parse_args()
    if args.table:
        print(table(args.table), end="")
    else:
        run(args)


if __name__ == "__main__":
    main()
