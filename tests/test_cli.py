"""The CLI: same core calls, tables for people, --json for programs, honest exit codes."""

from __future__ import annotations

import json
import subprocess
import sys

from click.testing import CliRunner

from mcp_server.cli.main import cli

CONF = """
[global]
MODELS_DIR=models

[alpha]
NAME=Alpha model
SPEED=~10 t/s
MODEL=a.gguf
CTX_SIZE=131072

[bench-alpha]
MODEL=a.gguf
CTX_SIZE=10240
"""


def run(*args: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_list_table_and_json(write_conf):
    conf = str(write_conf(CONF))
    table = run("--config", conf, "list")
    assert table.exit_code == 0
    assert "alpha" in table.output and "128K" in table.output and "MISSING" in table.output
    data = json.loads(run("--config", conf, "list", "--json").output)["profiles"]
    assert [m["profile"] for m in data] == ["alpha", "bench-alpha"]
    assert data[0]["ctx_size"] == 131072 and data[0]["file_present"] is False and data[1]["is_bench"] is True
    listed = json.loads(run("--config", conf, "list-profiles", "--no-bench", "--json").output)["profiles"]
    assert [m["profile"] for m in listed] == ["alpha"]


def test_args_prints_one_argument_per_line(write_conf):
    conf = write_conf(CONF)
    result = run("--config", str(conf), "args", "alpha", "--port", "9123")
    assert result.output.startswith("# env CUDA_DEVICE_ORDER=PCI_BUS_ID\n")
    lines = [line for line in result.output.splitlines() if not line.startswith("#")]
    assert lines[1:] == ["--model", str((conf.parent / "models" / "a.gguf").resolve()), "--ctx-size", "131072",
                         "--host", "127.0.0.1", "--port", "9123", "--log-verbosity", "4", "--metrics"]
    spec = json.loads(run("--config", str(conf), "args", "alpha", "--json").output)
    assert spec["argv"][1:3] == lines[1:3] and spec["port"] == 8080


def test_show_json_marks_where_values_come_from(write_conf):
    conf = str(write_conf(CONF.replace("MODELS_DIR=models", "MODELS_DIR=models\nFLASH_ATTN=on")))
    detail = json.loads(run("--config", conf, "show", "alpha", "--json").output)
    sources = {k["key"]: k["source"] for k in detail["keys"]}
    assert sources["CTX_SIZE"] == "profile" and sources["FLASH_ATTN"] == "global"


def test_set_unset_retire_round_trip(write_conf):
    conf = write_conf(CONF)
    result = run("--config", str(conf), "set", "alpha", "SPEED=~12 t/s", "TOP_K=20")
    assert result.exit_code == 0 and "+SPEED=~12 t/s" in result.output and "+TOP_K=20" in result.output
    assert "TOP_K=20" in conf.read_text()
    assert run("--config", str(conf), "update-profile", "alpha", "--unset", "TOP_K").exit_code == 0
    assert "TOP_K" not in conf.read_text()
    edit = json.loads(run("--config", str(conf), "retire", "bench-alpha", "--note", "old", "--json").output)
    assert edit["changed"] and "# [bench-alpha]" in conf.read_text()


def test_exit_codes_distinguish_usage_from_failure(write_conf):
    conf = str(write_conf(CONF))
    failed = CliRunner().invoke(cli, ["--config", conf, "show", "nope"])
    assert failed.exit_code == 1 and "No profile named 'nope'" in failed.output
    usage = CliRunner().invoke(cli, ["--config", conf, "set", "alpha", "NOEQUALS"])
    assert usage.exit_code == 2 and "not KEY=VALUE" in usage.output
    bad_value = CliRunner().invoke(cli, ["--config", conf, "set", "alpha", "CTX_SIZE=huge"])
    assert bad_value.exit_code == 1 and "expected a whole number" in bad_value.output


def test_lint_exit_code_follows_errors(write_conf):
    conf = write_conf(CONF)
    result = CliRunner().invoke(cli, ["--config", str(conf), "lint", "--json"])
    assert result.exit_code == 1
    report = json.loads(result.output)
    assert {f["code"] for f in report["findings"]} == {"model-missing"} and report["errors"] == len(report["findings"])
    (conf.parent / "models" / "a.gguf").write_bytes(b"GGUF" + (3).to_bytes(4, "little") + bytes(16))
    assert CliRunner().invoke(cli, ["--config", str(conf), "lint"]).exit_code == 0


def test_console_script_and_module_are_the_same_command(write_conf):
    conf = str(write_conf(CONF))
    via_module = subprocess.run([sys.executable, "-m", "mcp_server", "cli", "--config", conf, "list", "--json"],
                                capture_output=True, text=True, check=True)
    assert json.loads(via_module.stdout)["profiles"][0]["profile"] == "alpha"
