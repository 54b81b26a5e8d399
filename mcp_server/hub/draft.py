"""From a hub quant to a profile draft: the model card saved beside the models, the planner's
settings, the card's recommended samplers, and the original's ``# NOT YET TESTED`` mark.

The card is fetched from the repo and kept as ``MODELS_DIR/documentation/CANDIDATES/<repo name>.md``
(the original's place for a card under evaluation; ``promote_model_card`` moves it up once the
model is tested). A card already there is never overwritten. The card is data: only sampler numbers
are read out of it, each with the line it came from, so a reader can check them.

The placement comes from the local file when it is downloaded and complete, else from the shard
headers over HTTP Range (``check_fit``), so a draft can be seen before the download. The profile is
written through ``create_profile``: a diff, ``dry_run`` first.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path, PurePosixPath

from pydantic import BaseModel, Field

from mcp_server.errors import LlamaPilotError
from mcp_server.hub.client import HubClient, HubError
from mcp_server.hub.quants import group, pick, require_gguf, split_spec
from mcp_server.profiles.config import Config
from mcp_server.profiles.edits import EditResult

_CARD_LIMIT = 2 << 20
# Card spellings of the four sampler keys llama-server takes as defaults: "temperature=0.6",
# "Temperature: 0.7", "--temp 0.8", "TopP=0.95", "top_p = 0.95", "--top-k 20", "MinP=0".
_SAMPLERS = {
    "TEMP": r"(?:--temp|temperature|\btemp)",
    "TOP_P": r"(?:--top-p|top[_ -]?p)",
    "TOP_K": r"(?:--top-k|top[_ -]?k)",
    "MIN_P": r"(?:--min-p|min[_ -]?p)",
}
_NUMBER = r"[`\"' ]*(?:[=:]|\s)\s*[`\"']?(-?\d+(?:\.\d+)?)"


class SamplerHint(BaseModel):
    key: str
    value: str
    line: str = Field(description="the card's line it was read from (trimmed)")


class HubDraft(BaseModel):
    repo: str
    quant: str
    commit: str | None
    profile: str
    values: dict[str, str] = Field(description="the new profile's keys")
    comments: list[str] = Field(description="the comment block written above it")
    samplers: list[SamplerHint] = Field(description="what was read from the card; empty when it names none")
    plan_from: str = Field(description="'local file' when the download is here and complete, else 'hub headers'")
    fits: bool | None
    card: str | None = Field(description="the card's path relative to MODELS_DIR, or None when the repo has none")
    card_saved: bool = Field(description="the card was written now (False: dry run, none, or one was already there)")
    edit: EditResult


def card_samplers(text: str) -> list[SamplerHint]:
    """The first value the card gives for each sampler key, with its line. Cards that give two
    sets (thinking / non-thinking) yield the first one; the comment says where each came from."""
    found: dict[str, SamplerHint] = {}
    for raw in text.splitlines():
        line = raw.strip()
        for key, name in _SAMPLERS.items():
            if key in found:
                continue
            match = re.search(name + _NUMBER, line, re.IGNORECASE)
            if match:
                found[key] = SamplerHint(key=key, value=match.group(1), line=line[:160])
    return [found[k] for k in _SAMPLERS if k in found]


def _valid(hints: list[SamplerHint]) -> list[SamplerHint]:
    """Only values models.conf would take (a card's 'temperature 1000' is a typo, not a setting)."""
    from mcp_server.errors import ValidationError
    from mcp_server.profiles.config import validate_value

    kept = []
    for hint in hints:
        try:
            validate_value(hint.key, hint.value)
        except ValidationError:
            continue
        kept.append(hint)
    return kept


def profile_id_for(repo: str, quant: str) -> str:
    name = repo.split("/", 1)[1]
    name = re.sub(r"[-_.]?gguf$", "", name, flags=re.IGNORECASE)
    slug = re.sub(r"[^a-z0-9]+", "-", f"{name}-{quant}".lower()).strip("-")
    return slug[:64].rstrip("-") or "model"


def _save_card(config: Config, repo: str, text: str, dry_run: bool) -> tuple[str, bool]:
    from mcp_server.model_files.cards import CANDIDATES, cards_dir

    name = repo.split("/", 1)[1]
    target = cards_dir(config) / CANDIDATES / f"{name}.md"
    rel = str(target.relative_to(Path(config.host.models_dir)))
    if dry_run or target.exists() or (cards_dir(config) / f"{name}.md").exists():
        return rel, False
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_text(text)
    try:
        os.link(tmp, target)  # link, not rename: a card that appeared meanwhile is never replaced
    except FileExistsError:
        return rel, False
    finally:
        tmp.unlink(missing_ok=True)
    return rel, True


def draft_hub_profile(config: Config, spec: str, profile: str | None = None, ctx: int = 0,
                      gpus: str | None = None, *, kv_type: str = "f16", slots: int = 1, dry_run: bool = True,
                      agent: bool = False, client: HubClient | None = None) -> HubDraft:
    """Draft the profile for ``owner/name[@revision]:QUANT`` (see the module's docstring)."""
    from mcp_server.profiles.edits import create_profile

    repo, revision, tag = split_spec(spec)
    if not tag:
        raise HubError(f"{spec}: name the quant, e.g. {repo}:Q4_K_M (hub quants lists them)")
    own = client is None
    client = client or HubClient()
    try:
        listing = client.files(repo, revision)
        quants = require_gguf(group(listing))
        qset = pick(quants, tag)
        model = str(PurePosixPath(repo) / qset.files[0])
        card_text = _card_text(client, repo, revision, quants.card)
        plan_from, fits, settings, summary = _plan(config, client, f"{repo}@{revision}:{qset.tag}", model, ctx,
                                                   gpus, kv_type, slots, agent)
    finally:
        if own:
            client.close()
    samplers = _valid(card_samplers(card_text)) if card_text else []
    profile_id = profile or profile_id_for(repo, qset.tag)
    name = re.sub(r"[-_.]?gguf$", "", repo.split("/", 1)[1], flags=re.IGNORECASE)
    values = {"NAME": f"{name} {qset.tag}", "MODEL": model, **settings, **{h.key: h.value for h in samplers}}
    comments = [f"{repo} {qset.tag} from Hugging Face ({qset.total_bytes / 2**30:.1f} GiB in {len(qset.files)} "
                f"file{'s' if len(qset.files) > 1 else ''}, commit {(quants.commit or revision)[:12]}), "
                f"drafted {time.strftime('%Y-%m-%d')}",
                f"placement ({plan_from}): {summary}",
                ("samplers from the model card: " + ", ".join(f"{h.key}={h.value}" for h in samplers)) if samplers
                else "the model card names no samplers: llama-server's defaults apply",
                "NOT YET TESTED"]
    edit = create_profile(config, profile_id, values, comments=comments, dry_run=dry_run, agent=agent)
    card, saved = (None, False)
    if card_text is not None:
        card, saved = _save_card(config, repo, card_text, dry_run)
    return HubDraft(repo=repo, quant=qset.tag, commit=quants.commit, profile=profile_id, values=values,
                    comments=comments, samplers=samplers, plan_from=plan_from, fits=fits, card=card,
                    card_saved=saved, edit=edit)


def _card_text(client: HubClient, repo: str, revision: str, card: str | None) -> str | None:
    if card is None:
        return None
    data = client.read_range(repo, revision, card, 0, _CARD_LIMIT - 1)
    return data.decode("utf-8", errors="replace")


def _plan(config: Config, client: HubClient, spec: str, model: str, ctx: int, gpus: str | None, kv_type: str,
          slots: int, agent: bool) -> tuple[str, bool | None, dict[str, str], str]:
    """(where the plan came from, fits, the profile keys, a one-line summary)."""
    from mcp_server.model_files.layout import read_layout

    local = Path(config.host.models_dir) / model
    if local.is_file():
        try:
            complete = read_layout(local).complete
        except LlamaPilotError:  # not a readable GGUF (yet): plan from the hub instead
            complete = False
        if complete:
            from mcp_server.placement.operations import plan_placement

            plan = plan_placement(config, model, ctx, gpus, kv_type=kv_type, slots=slots, agent=agent).plan
            devices = [round(d.total_mib) for d in plan.estimate.devices]
            return ("local file", plan.estimate.fits, plan.settings,
                    _summary(str(plan.strategy), devices, plan.estimate.host.total_mib, plan.traded))
    from mcp_server.hub.fit import check_fit

    fit = check_fit(spec, ctx, gpus, kv_type=kv_type, slots=slots, client=client).quants[0]
    if fit.error:
        raise HubError(f"{spec}: could not plan from the hub's headers: {fit.error}")
    return ("hub headers", fit.fits, fit.settings,
            _summary(fit.strategy or "?", [round(m) for m in fit.gpu_mib], fit.host_mib or 0, fit.traded))


def _summary(strategy: str, gpu_mib: list[int], host_mib: float, traded: list[str]) -> str:
    gpus = ", ".join(f"{m / 1024:.1f}" for m in gpu_mib) or "none"
    text = f"{strategy}; estimated GPU GiB {gpus}, RAM {host_mib / 1024:.1f} GiB"
    return text + (f"; traded: {'; '.join(traded)}" if traded else "")
