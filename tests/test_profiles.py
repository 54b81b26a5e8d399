"""The typed view of models.conf and the edits made through it."""

from __future__ import annotations

import pytest

from mcp_server import paths
from mcp_server.errors import ConfigError, ProfileNotFound, ValidationError
from mcp_server.profiles.config import load_config, parse_tensor_overrides
from mcp_server.profiles.edits import create_profile, retire_profile, update_profile

BASIC = """
# header comment
[global]
MODELS_DIR=models
PORT=9000
KV_CACHE_TYPE_K=q8_0

# GLM family
[glm-flash-q4]
NAME=GLM-4.7 Flash Q4_K_M
SPEED=~147 t/s
MODEL=GLM/GLM-4.7-Flash-Q4_K_M.gguf
CTX_SIZE=131072
EXTRA_ARGS=--jinja -np 1 --temp 1.0 --split-mode none --main-gpu 0
CUSTOM_NOTE=kept as is

[bench-glm-flash-q4]
MODEL=GLM/GLM-4.7-Flash-Q4_K_M.gguf
CTX_SIZE=10240
"""


def test_load_config_types_profiles_and_global_defaults(write_conf):
    config = load_config(write_conf(BASIC))
    assert list(config.profiles) == ["glm-flash-q4", "bench-glm-flash-q4"]
    glm = config.profile("glm-flash-q4")
    assert glm.name == "GLM-4.7 Flash Q4_K_M" and glm.speed == "~147 t/s"
    assert glm.ctx_size == 131072 and not glm.is_bench
    assert glm.get("KV_CACHE_TYPE_K") == "q8_0"  # inherited from [global]
    assert "KV_CACHE_TYPE_K" not in glm.values
    assert glm.unknown_keys == ["CUSTOM_NOTE"] and glm.values["CUSTOM_NOTE"] == "kept as is"
    assert config.profile("bench-glm-flash-q4").is_bench
    assert config.host.port == 9000
    assert config.host.models_dir.endswith("/proj/models")


def test_config_path_order(write_conf, monkeypatch, tmp_path):
    conf = write_conf(BASIC)
    monkeypatch.setenv(paths.CONFIG_ENV, str(conf))
    assert load_config().path == conf
    other = write_conf(BASIC, name="other.conf")
    assert load_config(other).path == other  # explicit beats the environment
    monkeypatch.delenv(paths.CONFIG_ENV)
    monkeypatch.chdir(conf.parent)
    assert load_config().path.resolve() == conf.resolve()


def test_missing_file_says_how_to_point_at_one(tmp_path):
    with pytest.raises(ConfigError, match="LLAMA_PILOT_CONFIG"):
        load_config(tmp_path / "nope.conf")


def test_unknown_profile_lists_known_ones(write_conf):
    config = load_config(write_conf(BASIC))
    with pytest.raises(ProfileNotFound, match="glm-flash-q4"):
        config.profile("qwen")


@pytest.mark.parametrize("text, fragment", [
    ("[p]\nNAME=x\n", "has no MODEL"),
    ("[p]\nMODEL=a.gguf\nCTX_SIZE=lots\n", "CTX_SIZE=lots: expected a whole number"),
    ("[p]\nMODEL=a.gguf\nCTX_SIZE=-5\n", "must be at least 0"),
    ("[p]\nMODEL=a.gguf\nSPLIT_MODE=rows\n", "expected one of none, layer, row"),
    ("[p]\nMODEL=a.gguf\nTOP_P=1.5\n", "must be at most 1"),
    ("[p]\nMODEL=a.gguf\nTENSOR_SPLIT=3,,1\n", "no empty items"),
    ("[p]\nMODEL=a.gguf\nEXTRA_ARGS=--chat-template 'unclosed\n", "cannot be split"),
    ("[p]\nMODEL=a.gguf\nMODELS_DIR=/x\n", "host setting; put it under [global]"),
    ("[global]\nWHATEVER=1\n[p]\nMODEL=a.gguf\n", "unknown key 'WHATEVER' in [global]"),
    ("[global]\nMODEL=a.gguf\n", "MODEL belongs in a profile"),
])
def test_bad_values_name_file_line_and_reason(write_conf, text, fragment):
    path = write_conf(text)
    with pytest.raises((ConfigError, ValidationError)) as info:
        load_config(path)
    message = str(info.value)
    assert fragment in message
    assert str(path) in message and ":" in message


def test_set_changes_one_line_and_keeps_a_backup(write_conf, isolated_home):
    path = write_conf(BASIC)
    before = path.read_text()
    result = update_profile(load_config(path), "glm-flash-q4", set={"CTX_SIZE": "65536"})
    after = path.read_text()
    changed = [(a, b) for a, b in zip(before.splitlines(), after.splitlines()) if a != b]
    assert changed == [("CTX_SIZE=131072", "CTX_SIZE=65536")]
    assert "-CTX_SIZE=131072" in result.diff and "+CTX_SIZE=65536" in result.diff
    backups = list((isolated_home / "backups").iterdir())
    assert len(backups) == 1 and backups[0].read_text() == before
    assert load_config(path).profile("glm-flash-q4").ctx_size == 65536


def test_set_new_key_adds_one_line_in_that_section(write_conf):
    path = write_conf(BASIC)
    update_profile(load_config(path), "bench-glm-flash-q4", set={"PARALLEL": "4"})
    lines = path.read_text().splitlines()
    assert lines[lines.index("CTX_SIZE=10240") + 1] == "PARALLEL=4"
    assert len(lines) == len(BASIC.strip("\n").splitlines()) + 1


def test_dry_run_writes_nothing(write_conf):
    path = write_conf(BASIC)
    before = path.read_bytes()
    result = update_profile(load_config(path), "glm-flash-q4", set={"SPEED": "~150 t/s"}, dry_run=True)
    assert result.dry_run and result.changed and "+SPEED=~150 t/s" in result.diff
    assert path.read_bytes() == before


def test_invalid_edit_is_refused_and_file_untouched(write_conf):
    path = write_conf(BASIC)
    before = path.read_bytes()
    with pytest.raises(ValidationError, match="expected a whole number"):
        update_profile(load_config(path), "glm-flash-q4", set={"CTX_SIZE": "big"})
    with pytest.raises(ValidationError, match="keys are letters"):
        update_profile(load_config(path), "glm-flash-q4", set={"BAD KEY": "1"})
    with pytest.raises(ProfileNotFound):
        update_profile(load_config(path), "nope", set={"CTX_SIZE": "1"})
    assert path.read_bytes() == before


def test_edit_of_a_stale_config_is_applied_on_top_of_the_newer_file(write_conf):
    # The edit re-reads the file under the edit lock: someone else's change and ours both remain.
    path = write_conf(BASIC)
    config = load_config(path)
    path.write_text(BASIC + "\n# someone else's edit\n")
    update_profile(config, "glm-flash-q4", set={"CTX_SIZE": "4096"})
    text = path.read_text()
    assert "# someone else's edit\n" in text
    assert "CTX_SIZE=4096" in text


def test_edit_of_a_stale_config_fails_clearly_when_its_profile_is_gone(write_conf):
    path = write_conf(BASIC)
    config = load_config(path)
    path.write_text(BASIC.replace("[glm-flash-q4]", "[renamed]"))
    before = path.read_bytes()
    with pytest.raises(ProfileNotFound, match="glm-flash-q4"):
        update_profile(config, "glm-flash-q4", set={"CTX_SIZE": "4096"})
    assert path.read_bytes() == before


def test_unset_and_model_cannot_be_unset(write_conf):
    path = write_conf(BASIC)
    update_profile(load_config(path), "glm-flash-q4", unset=["CUSTOM_NOTE"])
    assert "CUSTOM_NOTE" not in path.read_text()
    with pytest.raises(ValidationError, match="retire the profile"):
        update_profile(load_config(path), "glm-flash-q4", unset=["MODEL"])
    with pytest.raises(ValidationError, match="not set"):
        update_profile(load_config(path), "glm-flash-q4", unset=["TOP_K"])


def test_create_appends_section_and_retire_comments_it_out(write_conf):
    path = write_conf(BASIC)
    before = path.read_text()
    create_profile(load_config(path), "qwen3-8b", {"NAME": "Qwen3 8B", "MODEL": "Qwen3/q8.gguf", "CTX_SIZE": "32768"},
                   comments=["NOT YET TESTED"])
    text = path.read_text()
    assert text.startswith(before)
    assert text[len(before):] == "\n# NOT YET TESTED\n[qwen3-8b]\nNAME=Qwen3 8B\nMODEL=Qwen3/q8.gguf\nCTX_SIZE=32768\n"
    config = load_config(path)
    assert "qwen3-8b" in config.profiles
    retire_profile(config, "qwen3-8b", note="retired: replaced by q6")
    config = load_config(path)
    assert "qwen3-8b" not in config.profiles
    assert "# [qwen3-8b]" in path.read_text() and "# MODEL=Qwen3/q8.gguf" in path.read_text()
    assert [s.id for s in config.document.retired()] == ["qwen3-8b"]


def test_create_refuses_duplicates_reserved_ids_and_missing_model(write_conf):
    config = load_config(write_conf(BASIC))
    with pytest.raises(ValidationError, match="already exists"):
        create_profile(config, "glm-flash-q4", {"MODEL": "x.gguf"})
    with pytest.raises(ValidationError, match="reserved"):
        create_profile(config, "global", {"MODEL": "x.gguf"})
    with pytest.raises(ValidationError, match="ids start with"):
        create_profile(config, "bad id", {"MODEL": "x.gguf"})
    with pytest.raises(ValidationError, match="MODEL"):
        create_profile(config, "new", {"NAME": "x"})


def test_global_section_is_created_on_first_set(write_conf):
    path = write_conf("[p]\nMODEL=a.gguf\n")
    update_profile(load_config(path), "global", set={"PORT": "8181"})
    config = load_config(path)
    assert config.host.port == 8181 and config.profile("p").get("PORT") == "8181"


def test_tensor_overrides_split_like_llama_cpp():
    rules = parse_tensor_overrides(r"blk\.([0-9]|1[0-9])\.=CUDA0,blk\.(2[0-9])\.=CUDA1,exps=CPU")
    assert [(r.pattern, r.buffer) for r in rules] == [
        (r"blk\.([0-9]|1[0-9])\.", "CUDA0"), (r"blk\.(2[0-9])\.", "CUDA1"), ("exps", "CPU")]
    with pytest.raises(ValidationError, match="pattern=buffer"):
        parse_tensor_overrides("exps")


def test_a_dry_run_leaves_the_loaded_config_and_the_file_as_they_were(write_conf):
    path = write_conf(BASIC)
    before = path.read_text()
    config = load_config(path)
    preview = update_profile(config, "glm-flash-q4", set={"TEMP": "0.1"}, dry_run=True)
    assert "+TEMP=0.1" in preview.diff and path.read_text() == before
    assert config.document.render() == before and config.profile("glm-flash-q4").get("TEMP") is None
    # A real edit through the same Config carries only its own change, not the earlier preview's.
    update_profile(config, "glm-flash-q4", set={"CTX_SIZE": "65536"})
    after = path.read_text()
    assert "CTX_SIZE=65536" in after and "TEMP=0.1" not in after
    create_profile(config, "new", {"MODEL": "x.gguf"}, dry_run=True)
    retire_profile(config, "bench-glm-flash-q4", dry_run=True)
    assert path.read_text() == after and list(config.profiles) == ["glm-flash-q4", "bench-glm-flash-q4"]
