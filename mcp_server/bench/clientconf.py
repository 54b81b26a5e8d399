"""bench-client.conf: what the benchmark *client* sends, per model, kept out of models.conf.

Same syntax as models.conf. ``[defaults]`` applies to every model; a ``[bench-<id>]`` section
overrides it for that profile. Keys:

| key | meaning | default |
| --- | --- | --- |
| ``MAX_TOKENS`` | max_tokens of each code-generation request | 4096 |
| ``SYSTEM_PROMPT`` | the system message (e.g. ``Reasoning: high`` for GPT-OSS) | evalplus's own |
| ``REASONING_EFFORT`` | sent as ``reasoning_effort`` and as a chat-template kwarg | not sent |
| ``TIMEOUT`` | seconds one request may take | 1800 |
| ``REFERENCE`` | the reference-scores.json model to compare with in the report | none |
| ``DISPLAY_NAME`` | the name in the report | profile NAME without " (benchmark)" |

Found at ``--client-conf``, else ``$LLAMA_PILOT_BENCH_CLIENT_CONF``, else ``bench-client.conf`` or
``benchmarks/bench-client.conf`` beside models.conf; none is fine (the defaults apply).
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel

from mcp_server.profiles.conffile import ConfDocument
from mcp_server.errors import ConfigError
from mcp_server.profiles.config import Config

CLIENT_CONF_ENV = "LLAMA_PILOT_BENCH_CLIENT_CONF"
DEFAULTS_SECTION = "defaults"
EVALPLUS_SYSTEM_PROMPT = "You are a helpful assistant good at coding."
KNOWN_KEYS = ("MAX_TOKENS", "SYSTEM_PROMPT", "REASONING_EFFORT", "TIMEOUT", "REFERENCE", "DISPLAY_NAME")


class ClientSettings(BaseModel):
    max_tokens: int = 4096
    system_prompt: str = EVALPLUS_SYSTEM_PROMPT
    reasoning_effort: str | None = None
    timeout_s: float = 1800.0
    reference: str | None = None
    display_name: str | None = None
    source: str | None = None  # the file these came from, None for built-in defaults


def find_client_conf(config: Config | None, explicit: str | os.PathLike[str] | None = None) -> Path | None:
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise ConfigError(f"{path}: no such bench-client.conf")
        return path
    env = os.environ.get(CLIENT_CONF_ENV)
    if env:
        path = Path(env).expanduser()
        if not path.is_file():
            raise ConfigError(f"${CLIENT_CONF_ENV} points to {path}, which does not exist")
        return path
    if config is not None:
        folder = config.path.resolve().parent
        for candidate in (folder / "bench-client.conf", folder / "benchmarks" / "bench-client.conf"):
            if candidate.is_file():
                return candidate
    return None


def client_settings(config: Config | None, profile_id: str,
                    explicit: str | os.PathLike[str] | None = None) -> ClientSettings:
    """Settings for one profile: [defaults], then the profile's own section."""
    path = find_client_conf(config, explicit)
    if path is None:
        return ClientSettings()
    doc = ConfDocument.load(path)
    merged: dict[str, str] = {}
    for section_id in (DEFAULTS_SECTION, profile_id):
        section = doc.section(section_id)
        if section is not None:
            merged.update(section.as_dict())
    values: dict[str, object] = {"source": str(path)}
    try:
        if "MAX_TOKENS" in merged:
            values["max_tokens"] = int(merged["MAX_TOKENS"])
            if values["max_tokens"] < 1:  # type: ignore[operator]
                raise ValueError
        if "TIMEOUT" in merged:
            values["timeout_s"] = float(merged["TIMEOUT"])
    except ValueError:
        raise ConfigError(f"{path}: MAX_TOKENS and TIMEOUT must be positive numbers "
                          f"(got {merged.get('MAX_TOKENS')!r}, {merged.get('TIMEOUT')!r})") from None
    if merged.get("SYSTEM_PROMPT"):
        values["system_prompt"] = merged["SYSTEM_PROMPT"]
    for key, field in (("REASONING_EFFORT", "reasoning_effort"), ("REFERENCE", "reference"),
                       ("DISPLAY_NAME", "display_name")):
        if merged.get(key):
            values[field] = merged[key]
    return ClientSettings(**values)
