"""`llama-pilot serve` on a real GPU held to a budget: two models that fit together, a third that does not.

The rest of the H200 is held by a helper allocation (as in gpu_accuracy.py), so serve sees a
24 GiB card. Three sparse synthetic dense models, fully on the GPU, are asked for by 4 clients in
turn. Checks: every answer came from the model it named, the swaps and their reasons, and NVML's
free memory (sampled every 20 ms) never went below serve's reserve.

    LLAMA_SERVER=<CUDA llama-server> python benchmarks/serve_gpu.py --budget-gib 24 \
        --out docs/gpu-validation/serve-h200.md --raw docs/gpu-validation/raw/serve-h200.json

Two GPUs (``--budget-gib 24,16``, the 4090 + 5070 Ti pair): one model pinned to each GPU
(``VISIBLE_DEVICES``), which fit side by side, and a third split over both (``TENSOR_SPLIT=24,16``),
which needs the two GPUs to itself; NVML is sampled on both.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.gpu_accuracy import held_budget  # noqa: E402
from mcp_server.model_files.synthetic import F16, write_model  # noqa: E402
from tests.serve_helpers import Endpoint, free_port  # noqa: E402

# 4.5, 4.5 and 13.5 GiB of F16 weights (about 5.5, 5.5 and 16 GiB with KV and compute): a + b, or a + c,
# fit in 24 GiB; a + b + c do not.
SHAPES = {
    "gpu-a": dict(n_layer=24, n_embd=3072, n_head=24, n_head_kv=8, n_ff=8192, n_ctx_train=32768, weight_type=F16),
    "gpu-b": dict(n_layer=24, n_embd=3072, n_head=24, n_head_kv=8, n_ff=8192, n_ctx_train=32768, weight_type=F16),
    "gpu-c": dict(n_layer=72, n_embd=3072, n_head=24, n_head_kv=8, n_ff=8192, n_ctx_train=32768, weight_type=F16),
}


# Two GPUs held to 24 + 16 GiB: 12 and 10.5 GiB of F16 weights (one per GPU, side by side), and 28 GiB
# split over both (which neither other model can share).
PAIR_SHAPES = {
    "pair-a": (dict(n_layer=64, n_embd=3072, n_head=24, n_head_kv=8, n_ff=8192, n_ctx_train=32768, weight_type=F16),
               {"VISIBLE_DEVICES": "0"}),
    "pair-b": (dict(n_layer=56, n_embd=3072, n_head=24, n_head_kv=8, n_ff=8192, n_ctx_train=32768, weight_type=F16),
               {"VISIBLE_DEVICES": "1"}),
    "pair-c": (dict(n_layer=150, n_embd=3072, n_head=24, n_head_kv=8, n_ff=8192, n_ctx_train=32768, weight_type=F16),
               {"TENSOR_SPLIT": "24,16"}),
}


def nvml_free_sampler(stop: threading.Event, out: list[tuple[float, int]], gpus: int = 1) -> None:
    """Free MiB every 20 ms: one tuple per sample, (time, free on GPU 0, free on GPU 1, ...)."""
    import pynvml

    pynvml.nvmlInit()
    handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(gpus)]
    while not stop.is_set():
        out.append((time.time(), *(pynvml.nvmlDeviceGetMemoryInfo(h).free // 2**20 for h in handles)))
        time.sleep(0.02)
    pynvml.nvmlShutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget-gib", default="24", help="free GiB per GPU: 24, or 24,16 for a pair")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--per-client", type=int, default=12)
    parser.add_argument("--max-wait", type=float, default=3.0)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--raw", type=Path)
    args = parser.parse_args()
    budgets = [float(b) for b in str(args.budget_gib).split(",")]
    shapes = {n: (shape, {}) for n, shape in SHAPES.items()} if len(budgets) == 1 else PAIR_SHAPES
    work = Path(tempfile.mkdtemp(prefix="serve-gpu-"))
    os.environ["LLAMA_PILOT_HOME"] = str(work / "home")
    (work / "models").mkdir()
    for name, (shape, _) in shapes.items():
        write_model("dense", work / "models" / f"{name}.gguf", shape, sparse=True)
    conf = work / "models.conf"
    lines = ["[global]", "MODELS_DIR=models", f"PORT={free_port()}", f"SERVE_PORT={free_port()}",
             f"SERVE_MAX_WAIT={args.max_wait}", "PARALLEL=1", "CTX_SIZE=8192", "N_GPU_LAYERS=all", "FIT=off",
             "FLASH_ATTN=on", ""]
    for name, (_, keys) in shapes.items():
        lines += [f"[{name}]", f"MODEL={name}.gguf", *(f"{k}={v}" for k, v in keys.items()), ""]
    conf.write_text("\n".join(lines))
    result: dict[str, Any] = {"budget_gib": args.budget_gib, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    with held_budget([int(b * 1024) for b in budgets]) as free:
        result["held_free_mib"] = free
        ep = Endpoint(conf, work / "serve.log").start(timeout=60)
        samples: list[tuple[float, int]] = []
        stop = threading.Event()
        sampler = threading.Thread(target=nvml_free_sampler, args=(stop, samples, len(budgets)), daemon=True)
        sampler.start()
        answers: list[dict[str, Any]] = []
        lock = threading.Lock()
        names = list(shapes)

        def client(i: int) -> None:
            with httpx.Client(timeout=600) as http:
                for j in range(args.per_client):
                    model = names[(i + j) % 3]
                    t0 = time.monotonic()
                    r = http.post(ep.url + "/v1/completions", json={"model": model, "prompt": f"{i}/{j}",
                                                                    "max_tokens": 8})
                    with lock:
                        answers.append({"asked": model, "status": r.status_code,
                                        "served": r.headers.get("x-llama-pilot-profile"),
                                        "upstream_model": r.json().get("model") if r.status_code == 200 else r.text[:300],
                                        "seconds": time.monotonic() - t0})

        try:
            began = time.monotonic()
            threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            result["duration_s"] = time.monotonic() - began
            status = ep.status()
        finally:
            stop.set()
            sampler.join()
            ep.stop()
            from mcp_server.profiles.config import load_config
            from mcp_server.runtime.lifecycle import Runtime

            Runtime(load_config(conf)).stop_model("all")
    reserve = 384
    result.update({
        "footprints_mib": {m["profile"]: m["memory_mib"] for m in status["models"]},
        "memory_source": {m["profile"]: m["memory_source"] for m in status["models"]},
        "requests": len(answers), "failures": [a for a in answers if a["status"] != 200][:5],
        "wrong_model": [a for a in answers if a["status"] == 200 and (a["served"] != a["asked"]
                                                                     or a["asked"] not in str(a["upstream_model"]))][:5],
        "longest_s": max(a["seconds"] for a in answers), "counters": status["counters"],
        "swaps": status["swaps"], "nvml_min_free_mib": min(min(s[1:]) for s in samples),
        "nvml_min_free_per_gpu_mib": [min(s[i] for s in samples) for i in range(1, len(budgets) + 1)],
        "reserve_mib": reserve,
        "nvml_samples": len(samples)})
    print(json.dumps({k: v for k, v in result.items() if k != "swaps"}, indent=2))
    if args.raw:
        args.raw.parent.mkdir(parents=True, exist_ok=True)
        args.raw.write_text(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(report(result, args))


def report(r: dict[str, Any], args: argparse.Namespace) -> str:
    ok = lambda cond: "pass" if cond else "FAIL"  # noqa: E731
    loads = [s for s in r["swaps"] if s["action"] == "load"]
    lines = [f"# `serve` on H200s held to {r['budget_gib']} GiB ({r['date']})", "",
             f"Produced by `benchmarks/serve_gpu.py --budget-gib {args.budget_gib} --clients {args.clients} "
             f"--per-client {args.per_client} --max-wait {args.max_wait:g}` with the CUDA sm_90 llama-server. A "
             f"helper allocation left {r['held_free_mib']} MiB free. Three sparse synthetic dense models (F16, all "
             "layers on the GPU, 8k context, flash attention, fit off); serve's footprints (from the estimator):", ""]
    lines += [f"- `{p}`: {json.dumps(m)} ({r['memory_source'][p]})" for p, m in r["footprints_mib"].items()]
    lines += ["", "| check | result | detail |", "| --- | --- | --- |",
              f"| every request answered | {ok(not r['failures'])} | {r['requests']} requests, "
              f"{len(r['failures'])} failed |",
              f"| every answer from the model it named (serve's header and llama-server's own `model`) | "
              f"{ok(not r['wrong_model'])} | {len(r['wrong_model'])} wrong |",
              f"| NVML free memory never below the reserve | {ok(r['nvml_min_free_mib'] >= r['reserve_mib'])} | "
              f"min {r['nvml_min_free_per_gpu_mib']} MiB per GPU over {r['nvml_samples']} samples (20 ms apart), reserve "
              f"{r['reserve_mib']} MiB |",
              f"| swaps | - | {r['counters']['swaps']} swaps in {r['counters']['loads']} loads, "
              f"{r['duration_s']:.1f} s; longest answer {r['longest_s']:.1f} s |", "",
              "## Loads and their reasons", "", "| loaded at s | profile | reason | unloaded | waited s | load s |",
              "| --- | --- | --- | --- | --- | --- |"]
    t0 = r["swaps"][0]["at"] if r["swaps"] else 0
    for s in loads:
        lines.append(f"| {s['at'] - t0:.1f} | {s['profile']} | {s['reason']} | {', '.join(s['unloaded']) or '-'} | "
                     f"{s['waited_s']} | {s['load_s']} |")
    lines += [""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
