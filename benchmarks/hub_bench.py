"""The hub path on loopback: remote fit, download throughput beside curl, what a kill -9 costs.

Everything is served by the test suite's fake hub (a real HTTP server: Starlette on uvicorn) on
127.0.0.1, so the network is out of the figures and what remains is llama-pilot's own cost:

1. **Remote fit**: `check_fit` of a 3-shard ~60 GB MoE (sparse files): seconds, and the bytes read
   as a share of the model. Target: under 2 s, headers only.
2. **Throughput**: one file of random bytes, downloaded alternately by `curl -o FILE` and by
   llama-pilot's downloader, same server, same disk; the ratio of the medians. Target: >= 0.9x
   curl. Three rows for llama-pilot's side: the transfer alone (the file listed without an LFS
   hash), with its sha256 check, and curl followed by the same check (`openssl dgst -sha256`).
3. **kill -9 at 50%**: `llama-pilot hub download` in its own process, killed with SIGKILL once half
   the file is on disk, then run again; the bytes fetched twice as a share of the file. Target: < 1%.

    python benchmarks/hub_bench.py --out docs/benchmarks/hub.md [--size-mib 1024] [--rounds 5]
"""

from __future__ import annotations

import argparse
import hashlib
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mcp_server.hub.client import HubClient  # noqa: E402
from tests.fake_hub import FakeHub, FakeRepo, Running  # noqa: E402

MOE = dict(n_layer=48, n_embd=4096, n_head=32, n_head_kv=4, head_dim=128, n_expert=128, n_expert_used=8,
           n_ff_expert=1536, n_ctx_train=131072, n_vocab=32000)


def measure_fit(work: Path, rounds: int) -> dict[str, Any]:
    from mcp_server.hub.fit import check_fit
    from mcp_server.model_files.synthetic import write_model

    shards = write_model("moe", work / "moe" / "Big-UD-Q4_K_XL", MOE, sparse=True, n_shards=3)
    model_bytes = sum(p.stat().st_size for p in shards)
    hub = FakeHub(repos={"bench/Big-GGUF": FakeRepo(files={f"UD-Q4_K_XL/{p.name}": p for p in shards})})
    server = Running(hub)
    times, read = [], 0
    try:
        for _ in range(rounds):
            with HubClient(hub.url) as client:
                started = time.perf_counter()
                result = check_fit("bench/Big-GGUF", ctx=32768, gpus="24GiB,16GiB", kv_type="q8_0", client=client)
                times.append(time.perf_counter() - started)
            read = result.header_bytes
    finally:
        server.stop()
    fit = result.quants[0]
    return {"model_bytes": model_bytes, "shards": len(shards), "header_bytes": read,
            "share": read / model_bytes, "seconds": times, "median_s": statistics.median(times),
            "verdict": {"fits": fit.fits, "strategy": fit.strategy, "gpu_mib": fit.gpu_mib}}


def _random_file(path: Path, size: int) -> str:
    digest = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            block = os.urandom(min(left, 8 << 20))
            f.write(block)
            digest.update(block)
            left -= len(block)
    return digest.hexdigest()


class Apart:
    """The fake hub in a process of its own: in the client's process its thread would take turns
    with the downloader for the GIL, which curl, a process apart, never has to."""

    def __init__(self, work: Path, repos: dict[str, Any]) -> None:
        import socket

        import httpx

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        spec = work / f"hub-{port}.json"
        spec.write_text(json.dumps({"port": port, "repos": repos}))
        self.url = f"http://127.0.0.1:{port}"
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.fake_hub", str(spec)], cwd=str(ROOT))
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                httpx.get(self.url + "/api/models", timeout=1)
                return
            except httpx.HTTPError:
                time.sleep(0.05)
        raise RuntimeError("the fake hub did not start")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def measure_throughput(work: Path, size: int, rounds: int) -> dict[str, Any]:
    from mcp_server.hub.download import download_quant

    source = work / "T-Q8_0.gguf"
    sha = _random_file(source, size)
    server = hub = Apart(work, {"bench/T-GGUF": {"files": {"T-Q8_0.gguf": str(source)},
                                                  "sha256": {"T-Q8_0.gguf": sha}},
                                 # the same bytes listed without an LFS hash: the transfer alone
                                 "bench/U-GGUF": {"files": {"T-Q8_0.gguf": str(source)}, "plain": ["T-Q8_0.gguf"]}})
    url = f"{hub.url}/bench/T-GGUF/resolve/main/T-Q8_0.gguf"
    curl_s: list[float] = []
    sum_s: list[float] = []
    ours_s: list[float] = []
    bare_s: list[float] = []
    try:
        for i in range(rounds):  # interleaved, so drift hits both sides alike
            target = work / "curl.out"
            started = time.perf_counter()
            subprocess.run(["curl", "-sS", "--fail", "-o", str(target), url], check=True)
            curl_s.append(time.perf_counter() - started)
            assert target.stat().st_size == size
            started = time.perf_counter()  # what curl leaves to do: check the bytes, as llama-pilot does
            out = subprocess.run(["openssl", "dgst", "-sha256", "-r", str(target)], check=True, capture_output=True,
                                 text=True).stdout
            sum_s.append(time.perf_counter() - started)
            assert out.split()[0] == sha
            target.unlink()
            models = work / f"models-{i}"
            with HubClient(hub.url) as client:
                started = time.perf_counter()
                result = download_quant("bench/T-GGUF:Q8_0", models, client=client)
                ours_s.append(time.perf_counter() - started)
            assert result.files[0].verified and result.fetched_bytes == size
            shutil.rmtree(models)
            with HubClient(hub.url) as client:
                started = time.perf_counter()
                result = download_quant("bench/U-GGUF:Q8_0", models, client=client)
                bare_s.append(time.perf_counter() - started)
            assert not result.files[0].verified and result.fetched_bytes == size
            shutil.rmtree(models)
    finally:
        server.stop()
    curl_m, ours_m = statistics.median(curl_s), statistics.median(ours_s)
    checked_m = statistics.median(c + s for c, s in zip(curl_s, sum_s))
    return {"bytes": size, "curl_s": curl_s, "sha256_s": sum_s, "ours_s": ours_s, "bare_s": bare_s,
            "bare_ratio": curl_m / statistics.median(bare_s), "bare_mib_s": size / 2**20 / statistics.median(bare_s),
            "curl_mib_s": size / 2**20 / curl_m, "ours_mib_s": size / 2**20 / ours_m, "ratio": curl_m / ours_m,
            "checked_ratio": checked_m / ours_m, "checked_mib_s": size / 2**20 / checked_m}



def measure_kill(work: Path, size: int, rounds: int) -> dict[str, Any]:
    source = work / "K-Q8_0.gguf"
    sha = _random_file(source, size)
    hub = FakeHub(repos={"bench/K-GGUF": FakeRepo(files={"K-Q8_0.gguf": source}, sha256={"K-Q8_0.gguf": sha})})
    server = Running(hub)
    env = {**os.environ, "HF_ENDPOINT": "", "PYTHONPATH": str(ROOT)}
    shares = []
    try:
        env["HF_ENDPOINT"] = hub.url
        for i in range(rounds):
            models = work / f"kill-{i}"
            argv = [sys.executable, "-m", "mcp_server", "cli", "hub", "download", "bench/K-GGUF:Q8_0", "--to",
                    str(models), "--json"]
            hub.delay_per_chunk_s = 0.002  # ~100 MiB/s, so the kill lands near the middle
            proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            part = models / "bench/K-GGUF/K-Q8_0.gguf.part"
            while not part.exists() or part.stat().st_size < size // 2:
                time.sleep(0.002)
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            left = part.stat().st_size
            hub.delay_per_chunk_s = 0.0
            done = subprocess.run(argv, env=env, capture_output=True, text=True, check=True)
            first = json.loads(done.stdout)["files"][0]
            assert first["verified"] and first["resumed_from"] == left
            shares.append({"killed_at": left / size, "refetched_bytes": first["fetched_bytes"] - (size - left),
                           "share": (first["fetched_bytes"] - (size - left)) / size})
            shutil.rmtree(models)
    finally:
        server.stop()
    return {"bytes": size, "runs": shares, "max_share": max(s["share"] for s in shares)}


def report(results: dict[str, Any]) -> str:
    fit, thru, kill = results["fit"], results["throughput"], results["kill"]
    size_checked = statistics.median(c + s for c, s in zip(thru["curl_s"], thru["sha256_s"]))
    return f"""# The hub path on loopback

`python benchmarks/hub_bench.py --out docs/benchmarks/hub.md` ({results['date']}, {results['machine']}).
The test suite's fake hub serves every file on 127.0.0.1, so the figures are llama-pilot's own cost.

## Remote fit before download

`check_fit` of a 3-shard MoE of {fit['model_bytes'] / 2**30:.1f} GiB (48 layers, 128 experts, sparse files),
at 32K context with a q8_0 KV cache on 24 GiB + 16 GiB:

| | figure | target |
| --- | --- | --- |
| bytes read | {fit['header_bytes'] / 2**20:.1f} MiB over {fit['shards']} shards: {fit['share']:.4%} of the model | headers only |
| time (median of {len(fit['seconds'])}) | {fit['median_s']:.2f} s (runs: {', '.join(f'{s:.2f}' for s in fit['seconds'])}) | < 2 s |

The verdict it reached: fits={fit['verdict']['fits']}, {fit['verdict']['strategy']}, GPU MiB {fit['verdict']['gpu_mib']}.

## Download throughput beside curl

One file of {thru['bytes'] / 2**20:,.0f} MiB of random bytes, `curl -o` and llama-pilot alternating, {len(thru['curl_s'])} rounds
each, interleaved. curl does not check what it wrote; llama-pilot checks each file against the hub's LFS
sha256, in a thread reading the file just behind the writer. A file the hub lists without a hash (a
plain git file) is not checked, which gives the transfer alone.

| | median | MiB/s |
| --- | --- | --- |
| curl | {statistics.median(thru['curl_s']):.2f} s | {thru['curl_mib_s']:.0f} |
| llama-pilot, the same bytes listed without an LFS hash (transfer only) | {statistics.median(thru['bare_s']):.2f} s | {thru['bare_mib_s']:.0f} |
| curl, then `openssl dgst -sha256` (the check llama-pilot makes) | {size_checked:.2f} s | {thru['checked_mib_s']:.0f} |
| llama-pilot, sha256 checked as the bytes arrive | {statistics.median(thru['ours_s']):.2f} s | {thru['ours_mib_s']:.0f} |

Transfer alone: **{thru['bare_ratio']:.2f}x curl**. With the sha256 check: **{thru['ratio']:.2f}x curl**, and
{thru['checked_ratio']:.2f}x curl followed by the same check (target >= 0.9x curl).

## kill -9 at 50%

`llama-pilot hub download` of {kill['bytes'] / 2**20:,.0f} MiB, SIGKILL once half is on disk, then the same
command again:

| run | killed at | bytes fetched twice | share |
| --- | --- | --- | --- |
""" + "".join(f"| {i + 1} | {r['killed_at']:.1%} | {r['refetched_bytes']:,} | {r['share']:.3%} |\n"
              for i, r in enumerate(kill["runs"])) + f"""
Worst: {kill['max_share']:.3%} of the file (target < 1%). Every byte written before the kill is kept: the file
is written unbuffered, the partial name is stable, and the second run asks for `Range: bytes=<size>-`.

Raw figures: [raw/hub.json](raw/hub.json).
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024, help="the throughput file")
    parser.add_argument("--kill-size-mib", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="hub-bench-"))
    os.environ["LLAMA_PILOT_HOME"] = str(work / "home")
    os.environ["LLAMA_CACHE"] = str(work / "no-cache")  # no Hugging Face cache of this machine joins in
    try:
        results = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
                   "fit": measure_fit(work, args.rounds),
                   "throughput": measure_throughput(work, args.size_mib << 20, args.rounds),
                   "kill": measure_kill(work, args.kill_size_mib << 20, 3)}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(results, indent=2))
    if args.out:
        args.out.write_text(report(results))
        raw = args.out.parent / "raw" / "hub.json"
        raw.parent.mkdir(parents=True, exist_ok=True)
        raw.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
