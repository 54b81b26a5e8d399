"""The one table of operations: MCP tool = core function = CLI command, and the human aliases.

The rule: an operation has one name, a verb and its object (``start_model``, ``list_profiles``). The
MCP tool and the core function carry it as written; the CLI command writes it with dashes
(``llama-pilot start-model``). A short alias exists only where it is listed here, and
``docs/user-guide.md`` shows this table as :func:`markdown_table` renders it (a test compares them).
Commands for people only (``serve`` in the foreground, ``args``, ``orphans``, ``setup``, ``demo``, ``dashboard``,
``install-claude``, ``engine status``, ``docker build``, ``bench ...``, ``hub download``, ``tune``, ``worker serve``) have no tool
and no alias.
"""

from __future__ import annotations

from typing import NamedTuple


class Verb(NamedTuple):
    tool: str  # the MCP tool, and the core function's name
    core: str  # where the core function lives (module:function or module:Class.method)
    aliases: tuple[str, ...] = ()

    @property
    def command(self) -> str:
        return self.tool.replace("_", "-")


VERBS: tuple[Verb, ...] = (
    Verb("list_profiles", "profiles.listing:list_profiles", ("list",)),
    Verb("get_profile", "profiles.listing:get_profile", ("show",)),
    Verb("lint_profiles", "profiles.lint:lint_profiles", ("lint",)),
    Verb("create_profile", "profiles.edits:create_profile", ("create",)),
    Verb("update_profile", "profiles.edits:update_profile", ("set",)),
    Verb("retire_profile", "profiles.edits:retire_profile", ("retire",)),
    Verb("list_model_files", "model_files.local:list_model_files"),
    Verb("inspect_model_file", "model_files.local:inspect_model_file", ("inspect",)),
    Verb("promote_model_card", "model_files.cards:promote_model_card"),
    Verb("estimate_fit", "placement.operations:estimate_fit", ("estimate",)),
    Verb("plan_placement", "placement.operations:plan_placement", ("plan",)),
    Verb("apply_placement", "placement.operations:apply_placement", ("apply",)),
    Verb("calibrate", "placement.operations:calibrate"),
    Verb("start_model", "runtime.lifecycle:Runtime.start_model", ("start",)),
    Verb("stop_model", "runtime.lifecycle:Runtime.stop_model", ("stop",)),
    Verb("switch_model", "runtime.lifecycle:Runtime.switch_model", ("switch",)),
    Verb("status", "runtime.lifecycle:Runtime.status"),
    Verb("tail_logs", "runtime.lifecycle:Runtime.tail_logs", ("logs",)),
    Verb("load_report", "runtime.lifecycle:Runtime.load_report"),
    Verb("diagnose", "checks.diagnosis:diagnose"),
    Verb("test_completion", "checks.completion:test_completion"),
    Verb("gpu_stats", "monitoring.gpu:gpu_stats", ("gpu",)),
    Verb("system_stats", "monitoring.system:system_stats", ("stats",)),
    Verb("build_engine", "engine.binary:build_engine", ("engine build",)),
    Verb("create_bench_profile", "bench.evalplus_run:create_bench_profile", ("bench profile",)),
    Verb("run_benchmark", "jobs:run_benchmark"),
    Verb("get_job", "jobs:get_job"),
    Verb("list_jobs", "jobs:list_jobs"),
    Verb("cancel_job", "jobs:cancel_job"),
    Verb("bench_results", "bench.results:bench_results"),
    Verb("search_models", "hub.client:search_models", ("hub search",)),
    Verb("list_quants", "hub.quants:list_quants", ("hub quants",)),
    Verb("check_fit", "hub.fit:check_fit", ("hub fit",)),
    Verb("download_model", "hub.download:download_model"),
    Verb("draft_hub_profile", "hub.draft:draft_hub_profile", ("hub draft",)),
    Verb("tune_profile", "tune.operations:tune_profile"),
    Verb("serve_start", "serve.control:serve_start"),
    Verb("serve_stop", "serve.control:serve_stop"),
    Verb("serve_status", "serve.control:serve_status"),
    Verb("serve_load", "serve.control:serve_load"),
    Verb("serve_unload", "serve.control:serve_unload"),
    Verb("serve_pin", "serve.control:serve_pin"),
    Verb("list_workers", "workers.operations:list_workers", ("workers",)),
    Verb("worker_status", "workers.operations:worker_status"),
    Verb("start_worker", "workers.operations:start_worker"),
    Verb("stop_worker", "workers.operations:stop_worker"),
)

ALIASES: dict[str, str] = {alias: verb.command for verb in VERBS for alias in verb.aliases if " " not in alias}


def markdown_table() -> str:
    rows = ["| MCP tool and core function | CLI command | alias | core module |", "| --- | --- | --- | --- |"]
    for verb in VERBS:
        aliases = ", ".join(f"`{a}`" for a in verb.aliases) or ""
        rows.append(f"| `{verb.tool}` | `{verb.command}` | {aliases} | `{verb.core.split(':')[0]}` |")
    return "\n".join(rows)
