"""The /add-model skill walked as an agent walks it: MCP tools only, over the stdio server, on a new
synthetic model, phase by phase, each phase ending in the state the skill promises. A second walk
on a truncated download stops at phase 2 with the reason.

Every call goes through ``Walk.call``, which checks the tool and its arguments against the server's
own schemas and counts the calls; the count is the figure issue 13 asks for (27 before the fixes).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from mcp import Client

from mcp_server.model_files.synthetic import DenseShape, write_dense
from mcp_server.profiles.config import load_config

from .conftest import REPO, need
from .test_mcp_e2e import _own_port, _stdio

pytestmark = [pytest.mark.anyio, pytest.mark.engine]

MINI = REPO.parent / "shared" / "datasets" / "humanevalplus" / "HumanEvalPlus-Mini-v0.1.10.jsonl.gz"
# The calls the walk below makes, besides polling get_job; a change to the skill or the tools that adds
# or saves calls shows here.
EXPECTED_CALLS = 21


class Walk:
    def __init__(self, client: Client, schemas: dict[str, dict[str, Any]]) -> None:
        self.client, self.schemas, self.calls = client, schemas, []

    async def call(self, tool: str, **arguments: Any) -> Any:
        """One tool call, as the skill writes it; a failure ends the walk with the tool's own message."""
        assert tool in self.schemas, f"the skill names {tool}, which the server does not have"
        unknown = set(arguments) - set(self.schemas[tool].get("properties", {}))
        assert not unknown, f"{tool} has no parameter {sorted(unknown)}"
        self.calls.append(tool)
        result = await self.client.call_tool(tool, arguments)
        assert not result.is_error, f"{tool}: {result.content[0].text}"
        return result.structured_content

    async def refused(self, tool: str, **arguments: Any) -> str:
        self.calls.append(tool)
        result = await self.client.call_tool(tool, arguments)
        assert result.is_error, f"{tool} accepted what it should refuse"
        return result.content[0].text


@pytest.fixture
def project(demo_project: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    need(MINI.is_file(), "the HumanEval+ Mini dataset",
         "put ../shared/datasets/humanevalplus/ beside the checkout (see its SOURCE.md)")
    monkeypatch.setenv("LLAMA_PILOT_HUMANEVAL", str(MINI))  # the server's (and its jobs') dataset
    _own_port(demo_project, 18300)
    models = demo_project.parent / "models"
    write_dense(models / "Tiny" / "Q8_0" / "tiny.gguf", DenseShape(n_ctx_train=4096), seed=11)
    card = models / "documentation" / "CANDIDATES" / "Tiny.md"
    card.parent.mkdir(parents=True, exist_ok=True)
    card.write_text("# Tiny\nA dense llama, 2 layers, 4096-token context. Sampling: temperature 0.7, top_p 0.9.\n")
    return demo_project


async def _schemas(client: Client) -> dict[str, dict[str, Any]]:
    return {t.name: t.input_schema for t in (await client.list_tools()).tools}


async def test_the_skill_walked_end_to_end_through_mcp(project: Path):
    models = project.parent / "models"
    async with Client(_stdio(project), read_timeout_seconds=600) as client:
        walk = Walk(client, await _schemas(client))

        # Phase 1: evaluate. The card, the machine, and the file sized before any profile exists.
        card = (await client.read_resource("model-card://CANDIDATES/Tiny")).contents[0].text
        assert "temperature 0.7" in card
        await walk.call("gpu_stats")
        await walk.call("system_stats")

        # Phase 2: the download is the user's; the file must be listed whole.
        [new] = [f for f in (await walk.call("list_model_files"))["files"] if not f["used_by"]]
        assert new["path"] == "Tiny/Q8_0/tiny.gguf" and new["complete"] is True
        path = new["path"]
        draft = await walk.call("estimate_fit", model=path, values={"CTX_SIZE": "2048"}, gpus="8GiB")
        assert draft["draft"] and draft["estimate"]["fits"] is True

        # Phase 3: the profile.
        info = await walk.call("inspect_model_file", path=path)
        assert info["n_ctx_train"] == 4096
        plan = await walk.call("plan_placement", model=path, ctx=2048, gpus="8GiB")
        assert plan["plan"]["estimate"]["fits"] is True and plan["edit"] is None
        values = {"MODEL": path, "NAME": "Tiny Q8_0", "DESCRIPTION": "a two-layer test llama", "CTX_SIZE": "2048",
                  **plan["plan"]["settings"]}
        check = await walk.call("estimate_fit", profile="tiny-q8", model=path, values=values, gpus="8GiB")
        assert check["estimate"]["fits"] is True and "tiny-q8" not in load_config(project).profiles
        comments = ["Architecture source: model card (models/documentation/Tiny.md): dense, 2 layers",
                    f"VRAM: {check['estimate']['devices'][0]['total_mib']:.0f} MiB predicted at 2048 tokens",
                    "NOT YET TESTED"]
        preview = await walk.call("create_profile", profile="tiny-q8", values=values, comments=comments, dry_run=True)
        assert preview["dry_run"] and "+[tiny-q8]" in preview["diff"]
        await walk.call("create_profile", profile="tiny-q8", values=values, comments=comments)
        assert (await walk.call("lint_profiles", profile="tiny-q8"))["errors"] == 0

        # Phase 4: the sampler settings from the card.
        await walk.call("update_profile", profile="tiny-q8", set={"TEMP": "0.7", "TOP_P": "0.9"})

        # Phase 5: test, record what was measured, stop.
        started = await walk.call("start_model", profile="tiny-q8")
        assert started["status"] == "ready"
        answer = await walk.call("test_completion", profile="tiny-q8", prompt="What is a GPU?", max_tokens=8)
        speed = answer["generation_tokens_per_s"]
        assert answer["generated_tokens"] >= 1 and speed > 0
        loaded = await walk.call("load_report", profile="tiny-q8")
        assert loaded["graph_splits"] is not None
        tested = f"tested: {speed:.0f} t/s, {loaded['graph_splits']} graph split(s)"
        await walk.call("update_profile", profile="tiny-q8", set={"SPEED": f"~{speed:.0f} t/s"},
                        replace_comments={"NOT YET TESTED": tested})
        await walk.call("stop_model", profile="tiny-q8")

        # Phase 6: the bench twin.
        await walk.call("create_bench_profile", profile="tiny-q8")
        # Phase 7: the benchmark, a quick one.
        job = await walk.call("run_benchmark", profile="tiny-q8", kind="evalplus", limit=1, max_tokens=16)
        while job["status"] in ("queued", "running"):
            import anyio

            await anyio.sleep(1)
            job = await walk.call("get_job", job_id=job["id"])
        assert job["status"] == "done", job
        runs = (await walk.call("bench_results", profile="bench-tiny-q8"))["runs"]
        assert runs and runs[0]["status"] == "done"

        # Phase 8: the card moves up; the profile's comments say what was measured.
        await walk.call("promote_model_card", name="Tiny")
        shown = await walk.call("get_profile", profile="tiny-q8")

    assert (models / "documentation" / "Tiny.md").is_file()
    assert not (models / "documentation" / "CANDIDATES" / "Tiny.md").exists()
    assert shown["comments"][-1] == f"# {tested}" and "NOT YET TESTED" not in " ".join(shown["comments"])
    config = load_config(project)
    assert config.profile("tiny-q8").speed == f"~{speed:.0f} t/s"
    assert config.profile("bench-tiny-q8").model == path
    # The count grows only with the get_job polls; the rest is the skill's fixed path.
    fixed = [c for c in walk.calls if c != "get_job"]
    print(f"add-model walk: {len(walk.calls)} MCP calls ({len(fixed)} without get_job polls), 0 failures")
    assert len(fixed) == EXPECTED_CALLS, walk.calls


async def test_a_truncated_download_stops_the_walk_at_phase_2(project: Path):
    model = project.parent / "models" / "Tiny" / "Q8_0" / "tiny.gguf"
    with open(model, "r+b") as fh:
        fh.truncate(os.path.getsize(model) // 2)
    async with Client(_stdio(project), read_timeout_seconds=120) as client:
        walk = Walk(client, await _schemas(client))
        [new] = [f for f in (await walk.call("list_model_files"))["files"] if not f["used_by"]]
        assert new["complete"] is False
        # An agent that went on anyway is stopped with the reason, by every tool that reads the file.
        for tool, args in (("plan_placement", {"model": new["path"]}), ("estimate_fit", {"model": new["path"]})):
            text = await walk.refused(tool, **args)
            assert "model-file: " in text and "is incomplete" in text and "download it again" in text, (tool, text)
        inspected = await walk.call("inspect_model_file", path=new["path"])  # it describes, and says so
        assert inspected["complete"] is False and inspected["missing_bytes"] > 0
    assert "tiny-q8" not in load_config(project).profiles
