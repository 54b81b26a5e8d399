"""How long an MCP tool call takes, end to end, over stdio.

Launches ``python -m mcp_server --config CONF`` as a subprocess through the SDK's stdio client
(what Claude Code does), times the server's start-up to the first answered ``tools/list``, then
times ``--calls`` (100) sequential calls each of ``list_profiles`` and ``gpu_stats``: p50, p90 and
max in milliseconds, measured in the client around ``call_tool`` (JSON-RPC over pipes, the
server's validation, the tool and its structured result).

    python benchmarks/mcp_latency.py [--config models.conf] [--calls 100] [--out docs/benchmarks/mcp-latency.md] \
        [--machine-note "2-core VM, no GPU"]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from datetime import date
from pathlib import Path

import anyio
from mcp import Client, StdioServerParameters

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mcp_server.bench.manifest import machine_summary  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
TOOLS = ("list_profiles", "gpu_stats")


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def measure(config: Path, calls: int) -> tuple[float, dict[str, list[float]], str | None]:
    params = StdioServerParameters(command=sys.executable, args=["-m", "mcp_server", "--config", str(config)],
                                   env={**os.environ}, cwd=str(REPO))
    timings: dict[str, list[float]] = {name: [] for name in TOOLS}
    t0 = time.perf_counter()
    async with Client(params) as client:
        await client.list_tools()
        startup = time.perf_counter() - t0
        reason = None
        for name in TOOLS:
            for _ in range(calls):
                started = time.perf_counter()
                result = await client.call_tool(name, {})
                timings[name].append((time.perf_counter() - started) * 1000)
                if result.is_error:
                    raise SystemExit(f"{name} failed: {result.content[0].text}")
                if name == "gpu_stats":
                    reason = result.structured_content.get("reason")
    return startup, timings, reason


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=REPO / "models.conf")
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument("--out", type=Path, help="write the Markdown result here")
    parser.add_argument("--machine-note", default="", help="words about the machine, e.g. '2-core VM, no GPU'")
    args = parser.parse_args()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    startup, timings, reason = anyio.run(measure, args.config.resolve(), args.calls)
    rows = []
    for name in TOOLS:
        values = timings[name]
        rows.append(f"| `{name}` | {len(values)} | {statistics.median(values):.1f} | "
                    f"{_percentile(values, 0.9):.1f} | {max(values):.1f} |")
    gpu_note = f"gpu_stats answered with `gpus: []` and the reason \"{reason}\"" if reason else \
        "gpu_stats read real GPUs through NVML"
    text = "\n".join([
        "# MCP call latency (stdio)",
        "",
        "Produced by `benchmarks/mcp_latency.py`: `python -m mcp_server` runs as a stdio subprocess of the "
        "SDK's client (as under Claude Code) with the repository's `models.conf`; each tool is called "
        f"{args.calls} times in a row and timed in the client around `call_tool` (pipes, JSON-RPC, argument "
        "validation, the tool, its structured result).",
        "",
        f"Machine: {machine_summary()}" + (f" ({args.machine_note})" if args.machine_note else "")
        + (f", load average {load:.2f} when the run began (other work shared the cores)" if load is not None else "")
        + f"; {date.today().isoformat()}. {gpu_note}"
        + (", so that row is the protocol's own cost plus NVML's quick \"no driver\" answer, not a real GPU "
           "read." if reason else "."),
        "",
        f"Server start to the first answered `tools/list`: {startup * 1000:.0f} ms.",
        "",
        "| tool | calls | p50 ms | p90 ms | max ms |",
        "| --- | --- | --- | --- | --- |",
        *rows,
        "",
    ])
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
