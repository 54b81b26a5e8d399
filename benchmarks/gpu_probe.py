"""GPU memory probe: for a few launch settings, what we predict, what llama.cpp logs, what NVML measures.

Data for calibrating the estimator's approximate terms (compute buffers, per-GPU overhead) on a
real GPU. Writes one JSON object per configuration to ``--out`` (JSON lines).

    LLAMA_SERVER=<CUDA llama-server> python benchmarks/gpu_probe.py --out probe.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mcp_server.placement.estimate import estimate, settings_from_argv  # noqa: E402
from mcp_server.model_files.layout import read_layout  # noqa: E402
from mcp_server.monitoring.gpu import gpu_stats  # noqa: E402
from mcp_server.runtime.server_api import chat  # noqa: E402
from mcp_server.profiles.config import load_config
from mcp_server.profiles.edits import create_profile
from mcp_server.runtime.lifecycle import Runtime  # noqa: E402
from mcp_server.model_files.synthetic import DenseShape, MoeShape, write_dense, write_sparse_moe  # noqa: E402

MOE_CONFIGS = [
    {"CTX_SIZE": "8192", "PARALLEL": "1", "N_GPU_LAYERS": "99"},
    {"CTX_SIZE": "8192", "PARALLEL": "1", "N_GPU_LAYERS": "99", "N_CPU_MOE": "24"},
    {"CTX_SIZE": "8192", "PARALLEL": "1", "N_GPU_LAYERS": "99", "EXTRA_ARGS": "--cpu-moe"},
]
CONFIGS = [
    {"CTX_SIZE": "4096", "PARALLEL": "1", "N_GPU_LAYERS": "99"},
    {"CTX_SIZE": "32768", "PARALLEL": "1", "N_GPU_LAYERS": "99"},
    {"CTX_SIZE": "32768", "N_GPU_LAYERS": "99"},
    {"CTX_SIZE": "4096", "PARALLEL": "1", "N_GPU_LAYERS": "8"},
    {"CTX_SIZE": "16384", "PARALLEL": "1", "N_GPU_LAYERS": "99", "FLASH_ATTN": "on", "KV_CACHE_TYPE_K": "q8_0",
     "KV_CACHE_TYPE_V": "q8_0"},
    {"CTX_SIZE": "8192", "PARALLEL": "2", "N_GPU_LAYERS": "99", "UBATCH_SIZE": "1024", "BATCH_SIZE": "2048"},
]


def process_mib(pid: int | None) -> dict[str, int]:
    report = gpu_stats()
    return {f"CUDA{g.cuda_index if g.cuda_index is not None else g.nvml_index}": p.used_mib
            for g in report.gpus for p in g.processes if p.pid == pid and p.used_mib is not None}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--embd", type=int, default=2048)
    parser.add_argument("--family", choices=["dense", "moe"], default="dense",
                        help="moe: a sparse (all-zero, no disk) qwen3moe shaped like a 30B-A3B model")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="probe-"))
    models = work / "models"
    if args.family == "moe":
        shape = MoeShape(n_layer=48, n_embd=2048, n_head=32, n_head_kv=4, head_dim=128, n_expert=128,
                         n_expert_used=8, n_ff_expert=768, n_ctx_train=32768, n_vocab=151936)
        (model,) = write_sparse_moe(models / "moe", shape)
        model.rename(models / "dense.gguf")  # one name for the loop below
        configs = MOE_CONFIGS
    else:
        write_dense(models / "dense.gguf", DenseShape(n_layer=args.layers, n_embd=args.embd, n_head=32, n_head_kv=8,
                                                      n_ff=args.embd * 11 // 4, n_ctx_train=32768, extra_vocab=31700),
                    dtype="f16")
        configs = CONFIGS
    conf = work / "models.conf"
    conf.write_text("[global]\nMODELS_DIR=models\nFIT=off\n")
    capacity = [g.memory_total_mib for g in gpu_stats().gpus]
    info = read_layout(models / "dense.gguf")
    with open(args.out, "w") as out:
        for i, values in enumerate(configs):
            pid = f"p{i}"
            create_profile(load_config(conf), pid, {"MODEL": "dense.gguf", **values})
            runtime = Runtime(load_config(conf))
            view = runtime.start_model(pid, timeout_s=300)
            time.sleep(1.0)
            after_load = process_mib(view.pid)
            prompt = " ".join(["hello world"] * 100)  # about 1200 tokens: more than one ubatch
            timings = {}
            try:
                timings = chat(view.url, prompt, max_tokens=64, temperature=0).get("timings", {})
            except Exception as exc:  # noqa: BLE001 - recorded, not fatal to the probe
                print(f"{pid}: request failed: {exc}", file=sys.stderr)
            time.sleep(0.5)
            after_prompt = process_mib(view.pid)
            report = runtime.load_report(pid)
            argv = next(r.argv for r in runtime.registry.all() if r.id == view.id)
            runtime.stop_model(view.id)
            predicted = estimate(info, settings_from_argv(argv), capacity)
            row = {"config": values, "argv": argv, "nvml_after_load_mib": after_load,
                   "nvml_after_prompt_mib": after_prompt, "logged": report.model_dump(mode="json"),
                   "predicted": predicted.model_dump(mode="json"), "model_bytes": info.total_bytes,
                   "timings": timings, "family": args.family}
            out.write(json.dumps(row) + "\n")
            out.flush()
            print(pid, values, "nvml", after_load, after_prompt, "logged", report.total_by_device_mib,
                  "predicted", [(d.device, d.total_mib) for d in predicted.devices],
                  "t/s", timings.get("prompt_per_second"), timings.get("predicted_per_second"), flush=True)
    os.system(f"rm -rf {work}")


if __name__ == "__main__":
    main()
