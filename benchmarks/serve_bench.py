"""`llama-pilot serve` beside a direct llama-server and beside llama.cpp's own router mode.

Three measurements, each side by side in one run (this machine is noisy, so ratios, interleaved):

1. **Overhead**: N streamed requests to the same model, alternating direct llama-server / serve /
   router. Time to first token (TTFT, p50 and p95) and decode tokens/s (tokens after the first,
   over the time after the first).
2. **Swap cost**: with room for one model, alternate A and B from one client. For each swap: B's
   first token through the endpoint minus B's own cold start: a bare launch of the same argv to
   /health 200 (polled every 10 ms), then its first token.
3. **Alternating run**: 4 clients x R requests over 3 models, room for 2. Swaps, failures, the
   longest wait. Serve reports its swaps; for the router we count the model processes it spawns.

    python benchmarks/serve_bench.py --out docs/benchmarks/serve.md [--requests 50] [--rounds 6]

The project: the demo model and two random-weight models (the same as tests/test_serve.py), CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mcp_server.engine.binary import locate_engine  # noqa: E402
from mcp_server.profiles.config import load_config  # noqa: E402
from mcp_server.runtime.lifecycle import Runtime  # noqa: E402
from tests.serve_helpers import PROFILES, Endpoint, footprints, free_port, set_global, write_project  # noqa: E402


def stream_once(url: str, model: str, prompt: str, n: int) -> tuple[float, float, int]:
    """(TTFT s, decode tokens/s, tokens) of one streamed completion."""
    body = {"model": model, "prompt": prompt, "max_tokens": n, "stream": True, "ignore_eos": True,
            "temperature": 0, "cache_prompt": False}
    t0 = time.perf_counter()
    first = last = None
    tokens = 0
    with httpx.stream("POST", url + "/v1/completions", json=body, timeout=300) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if line.startswith("data: {"):
                if '"text":""' in line.replace(" ", ""):
                    continue
                now = time.perf_counter()
                first = first or now
                last = now
                tokens += 1
    assert first is not None and last is not None, "no token"
    rate = (tokens - 1) / (last - first) if tokens > 1 and last > first else float("nan")
    return first - t0, rate, tokens


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


class Router:
    """llama-server in router mode over the same three models, with a preset file."""

    def __init__(self, engine: str, conf: Path, models_max: int, log: Path) -> None:
        config = load_config(conf)
        lines = ["version = 1", "", "[*]", "parallel = 2", "log-verbosity = 2", ""]
        for pid, profile in config.profiles.items():
            lines += [f"[{pid}]", f"model = {config.model_path(profile)}", f"c = {profile.get('CTX_SIZE')}", ""]
        self.preset = conf.parent / "router.ini"
        self.preset.write_text("\n".join(lines))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(log, "wb")
        self.proc = subprocess.Popen([engine, "--models-preset", str(self.preset), "--models-max", str(models_max),
                                      "--host", "127.0.0.1", "--port", str(self.port)],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.05)
        self.spawned: set[int] = set()
        self._watching = True
        threading.Thread(target=self._watch, daemon=True).start()

    def _watch(self) -> None:
        parent = psutil.Process(self.proc.pid)
        while self._watching:
            try:
                self.spawned |= {c.pid for c in parent.children(recursive=True)}
            except psutil.Error:
                pass
            time.sleep(0.02)

    def close(self) -> None:
        self._watching = False
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def overhead(conf: Path, endpoint: Endpoint, router: Router, n_requests: int) -> dict[str, Any]:
    runtime = Runtime(load_config(conf))
    warm = endpoint.complete("demo")
    assert warm.status_code == 200, warm.text
    direct = next(i for i in runtime.status().instances if i.profile == "demo" and i.status == "ready").url
    stream_once(router.url, "demo", "warm up", 4)
    # "direct-again" is the same direct path measured as its own series: the noise floor (A/A).
    paths = {"direct": direct, "serve": endpoint.url, "router": router.url, "direct-again": direct}
    ttft: dict[str, list[float]] = {k: [] for k in paths}
    rate: dict[str, list[float]] = {k: [] for k in paths}
    for i in range(n_requests):
        order = list(paths) if i % 2 == 0 else list(reversed(paths))
        for name in order:
            t, r, _ = stream_once(paths[name], "demo", f"Request {i}: tell a story about the sea", 32)
            ttft[name].append(t)
            rate[name].append(r)
    out: dict[str, Any] = {}
    for name in paths:
        out[name] = {"ttft_p50_ms": pct(ttft[name], 0.5) * 1e3, "ttft_p95_ms": pct(ttft[name], 0.95) * 1e3,
                     "decode_tps_median": statistics.median(rate[name])}
    for name in ("serve", "router", "direct-again"):
        deltas = [a - b for a, b in zip(ttft[name], ttft["direct"])]
        out[name]["ttft_paired_delta_p50_ms"] = pct(deltas, 0.5) * 1e3
        out[name]["ttft_added_p50_ms"] = (pct(ttft[name], 0.5) - pct(ttft["direct"], 0.5)) * 1e3
        out[name]["ttft_added_p95_ms"] = (pct(ttft[name], 0.95) - pct(ttft["direct"], 0.95)) * 1e3
        ratios = [a / b for a, b in zip(rate[name], rate["direct"])]
        out[name]["decode_ratio_median"] = statistics.median(ratios)
    return out


def cold_start(conf: Path, profile: str, engine: str) -> float:
    """A bare launch of the profile's argv to /health 200 (polled every 10 ms, as a script would),
    then its first token: what B costs with nobody in the way and no manager at all."""
    from mcp_server.engine.argv import launch_spec

    config = load_config(conf)
    port = free_port()
    spec = launch_spec(config.profile(profile), config, engine=engine, port=port)
    url = f"http://127.0.0.1:{port}"
    t0 = time.perf_counter()
    proc = subprocess.Popen(spec.argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, **spec.env})
    try:
        while True:
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.01)
        ready = time.perf_counter() - t0
        ttft, _, _ = stream_once(url, profile, "x", 2)
        return ready + ttft
    finally:
        proc.terminate()
        proc.wait()


def readiness_lag(conf: Path, profile: str, runs: int) -> list[float]:
    """Seconds between a server's /health first answering 200 (polled every millisecond by a
    watcher) and the runtime's start returning ready: what a waiting request loses to polling."""
    runtime = Runtime(load_config(conf))
    lags = []
    for _ in range(runs):
        view = runtime.start_model(profile, wait=False)
        first: list[float] = []

        def watch() -> None:
            with httpx.Client() as http:
                while not first:
                    try:
                        if http.get(view.url + "/health", timeout=1).status_code == 200:
                            first.append(time.perf_counter())
                    except httpx.TransportError:
                        pass
                    time.sleep(0.001)

        watcher = threading.Thread(target=watch)
        watcher.start()
        runtime.wait(view.id)
        seen = time.perf_counter()
        watcher.join()
        lags.append(seen - first[0])
        runtime.stop_model(profile)
    return lags


def swap_cost(conf: Path, url: str, rounds: int, cold: dict[str, float]) -> dict[str, Any]:
    costs, ttfts = [], []
    pair = ("syn-a", "syn-b")
    stream_once(url, pair[0], "x", 2)
    for i in range(rounds):
        model = pair[(i + 1) % 2]
        t, _, _ = stream_once(url, model, "x", 2)
        ttfts.append(t)
        costs.append(t - cold[model])
    return {"swap_first_token_p50_s": pct(ttfts, 0.5), "swap_cost_p50_ms": pct(costs, 0.5) * 1e3,
            "swap_cost_max_ms": max(costs) * 1e3, "rounds": rounds}


def alternating(url: str, clients: int, per_client: int) -> dict[str, Any]:
    waits: list[float] = []
    failures: list[str] = []
    lock = threading.Lock()

    def client(i: int) -> None:
        with httpx.Client(timeout=300) as http:
            for j in range(per_client):
                model = PROFILES[(i + j) % 3]
                t0 = time.perf_counter()
                try:
                    r = http.post(url + "/v1/completions", json={"model": model, "prompt": f"{i}/{j}",
                                                                 "max_tokens": 3})
                    failure = None if r.status_code == 200 else f"{model}: {r.status_code} {r.text[:120]}"
                except httpx.HTTPError as exc:  # a dropped connection is a failed request, not a crash
                    failure = f"{model}: {type(exc).__name__}: {exc}"
                with lock:
                    waits.append(time.perf_counter() - t0)
                    if failure:
                        failures.append(failure)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"requests": len(waits), "failures": len(failures), "failure_examples": failures[:3],
            "longest_s": max(waits), "p50_s": pct(waits, 0.5), "total_s": time.perf_counter() - t0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--per-client", type=int, default=12)
    parser.add_argument("--max-wait", type=float, default=2.0)
    parser.add_argument("--repeats", type=int, default=3, help="alternating runs per side")
    parser.add_argument("--parts", default="overhead,swap,alternating",
                        help="which measurements (the host budgets of swap and alternating assume no GPU)")
    parser.add_argument("--demo", help="the model behind the 'demo' profile: a GGUF path, or 'synthetic'")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    from mcp_server.setup.bootstrap import demo_model_cache_path

    engine = locate_engine().path
    work = Path(tempfile.mkdtemp(prefix="serve-bench-"))
    if args.demo == "synthetic":  # a machine without the demo model (the GPU machine): a 0.27B random one
        from mcp_server.model_files.synthetic import F16, DenseShape, write_dense

        demo = write_dense(work / "synthetic-270m.gguf", DenseShape(n_layer=12, n_embd=1024, n_head=8, n_head_kv=4,
                                                                    n_ff=4096, extra_vocab=30000, weight_type=F16),
                           dtype="f16", name="synthetic-270m")
    elif args.demo:
        demo = Path(args.demo)
    else:
        demo = demo_model_cache_path()
        if not demo.is_file():
            demo = ROOT / "models" / "gemma-3-270m" / "gemma-3-270m-q4_k_m.gguf"
    os.environ["LLAMA_PILOT_HOME"] = str(work / "home")
    os.environ["LLAMA_SERVER"] = engine  # the fresh home has no engine of its own
    conf = write_project(work / "proj", demo)
    sizes = footprints(conf)
    # The engine's install folder names the build and backend (llama.cpp-b11434-cpu); the path is this machine's.
    engine_name = Path(engine).parent.parent.name if Path(engine).parent.name == "bin" else Path(engine).name
    results: dict[str, Any] = {"machine": f"{platform.machine()}, {os.cpu_count()} cores", "engine": engine_name,
                               "footprints_mib": sizes, "date": time.strftime("%Y-%m-%d")}

    def run_serve(budget_models: int) -> Endpoint:
        ordered = sorted(sizes.values(), reverse=True)
        budget = sum(ordered[:budget_models]) + min(ordered) / 2 if budget_models < 3 else sum(ordered) + 64
        set_global(conf, SERVE_MEMORY_BUDGET=f"{budget:.0f}MiB", SERVE_MAX_WAIT=str(args.max_wait))
        return Endpoint(conf, work / "serve.log").start()

    # 1. overhead (room for everything, so nothing swaps)
    if "overhead" in parts:
        measure_overhead(results, conf, run_serve, engine, work, args.requests)
    if "swap" in parts:
        measure_swaps(results, conf, sizes, engine, work, args.rounds)
    if "alternating" in parts:
        measure_alternating(results, conf, run_serve, engine, work, args)
    print(json.dumps(results, indent=2))
    if args.out:
        args.out.write_text(report(results, args))


def measure_overhead(results: dict[str, Any], conf: Path, run_serve: Any, engine: str, work: Path,
                     requests: int) -> None:
    ep = run_serve(3)
    router = Router(engine, conf, 3, work / "router.log")
    try:
        results["overhead"] = overhead(conf, ep, router, requests)
    finally:
        router.close()
        ep.stop()
        Runtime(load_config(conf)).stop_model("all")


def measure_swaps(results: dict[str, Any], conf: Path, sizes: dict[str, float], engine: str, work: Path,
                  rounds: int) -> None:
    # 2. swap cost: room for one
    cold = {m: statistics.median(cold_start(conf, m, engine) for _ in range(3)) for m in ("syn-a", "syn-b")}
    results["cold_start_s"] = cold
    lags = readiness_lag(conf, "syn-a", 10)
    results["readiness_lag_ms"] = {"p50": pct(lags, 0.5) * 1e3, "max": max(lags) * 1e3, "runs": len(lags)}
    set_global(conf, SERVE_MEMORY_BUDGET=f"{max(sizes['syn-a'], sizes['syn-b']) + 1:.0f}MiB")
    ep = Endpoint(conf, work / "serve.log").start()
    try:
        results["swap_serve"] = swap_cost(conf, ep.url, rounds, cold)
    finally:
        ep.stop()
        Runtime(load_config(conf)).stop_model("all")
    router = Router(engine, conf, 1, work / "router.log")
    try:
        results["swap_router"] = swap_cost(conf, router.url, rounds, cold)
    finally:
        router.close()


def measure_alternating(results: dict[str, Any], conf: Path, run_serve: Any, engine: str, work: Path,
                        args: argparse.Namespace) -> None:
    # 3. alternating, room for two; repeated, serve and router interleaved (the machine drifts)
    for name in ("serve", "router"):
        results[f"alternating_{name}_runs"] = []
    for _ in range(args.repeats):
        ep = run_serve(2)
        try:
            run = alternating(ep.url, 4, args.per_client)
            counters = ep.status()["counters"]
            run.update(swaps=counters["swaps"], loads=counters["loads"])
            results["alternating_serve_runs"].append(run)
        finally:
            ep.stop()
            Runtime(load_config(conf)).stop_model("all")
        router = Router(engine, conf, 2, work / "router.log")
        try:
            before = len(router.spawned)
            run = alternating(router.url, 4, args.per_client)
            run["loads"] = len(router.spawned) - before
            results["alternating_router_runs"].append(run)
        finally:
            router.close()
    for name in ("serve", "router"):
        runs = results[f"alternating_{name}_runs"]
        results[f"alternating_{name}"] = {
            "requests": sum(r["requests"] for r in runs), "failures": sum(r["failures"] for r in runs),
            "loads": statistics.median(r["loads"] for r in runs),
            "longest_s": statistics.median(r["longest_s"] for r in runs),
            "p50_s": statistics.median(r["p50_s"] for r in runs),
            "total_s": statistics.median(r["total_s"] for r in runs)}


def report(r: dict[str, Any], args: argparse.Namespace) -> str:
    command = (f"python benchmarks/serve_bench.py --requests {args.requests} --rounds {args.rounds} --per-client "
               f"{args.per_client} --max-wait {args.max_wait} --repeats {args.repeats} --parts {args.parts}"
               + (f" --demo {args.demo}" if args.demo else ""))
    lines = [f"# `llama-pilot serve` vs direct llama-server vs llama.cpp router mode ({r['date']})", "",
             f"Machine: {r['machine']}; engine `{r['engine']}` (the same build for all three); models: "
             f"{'the demo model' if not args.demo else 'a synthetic 0.27B F16 model'} and two random-weight models. "
             f"Command: `{command}`.", ""]
    if "overhead" in r:
        o = r["overhead"]
        lines += [f"## Overhead ({args.requests} streamed requests each, interleaved, 32 tokens)", "",
                  "`added` = this path's percentile minus the direct path's; `direct-again` is the direct path "
                  "measured as a second series in the same loop, so its row is this machine's noise floor.", "",
                  "| path | TTFT p50 ms | TTFT p95 ms | added p50 ms | added p95 ms | paired delta p50 ms | "
                  "decode t/s | decode ratio |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for name in ("direct", "serve", "router", "direct-again"):
            x = o[name]
            lines.append(f"| {name} | {x['ttft_p50_ms']:.1f} | {x['ttft_p95_ms']:.1f} | "
                         f"{x.get('ttft_added_p50_ms', 0):+.2f} | {x.get('ttft_added_p95_ms', 0):+.2f} | "
                         f"{x.get('ttft_paired_delta_p50_ms', 0):+.2f} | {x['decode_tps_median']:.1f} | "
                         f"{x.get('decode_ratio_median', 1):.3f} |")
        lines.append("")
    if "swap_serve" in r:
        lag = r["readiness_lag_ms"]
        lines += [f"## Swap cost (room for one of syn-a / syn-b, {args.rounds} swaps, one client)", "",
                  "Cold start (a bare launch to /health 200, polled every 10 ms, + first token), median of 3: "
                  + ", ".join(f"{k} {v * 1e3:.0f} ms" for k, v in r["cold_start_s"].items()) + ".", "",
                  f"Readiness: serve loads through `Runtime`, which sees `/health` 200 a median {lag['p50']:.1f} ms "
                  f"(max {lag['max']:.1f} ms, {lag['runs']} loads) after a watcher polling every millisecond saw it.",
                  "", "| path | first token after a swap, p50 s | swap cost p50 ms | swap cost max ms |",
                  "| --- | --- | --- | --- |"]
        for name in ("serve", "router"):
            x = r[f"swap_{name}"]
            lines.append(f"| {name} | {x['swap_first_token_p50_s']:.3f} | {x['swap_cost_p50_ms']:.0f} | "
                         f"{x['swap_cost_max_ms']:.0f} |")
        lines.append("")
    if "alternating_serve" in r:
        lines += [f"## Alternating run (4 clients x {args.per_client} requests over 3 models, room for 2; median of "
                  f"{args.repeats} runs each, interleaved; failures and requests summed)", "",
                  "| path | requests | failures | loads | longest wait s | p50 s | total s |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        for name in ("serve", "router"):
            x = r[f"alternating_{name}"]
            lines.append(f"| {name} | {x['requests']} | {x['failures']} | {x['loads']} | {x['longest_s']:.2f} | "
                         f"{x['p50_s']:.3f} | {x['total_s']:.1f} |")
        lines.append("")
    lines += ["Raw figures:", "", "```json", json.dumps(r, indent=2), "```", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
