"""Read-only views of the profiles for people and agents: the list, and one profile in full."""

from __future__ import annotations

from pydantic import BaseModel, Field

from mcp_server.model_files import reader as ggufmeta
from mcp_server.engine.argv import launch_spec
from mcp_server.profiles.config import PROFILE_KEY_NAMES, Config, Profile, context_label


class ProfileSummary(BaseModel):
    profile: str
    name: str
    description: str | None
    speed: str | None
    ctx_size: int | None
    context: str
    model: str
    file_present: bool
    is_bench: bool


class KeyValue(BaseModel):
    key: str
    value: str
    source: str  # "profile" | "global"


class ProfileDetail(ProfileSummary):
    line: int
    config_path: str
    model_path: str
    shards: list[str]
    comments: list[str] = Field(description="the comment lines directly above the section, as written "
                                            "(update_profile's comments / replace_comments edit them)")
    keys: list[KeyValue]
    unknown_keys: list[str]
    argv: list[str]


def _present(config: Config, profile: Profile) -> bool:
    path = config.model_path(profile)
    return path is not None and all(p.is_file() for p in ggufmeta.shard_paths(path))


def _summary(config: Config, profile: Profile) -> ProfileSummary:
    return ProfileSummary(profile=profile.id, name=profile.name, description=profile.description, speed=profile.speed,
                          ctx_size=profile.ctx_size, context=context_label(profile.ctx_size),
                          model=profile.model or "", file_present=_present(config, profile), is_bench=profile.is_bench)


class ProfileList(BaseModel):
    profiles: list[ProfileSummary]


def list_profiles(config: Config, include_bench: bool = True) -> ProfileList:
    """Every active profile in file order (production first as written, bench- ones included)."""
    return ProfileList(profiles=[_summary(config, p) for p in config.profiles.values()
                                 if include_bench or not p.is_bench])


def get_profile(config: Config, profile_id: str) -> ProfileDetail:
    profile = config.profile(profile_id)
    ordered = [k for k in PROFILE_KEY_NAMES if profile.get(k) is not None]
    ordered += [k for k in profile.values if k not in ordered]
    keys = [KeyValue(key=k, value=profile.get(k) or "", source="profile" if k in profile.values else "global")
            for k in ordered]
    path = config.model_path(profile)
    spec = launch_spec(profile, config, engine=config.host.engine or "llama-server")
    return ProfileDetail(**_summary(config, profile).model_dump(), line=profile.line, config_path=str(config.path),
                         model_path=str(path), shards=[str(p) for p in ggufmeta.shard_paths(path)] if path else [],
                         comments=config.document.comment_block(profile.id)[1], keys=keys, unknown_keys=profile.unknown_keys, argv=spec.argv)
