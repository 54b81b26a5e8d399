"""A real `llama-pilot serve` process over a project with three real profiles, for the serve tests."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from mcp_server.model_files.synthetic import DenseShape, write_dense
from mcp_server.profiles.config import load_config
from mcp_server.profiles.edits import create_profile, update_profile

PROFILES = ("demo", "syn-a", "syn-b")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_project(folder: Path, demo_gguf: Path, *, extra_global: dict[str, str] | None = None) -> Path:
    """models.conf with the demo model and two small random-weight models, each on the CPU."""
    models = folder / "models"
    (models / "gemma-3-270m").mkdir(parents=True, exist_ok=True)
    target = models / "gemma-3-270m" / demo_gguf.name
    if not target.exists():
        try:
            os.link(demo_gguf, target)
        except OSError:
            shutil.copyfile(demo_gguf, target)
    write_dense(models / "synth" / "a.gguf", DenseShape(n_layer=2, n_embd=128, n_ff=256, extra_vocab=4000), seed=1,
                name="syn-a")
    write_dense(models / "synth" / "b.gguf", DenseShape(n_layer=3, n_embd=128, n_ff=256, extra_vocab=6000), seed=2,
                name="syn-b")
    conf = folder / "models.conf"
    conf.write_text(f"[global]\nMODELS_DIR=models\nPORT={free_port()}\nSERVE_PORT={free_port()}\nPARALLEL=2\n\n"
                    f"[demo]\nMODEL=gemma-3-270m/{demo_gguf.name}\nCTX_SIZE=1024\nALIASES=gemma,local\n")
    config = load_config(conf)
    for pid, model in (("syn-a", "synth/a.gguf"), ("syn-b", "synth/b.gguf")):
        create_profile(config, pid, {"MODEL": model, "CTX_SIZE": "512"})
        config = load_config(conf)
    if extra_global:
        update_profile(config, "global", set=extra_global)
    return conf


def footprints(conf: Path) -> dict[str, float]:
    """Host MiB of each profile, as serve will count it (no GPU here)."""
    from mcp_server.serve.memory import footprint

    config = load_config(conf)
    return {pid: footprint(config, pid, []).mib["host"] for pid in config.profiles}


def set_global(conf: Path, **values: str) -> None:
    update_profile(load_config(conf), "global", set=values)


class Endpoint:
    """`llama-pilot serve` as its own process (so it can be killed like a real one)."""

    def __init__(self, conf: Path, log: Path) -> None:
        self.conf, self.log_path = conf, log
        config = load_config(conf)
        self.port = config.host.serve_port
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30) -> "Endpoint":
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "mcp_server", "cli", "--config", str(self.conf),
                                          "serve"], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log()
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                time.sleep(0.05)
        raise AssertionError(f"serve did not answer: {self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]

    def status(self) -> dict[str, Any]:
        return httpx.get(self.url + "/llama-pilot/status", timeout=10).json()

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    def chat(self, model: str, text: str = "Hello", max_tokens: int = 4, **extra: Any) -> httpx.Response:
        body = {"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": max_tokens,
                "temperature": 0, **extra}
        return httpx.post(self.url + "/v1/chat/completions", json=body, timeout=120)

    def complete(self, model: str, prompt: str = "Once upon a time", max_tokens: int = 4,
                 **extra: Any) -> httpx.Response:
        body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, **extra}
        return httpx.post(self.url + "/v1/completions", json=body, timeout=120)


def stop_everything(conf: Path) -> None:
    from mcp_server.runtime.lifecycle import Runtime

    Runtime(load_config(conf)).stop_model("all", grace_s=3)
