"""The ``llama-pilot`` command: each subcommand parses its input, calls one core function, renders.

Commands are named as the MCP tools with dashes (``start-model`` is ``start_model``); the short
aliases are listed in :mod:`mcp_server.cli.verbs`. ``--json`` prints exactly the tool's structured
output (the same pydantic model, dumped the same way), and an error as ``{"error": {"code",
"message"}}``. Exit codes: 0 success; 1 the operation failed (the message says why and what to do);
2 the command line itself was wrong (click's usage errors). Heavy modules are imported inside the
commands that need them, so ``llama-pilot list`` does not pay for MCP, NVML or Docker.
"""

from __future__ import annotations


import click



class VerbGroup(click.Group):
    """Commands by their tool names; the aliases of ``cli.verbs`` resolve to them and are shown beside them."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        from mcp_server.cli.verbs import ALIASES

        name = ALIASES.get(cmd_name, cmd_name)
        module = COMMANDS.get(name)
        if module is None:
            return None
        import importlib

        return importlib.import_module(f"mcp_server.cli.{module}").COMMANDS[name]

    def resolve_command(self, ctx: click.Context, args: list[str]):  # type: ignore[no-untyped-def]
        from mcp_server.cli.verbs import ALIASES

        name, command, rest = super().resolve_command(ctx, args)
        return (ALIASES.get(name, name) if name else name), command, rest

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        from mcp_server.cli.verbs import ALIASES

        shown: dict[str, list[str]] = {}
        for alias, name in ALIASES.items():
            shown.setdefault(name, []).append(alias)
        rows = []
        for name in self.list_commands(ctx):
            command = self.get_command(ctx, name)
            if command is None or command.hidden:
                continue
            label = f"{name} ({', '.join(shown[name])})" if name in shown else name
            rows.append((label, command.get_short_help_str(limit=70)))
        if rows:
            with formatter.section("Commands (aliases in brackets)"):
                formatter.write_dl(rows)


@click.group(cls=VerbGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", type=click.Path(dir_okay=False), envvar="LLAMA_PILOT_CONFIG",
              help="models.conf to use (default: $LLAMA_PILOT_CONFIG, else ./models.conf).")
@click.version_option(package_name="llama-pilot")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None) -> None:
    """Run, place, switch and benchmark llama.cpp models. Same operations as the MCP server."""
    ctx.obj = {"config": config_path}


# Command name -> the cli module that defines it (as a variable of the same name with _cmd or
# the group's name). Only the module a command needs is imported, so `llama-pilot list` loads
# neither the runtime nor the benchmark code.
COMMANDS: dict[str, str] = {
    **dict.fromkeys(["list-profiles", "get-profile", "args", "lint-profiles", "create-profile", "update-profile",
                     "retire-profile"], "profiles"),
    **dict.fromkeys(["start-model", "stop-model", "switch-model", "status", "tail-logs", "load-report", "orphans",
                     "diagnose", "test-completion"], "runtime"),
    **dict.fromkeys(["inspect-model-file", "list-model-files", "promote-model-card", "estimate-fit", "plan-placement",
                     "apply-placement", "calibrate"], "placement"),
    **dict.fromkeys(["gpu-stats", "system-stats", "dashboard", "engine", "build-engine", "docker", "setup", "demo",
                     "install-claude"], "host"),
    **dict.fromkeys(["search-models", "list-quants", "check-fit", "download-model", "draft-hub-profile", "hub"], "hub"),
    **dict.fromkeys(["serve", "serve-start", "serve-stop", "serve-status", "serve-load", "serve-unload", "serve-pin"],
                    "serve"),
    **dict.fromkeys(["tune", "tune-profile"], "tune"),
    **dict.fromkeys(["list-workers", "worker-status", "start-worker", "stop-worker", "worker"], "workers"),
    **dict.fromkeys(["bench", "create-bench-profile", "run-benchmark", "get-job", "list-jobs", "cancel-job", "bench-results"], "bench"),
}


def main(argv: list[str] | None = None) -> None:
    # Pydantic looks for plugins (entry points of every installed package) when it builds its first
    # model: about 20 ms, a tenth of a `list`. The command line uses none; a user who wants theirs
    # sets PYDANTIC_DISABLE_PLUGINS themselves (even to ""), which this leaves alone. The library and
    # the MCP server do not do this.
    import os

    os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")
    cli.main(args=argv, prog_name="llama-pilot")


if __name__ == "__main__":
    main()
