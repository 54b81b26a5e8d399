"""What the monitoring sampler costs: CPU time per second of sampling, and per sample.

Runs :class:`mcp_server.monitoring.sampler.Sampler` at ``--interval`` (1 s) for ``--seconds`` (60) in this
process while the main thread sleeps, and divides the process's CPU time (user + system, all
threads) by the wall time and by the number of samples. Modes, one run each, in this order:

- ``off``: host stats only (psutil, registry), GPU sampling switched off;
- ``nvml``: the real NVML through pynvml (on a machine without a driver this measures the
  cached "no NVIDIA driver" answer, and the row says so);
- ``fake``: an in-process NVML stand-in with two GPUs (RTX 4090 + RTX 5070 Ti), i.e. the
  Python side of reading and mapping two GPUs without the driver's own cost.

``--config``/``--profile`` start a model for the run (stopped afterwards) so per-instance work
(psutil per process, the process -> instance mapping) is included.

    python benchmarks/sampler_cost.py [--seconds 60] [--interval 1] [--modes off,nvml,fake] \
        [--config models.conf --profile demo] [--out docs/benchmarks/sampler.md]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mcp_server.monitoring.gpu import FakeNvml, gpu_stats  # noqa: E402
from mcp_server.bench.manifest import machine_summary  # noqa: E402
from mcp_server.monitoring.sampler import Sampler  # noqa: E402

HEADER = """# Sampler cost

Produced by `benchmarks/sampler_cost.py`: the sampler runs at the given interval for the given
time in one process; CPU is that process's user + system time over wall time (100% = one core)
and per sample. `off` = host stats only; `nvml` = the real NVML; `fake` = an in-process NVML
stand-in with two GPUs (the Python side of reading two GPUs, without the driver's cost).

| date | machine | GPUs | mode | instances | interval | seconds | samples | CPU (% of one core) | CPU ms / sample | sample wall ms (median) |
| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |
"""


def _cpu_seconds() -> float:
    return time.process_time()  # user + system of every thread, at nanosecond resolution


def run(mode: str, seconds: float, interval: float) -> dict[str, object]:
    if mode == "off":
        sampler = Sampler(interval_s=interval, gpu_enabled=False)
    elif mode == "fake":
        sampler = Sampler(interval_s=interval, gpu_source=FakeNvml())
    else:
        sampler = Sampler(interval_s=interval)
    sampler.sample_once()  # warm-up: imports, NVML init, the first CPU priming are not the steady cost
    took: list[float] = []
    start_samples = sampler.samples
    cpu0, wall0 = _cpu_seconds(), time.monotonic()
    sampler.start()
    deadline = wall0 + seconds
    last = None
    while time.monotonic() < deadline:
        time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
        snap = sampler.latest()
        if snap is not None and snap is not last:
            took.append(snap.took_s)
            last = snap
    sampler.stop()
    cpu, wall = _cpu_seconds() - cpu0, time.monotonic() - wall0
    samples = sampler.samples - start_samples
    latest = sampler.latest()
    return {"mode": mode, "wall": wall, "cpu": cpu, "samples": samples, "errors": sampler.errors,
            "took_ms": statistics.median(took) * 1000 if took else float("nan"),
            "gpus": len(latest.gpu.gpus) if latest else 0, "reason": latest.gpu.reason if latest else None,
            "instances": len(latest.system.instances) if latest else 0}


def describe_gpus(result: dict[str, object]) -> str:
    if result["mode"] == "off":
        return "not read"
    if result["mode"] == "fake":
        return "2 simulated (4090 + 5070 Ti)"
    if not result["gpus"]:
        return "none here (no NVIDIA driver)"
    report = gpu_stats(instances=[])
    names = sorted({g.name or "?" for g in report.gpus})
    return f"{result['gpus']} x {', '.join(names)}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--modes", default="off,nvml,fake", help="comma-separated: off, nvml, fake")
    parser.add_argument("--config", help="models.conf holding --profile")
    parser.add_argument("--profile", help="start this profile for the run (stopped afterwards)")
    parser.add_argument("--out", help="append Markdown rows here (the header is written if the file is new)")
    args = parser.parse_args()
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if unknown := set(modes) - {"off", "nvml", "fake"}:
        parser.error(f"unknown modes: {', '.join(sorted(unknown))}")

    runtime = None
    if args.profile:
        from mcp_server.profiles.config import load_config
        from mcp_server.runtime.lifecycle import Runtime

        runtime = Runtime(load_config(args.config))
        view = runtime.start_model(args.profile)
        print(f"started {view.profile} (pid {view.pid}) for the run", file=sys.stderr)
    rows = []
    try:
        for mode in modes:
            print(f"{mode}: sampling every {args.interval} s for {args.seconds:.0f} s ...", file=sys.stderr)
            result = run(mode, args.seconds, args.interval)
            pct = 100.0 * result["cpu"] / result["wall"]
            per_sample = 1000.0 * result["cpu"] / max(1, result["samples"])
            print(f"  {result['samples']} samples, CPU {pct:.2f}% of one core, {per_sample:.2f} ms CPU per sample, "
                  f"median sample {result['took_ms']:.1f} ms wall, {result['errors']} errors"
                  + (f" ({result['reason']})" if result["mode"] == "nvml" and result["reason"] else ""),
                  file=sys.stderr)
            rows.append(f"| {time.strftime('%Y-%m-%d')} | {machine_summary()} | {describe_gpus(result)} | {mode} | "
                        f"{result['instances']} | {args.interval:g} s | {result['wall']:.0f} | {result['samples']} | "
                        f"{pct:.2f}% | {per_sample:.2f} | {result['took_ms']:.1f} |")
    finally:
        if runtime is not None:
            runtime.stop_model("all", grace_s=3)
    print("\n".join(rows))
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        new = not out.exists() or not out.read_text().strip()
        with open(out, "a") as f:
            if new:
                f.write(HEADER)
            f.write("\n".join(rows) + "\n")
        print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
