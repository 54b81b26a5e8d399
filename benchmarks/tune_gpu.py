"""`llama-pilot tune` on the GPU machine: a synthetic model on a held budget, tuned, and paired with --fit.

One H200 is held down to ``--budget-gib`` free by a helper allocation (as in gpu_accuracy.py), so
the GPU looks like a 24 or 16 GiB card to llama.cpp's --fit and to the estimator alike. The model is
a sparse synthetic GGUF (random routers and embeddings, zero elsewhere): it loads, takes real
memory and runs at real speed. ``run_tune`` does the rest exactly as `llama-pilot tune` does; its
whole result (every candidate, the pruned ones, the paired rounds) is written as JSON.

    python benchmarks/tune_gpu.py --kind moe --budget-gib 24 --ctx 32768 --minutes 4 --out $OUT/moe24.json
    python benchmarks/tune_gpu.py --kind moe --budget-gib 24 --ctx 32768 --again --out $OUT/moe24-again.json

``--again`` runs a second tune of the same key right after (the learning loop) and reports both.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.gpu_accuracy import held_budget  # noqa: E402

SHAPES = {
    # ~63 GiB: 48 layers, 128 experts of which 8 used (a 30B-A3B-like layout at 4 bits)
    "moe": ("moe", dict(n_layer=48, n_embd=4096, n_head=32, n_head_kv=4, head_dim=128, n_expert=128, n_expert_used=8,
                        n_ff_expert=1536, n_ctx_train=131072, n_vocab=32000)),
    # ~41 GiB dense: 40 layers of a 5120-wide model
    "dense": ("dense", dict(n_layer=40, n_embd=5120, n_head=40, n_head_kv=8, head_dim=128, n_ff=13824,
                            n_ctx_train=131072, n_vocab=32000)),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", choices=sorted(SHAPES), default="moe")
    parser.add_argument("--budget-gib", default="24", help="free GiB per GPU: 24, or 24,16 for a pair")
    parser.add_argument("--ctx", type=int, default=32768)
    parser.add_argument("--minutes", type=float, default=4)
    parser.add_argument("--depth", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--gen-tokens", type=int, default=64, help="tokens generated per measurement")
    parser.add_argument("--no-full-context", action="store_true", help="skip the full-context prompt on the winner")
    parser.add_argument("--again", action="store_true", help="then tune the same key again (the learning loop)")
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    from mcp_server.model_files.synthetic import write_model
    from mcp_server.placement import calibration
    from mcp_server.profiles.config import load_config
    from mcp_server.tune.operations import run_tune

    work = args.work or Path(tempfile.mkdtemp(prefix="tune-gpu-"))
    os.environ.setdefault("LLAMA_PILOT_HOME", str(work / "home"))
    family, shape = SHAPES[args.kind]
    model = work / "models" / f"{args.kind}.gguf"
    if not model.exists():
        write_model(family, model, shape, sparse=True)
    conf = work / "models.conf"
    conf.write_text(f"[global]\nMODELS_DIR=models\n\n[{args.kind}]\nMODEL={args.kind}.gguf\nCTX_SIZE={args.ctx}\n"
                    "PARALLEL=1\n")
    lines: list[str] = []
    report: dict = {}

    def say(line: str) -> None:
        stamp = f"{time.strftime('%H:%M:%S')} {line}"
        print(stamp, flush=True)
        lines.append(stamp)
        args.out.write_text(json.dumps({**report, "log": lines}, indent=1))  # what a cut-off run leaves

    report = {"kind": args.kind, "model_gib": round(model.stat().st_size / 2**30, 1),
                    "budget_gib": args.budget_gib, "ctx": args.ctx, "depth": args.depth, "runs": []}
    with held_budget([int(float(b) * 1024) for b in str(args.budget_gib).split(",")]):
        for attempt in range(2 if args.again else 1):
            started = time.monotonic()
            result = run_tune(load_config(conf), args.kind, "generation", args.minutes, args.depth, rounds=args.rounds,
                              gen_tokens=args.gen_tokens, full_context_check=attempt == 0 and not args.no_full_context,
                              say=say)
            report["runs"].append({"wall_s": round(time.monotonic() - started, 1), "result": result.model_dump(mode="json")})
            # every load's prediction vs llama.cpp's buffers vs NVML, as the calibration store kept them
            report["calibration"] = [m.model_dump(mode="json") for m in calibration.measurements()]
            args.out.write_text(json.dumps({**report, "log": lines}, indent=1))
    print(json.dumps([{k: r["result"][k] for k in ("winner", "measured", "seconds", "search_seconds")}
                      | {"paired": {k: r["result"]["paired"][k] for k in ("gen_ratio", "gen_ratio_range",
                                                                          "prompt_ratio", "prompt_ratio_range")}}
                      for r in report["runs"]], indent=1))


if __name__ == "__main__":
    main()
