"""How `list`, `set` and `lint` scale with the number of profiles in models.conf, side by side with an
older revision of llama-pilot in the same run.

Writes a models.conf with N profiles spread over M distinct model files. The files are sparse GGUFs
whose headers are real, with a 151,936-token tokenizer like Qwen's (reading one costs what reading a
real one does); each profile has six keys and an EXTRA_ARGS. Then it times each command as a whole
process (`python -m mcp_server cli ...`, wall clock, median of --runs) for this checkout and, with
--baseline REV, for a `git worktree` of REV, alternating the two so machine noise hits both alike.

    python benchmarks/profile_scale.py [--profiles 1000,10000] [--models 100] [--runs 3] \\
        [--baseline bd64501] [--out docs/benchmarks/profile-scale.md]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from mcp_server.bench.manifest import machine_summary  # noqa: E402
from mcp_server.model_files.synthetic import MIN_VOCAB, DenseShape, dense_tensors, write_gguf  # noqa: E402

COMMANDS = {"list": ["list"], "set": ["set", "p7", "CTX_SIZE=4096"], "lint": ["lint"]}
PROBE = "import mcp_server, sys; sys.stdout.write(mcp_server.__file__)"


def write_models(folder: Path, count: int) -> list[str]:
    shape = DenseShape(extra_vocab=151_936 - MIN_VOCAB)
    tensors, metadata = dense_tensors(shape)
    names = []
    for i in range(count):
        rel = f"m{i:03d}/model-{i:03d}.gguf"
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        write_gguf(folder / rel, tensors, metadata, "llama", sparse=True, seed=i)
        names.append(rel)
    return names


def write_conf(path: Path, n_profiles: int, models: list[str]) -> None:
    lines = ["# profile-scale benchmark", "[global]", "MODELS_DIR=models", "PORT=18080", ""]
    for i in range(n_profiles):
        lines += [f"# profile {i}: generated", f"[p{i}]", f"NAME=Profile {i}", f"MODEL={models[i % len(models)]}",
                  f"CTX_SIZE={8192 + i}", "TEMP=0.7", "TOP_P=0.9", "EXTRA_ARGS=--jinja --threads 4", ""]
    path.write_text("\n".join(lines))


def run_once(code_root: Path, conf: Path, args: list[str], home: Path, timeout_s: float) -> float:
    """Seconds the command took; ``inf`` when it was still running after ``timeout_s`` (then killed)."""
    env = {**os.environ, "PYTHONPATH": str(code_root), "LLAMA_PILOT_HOME": str(home)}
    started = time.perf_counter()
    # `-m` puts the working folder first on sys.path: run from the code tree, or an editable install of
    # the other tree would answer for both.
    try:
        done = subprocess.run([sys.executable, "-m", "mcp_server", "cli", "--config", str(conf), *args], env=env,
                              capture_output=True, text=True, timeout=timeout_s, cwd=code_root)
    except subprocess.TimeoutExpired:
        return float("inf")
    elapsed = time.perf_counter() - started
    if done.returncode not in (0, 1):  # lint exits 1 when a finding is an error
        raise SystemExit(f"{' '.join(args)} failed under {code_root}:\n{done.stderr[-2000:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profiles", default="1000,10000", help="comma separated profile counts")
    parser.add_argument("--models", type=int, default=100, help="distinct model files the profiles use")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=300, help="seconds after which a run is stopped and "
                                                                    "reported as over the limit")
    parser.add_argument("--baseline", help="git revision to compare with (run from a worktree of it)")
    parser.add_argument("--out", type=Path, help="write the results as Markdown here")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="profile-scale-"))
    roots = {"this checkout": REPO}
    try:
        if args.baseline:
            tree = work / "baseline"
            subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(tree), args.baseline],
                           check=True, capture_output=True)
            roots[f"baseline {args.baseline}"] = tree
        for root in roots.values():  # each tree must run its own code
            where = subprocess.run([sys.executable, "-c", PROBE], cwd=root, capture_output=True, text=True).stdout
            assert Path(where).resolve().is_relative_to(root.resolve()), (root, where)
        models = write_models(work / "models", args.models)
        rows = []
        for n in (int(x) for x in args.profiles.split(",")):
            conf = work / f"models-{n}.conf"
            write_conf(conf, n, models)
            size_mb = conf.stat().st_size / 1e6
            for name, command in COMMANDS.items():
                times: dict[str, list[float]] = {label: [] for label in roots}
                for _ in range(args.runs):
                    for label, root in roots.items():  # alternate: noise lands on both
                        if name == "set":
                            write_conf(conf, n, models)  # every run edits the same file
                        if times[label] and times[label][-1] == float("inf"):
                            continue  # once over the limit, not again
                        times[label].append(run_once(root, conf, command, work / "home", args.timeout))
                medians = {label: statistics.median(t) for label, t in times.items()}
                rows.append((n, size_mb, name, medians, times))
                print(f"{n:>6} profiles {name:<5} " + "  ".join(f"{label}: {m:.2f} s" for label, m in medians.items()),
                      flush=True)
        report = render(rows, list(roots), args)
        print(report)
        if args.out:
            args.out.write_text(report)
    finally:
        if args.baseline:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(work / "baseline")],
                           capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


def render(rows, labels, args) -> str:  # type: ignore[no-untyped-def]
    head = "| profiles | file | command | " + " | ".join(f"{label} (median s)" for label in labels)
    if len(labels) == 2:
        head += " | speed-up"
    lines = [
        "# models.conf scale: list, set and lint", "",
        f"`python benchmarks/profile_scale.py --profiles {args.profiles} --models {args.models} --runs {args.runs} "
        f"--timeout {args.timeout:g}"
        + (f" --baseline {args.baseline}" if args.baseline else "") + "`, "
        f"{date.today().isoformat()}, {machine_summary()}.", "",
        f"Each profile has six keys and an EXTRA_ARGS; they share {args.models} sparse model files whose headers "
        "carry a 151,936-token tokenizer. Times are whole CLI processes (start-up included, about 0.3 s here), "
        f"the median of {args.runs} runs, alternating the two code trees.", "",
        head + " |", "|" + " --- |" * (3 + len(labels) + (1 if len(labels) == 2 else 0)),
    ]
    for n, size_mb, name, medians, times in rows:
        cells = [_cell(medians[label], times[label], args.timeout) for label in labels]
        ratio = ""
        if len(labels) == 2:
            base, ours = medians[labels[1]], medians[labels[0]]
            ratio = f" | > {args.timeout / ours:.0f}x" if base == float("inf") else f" | {base / ours:.1f}x"
        lines.append(f"| {n:,} | {size_mb:.1f} MB | {name} | " + " | ".join(cells) + ratio + " |")
    return "\n".join(lines) + "\n"


def _cell(median: float, runs: list[float], timeout_s: float) -> str:
    if median == float("inf"):
        return f"over {timeout_s:.0f} (stopped)"
    return f"{median:.2f} ({min(runs):.2f}-{max(runs):.2f})"


if __name__ == "__main__":
    main()
