"""``python -m mcp_server`` serves MCP over stdio; ``python -m mcp_server cli ...`` is the CLI."""

import sys


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "cli":
        from mcp_server.cli.main import main as cli_main

        cli_main(sys.argv[2:])
        return
    from mcp_server.server.app import main as server_main

    server_main(sys.argv[1:])


if __name__ == "__main__":
    main()
