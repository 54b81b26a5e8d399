"""Estimator accuracy on real GPUs: predicted vs llama.cpp-logged vs NVML-measured memory, per device.

Runs a matrix of launches (dense, MoE, sliding-window, MLA and hybrid recurrent models; full and
partial offload, experts on the CPU, two-GPU splits, 4k to 128k context, f16 and q8_0 KV, 1 and 4
slots, --fit on and off) of synthetic models with realistic shapes (sparse files: real headers,
data read as zeros), and writes one JSON line per launch. ``table`` turns the lines into Markdown.

The 24 GiB + 16 GiB pair of the original setup is reproduced on H200s by occupying the rest of
each GPU with a plain allocation (a helper process holding the memory) before the launch, so
llama.cpp's --fit sees exactly that much free memory; the estimate is given the same sizes.

    LLAMA_SERVER=<CUDA llama-server> python benchmarks/gpu_accuracy.py run --group all --out raw.jsonl
    python benchmarks/gpu_accuracy.py table raw.jsonl > docs/gpu-validation/estimator.md
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mcp_server.model_files.synthetic import Q4_K, Q8_0, write_model  # noqa: E402

MIB = 1024 * 1024
GIB_MIB = 1024

# Realistic shapes (sizes of the real models they imitate, not their weights).
MODELS: dict[str, tuple[str, dict[str, Any], int]] = {
    "dense-8b": ("dense", dict(n_layer=32, n_embd=4096, n_head=32, n_head_kv=8, n_ff=14336, n_ctx_train=131072,
                               extra_vocab=127700, weight_type=Q8_0), 1),
    "moe-30b-a3b": ("moe", dict(n_layer=48, n_embd=2048, n_head=32, n_head_kv=4, head_dim=128, n_expert=128,
                                n_expert_used=8, n_ff_expert=768, n_ctx_train=262144, n_vocab=151936,
                                expert_type=Q4_K, attn_type=Q8_0), 3),
    "swa-12b": ("swa", dict(n_layer=48, n_embd=3840, n_head=16, n_head_kv=8, head_dim=256, n_ff=15360,
                            sliding_window=1024, n_ctx_train=131072, n_vocab=262144, weight_type=Q8_0), 2),
    "mla-16b": ("mla", dict(n_layer=27, n_layer_dense_lead=1, n_embd=2048, n_head=16, q_lora_rank=0, kv_lora_rank=512,
                            qk_rope_dim=64, qk_nope_dim=128, v_head_dim=128, n_ff=10944, n_expert=64, n_expert_used=6,
                            n_expert_shared=2, n_ff_expert=1408, n_ctx_train=163840, n_vocab=102400,
                            weight_type=Q8_0), 1),
    "hybrid-mamba2": ("hybrid-mamba2", dict(n_layer=40, attention_layers=[4, 14, 24, 34], n_embd=2048, n_head=32,
                                            n_head_kv=8, n_ff=8192, ssm_state=128, ssm_heads=64, ssm_groups=1,
                                            n_ctx_train=131072, n_vocab=100352, weight_type=Q8_0), 1),
}

ONE, TWO = "0", "0,1"
B24_16 = [24 * GIB_MIB, 16 * GIB_MIB]
# (id, model, visible GPUs, memory budget per GPU or None for the whole GPU, profile values)
CONFIGS: list[tuple[str, str, str, list[int] | None, dict[str, str]]] = [
    ("d1", "dense-8b", ONE, None, {"CTX_SIZE": "4096", "PARALLEL": "1", "N_GPU_LAYERS": "all"}),
    ("d2", "dense-8b", ONE, None, {"CTX_SIZE": "32768", "PARALLEL": "4", "N_GPU_LAYERS": "all"}),
    ("d3", "dense-8b", ONE, None, {"CTX_SIZE": "131072", "PARALLEL": "1", "N_GPU_LAYERS": "all", "FLASH_ATTN": "on",
                                   "KV_CACHE_TYPE_K": "q8_0", "KV_CACHE_TYPE_V": "q8_0"}),
    ("d4", "dense-8b", ONE, None, {"CTX_SIZE": "16384", "PARALLEL": "1", "N_GPU_LAYERS": "16"}),
    ("m1", "moe-30b-a3b", ONE, None, {"CTX_SIZE": "16384", "PARALLEL": "1", "N_GPU_LAYERS": "all"}),
    ("m2", "moe-30b-a3b", ONE, None, {"CTX_SIZE": "16384", "PARALLEL": "1", "N_GPU_LAYERS": "all",
                                      "OVERRIDE_TENSORS": r"\.ffn_(up|down|gate)_exps=CPU"}),
    ("m3", "moe-30b-a3b", ONE, None, {"CTX_SIZE": "65536", "PARALLEL": "1", "N_GPU_LAYERS": "all", "N_CPU_MOE": "24",
                                      "FLASH_ATTN": "on", "KV_CACHE_TYPE_K": "q8_0", "KV_CACHE_TYPE_V": "q8_0"}),
    ("m4", "moe-30b-a3b", ONE, None, {"CTX_SIZE": "65536", "FIT": "on"}),
    ("s1", "swa-12b", ONE, None, {"CTX_SIZE": "32768", "PARALLEL": "1", "N_GPU_LAYERS": "all"}),
    ("s2", "swa-12b", ONE, None, {"CTX_SIZE": "131072", "PARALLEL": "4", "N_GPU_LAYERS": "all"}),
    ("s3", "swa-12b", ONE, None, {"CTX_SIZE": "16384", "PARALLEL": "1", "N_GPU_LAYERS": "all",
                                  "EXTRA_ARGS": "--swa-full"}),
    ("a1", "mla-16b", ONE, None, {"CTX_SIZE": "32768", "PARALLEL": "1", "N_GPU_LAYERS": "all"}),
    ("a2", "mla-16b", ONE, None, {"CTX_SIZE": "131072", "PARALLEL": "1", "N_GPU_LAYERS": "all", "FLASH_ATTN": "on",
                                  "KV_CACHE_TYPE_K": "q8_0", "KV_CACHE_TYPE_V": "q8_0"}),
    ("a3", "mla-16b", ONE, None, {"CTX_SIZE": "16384", "PARALLEL": "1", "N_GPU_LAYERS": "all",
                                  "OVERRIDE_TENSORS": r"\.ffn_(up|down|gate)_exps=CPU"}),
    ("h1", "hybrid-mamba2", ONE, None, {"CTX_SIZE": "32768", "PARALLEL": "1", "N_GPU_LAYERS": "all"}),
    ("h2", "hybrid-mamba2", ONE, None, {"CTX_SIZE": "131072", "PARALLEL": "4", "N_GPU_LAYERS": "all"}),
    ("t1", "dense-8b", TWO, None, {"CTX_SIZE": "32768", "PARALLEL": "1", "N_GPU_LAYERS": "all", "TENSOR_SPLIT": "1,1"}),
    ("t2", "moe-30b-a3b", TWO, None, {"CTX_SIZE": "32768", "PARALLEL": "1", "N_GPU_LAYERS": "all",
                                      "TENSOR_SPLIT": "3,2"}),
    ("t3", "swa-12b", TWO, None, {"CTX_SIZE": "65536", "PARALLEL": "1", "N_GPU_LAYERS": "all", "TENSOR_SPLIT": "1,1"}),
    ("t4", "mla-16b", TWO, None, {"CTX_SIZE": "32768", "PARALLEL": "4", "N_GPU_LAYERS": "all", "TENSOR_SPLIT": "1,1"}),
    # Added after the first run had calibrated the compute and overhead terms: held-out checks.
    ("x1", "dense-8b", ONE, None, {"CTX_SIZE": "65536", "PARALLEL": "2", "N_GPU_LAYERS": "all", "UBATCH_SIZE": "1024",
                                   "FLASH_ATTN": "on", "KV_CACHE_TYPE_K": "q8_0", "KV_CACHE_TYPE_V": "q8_0"}),
    ("x2", "swa-12b", ONE, None, {"CTX_SIZE": "32768", "PARALLEL": "2", "N_GPU_LAYERS": "all", "FLASH_ATTN": "on",
                                  "KV_CACHE_TYPE_K": "q8_0", "KV_CACHE_TYPE_V": "q8_0"}),
    ("x3", "mla-16b", ONE, None, {"CTX_SIZE": "16384", "PARALLEL": "1", "N_GPU_LAYERS": "14"}),
    ("x4", "moe-30b-a3b", TWO, None, {"CTX_SIZE": "131072", "PARALLEL": "1", "N_GPU_LAYERS": "all",
                                      "TENSOR_SPLIT": "1,1", "FLASH_ATTN": "on", "KV_CACHE_TYPE_K": "q8_0",
                                      "KV_CACHE_TYPE_V": "q8_0"}),
    ("x5", "hybrid-mamba2", TWO, None, {"CTX_SIZE": "65536", "PARALLEL": "1", "N_GPU_LAYERS": "all",
                                        "TENSOR_SPLIT": "1,1", "UBATCH_SIZE": "256"}),
    ("b1", "moe-30b-a3b", TWO, B24_16, {"PLAN": "32768"}),
    ("b2", "moe-30b-a3b", TWO, B24_16, {"CTX_SIZE": "32768", "PARALLEL": "1", "FIT": "on"}),
    ("b3", "swa-12b", TWO, B24_16, {"PLAN": "131072"}),
    ("b4", "dense-8b", TWO, B24_16, {"CTX_SIZE": "65536", "PARALLEL": "1", "FIT": "on"}),
    ("b5", "mla-16b", TWO, B24_16, {"PLAN": "65536"}),
]
GROUPS = {"one": lambda c: c[2] == ONE, "two": lambda c: c[2] == TWO and c[3] is None,
          "budget": lambda c: c[3] is not None, "all": lambda c: True}


# --- measuring ----------------------------------------------------------------------------


def nvml_gpus() -> list[Any]:
    from mcp_server.monitoring.gpu import gpu_stats

    return gpu_stats().in_cuda_order()


def process_mib(pid: int | None, visible: list[int]) -> dict[str, int]:
    """NVML per-process memory of ``pid``, named like llama.cpp names devices inside the process."""
    out = {}
    for g in nvml_gpus():
        if g.nvml_index in visible:
            for p in g.processes:
                if p.pid == pid and p.used_mib is not None:
                    out[f"CUDA{visible.index(g.nvml_index)}"] = p.used_mib
    return out


HOLDER = r"""
import sys, time, torch
targets = [int(x) for x in sys.argv[1].split(",")]
held = []
for dev, target in enumerate(targets):
    torch.cuda.set_device(dev)
    torch.empty(1, device=f"cuda:{dev}")  # create the context first: it takes memory too
    while True:
        free, _ = torch.cuda.mem_get_info(dev)
        extra = free - target * 2**20
        if extra < 2**20:
            break
        chunk = min(extra, 1 << 30)
        held.append(torch.empty(chunk, dtype=torch.uint8, device=f"cuda:{dev}"))
print("ready", [torch.cuda.mem_get_info(d)[0] // 2**20 for d in range(len(targets))], flush=True)
time.sleep(3600)
"""


@contextmanager
def held_budget(budget_mib: list[int] | None) -> Iterator[list[int] | None]:
    """Leave exactly ``budget_mib`` free on GPUs 0..n-1 by holding the rest in a helper process."""
    if not budget_mib:
        yield None
        return
    env = {**os.environ, "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, ",".join(map(str, budget_mib))], stdout=subprocess.PIPE,
                            text=True, env=env)
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        if not line.startswith("ready"):
            raise RuntimeError(f"memory holder failed: {line!r}")
        free = json.loads(line.split(" ", 1)[1])
        print(f"holding GPUs to {free} MiB free", flush=True)
        yield free
    finally:
        proc.kill()
        proc.wait()
        time.sleep(1.0)


# "- CUDA0 (NVIDIA H200): 143155 total,  12504 used,  11545 free vs. target of 1024"
FIT_INITIAL = re.compile(r"- (CUDA\d+)(?: \([^)]*\))?\s*:\s+(\d+) total,\s+(\d+) used,\s+(-?\d+) free")
# "- CUDA0 (NVIDIA H200): 13 layers ( 0 overflowing),  22980 MiB used,   1068 MiB free"
FIT_FINAL = re.compile(r"- (CUDA\d+)(?: \([^)]*\))?\s*:\s+(\d+) layers \(\s*(\d+) overflowing\),\s+(\d+) MiB used,"
                       r"\s+(-?\d+) MiB free")
# one device: "projected to use 23126 MiB of device memory vs. 142629 MiB of free device memory"
FIT_TOTAL = re.compile(r"projected to use (\d+) MiB of device memory")


def fit_projection(log: list[str]) -> dict[str, Any]:
    """What --fit printed (verbosity 4): per device the projected MiB (model + context + compute) it
    planned for, and its layer counts when it changed the placement."""
    initial = {m.group(1): int(m.group(3)) for line in log if (m := FIT_INITIAL.search(line))}
    if not initial:
        totals = [int(m.group(1)) for line in log if (m := FIT_TOTAL.search(line))]
        if totals:
            initial = {"CUDA0": totals[0]}
    final = {m.group(1): {"layers": int(m.group(2)), "overflowing": int(m.group(3)), "used_mib": int(m.group(4))}
             for line in log if (m := FIT_FINAL.search(line))}
    lines = [line for line in log if "fit" in line.split(":", 1)[0] or "llama_params_fit" in line][:80]
    return {"initial_used_mib": initial, "final": final, "lines": lines}


def rule_of_thumb(file_mib: float, predicted: dict[str, Any]) -> dict[str, float]:
    """The original's hand rule per GPU: (file size - 200 MiB) times the GPU's share of the weights,
    plus its KV cache, plus 500 MiB of CUDA overhead; compute buffers were left to judgment (0 here)."""
    devices = predicted["devices"]
    total_w = sum(d["weights_mib"] for d in devices) + predicted["host"]["weights_mib"]
    return {d["device"]: round((file_mib - 200) * d["weights_mib"] / total_w + d["kv_cache_mib"] + d["recurrent_mib"]
                               + 500, 1) for d in devices if d["weights_mib"] > 0}


def long_prompt(n_words: int) -> str:
    words = ["the", "a", "is", "of", "and", "to", "in", "it", "hello", "world"]
    return " ".join(words[i % len(words)] for i in range(n_words))


def run_config(work: Path, models: dict[str, list[Path]], cfg: tuple, out: Any) -> None:
    from mcp_server.runtime.server_api import chat
    from mcp_server.placement.operations import estimate_fit, plan_placement
    from mcp_server.profiles.config import load_config
    from mcp_server.profiles.edits import create_profile
    from mcp_server.runtime.lifecycle import Runtime

    cid, model, visible_text, budget, values = cfg
    visible = [int(v) for v in visible_text.split(",")]
    conf = work / "models.conf"
    if not conf.exists():
        conf.write_text("[global]\nMODELS_DIR=models\nFIT=off\n")
    model_rel = str(models[model][0].relative_to(work / "models"))
    with held_budget(budget) as held:
        free = held if held else [float(g.memory_free_mib) for g in nvml_gpus() if g.nvml_index in visible]
        declared = ",".join(f"{f}MiB" for f in free)
        values = dict(values)
        planned = None
        if "PLAN" in values:
            planned = plan_placement(None, str(models[model][0]), int(values.pop("PLAN")), declared, agent=False)
            values.update(planned.plan.settings)
        if planned is not None and "VISIBLE_DEVICES" in planned.plan.settings:
            visible_text = planned.plan.settings["VISIBLE_DEVICES"]  # the plan runs on one GPU alone
            visible = [int(v) for v in visible_text.split(",")]
        values.update({"MODEL": model_rel, "VISIBLE_DEVICES": visible_text})
        create_profile(load_config(conf), cid, values)
        config = load_config(conf)
        predicted = estimate_fit(config, cid, declared)
        runtime = Runtime(config)
        row: dict[str, Any] = {"id": cid, "model": model, "visible": visible_text, "budget_mib": budget,
                               "free_mib": free, "values": values, "planned": planned is not None}
        t0 = time.monotonic()
        try:
            view = runtime.start_model(cid, timeout_s=900)
        except Exception as exc:  # noqa: BLE001 - a failed launch is a result (e.g. out of memory)
            row.update(status="failed", error=str(exc)[:500], log_tail=runtime.tail_logs(cid, lines=40).lines)
            view = None
        if view is not None:
            row["load_s"] = round(time.monotonic() - t0, 1)
            time.sleep(1.0)
            row["nvml_after_load_mib"] = process_mib(view.pid, visible)
            try:
                reply = chat(view.url, long_prompt(300), max_tokens=32, temperature=0)  # ~1000 tokens: two ubatches
                row["timings"] = reply.get("timings", {})
            except Exception as exc:  # noqa: BLE001
                row["request_error"] = str(exc)[:300]
            time.sleep(0.5)
            row["nvml_after_prompt_mib"] = process_mib(view.pid, visible)
            row["logged"] = runtime.load_report(cid).model_dump(mode="json")
            log = runtime.tail_logs(cid, lines=3000).lines
            row["fit"] = fit_projection(log)
            row["argv"] = next(r.argv for r in runtime.registry.all() if r.id == view.id)
            runtime.stop_model(view.id)
            row["status"] = "ok"
        pred = predicted.model_dump(mode="json")
        row["predicted"] = {"devices": pred["estimate"]["devices"], "host": pred["estimate"]["host"],
                            "fit": pred["fit"], "overhead_mib": pred["overhead_mib"]}
        file_mib = sum(p.stat().st_size for p in models[model]) / MIB
        row["file_mib"] = round(file_mib, 1)
        row["rule_of_thumb_mib"] = rule_of_thumb(file_mib, row["predicted"])
        out.write(json.dumps(row) + "\n")
        out.flush()
        print(cid, row.get("status"), "pred", [(d["device"], d["total_mib"]) for d in row["predicted"]["devices"]],
              "nvml", row.get("nvml_after_load_mib"), row.get("nvml_after_prompt_mib"), flush=True)


def run(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="accuracy-"))
    configs = [c for c in CONFIGS if GROUPS[args.group](c) and (not args.only or c[0] in args.only.split(","))]
    needed = sorted({c[1] for c in configs})
    models = {}
    for name in needed:
        family, shape, shards = MODELS[name]
        if args.tiny:  # a smoke test of this script on a machine without a GPU: the family's tiny default
            models[name] = write_model(family, work / "models" / f"{name}.gguf")
        else:
            models[name] = write_model(family, work / "models" / name, shape, sparse=True, n_shards=shards)
    with open(args.out, "a") as out:
        for cfg in configs:
            run_config(work, models, cfg, out)
    subprocess.run(["rm", "-rf", str(work)], check=False)


# --- the table ----------------------------------------------------------------------------


def _err(pred: float | None, real: float | None) -> float | None:
    return None if pred is None or real is None else pred - real


def _ok(err: float | None, real: float | None) -> bool | None:
    if err is None or real is None:
        return None
    return abs(err) <= max(256.0, 0.03 * real)


def table(path: str) -> str:
    rows = [json.loads(line) for line in open(path) if line.strip()]
    lines = ["| config | model | GPUs | settings | device | estimated | logged | NVML (load / prompt) | "
             "error vs NVML | within 3% / 256 MiB | rule of thumb (error) | --fit projected (error) |",
             "| --- | --- | --- | --- | --- | ---: | ---: | ---: | ---: | --- | ---: | ---: |"]
    errors, hits, total, rule_hits, rule_total, fit_hits, fit_total, oom_pred_fit = [], 0, 0, 0, 0, 0, 0, []
    for r in rows:
        settings = ", ".join(f"{k}={v}" for k, v in r["values"].items() if k not in ("MODEL", "VISIBLE_DEVICES"))
        if len(settings) > 140:
            settings = settings[:137] + "..."
        gpus = f"{len(r['visible'].split(','))}x H200" + (" held to " + "+".join(f"{b // 1024}" for b in r["budget_mib"])
                                                        + " GiB" if r["budget_mib"] else "")
        if r.get("status") != "ok":
            fits = all(d["fits"] for d in r["predicted"]["devices"])
            if fits:
                oom_pred_fit.append(r["id"])
            lines.append(f"| {r['id']} | {r['model']} | {gpus} | {settings} | all | predicted "
                         f"{'fits' if fits else 'does not fit'} | failed: {r.get('error', '')[:80]} | | | | | |")
            continue
        logged = r["logged"]["total_by_device_mib"]
        fit = fit_projection((r.get("fit") or {}).get("lines", []))
        fit_used = {k: v["used_mib"] for k, v in (fit.get("final") or {}).items()} or fit.get("initial_used_mib") or {}
        fit_on = r["values"].get("FIT") == "on"
        for d in r["predicted"]["devices"]:
            dev = d["device"]
            real = (r.get("nvml_after_prompt_mib") or {}).get(dev)
            if real is None and d["total_mib"] < 1:
                continue
            err = _err(d["total_mib"], real)
            ok = _ok(err, real)
            if err is not None:
                errors.append(abs(err))
                total += 1
                hits += bool(ok)
            rule = r["rule_of_thumb_mib"].get(dev)
            rule_err = _err(rule, real)
            if rule_err is not None:
                rule_total += 1
                rule_hits += bool(_ok(rule_err, real))
            fit_p = fit_used.get(dev) if fit_on else None
            fit_err = _err(fit_p, real)
            if fit_err is not None:
                fit_total += 1
                fit_hits += bool(_ok(fit_err, real))
            load = (r.get("nvml_after_load_mib") or {}).get(dev)
            lines.append(
                f"| {r['id']} | {r['model']} | {gpus} | {settings} | {dev} | {d['total_mib']:.0f} | "
                f"{logged.get(dev, 0):.0f} | {load if load is not None else '—'} / {real if real is not None else '—'} | "
                f"{err:+.0f} ({100 * err / real:+.1f}%) | {'yes' if ok else 'NO'} | "
                f"{f'{rule:.0f} ({rule_err:+.0f})' if rule is not None and rule_err is not None else '—'} | "
                f"{f'{fit_p} ({fit_err:+.0f})' if fit_err is not None else '—'} |"
                if err is not None else
                f"| {r['id']} | {r['model']} | {gpus} | {settings} | {dev} | {d['total_mib']:.0f} | "
                f"{logged.get(dev, 0):.0f} | — | — | — | — | — |")
    summary = [f"Device measurements: {total}; estimate within 3% or 256 MiB of NVML: {hits} ({100 * hits / max(total, 1):.0f}%); "
               f"median absolute error {statistics.median(errors):.0f} MiB, worst {max(errors):.0f} MiB."
               if errors else "No measurements.",
               f"Rule of thumb within 3% or 256 MiB: {rule_hits} of {rule_total}. "
               f"--fit's own projection within 3% or 256 MiB: {fit_hits} of {fit_total} (configs with FIT=on).",
               f"Configurations predicted to fit that failed to load: {', '.join(oom_pred_fit) or 'none'}."]
    return "\n".join(summary) + "\n\n" + "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--out", required=True)
    r.add_argument("--group", choices=list(GROUPS), default="all")
    r.add_argument("--only", help="comma-separated config ids")
    r.add_argument("--tiny", action="store_true", help="tiny models (smoke-test the script without a GPU)")
    t = sub.add_parser("table")
    t.add_argument("path")
    args = parser.parse_args()
    if args.cmd == "run":
        run(args)
    else:
        print(table(args.path), end="")


if __name__ == "__main__":
    main()
