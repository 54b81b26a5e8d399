"""A repo's GGUF files as quant sets: shards grouped (``-00001-of-00003``), sizes summed, tags read.

``list_quants`` is what ``llama-pilot hub quants`` and the ``list_quants`` tool will show; ``pick``
turns a user's tag (``Q4_K_M``, ``ud-q4_k_xl``) into exactly one set, or an error listing them.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath

from pydantic import BaseModel, Field

from mcp_server.hub.client import HubClient, HubError, RepoFiles

SHARD_RE = re.compile(r"^(?P<stem>.+)-(?P<index>\d{5})-of-(?P<count>\d{5})\.gguf$", re.IGNORECASE)
# The quant names llama.cpp's quantize and the common uploaders use; the last one in a name wins
# (a model called "Q8-Chat-Q4_K_M" is Q4_K_M).
TAG_RE = re.compile(r"(?<![A-Za-z0-9])((?:UD-)?(?:I?Q[1-8](?:_[0-9A-Z]+)*(?:_[SMLX]+)?|BF16|F16|F32|MXFP4(?:_MOE)?|"
                    r"TQ[12]_0))(?![A-Za-z0-9])", re.IGNORECASE)
DRAFT_RE = re.compile(r"(^|[-_.])(draft|mtp|eagle3?)([-_.]|$)", re.IGNORECASE)


class QuantSet(BaseModel):
    tag: str = Field(description="the quant, e.g. Q4_K_M or UD-Q4_K_XL ('?' when the name carries none)")
    kind: str = Field(description="model | mmproj | imatrix | draft")
    name: str = Field(description="the file name without shard suffix and .gguf")
    files: list[str] = Field(description="paths in the repo, in shard order")
    total_bytes: int
    shards: int = Field(description="how many shards the names announce (1 for a single file)")
    missing: list[str] = Field(default_factory=list, description="announced shards that are not in the repo")


class RepoQuants(BaseModel):
    repo: str
    revision: str
    commit: str | None = None
    card: str | None = Field(default=None, description="the model card's path (README.md), if any")
    sets: list[QuantSet]


def _kind(name: str) -> str:
    lower = name.lower()
    if "mmproj" in lower:
        return "mmproj"
    if "imatrix" in lower:
        return "imatrix"
    if DRAFT_RE.search(PurePosixPath(name).name):
        return "draft"
    return "model"


def _tag(stem: str) -> str:
    found = TAG_RE.findall(PurePosixPath(stem).name)
    return found[-1].upper() if found else "?"


def group(listing: RepoFiles) -> RepoQuants:
    sets: dict[str, QuantSet] = {}
    for f in listing.files:
        if f.path.lower().endswith(".dat") and "imatrix" in f.path.lower():
            sets[f.path] = QuantSet(tag="imatrix", kind="imatrix", name=f.path, files=[f.path], total_bytes=f.size,
                                    shards=1)
            continue
        if not f.path.lower().endswith(".gguf"):
            continue
        shard = SHARD_RE.match(f.path)
        stem = shard.group("stem") if shard else f.path[: -len(".gguf")]
        entry = sets.get(stem)
        if entry is None:
            entry = sets[stem] = QuantSet(tag=_tag(stem), kind=_kind(stem), name=PurePosixPath(stem).name, files=[],
                                          total_bytes=0, shards=int(shard.group("count")) if shard else 1)
        entry.files.append(f.path)
        entry.total_bytes += f.size
    for stem, entry in sets.items():
        entry.files.sort()
        if entry.shards > 1:
            present = {SHARD_RE.match(p).group("index") for p in entry.files if SHARD_RE.match(p)}  # type: ignore[union-attr]
            entry.missing = [f"{stem}-{i:05d}-of-{entry.shards:05d}.gguf" for i in range(1, entry.shards + 1)
                             if f"{i:05d}" not in present]
    card = next((f.path for f in listing.files if f.path.lower() == "readme.md"), None)
    ordered = sorted(sets.values(), key=lambda s: (s.kind != "model", s.total_bytes))
    return RepoQuants(repo=listing.repo, revision=listing.revision, commit=listing.commit, card=card, sets=ordered)


def split_spec(spec: str) -> tuple[str, str, str | None]:
    """'owner/name[@revision][:QUANT]' -> (repo, revision, quant)."""
    quant = None
    if ":" in spec:
        spec, quant = spec.rsplit(":", 1)
    repo, _, revision = spec.partition("@")
    return repo, revision or "main", quant or None


def list_quants(spec: str, client: HubClient | None = None) -> RepoQuants:
    """Every GGUF of a repo, grouped into quant and shard sets, with sizes; refuses a repo without GGUF."""
    repo, revision, _ = split_spec(spec)
    own = client is None
    client = client or HubClient()
    try:
        return require_gguf(group(client.files(repo, revision)))
    finally:
        if own:
            client.close()


def require_gguf(quants: RepoQuants) -> RepoQuants:
    """``quants``, or the error for a repo without GGUF model files."""
    if not any(s.kind == "model" for s in quants.sets):
        raise HubError(f"{quants.repo} has no GGUF model files at {quants.revision}: llama.cpp needs GGUF (search "
                       "for a -GGUF repo with hub search)")
    return quants


def pick(quants: RepoQuants, tag: str) -> QuantSet:
    """The one model set whose tag (or name) is ``tag``; the error lists what exists."""
    models = [s for s in quants.sets if s.kind == "model"]
    wanted = tag.upper()
    exact = [s for s in models if s.tag == wanted]
    chosen = exact or [s for s in models if wanted in s.name.upper()]
    if len(chosen) == 1:
        if chosen[0].missing:
            raise HubError(f"{quants.repo} {chosen[0].tag} is incomplete on the hub: {', '.join(chosen[0].missing)} "
                           "missing; pick another quant or wait for the upload to finish")
        return chosen[0]
    have = ", ".join(f"{s.tag} ({s.total_bytes / 2**30:.1f} GiB)" for s in models)
    if not chosen:
        raise HubError(f"no quant {tag!r} in {quants.repo}; it has: {have}")
    raise HubError(f"{tag!r} matches several sets in {quants.repo} ({', '.join(s.name for s in chosen)}): "
                   "give the full name")
