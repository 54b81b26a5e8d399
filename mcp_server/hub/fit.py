"""Which quant of a hub repo fits, before a byte of weights is downloaded.

Each shard's GGUF header is read with HTTP Range requests into a local file, growing the range
(4, 8, 16 ... MiB) until the whole tensor table is in; the file is then extended (sparse) to its
real size, so the same inspection, estimate and planner as for a local file run on it. Only
headers cross the network: a few MiB per shard, whatever the model's size.
"""

from __future__ import annotations

import re
import tempfile
import time
from pathlib import Path, PurePosixPath

from pydantic import BaseModel, Field

from mcp_server.errors import GGUFFormatError
from mcp_server.hub.client import HubClient, HubError
from mcp_server.hub.quants import QuantSet, RepoQuants, group, pick, require_gguf, split_spec

_FIRST_READ = 4 << 20
_MAX_HEADER = 512 << 20
_BITS_RE = re.compile(r"Q(\d)")


class QuantFit(BaseModel):
    tag: str
    total_bytes: int
    fits: bool | None = Field(description="the planner's verdict at the asked context (without GPUs: whether the "
                                          "host RAM holds it); None when it could not plan")
    strategy: str | None = None
    settings: dict[str, str] = Field(default_factory=dict, description="the profile keys the planner chose")
    gpu_mib: list[float] = Field(default_factory=list, description="estimated MiB per GPU")
    host_mib: float | None = Field(default=None, description="estimated host RAM")
    ctx: int | None = None
    traded: list[str] = Field(default_factory=list)
    header_bytes: int = Field(0, description="bytes read from the hub for this set's headers")
    error: str | None = None


class RemoteFit(BaseModel):
    repo: str
    revision: str
    commit: str | None
    ctx: int
    gpus: list[float] = Field(description="free MiB per GPU the plans were made for")
    quants: list[QuantFit]
    recommended: str | None = Field(default=None, description="the quant to download, by the rules in advice")
    advice: list[str] = Field(default_factory=list)
    header_bytes: int
    model_bytes: int = Field(description="the bytes of every set checked: what a download would have cost")
    seconds: float


def fetch_headers(client: HubClient, quants: RepoQuants, qset: QuantSet, folder: Path,
                  sizes: dict[str, int]) -> tuple[Path, int]:
    """Each shard's header into ``folder`` (full-size sparse files); returns the first and the bytes read."""
    from mcp_server.model_files.layout import read_shard

    read = 0
    paths = []
    for index, name in enumerate(qset.files):
        local = folder / PurePosixPath(name).name
        size = sizes[name]
        have = 0
        want = min(_FIRST_READ, size)
        with open(local, "wb") as out:
            while True:
                if want > have:
                    out.write(client.read_range(quants.repo, quants.revision, name, have, want - 1))
                    out.flush()
                    read += want - have
                    have = want
                try:
                    read_shard(local, index)
                    break
                except GGUFFormatError as exc:
                    if "ends inside" not in str(exc) or have >= size or have >= _MAX_HEADER:
                        raise HubError(f"{quants.repo}/{name}: not a readable GGUF header ({exc})") from exc
                    want = min(have * 2, size)
            out.truncate(size)  # the rest as a hole: sizes and offsets are the real ones
        paths.append(local)
    return paths[0], read


def _bits(tag: str) -> int | None:
    found = _BITS_RE.search(tag)
    if found:
        return int(found.group(1))
    return 16 if tag in ("F16", "BF16") else 32 if tag == "F32" else None


def check_fit(spec: str, ctx: int = 0, gpus: str | None = None, *, kv_type: str = "f16", slots: int = 1,
              client: HubClient | None = None) -> RemoteFit:
    """Plan every quant of a repo (or the one in ``spec``, 'owner/name[@rev][:QUANT]') from headers only."""
    from mcp_server.model_files.layout import read_layout
    from mcp_server.placement.operations import _host_available_mib, gpu_inventory
    from mcp_server.placement.planner import choose_placement

    repo, revision, tag = split_spec(spec)
    started = time.monotonic()
    own = client is None
    client = client or HubClient()
    try:
        listing = client.files(repo, revision)
        quants = require_gguf(group(listing))
        sizes = {f.path: f.size for f in listing.files}
        chosen = [pick(quants, tag)] if tag else [s for s in quants.sets if s.kind == "model" and not s.missing]
        inventory = gpu_inventory(gpus)
        overhead, _ = inventory.overhead()
        fits: list[QuantFit] = []
        total_read = 0
        with tempfile.TemporaryDirectory(prefix="llama-pilot-fit-") as tmp:
            for qset in chosen:
                folder = Path(tmp) / qset.tag
                folder.mkdir()
                try:
                    first, read = fetch_headers(client, quants, qset, folder, sizes)
                    total_read += read
                    info = read_layout(first)
                    host_free = _host_available_mib()
                    plan = choose_placement(info, gpus_free_mib=inventory.free, ctx=ctx, kv_type=kv_type, slots=slots,
                                            overhead_mib=overhead, host_free_mib=host_free)
                except HubError as exc:
                    fits.append(QuantFit(tag=qset.tag, total_bytes=qset.total_bytes, fits=None, error=str(exc)))
                    continue
                verdict = plan.estimate.fits
                if verdict is None and not inventory.free and host_free is not None:
                    verdict = plan.estimate.host.total_mib <= host_free  # no GPU: RAM decides
                fits.append(QuantFit(tag=qset.tag, total_bytes=qset.total_bytes, fits=verdict,
                                     strategy=str(plan.strategy), settings=plan.settings,
                                     gpu_mib=[round(d.total_mib, 1) for d in plan.estimate.devices],
                                     host_mib=round(plan.estimate.host.total_mib, 1), ctx=plan.ctx,
                                     traded=plan.traded, header_bytes=read))
    finally:
        if own:
            client.close()
    recommended, advice = _advise(fits)
    return RemoteFit(repo=repo, revision=quants.revision, commit=quants.commit, ctx=ctx, gpus=inventory.free,
                     quants=fits, recommended=recommended, advice=advice, header_bytes=total_read,
                     model_bytes=sum(q.total_bytes for q in fits), seconds=round(time.monotonic() - started, 3))


def _advise(fits: list[QuantFit]) -> tuple[str | None, list[str]]:
    """The original's rules: the largest quant that fits; prefer a UD (dynamic) quant of about the
    same size; say when Q4 or below was chosen only because nothing larger fits."""
    fitting = sorted((q for q in fits if q.fits), key=lambda q: q.total_bytes, reverse=True)
    advice: list[str] = []
    if not fitting:
        return None, ["no quant fits at this context on these GPUs: lower the context, add GPUs, or accept "
                      "experts/layers on the CPU (plan_placement shows the trade)"]
    best = fitting[0]
    ud = [q for q in fitting if q.tag.startswith("UD-") and q.total_bytes >= 0.9 * best.total_bytes]
    if ud and not best.tag.startswith("UD-"):
        advice.append(f"{ud[0].tag} is a dynamic (UD) quant of about the size of {best.tag}: preferred for quality")
        best = ud[0]
    bits = _bits(best.tag.removeprefix("UD-"))
    larger = [q for q in fits if q.total_bytes > best.total_bytes and q.fits is False]
    if bits is not None and bits <= 4 and larger:
        advice.append(f"{best.tag} is chosen only because size forces it: {', '.join(q.tag for q in larger)} "
                      "would not fit")
    return best.tag, advice
