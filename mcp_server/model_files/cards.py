"""Model cards kept beside the models: ``MODELS_DIR/documentation/<name>.md``.

A card under evaluation sits in ``documentation/CANDIDATES/``; once the model is added, the card moves
up to ``documentation/`` (the original's convention, phase 8 of /add-model). Cards are read as
resources (``model-card://<name>``); this module moves them, and never overwrites one.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from pydantic import BaseModel, Field

from mcp_server.errors import ValidationError
from mcp_server.profiles.config import Config

CANDIDATES = "CANDIDATES"
CARD_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,127}$")


class CardMove(BaseModel):
    name: str
    source: str = Field(description="where the card was (documentation/CANDIDATES/<name>.md)")
    target: str = Field(description="where it is now, or would be with dry_run (documentation/<name>.md)")
    moved: bool
    dry_run: bool
    resource: str = Field(description="the resource that reads it from now on")


def cards_dir(config: Config) -> Path:
    return Path(config.host.models_dir) / "documentation"


def promote_model_card(config: Config, name: str, dry_run: bool = False) -> CardMove:
    """Move ``documentation/CANDIDATES/<name>.md`` up to ``documentation/<name>.md``.

    Refused, with nothing moved, when the name is not a plain file name, the candidate is missing
    (the error lists the candidates there are) or a card of that name already exists above."""
    name = name.removesuffix(".md")
    if not CARD_NAME_RE.fullmatch(name):
        raise ValidationError("name", name, "a card name is a file name without .md: letters, digits, '_', '.', "
                              "'+' and '-' (list the model-card:// resources to see them)")
    root = cards_dir(config)
    source, target = root / CANDIDATES / f"{name}.md", root / f"{name}.md"
    if not source.is_file():
        there = sorted(p.stem for p in (root / CANDIDATES).glob("*.md")) if (root / CANDIDATES).is_dir() else []
        raise ValidationError("name", name, f"no candidate card {source.relative_to(root.parent)}; candidates: "
                              f"{', '.join(there) or 'none'}")
    if target.exists():
        raise ValidationError("name", name, f"{target.relative_to(root.parent)} already exists; nothing was moved. "
                              "Compare the two cards and remove or rename one by hand")
    if not dry_run:
        # link + unlink instead of rename: a card that appeared at the target meanwhile is never replaced.
        os.link(source, target)
        source.unlink()
    rel = root.parent
    return CardMove(name=name, source=str(source.relative_to(rel)), target=str(target.relative_to(rel)),
                    moved=not dry_run, dry_run=dry_run, resource=f"model-card://{name}")
