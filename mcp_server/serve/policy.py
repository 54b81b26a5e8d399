"""What models.conf says about serving: per-profile policy, the endpoint's settings, model names.

A request names a model by profile id or by one of the profile's ALIASES; both resolve here, so
the proxy, ``/v1/models`` and the control tools agree on what a name means.
"""

from __future__ import annotations

import ipaddress
import os

from pydantic import BaseModel, Field

from mcp_server.errors import LlamaPilotError
from mcp_server.profiles.config import Config, Profile

API_KEY_ENV = "LLAMA_PILOT_API_KEY"
# Request fields that choose how tokens are sampled; SAMPLERS=profile strips them so the profile's
# own TEMP/TOP_P/TOP_K/MIN_P (llama-server's defaults for this instance) apply.
SAMPLER_FIELDS = ("temperature", "top_p", "top_k", "min_p", "typical_p", "repeat_penalty", "presence_penalty",
                  "frequency_penalty", "seed", "mirostat", "mirostat_tau", "mirostat_eta", "dynatemp_range",
                  "dynatemp_exponent", "xtc_probability", "xtc_threshold", "dry_multiplier", "samplers")


class ServeError(LlamaPilotError):
    """The endpoint cannot start, or cannot be reached."""

    code = "serve"


class ServeNotRunning(ServeError):
    code = "serve-not-running"


class ServeRefused(ServeError):
    """A start that would be unsafe (a public address without a key) or a second endpoint."""

    code = "serve-refused"


class ProfilePolicy(BaseModel):
    profile: str
    aliases: list[str] = Field(default_factory=list)
    pinned: bool = False
    priority: int = 0
    idle_ttl_s: int = Field(default=0, description="0: never unloaded for being idle")
    samplers: str = Field(default="client", description="client | profile (client sampler fields stripped)")


class ServeSettings(BaseModel):
    host: str
    port: int
    api_key: str | None = None
    max_wait_s: float
    queue_limit: int
    memory_budget: str | None = None
    reserve_mib: int | None = None

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        return f"http://{host}:{self.port}" if ":" not in host else f"http://[{host}]:{self.port}"


def policy_for(profile: Profile) -> ProfilePolicy:
    aliases = [a.strip() for a in (profile.get("ALIASES") or "").split(",") if a.strip()]
    return ProfilePolicy(profile=profile.id, aliases=aliases, pinned=profile.get("PIN") == "on",
                         priority=int(profile.get("PRIORITY") or 0), idle_ttl_s=int(profile.get("IDLE_TTL") or 0),
                         samplers=profile.get("SAMPLERS") or "client")


def serve_settings(config: Config, *, host: str | None = None, port: int | None = None) -> ServeSettings:
    h = config.host
    return ServeSettings(host=host or h.serve_host, port=port or h.serve_port,
                         api_key=os.environ.get(API_KEY_ENV) or h.serve_api_key, max_wait_s=h.serve_max_wait_s,
                         queue_limit=h.serve_queue_limit, memory_budget=h.serve_memory_budget,
                         reserve_mib=h.serve_reserve_mib)


def is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(settings: ServeSettings) -> None:
    """Refuse to listen beyond this machine without a key: the endpoint starts models on request."""
    if not is_loopback(settings.host) and not settings.api_key:
        raise ServeRefused(f"serve will not listen on {settings.host} without an API key: anyone who can reach it "
                           f"could load models and use the GPUs. Set SERVE_API_KEY in [global] or {API_KEY_ENV} in "
                           f"the environment, or keep SERVE_HOST=127.0.0.1 and reach it through SSH port forwarding")


def model_names(config: Config) -> dict[str, str]:
    """Every name a client may send -> the profile id; ids win over aliases, the first alias over later ones."""
    names: dict[str, str] = {pid: pid for pid in config.profiles}
    for profile in config.profiles.values():
        for alias in policy_for(profile).aliases:
            names.setdefault(alias, profile.id)
    return names


def alias_conflicts(config: Config) -> list[str]:
    """Aliases that cannot mean what they say (an id of another profile, or claimed twice)."""
    seen: dict[str, str] = {}
    problems = []
    for profile in config.profiles.values():
        for alias in policy_for(profile).aliases:
            if alias in config.profiles and alias != profile.id:
                problems.append(f"[{profile.id}] alias {alias!r} is the id of another profile: the id wins")
            elif alias in seen and seen[alias] != profile.id:
                problems.append(f"[{profile.id}] alias {alias!r} is already [{seen[alias]}]'s: the first wins")
            seen.setdefault(alias, profile.id)
    return problems


def strip_samplers(payload: dict[str, object]) -> list[str]:
    """Remove the client's sampler fields (in place); returns what was removed."""
    removed = [k for k in SAMPLER_FIELDS if k in payload]
    for key in removed:
        del payload[key]
    return removed
