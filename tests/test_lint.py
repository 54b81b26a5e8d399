"""Every lint rule fires on the profile that breaks it, and stays quiet on a clean one."""

from __future__ import annotations

from pathlib import Path

import gguf
import pytest

from mcp_server.profiles.lint import lint_profiles
from mcp_server.profiles.config import load_config


def write_gguf(path: Path, arch: str = "llama", extra: dict[str, int] | None = None) -> Path:
    """A metadata-only GGUF (no tensors): enough for everything lint reads."""
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(2)
    writer.add_context_length(4096)
    for key, value in (extra or {}).items():
        writer.add_uint32(key, value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def findings_for(write_conf, text: str, files: dict[str, dict] | None = None):  # type: ignore[no-untyped-def]
    conf = write_conf(text)
    for rel, kw in (files or {}).items():
        write_gguf(conf.parent / "models" / rel, **kw)
    return lint_profiles(load_config(conf)).findings


def codes(findings) -> list[str]:  # type: ignore[no-untyped-def]
    return [f.code for f in findings]


def test_clean_profile_has_no_findings(write_conf):
    assert findings_for(write_conf, "[ok]\nMODEL=m.gguf\nCTX_SIZE=4096\n", {"m.gguf": {}}) == []


def test_missing_model_file(write_conf):
    (finding,) = findings_for(write_conf, "[p]\nNAME=x\nMODEL=gone.gguf\n")
    assert finding.code == "model-missing" and finding.severity == "error" and finding.line == 3
    assert "gone.gguf" in finding.message


def test_split_gguf_with_a_missing_shard(write_conf):
    files = {"big/M-00001-of-00003.gguf": {}, "big/M-00003-of-00003.gguf": {}}
    (finding,) = findings_for(write_conf, "[p]\nMODEL=big/M-00001-of-00003.gguf\n", files)
    assert finding.code == "model-missing" and "1 of 3 shards" in finding.message
    assert "M-00002-of-00003.gguf" in finding.message


def test_complete_split_gguf_is_fine(write_conf):
    files = {f"big/M-0000{i}-of-00003.gguf": {} for i in (1, 2, 3)}
    assert findings_for(write_conf, "[p]\nMODEL=big/M-00001-of-00003.gguf\n", files) == []


def test_model_path_escaping_models_dir(write_conf):
    (finding,) = findings_for(write_conf, "[p]\nMODEL=../../etc/passwd\n")
    assert finding.code == "model-outside" and finding.severity == "error"


def test_unreadable_gguf(write_conf):
    conf = write_conf("[p]\nMODEL=junk.gguf\n")
    (conf.parent / "models" / "junk.gguf").write_bytes(b"not a gguf at all")
    (finding,) = lint_profiles(load_config(conf)).findings
    assert finding.code == "model-unreadable"


@pytest.mark.parametrize("rule, code", [
    (r"blk\.(1[0-9]\.=CPU", "ot-regex"),
    ("exps=GPU0", "ot-buffer"),
    ("exps", "ot-syntax"),
])
def test_bad_override_rules(write_conf, rule, code):
    found = findings_for(write_conf, f"[p]\nMODEL=m.gguf\nOVERRIDE_TENSORS={rule}\n", {"m.gguf": {}})
    assert code in codes(found)
    assert all(f.severity == "error" for f in found if f.code == code)


def test_ot_rules_inside_extra_args_are_checked_too(write_conf):
    found = findings_for(write_conf, "[p]\nMODEL=m.gguf\nEXTRA_ARGS=-ot blk\\.(3[=CPU --jinja\n", {"m.gguf": {}})
    assert "ot-regex" in codes(found)


def test_lessons_of_the_original(write_conf):
    text = (
        "[gpu-ot]\nMODEL=m.gguf\nOVERRIDE_TENSORS=blk\\.([0-9])\\.=CUDA0,exps=CPU\n\n"
        "[ngl99]\nMODEL=m.gguf\nN_GPU_LAYERS=99\n\n"
        "[fitoff]\nMODEL=m.gguf\nFIT=off\n\n"
        "[manual]\nMODEL=m.gguf\nFIT=off\nN_GPU_LAYERS=99\nOVERRIDE_TENSORS=blk\\.([0-9])\\.=CUDA0\n"
    )
    found = findings_for(write_conf, text, {"m.gguf": {}})
    by_profile = {(f.profile, f.code) for f in found}
    assert ("gpu-ot", "ot-gpu-with-fit") in by_profile
    assert ("ngl99", "ngl-with-fit") in by_profile
    assert ("fitoff", "fit-off-no-placement") in by_profile
    # FIT=off with explicit placement is the deliberate manual style: only the gentle -ot hint
    assert {c for p, c in by_profile if p == "manual"} == {"ot-gpu"}


def test_hybrid_recurrent_model_needs_no_context_shift(write_conf):
    files = {"q.gguf": {"arch": "qwen3next", "extra": {"qwen3next.ssm.conv_kernel": 4}}}
    found = findings_for(write_conf, "[p]\nMODEL=q.gguf\nEXTRA_ARGS=--jinja\n", files)
    assert codes(found) == ["recurrent-context-shift"]
    assert findings_for(write_conf, "[p]\nMODEL=q.gguf\nEXTRA_ARGS=--jinja --no-context-shift\n", files) == []


def test_conflicting_settings(write_conf):
    text = ("[p]\nMODEL=m.gguf\nSPLIT_MODE=none\nTENSOR_SPLIT=3,1\nBATCH_SIZE=256\nUBATCH_SIZE=512\n"
            "CTX_SIZE=4096\nN_CPU_MOE=2\nOVERRIDE_TENSORS=exps=CPU\nEXTRA_ARGS=-c 8192\n")
    found = codes(findings_for(write_conf, text, {"m.gguf": {}}))
    assert {"split-none-with-ts", "ubatch-over-batch", "extra-overrides-key", "ncmoe-with-ot-exps"} <= set(found)


def test_bench_profile_with_samplers_and_inline_comment_and_unknown_key(write_conf):
    text = "[bench-x]\nMODEL=m.gguf\nTEMP=0.7\nEXTRA_ARGS=--jinja # greedy\nMY_NOTE=1\n"
    found = findings_for(write_conf, text, {"m.gguf": {}})
    assert set(codes(found)) == {"bench-samplers", "inline-comment", "unknown-key"}
    lines = {f.code: f.line for f in found}
    assert lines == {"bench-samplers": 3, "inline-comment": 4, "unknown-key": 5}
