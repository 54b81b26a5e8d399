"""Profile + [global] -> the exact llama-server argv."""

from __future__ import annotations

import pytest

from mcp_server.engine.argv import launch_spec
from mcp_server.errors import ValidationError
from mcp_server.profiles.config import load_config

CONF = r"""
[global]
MODELS_DIR=/srv/models
HOST=127.0.0.1
PORT=8080
FLASH_ATTN=on
KV_CACHE_TYPE_K=q8_0
KV_CACHE_TYPE_V=q8_0

[full]
MODEL=Qwen/Qwen3-30B-A3B-Q4_K_M.gguf
CTX_SIZE=32768
N_GPU_LAYERS=auto
SPLIT_MODE=layer
TENSOR_SPLIT=24,16
MAIN_GPU=0
FIT=on
FIT_TARGET=128,1024
FIT_CTX=8192
OVERRIDE_TENSORS=blk\.(3[0-9]|4[0-7])\.ffn_.*_exps\.=CPU,exps=CPU
N_CPU_MOE=4
PARALLEL=1
BATCH_SIZE=2048
UBATCH_SIZE=512
TEMP=0.7
TOP_P=0.8
TOP_K=20
MIN_P=0
VISIBLE_DEVICES=0,1
PORT=8099
EXTRA_ARGS=--jinja --chat-template-kwargs '{"enable_thinking": false}' --ctx-size 16384

[minimal]
MODEL=tiny.gguf
"""


@pytest.fixture
def config(write_conf):
    return load_config(write_conf(CONF))


def test_full_profile_argv_in_documented_order(config):
    argv = launch_spec(config.profile("full"), config, engine="/opt/llama-server").argv
    assert argv == [
        "/opt/llama-server", "--model", "/srv/models/Qwen/Qwen3-30B-A3B-Q4_K_M.gguf",
        "--ctx-size", "32768", "--n-gpu-layers", "auto",
        "--host", "127.0.0.1", "--port", "8099",
        "--split-mode", "layer", "--tensor-split", "24,16", "--main-gpu", "0", "--flash-attn", "on",
        "--cache-type-k", "q8_0", "--cache-type-v", "q8_0", "--fit", "on", "--fit-target", "128,1024",
        "--fit-ctx", "8192", "--override-tensor", r"blk\.(3[0-9]|4[0-7])\.ffn_.*_exps\.=CPU,exps=CPU",
        "--n-cpu-moe", "4", "--parallel", "1", "--batch-size", "2048", "--ubatch-size", "512",
        "--temp", "0.7", "--top-p", "0.8", "--top-k", "20", "--min-p", "0", "--log-verbosity", "4", "--metrics",
        # EXTRA_ARGS last, split like a shell: the quoted JSON stays one argument, and its
        # --ctx-size wins over CTX_SIZE because llama.cpp takes the last occurrence.
        "--jinja", "--chat-template-kwargs", '{"enable_thinking": false}', "--ctx-size", "16384",
    ]


def test_minimal_profile_gets_only_global_defaults(config):
    spec = launch_spec(config.profile("minimal"), config)
    assert spec.argv == ["llama-server", "--model", "/srv/models/tiny.gguf", "--host", "127.0.0.1", "--port", "8080",
                         "--flash-attn", "on", "--cache-type-k", "q8_0", "--cache-type-v", "q8_0",
                         "--log-verbosity", "4", "--metrics"]
    assert spec.env == {"CUDA_DEVICE_ORDER": "PCI_BUS_ID"} and spec.visible_devices is None


def test_visible_devices_become_environment(config):
    spec = launch_spec(config.profile("full"), config)
    assert spec.env == {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": "0,1"}
    assert spec.visible_devices == [0, 1]


def test_docker_model_root_and_port_override(config):
    spec = launch_spec(config.profile("minimal"), config, model_root="/models", port=5000, host="0.0.0.0")
    assert spec.argv[1:7] == ["--model", "/models/tiny.gguf", "--host", "0.0.0.0", "--port", "5000"]


def test_argv_is_a_list_never_a_shell_string(config):
    argv = launch_spec(config.profile("full"), config).argv
    assert isinstance(argv, list) and all(isinstance(a, str) for a in argv)
    assert '{"enable_thinking": false}' in argv  # spaces kept inside one argument


def test_flag_injection_in_structured_values_is_refused(write_conf):
    config = load_config(write_conf("[p]\nMODEL=--help\n"))
    with pytest.raises(ValidationError, match="must not start with '-'"):
        launch_spec(config.profile("p"), config)
    config = load_config(write_conf("[p]\nMODEL=a.gguf\nFIT_TARGET=1024\nOVERRIDE_TENSORS=-x=CPU\n"))
    with pytest.raises(ValidationError, match="read as a flag"):
        launch_spec(config.profile("p"), config)
