"""RPC workers on loopback: speed local vs one and two workers, load time with and without the
worker's tensor cache, and estimated vs measured memory per RPC device.

Worker agents run as their own processes (each with its own LLAMA_PILOT_HOME and ggml-rpc-server),
as on real worker hosts, but on 127.0.0.1: the network is out of the figures, what remains is the
RPC protocol's own cost (every layer's activations cross a socket each token). On a real LAN the
link adds to it (llama.cpp's PR #6829: 63 t/s local, 60 via local RPC, 42 via remote RPC).

1. **Speed**: the demo model and a larger one (a synthetic dense model with real random Q8_0 weights,
   about 0.75 GiB) started three ways in turn, round after round: local,
   split over one worker, split over two. Generation and prompt tokens/s from llama-server's own
   timings, median per configuration.
2. **Load time** of the larger model over one worker: tensor cache off, cache on and cold (the
   first load fills it), cache on and warm.
3. **Memory per RPC device**: the estimator's prediction, llama.cpp's logged buffers and the RPC
   server's resident memory as its agent reports it.

    python benchmarks/workers_bench.py --out docs/benchmarks/workers.md [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TOKEN = "bench-worker-token-0123456789"
# ~0.75 GiB of Q8_0 weights: three times the demo, still quick to generate on two cores
LARGE = dict(n_layer=16, n_embd=2048, n_head=16, n_head_kv=4, head_dim=128, n_ff=5632, n_ctx_train=4096,
             n_vocab=32000, weight_type=8)


def free_port() -> int:
    from mcp_server.setup.bootstrap import free_port as pick

    return pick()


class Agent:
    def __init__(self, name: str, work: Path) -> None:
        self.name, self.home = name, work / f"worker-{name}"
        self.home.mkdir(parents=True, exist_ok=True)
        self.port, self.rpc_port = free_port(), free_port()
        env = {**os.environ, "LLAMA_PILOT_HOME": str(self.home), "LLAMA_PILOT_WORKER_TOKEN": TOKEN}
        self.proc = subprocess.Popen([sys.executable, "-m", "mcp_server", "cli", "worker", "serve", "--port",
                                      str(self.port)], env=env, cwd=self.home, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        for _ in range(300):
            try:
                httpx.get(f"http://127.0.0.1:{self.port}/mcp", timeout=1)
                return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise SystemExit(f"worker agent {name} did not start")

    def line(self, cache: bool) -> str:
        return (f"WORKER_{self.name}=http://127.0.0.1:{self.port} rpc_port={self.rpc_port} "
                f"cache={'on' if cache else 'off'}")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(20)


def conf_text(models: Path, workers: list[str]) -> str:
    lines = ["[global]", f"MODELS_DIR={models}", f"PORT={free_port()}", *workers, ""]
    for model in ("demo", "large"):
        for name, use in (("local", None), ("w1", "a"), ("w2", "a,b")):
            lines += [f"[{model}-{name}]", f"MODEL={model}.gguf", "CTX_SIZE=2048", "PARALLEL=1", "N_GPU_LAYERS=all"]
            lines += [f"WORKERS={use}"] if use else []
            lines.append("")
    return "\n".join(lines)


def speeds(url: str, requests: int) -> tuple[float, float]:
    gen, pp = [], []
    prompt = "Explain, step by step and in detail, how a heat pump moves heat from a cold room to a warm one. " * 4
    with httpx.Client(timeout=600) as client:
        client.post(f"{url}/completion", json={"prompt": "Hello", "n_predict": 4})  # warm-up
        for i in range(requests):
            body = {"prompt": f"{i} {prompt}", "n_predict": 64, "temperature": 0, "cache_prompt": False,
                    "ignore_eos": True}
            timings = client.post(f"{url}/completion", json=body).json()["timings"]
            gen.append(timings["predicted_per_second"])
            pp.append(timings["prompt_per_second"])
    return statistics.median(gen), statistics.median(pp)


def run_speed(conf: Path, rounds: int, requests: int) -> dict[str, Any]:
    from mcp_server.profiles.config import load_config
    from mcp_server.runtime.lifecycle import Runtime

    runtime = Runtime(load_config(conf))
    results: dict[str, dict[str, list[float]]] = {}
    for _ in range(rounds):
        for model in ("demo", "large"):
            for name in ("local", "w1", "w2"):
                profile = f"{model}-{name}"
                view = runtime.start_model(profile)
                try:
                    gen, pp = speeds(view.url, requests)
                finally:
                    runtime.stop_model(profile)
                entry = results.setdefault(profile, {"gen": [], "pp": [], "load_s": []})
                entry["gen"].append(round(gen, 2))
                entry["pp"].append(round(pp, 2))
                entry["load_s"].append(view.load_seconds or 0.0)
                print(f"{profile}: gen {gen:.1f} t/s, prompt {pp:.1f} t/s", flush=True)
    return results


def run_cache(work: Path, models: Path, agent: Agent, rounds: int) -> dict[str, list[float]]:
    """Load times of the large model over one worker: cache off, cache on (cold, then warm)."""
    from mcp_server.profiles.config import load_config
    from mcp_server.runtime.lifecycle import Runtime

    out: dict[str, list[float]] = {"cache off": [], "cache on, cold": [], "cache on, warm": []}
    for _ in range(rounds):
        for label, cache in (("cache off", False), ("cache on, cold", True), ("cache on, warm", True)):
            conf = work / f"cache-{label.replace(' ', '').replace(',', '-')}.conf"
            conf.write_text(f"[global]\nMODELS_DIR={models}\nPORT={free_port()}\n{agent.line(cache)}\n\n"
                            "[large-w1]\nMODEL=large.gguf\nCTX_SIZE=2048\nPARALLEL=1\nN_GPU_LAYERS=all\nWORKERS=a\n")
            if label == "cache on, cold":
                shutil.rmtree(agent.home / "worker" / "cache", ignore_errors=True)
            runtime = Runtime(load_config(conf))
            view = runtime.start_model("large-w1")
            runtime.stop_model("large-w1")
            out[label].append(view.load_seconds or 0.0)
            print(f"load over one worker, {label}: {view.load_seconds:.2f} s", flush=True)
    return out


def run_memory(conf: Path) -> list[dict[str, Any]]:
    from mcp_server.placement.operations import estimate_fit
    from mcp_server.profiles.config import load_config
    from mcp_server.runtime.lifecycle import Runtime
    from mcp_server.workers.operations import worker_status

    config = load_config(conf)
    runtime = Runtime(config)
    rows = []
    for profile in ("demo-w2", "large-w2"):
        predicted = {d.device: d for d in estimate_fit(config, profile).estimate.devices}
        view = runtime.start_model(profile)
        try:
            logged = {d.device: d for d in runtime.load_report(profile).devices}
            for use in view.workers:
                status = worker_status(config, use.id)
                device = use.devices[0]
                rows.append({"profile": profile, "device": device, "worker": use.id,
                             "predicted_mib": predicted[device].total_mib,
                             "predicted_buffers_mib": round(predicted[device].total_mib - predicted[device].overhead_mib, 1),
                             "logged_mib": logged[device].total_mib, "rpc_rss_mib": status.rpc_rss_mib})
        finally:
            runtime.stop_model(profile)
    return rows


def render(report: dict[str, Any]) -> str:
    speed = report["speed"]
    lines = ["# RPC workers on loopback", "",
             f"`python benchmarks/workers_bench.py --out docs/benchmarks/workers.md --rounds {report['rounds']}` on "
             f"{report['machine']}, one run, configurations interleaved round by round. Worker agents are separate "
             "processes with their own ggml-rpc-server on 127.0.0.1, so the network is not in these figures: the "
             "RPC protocol's own cost is. Raw: [raw/workers.json](raw/workers.json).", "",
             "## Speed (median of rounds; llama-server's timings, 64 tokens generated)", "",
             "| model | where | generation t/s | vs local | prompt t/s | vs local | load s |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for model, label in (("demo", "demo (Gemma 3 270M Q4_K_M)"), ("large", f"synthetic dense {report['large_gib']:.2f} GiB")):
        base_g = statistics.median(speed[f"{model}-local"]["gen"])
        base_p = statistics.median(speed[f"{model}-local"]["pp"])
        for name, where in (("local", "local CPU"), ("w1", "1 worker"), ("w2", "2 workers")):
            e = speed[f"{model}-{name}"]
            g, p = statistics.median(e["gen"]), statistics.median(e["pp"])
            lines.append(f"| {label} | {where} | {g:.1f} | {g / base_g:.2f}x | {p:.1f} | {p / base_p:.2f}x | "
                         f"{statistics.median(e['load_s']):.2f} |")
    lines += ["", "## Load time of the synthetic model over one worker (median)", "", "| worker cache | load s |",
              "| --- | --- |"]
    for label, values in report["cache"].items():
        lines.append(f"| {label} | {statistics.median(values):.2f} |")
    lines += ["", "## Memory per RPC device (two workers)", "",
              "| profile | device | estimate MiB (buffers + overhead) | estimate, buffers only | llama.cpp logged | "
              "RPC server RSS |", "| --- | --- | --- | --- | --- | --- |"]
    for r in report["memory"]:
        lines.append(f"| {r['profile']} | `{r['device']}` | {r['predicted_mib']:.1f} | {r['predicted_buffers_mib']:.1f} | "
                     f"{r['logged_mib']:.1f} | {r['rpc_rss_mib']:.1f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=3)
    args = parser.parse_args()
    from mcp_server.model_files.synthetic import write_model
    from mcp_server.setup.bootstrap import DEMO_RELPATH, demo_model_cache_path

    work = Path(tempfile.mkdtemp(prefix="workers-bench-"))
    os.environ["LLAMA_PILOT_HOME"] = str(work / "home")
    os.environ["LLAMA_PILOT_WORKER_TOKEN"] = TOKEN
    models = work / "models"
    models.mkdir()
    demo = next(p for p in (demo_model_cache_path(), ROOT / "models" / DEMO_RELPATH) if p.is_file())
    os.link(demo, models / "demo.gguf") if demo.stat().st_dev == models.stat().st_dev else shutil.copy(demo, models / "demo.gguf")
    write_model("dense", models / "large.gguf", LARGE)
    agents = [Agent("a", work), Agent("b", work)]
    try:
        conf = work / "models.conf"
        conf.write_text(conf_text(models, [a.line(cache=True) for a in agents]))
        report: dict[str, Any] = {"machine": f"{os.cpu_count()} CPU cores, {platform.machine()}, no GPU",
                                  "rounds": args.rounds, "large_gib": (models / "large.gguf").stat().st_size / 2**30}
        report["speed"] = run_speed(conf, args.rounds, args.requests)
        report["cache"] = run_cache(work, models, agents[0], args.rounds)
        report["memory"] = run_memory(conf)
    finally:
        for agent in agents:
            agent.stop()
    raw = args.out.parent / "raw" / "workers.json"
    raw.parent.mkdir(parents=True, exist_ok=True)
    raw.write_text(json.dumps(report, indent=1))
    args.out.write_text(render(report))
    print(args.out.read_text())
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
