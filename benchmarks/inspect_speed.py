"""Inspecting a 3-shard ~48 GB MoE GGUF (a real header with a 151,936-token tokenizer, data left as a hole).

    python benchmarks/inspect_speed.py [--runs 5] [--out docs/benchmarks/inspect.md]

Times `read_layout` (all three shards) against the `gguf` package's GGUFReader on the first
shard alone, on the same sparse files.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mcp_server.model_files.layout import read_layout  # noqa: E402
from mcp_server.model_files.synthetic import write_sparse_split  # noqa: E402

Q4_K, Q6_K, F32 = 12, 14, 0


def qwen3moe_like(n_layer: int = 48, n_embd: int = 2048, n_exp: int = 512, ff: int = 512, vocab: int = 151_936):
    tensors = [("token_embd.weight", [n_embd, vocab], Q4_K)]
    for i in range(n_layer):
        tensors += [(f"blk.{i}.attn_norm.weight", [n_embd], F32), (f"blk.{i}.attn_q.weight", [n_embd, 4096], Q4_K),
                    (f"blk.{i}.attn_k.weight", [n_embd, 512], Q4_K), (f"blk.{i}.attn_v.weight", [n_embd, 512], Q6_K),
                    (f"blk.{i}.attn_output.weight", [4096, n_embd], Q4_K), (f"blk.{i}.ffn_norm.weight", [n_embd], F32),
                    (f"blk.{i}.ffn_gate_inp.weight", [n_embd, n_exp], F32),
                    (f"blk.{i}.ffn_gate_exps.weight", [n_embd, ff, n_exp], Q4_K),
                    (f"blk.{i}.ffn_up_exps.weight", [n_embd, ff, n_exp], Q4_K),
                    (f"blk.{i}.ffn_down_exps.weight", [ff, n_embd, n_exp], Q6_K)]
    tensors += [("output_norm.weight", [n_embd], F32), ("output.weight", [n_embd, vocab], Q6_K)]
    meta = {"qwen3moe.block_count": n_layer, "qwen3moe.context_length": 262144, "qwen3moe.embedding_length": n_embd,
            "qwen3moe.attention.head_count": 32, "qwen3moe.attention.head_count_kv": 4,
            "qwen3moe.expert_count": n_exp, "qwen3moe.expert_used_count": 10}
    return tensors, meta


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--out")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tensors, meta = qwen3moe_like()
        paths = write_sparse_split(Path(tmp) / "sparse-moe", 3, tensors, meta, "qwen3moe")
        size_gb = sum(p.stat().st_size for p in paths) / 1e9
        times = []
        for _ in range(args.runs):
            t0 = time.perf_counter()
            info = read_layout(paths[0])
            times.append(time.perf_counter() - t0)
        import gguf

        t0 = time.perf_counter()
        gguf.GGUFReader(str(paths[0]))
        reader_s = time.perf_counter() - t0
    line = (f"| {time.strftime('%Y-%m-%d')} | 3 shards, {size_gb:.1f} GB, {len(info.tensors)} tensors, "
            f"151,936-token tokenizer | {statistics.median(times):.3f} ({min(times):.3f}-{max(times):.3f}) "
            f"| {reader_s:.2f} (first shard only) |")
    print(line)
    if args.out:
        out = Path(args.out)
        if not out.exists():
            out.write_text("# GGUF inspection time (headers only)\n\nProduced by `benchmarks/inspect_speed.py` on "
                           "sparse files: real headers, data left as a hole. Seconds, median (min-max) of "
                           f"{args.runs} runs.\n\n| date | model | read_layout, all shards | gguf.GGUFReader |\n"
                           "| --- | --- | --- | --- |\n")
        with out.open("a") as f:
            f.write(line + "\n")


if __name__ == "__main__":
    main()
