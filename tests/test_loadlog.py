"""Reading llama-server logs. CPU cases come from real runs in test_runtime.py; the GPU
out-of-memory lines below use the exact formats of this llama.cpp build's sources
(ggml-cuda.cu, ggml-backend.cpp, llama-model.cpp, llama-kv-cache.cpp, llama-context.cpp),
since a CUDA OOM cannot be produced on a machine without a GPU."""

from __future__ import annotations

from mcp_server.runtime.server_log import explain_exit, last_run, load_progress, parse_load_report

PREFIX = "0.01.{:03d}.000 {} "


def log(*lines: str) -> str:
    return "\n".join(PREFIX.format(i, "E" if "fail" in line or "error" in line else "I") + line
                     for i, line in enumerate(lines)) + "\n"


HEAD = [
    "cmn  common_param: common_params_print_info: build 11434 (unknown) with GNU 12.2.0 for Linux x86_64",
    "llama_model_loader: loaded meta data with 33 key-value pairs and 579 tensors from /models/q.gguf",
    "load_tensors: loading model tensors, this can take a while... (mmap = true)",
]


def test_oom_while_loading_weights_names_the_device():
    text = log(*HEAD,
               "ggml_backend_cuda_buffer_type_alloc_buffer: allocating 15360.00 MiB on device 1: cudaMalloc failed: "
               "out of memory",
               "alloc_tensor_range: failed to allocate CUDA1 buffer of size 16106127360",
               "llama_model_load: error loading model: unable to allocate CUDA1 buffer",
               "llama_model_load_from_file_impl: failed to load model")
    d = explain_exit(text, 1)
    assert (d.cause, d.stage, d.device) == ("oom", "weights", "CUDA1")
    assert "N_GPU_LAYERS" in d.fix and d.evidence


def test_oom_while_allocating_kv_cache():
    text = log(*HEAD, "load_tensors: offloaded 49/49 layers to GPU",
               "llama_kv_cache_iswa: creating non-SWA KV cache, size = 262144 cells",
               "ggml_backend_cuda_buffer_type_alloc_buffer: allocating 8192.00 MiB on device 0: cudaMalloc failed: "
               "out of memory",
               "llama_init_from_model: failed to initialize the context: failed to allocate buffer for kv cache")
    d = explain_exit(text, 1)
    assert (d.cause, d.stage, d.device) == ("oom", "kv-cache", "CUDA0")
    assert "CTX_SIZE" in d.fix


def test_oom_while_reserving_compute_buffers():
    text = log(*HEAD, "llama_kv_cache:      CUDA0 KV buffer size =  1024.00 MiB", "sched_reserve: reserving ...",
               "ggml_gallocr_reserve_n: failed to allocate CUDA0 buffer of size 2684354560",
               "graph_reserve: failed to allocate compute buffers",
               "llama_init_from_model: failed to initialize the context: failed to allocate compute pp buffers")
    d = explain_exit(text, 1)
    assert (d.cause, d.stage, d.device) == ("oom", "compute-buffers", "CUDA0")
    assert "UBATCH_SIZE" in d.fix


def test_unknown_architecture_and_missing_file():
    arch = explain_exit(log(*HEAD[:2], "llama_model_load: error loading model: error loading model architecture: "
                        "unknown model architecture: 'qwen9'"), 1)
    assert arch.cause == "unknown-architecture" and "qwen9" in arch.summary
    missing = explain_exit(log("gguf_init_from_file: failed to open GGUF file '/models/x.gguf' (No such file or "
                           "directory)"), 1)
    assert missing.cause == "model-missing"


def test_unknown_failure_keeps_the_last_lines():
    d = explain_exit(log("something odd happened", "and then it ended"), 3)
    assert d.cause == "exited" and d.evidence[-1] == "and then it ended"


def test_signal_exit_and_timeout():
    assert explain_exit(log("fine"), -9).cause == "killed"
    assert "SIGKILL" in explain_exit(log("fine"), 137).summary  # Docker's 128 + signal
    timed = explain_exit(log(*HEAD, "." * 40), None, timed_out=True)
    assert timed.cause == "timeout" and "loading weights" in timed.summary


def test_a_crash_is_not_an_outside_kill():
    # What an H200 run logged when llama-server aborted on its own assertion.
    crashed = explain_exit(log("llama_context: constructing llama_context",
                           "/src/ggml/src/ggml-cuda/ggml-cuda.cu:1203: GGML_ASSERT(ne00 % 2 == 0) failed",
                           "[New LWP 4242]", "#0  0x00007f in __pthread_kill_implementation"), -6)
    assert crashed.cause == "crashed" and "SIGABRT" in crashed.summary and "GGML_ASSERT(ne00 % 2 == 0)" in crashed.summary
    assert "outside" not in crashed.fix and any("GGML_ASSERT" in line for line in crashed.evidence)
    segv = explain_exit(log("fine"), 139)  # Docker's 128 + SIGSEGV, no explaining line
    assert segv.cause == "crashed" and "SIGSEGV" in segv.summary
    assert explain_exit(log("fine"), -15).cause == "killed"  # SIGTERM does come from outside


def test_progress_follows_stages_and_dots():
    assert load_progress(log(*HEAD)).stage == "loading weights"
    half = load_progress(log(*HEAD, "." * 50))
    assert half.stage == "loading weights" and abs(half.fraction - 0.5) < 1e-9
    assert load_progress(log(*HEAD, "." * 100, "llama_context: n_ctx = 4096", "srv  llama_server: listening on "
                                                                           "http://127.0.0.1:8080")).fraction == 1.0


def test_report_reads_gpu_buffers_and_only_the_last_run():
    old = log(*HEAD, "load_tensors:        CUDA0 model buffer size =  9999.00 MiB")
    new = log(*HEAD, "load_tensors: offloaded 30/49 layers to GPU",
              "load_tensors:        CUDA0 model buffer size = 11000.50 MiB",
              "load_tensors:        CUDA1 model buffer size =  7000.25 MiB",
              "load_tensors:   CPU_Mapped model buffer size = 20000.00 MiB",
              "llama_kv_cache:      CUDA0 KV buffer size =   512.00 MiB",
              "llama_kv_cache:      CUDA1 KV buffer size =   256.00 MiB",
              "llama_memory_recurrent:      CUDA0 RS buffer size =    50.25 MiB",
              "sched_reserve:      CUDA0 compute buffer size =   400.00 MiB",
              "sched_reserve:  CUDA_Host compute buffer size =    40.00 MiB",
              "sched_reserve: graph: nodes = 3000, splits = 7, input objects = 4")
    text = old + "\n----- llama-pilot 2026-01-01 00:00:00: starting x -----\n" + new
    assert last_run(text) == new
    report = parse_load_report(text)
    assert (report.layers_offloaded, report.layers_total, report.graph_splits) == (30, 49, 7)
    totals = report.total_by_device_mib
    assert totals["CUDA0"] == 11000.5 + 512 + 50.25 + 400 and totals["CUDA1"] == 7256.25
    assert totals["CUDA_Host"] == 40.0 and report.build_number == 11434
