"""How much time llama-pilot adds to a model start: `start` to ready vs a bare llama-server launch.

Both sides run the same argv (llama-pilot's own, from `launch_spec`) on the same port range and
count from just before the process is created to the first `/health` 200. The bare launch polls
/health every 10 ms, so it is the best a hand-written script could do. Runs alternate between
the two so drift on a noisy machine hits both equally.

    python benchmarks/startup_overhead.py --config models.conf --profile demo --runs 7 \
        [--backend native|docker] [--out docs/benchmarks/startup.md]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mcp_server.engine.argv import launch_spec  # noqa: E402
from mcp_server.engine.binary import locate_engine  # noqa: E402
from mcp_server.profiles.config import load_config  # noqa: E402
from mcp_server.runtime.lifecycle import Runtime, port_is_free  # noqa: E402


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=1) as resp:
            return resp.status == 200
    except Exception:
        return False


def bare_native(argv: list[str], url: str, env: dict[str, str] | None = None) -> float:
    """Seconds from creating the process to its first /health 200, polling every 10 ms."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                            env=env)
    try:
        while not _healthy(url):
            if proc.poll() is not None:
                raise SystemExit(f"bare llama-server exited with {proc.returncode}")
            time.sleep(0.01)
        return time.perf_counter() - t0
    finally:
        proc.terminate()
        proc.wait()


def bare_docker(image: str, models_dir: str, args: list[str], url: str) -> float:
    import docker

    client = docker.from_env()
    t0 = time.perf_counter()
    container = client.containers.run(image, command=args, detach=True, network_mode="host",
                                      volumes={models_dir: {"bind": "/models", "mode": "ro"}})
    try:
        while not _healthy(url):
            time.sleep(0.01)
        return time.perf_counter() - t0
    finally:
        container.remove(force=True)


def _wait_free(port: int) -> None:
    while not port_is_free(port):
        time.sleep(0.05)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="models.conf")
    parser.add_argument("--profile", default="demo")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--backend", choices=["native", "docker"], default="native")
    parser.add_argument("--out", help="write a Markdown table here")
    args = parser.parse_args()

    config = load_config(args.config)
    profile = config.profile(args.profile)
    runtime = Runtime(config)
    runtime.stop_model("all")
    port = 18990
    bare, managed = [], []
    for i in range(args.runs):
        order = ("bare", "managed") if i % 2 == 0 else ("managed", "bare")
        for kind in order:
            _wait_free(port)
            if kind == "bare":
                if args.backend == "native":
                    spec = launch_spec(profile, config, engine=locate_engine(config.host.engine).path, port=port)
                    bare.append(bare_native(spec.argv, f"http://127.0.0.1:{port}"))
                else:
                    spec = launch_spec(profile, config, engine="llama-server", port=port, model_root="/models")
                    bare.append(bare_docker(config.host.docker_image, config.host.models_dir, spec.argv[1:],
                                            f"http://127.0.0.1:{port}"))
            else:
                t0 = time.perf_counter()
                view = runtime.start_model(args.profile, backend=args.backend, port=port)
                managed.append(time.perf_counter() - t0)
                runtime.stop_model(view.id)
    med_bare, med_managed = statistics.median(bare), statistics.median(managed)
    result = {
        "profile": args.profile, "backend": args.backend, "runs": args.runs,
        "bare_s": {"median": med_bare, "min": min(bare), "max": max(bare)},
        "llama_pilot_s": {"median": med_managed, "min": min(managed), "max": max(managed)},
        "overhead_pct": 100 * (med_managed - med_bare) / med_bare,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "date": time.strftime("%Y-%m-%d"),
    }
    print(json.dumps(result, indent=2))
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        table = (f"| {result['date']} | {args.backend} | {args.profile} | {args.runs} | {med_bare:.3f} "
                 f"({min(bare):.3f}-{max(bare):.3f}) | {med_managed:.3f} ({min(managed):.3f}-{max(managed):.3f}) "
                 f"| {result['overhead_pct']:+.1f}% |\n")
        if not out.exists():
            out.write_text("# Start-to-ready time: llama-pilot vs a bare llama-server launch\n\n"
                           "Produced by `benchmarks/startup_overhead.py` (seconds, median (min-max)).\n\n"
                           "| date | backend | profile | runs | bare launch | llama-pilot start | overhead |\n"
                           "| --- | --- | --- | --- | --- | --- | --- |\n")
        with out.open("a") as f:
            f.write(table)


if __name__ == "__main__":
    main()
