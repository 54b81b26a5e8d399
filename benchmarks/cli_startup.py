"""What a person waits for at the command line: `llama-pilot list` and `status` as whole processes, and
`llama-pilot start-model` until it returns (the model ready) against a bare llama-server launch.

Every figure is a whole process, started the way a shell starts it, so the interpreter, the imports
and the keeper process are all counted. The start comparison runs the same argv (`llama-pilot args
PROFILE --json`) on the same port; the bare launch (startup_overhead.bare_native) polls /health
every 10 ms, the best a hand-written script could do. Runs alternate (bare, llama-pilot, llama-pilot, bare, ...) so drift on
a noisy machine hits both sides alike; `python -c pass` is timed beside them as the floor.

    python benchmarks/cli_startup.py --config models.conf --profile demo --runs 5 \
        [--out docs/benchmarks/cli-startup.md]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from startup_overhead import bare_native  # noqa: E402  (the same bare launch, polled every 10 ms)


def _cli() -> list[str]:
    exe = shutil.which("llama-pilot")
    return [exe] if exe else [sys.executable, "-m", "mcp_server", "cli"]


def _timed(argv: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def _port_free(port: int) -> bool:
    import socket

    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _wait_free(port: int) -> None:
    deadline = time.monotonic() + 30
    while not _port_free(port) and time.monotonic() < deadline:
        time.sleep(0.05)


def _summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="models.conf")
    parser.add_argument("--profile", default="demo")
    parser.add_argument("--runs", type=int, default=5, help="runs of each start side (list/status: 3x as many)")
    parser.add_argument("--port", type=int, default=18991)
    parser.add_argument("--out", help="append a Markdown row here")
    args = parser.parse_args()

    cli = [*_cli(), "--config", args.config]
    env = dict(os.environ)
    subprocess.run([*cli, "stop-model", "all"], env=env, check=True, stdout=subprocess.DEVNULL)

    floor, listing, status = [], [], []
    for _ in range(3 * args.runs):
        floor.append(_timed([sys.executable, "-c", "pass"], env))
        listing.append(_timed([*cli, "list-profiles"], env))
        status.append(_timed([*cli, "status"], env))

    spec = json.loads(subprocess.run([*cli, "args", args.profile, "--port", str(args.port), "--json"], env=env,
                                     check=True, capture_output=True, text=True).stdout)
    bare_env = {**env, **spec["env"]}
    url = f"http://127.0.0.1:{args.port}"
    bare, managed = [], []
    for i in range(args.runs):
        for kind in (("bare", "managed") if i % 2 == 0 else ("managed", "bare")):
            _wait_free(args.port)
            if kind == "bare":
                bare.append(bare_native(spec["argv"], url, env=bare_env))
            else:
                managed.append(_timed([*cli, "start-model", args.profile, "--port", str(args.port)], env))
                subprocess.run([*cli, "stop-model", args.profile], env=env, check=True, stdout=subprocess.DEVNULL)

    result = {
        "date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "python_floor_s": _summary(floor), "list_s": _summary(listing), "status_s": _summary(status),
        "bare_start_s": _summary(bare), "llama_pilot_start_s": _summary(managed),
        "start_overhead_s": statistics.median(managed) - statistics.median(bare),
    }
    print(json.dumps(result, indent=2))
    if args.out:
        out = Path(args.out)
        if not out.exists():
            out.write_text(
                "# Command-line start-up: `list`, `status`, and `start-model` against a bare launch\n\n"
                "Produced by `benchmarks/cli_startup.py`: whole processes, seconds, median (min-max); "
                "`start` rows alternate runs. Targets: `list` and `status` at most 0.25 s; `start-model` ready "
                "within 0.3 s of a bare launch of the same argv.\n\n"
                "| date | machine | runs | python -c pass | list | status | bare launch | start-model | "
                "start overhead |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- |\n")

        def cell(s: dict[str, float]) -> str:
            return f"{s['median']:.3f} ({s['min']:.3f}-{s['max']:.3f})"

        with out.open("a") as f:
            f.write(f"| {result['date']} | {result['machine']} | {args.runs} | {cell(result['python_floor_s'])} | "
                    f"{cell(result['list_s'])} | {cell(result['status_s'])} | {cell(result['bare_start_s'])} | "
                    f"{cell(result['llama_pilot_start_s'])} | {result['start_overhead_s']:+.3f} |\n")


if __name__ == "__main__":
    main()
