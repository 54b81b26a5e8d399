"""models.conf reader/editor/writer: lossless round trips, minimal edits, strict errors, safe saves."""

from __future__ import annotations

import os
import re
import stat

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mcp_server.profiles.conffile import (
    KEY_RE,
    SECTION_ID_RE,
    ConfDocument,
    Entry,
    Section,
    unified_diff,
)
from mcp_server.errors import ConfConflictError, ConfParseError, ProfileNotFound, ValidationError

# --------------------------------------------------------------------------- generated documents

# Odd but single-line characters: anything str.splitlines() treats as a line break would make
# the "exactly one line differs" comparison meaningless.
_ODD_CHARS = (
    "".join(chr(c) for c in range(0x20, 0x7F))
    + "\t\x00\x01\x7f\u00a0é—…→ü日本語\U0001f999\ufeff\u200b\\"
)
_odd_text = st.text(alphabet=_ODD_CHARS, max_size=30)
_blank = st.sampled_from(["", " ", "\t", "  \t "])
_indent = st.sampled_from(["", " ", "  ", "\t"])

_ID_CHARS = "abcxyzABZ0189_.-"
_ids = st.text(alphabet=_ID_CHARS, min_size=1, max_size=12)
_section_ids = st.one_of(_ids, _ids.map(lambda s: f"bench-{s}"), _ids.map(lambda s: f"{s}.v2"))
_keys = st.builds(
    lambda head, tail: head + tail,
    st.sampled_from("AMNXZ_ab"),
    st.text(alphabet="AEIKMSTXZ_019ab", max_size=10),
)
_value_samples = st.sampled_from(
    [
        r"blk\.(3[5-9]|4[0-6])\.=CUDA1",
        r"-ot blk\.([0-9]|1[0-9])\.ffn_.*_exps\.=CUDA0 -ot exps=CPU",
        "--jinja -np 1 --temp 1.0 --top-p 0.95 --min-p 0.01",
        "v # not a comment",
        "a=b=c",
        "C:\\models\\x.gguf",
        "~147 t/s",
        "",
    ]
)
_values = st.one_of(_value_samples, _odd_text).map(lambda v: v.strip(" \t"))


def _is_comment_safe(text: str) -> bool:
    # A generated comment must not accidentally be a retired header.
    return not re.fullmatch(r"\[[A-Za-z0-9_.-]+\]", text.strip().lstrip("#").strip())


_comments = st.builds(
    lambda ind, body: f"{ind}#{body}", _indent, _odd_text.filter(_is_comment_safe)
)
_eq = st.sampled_from(["=", " = ", "= ", " =", "\t=\t"])


_filler = st.lists(st.one_of(_comments, _blank), max_size=3)
_gap = st.lists(st.one_of(_comments, _blank), max_size=1)
_section_list = st.lists(_section_ids, max_size=5, unique=True)
_key_list = st.lists(_keys, max_size=5, unique=True)
_retired_keys = st.lists(_keys, max_size=3)  # retired blocks may repeat keys
_hash = st.sampled_from(["#", "# ", "#  "])
_endings = st.sampled_from(["\n", "\r\n"])


@st.composite
def documents(draw):
    """(text, expected active dicts by id, expected retired ids)."""
    lines: list[str] = draw(_filler)
    expected: dict[str, dict[str, str]] = {}
    retired_ids: list[str] = []

    for sid in draw(_section_list):
        lines.append(f"{draw(_indent)}[{sid}]{draw(_blank)}")
        entries: dict[str, str] = {}
        for key in draw(_key_list):
            lines += draw(_gap)
            value = draw(_values)
            lines.append(f"{draw(_indent)}{key}{draw(_eq)}{value}{draw(_blank)}")
            entries[key] = value
        expected[sid] = entries
        if draw(st.booleans()):  # a retired profile
            rid = draw(_section_ids)
            lines.append(draw(_blank))
            lines.append(f"{draw(_hash)}[{rid}]")
            lines += [f"# {key}={draw(_values)}" for key in draw(_retired_keys)]
            retired_ids.append(rid)
            lines.append(draw(_blank))

    text = "".join(line + draw(_endings) for line in lines)
    if text and draw(st.booleans()):
        text = text.removesuffix("\n").removesuffix("\r")  # missing final newline
    if draw(st.booleans()):
        text = "\ufeff" + text
    return text, expected, retired_ids


def _dicts(doc: ConfDocument) -> dict[str, dict[str, str]]:
    return {s.id: s.as_dict() for s in doc.sections()}


# No example database: the tree is shared and .hypothesis/ is not ours to leave behind.
FAST = settings(
    max_examples=200,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@FAST
@given(documents())
def test_generated_documents_round_trip(doc_spec):
    text, expected, retired_ids = doc_spec
    doc = ConfDocument.parse(text)
    assert doc.render() == text
    assert ConfDocument.parse(text.encode("utf-8")).render() == text
    assert _dicts(doc) == expected
    assert doc.ids() == list(expected)
    assert [s.id for s in doc.retired()] == retired_ids


@FAST
@given(documents(), st.data())
def test_set_existing_key_changes_exactly_one_line(doc_spec, data):
    text, expected, _ = doc_spec
    candidates = [(sid, key) for sid, entries in expected.items() for key in entries]
    if not candidates:
        return
    sid, key = data.draw(st.sampled_from(candidates))
    new_value = data.draw(_values.filter(lambda v: v != expected[sid][key]))

    doc = ConfDocument.parse(text)
    doc.set(sid, key, new_value)
    after = doc.render()

    before_lines = text.splitlines(keepends=True)
    after_lines = after.splitlines(keepends=True)
    assert len(before_lines) == len(after_lines)
    (changed,) = [i for i, (a, b) in enumerate(zip(before_lines, after_lines)) if a != b]
    for ending in ("\r\n", "\n"):
        assert after_lines[changed].endswith(ending) == before_lines[changed].endswith(ending)

    reparsed = ConfDocument.parse(after)
    assert reparsed.section(sid).get(key) == new_value
    want = {s: dict(e) for s, e in expected.items()}
    want[sid][key] = new_value
    assert _dicts(reparsed) == want
    assert [s.id for s in reparsed.retired()] == [s.id for s in doc.retired()]


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("text", "line", "word"),
    [
        ("# intro\n\nMODEL=x.gguf\n[a]\n", 3, "[global]"),
        ("[a]\nMODEL=x\njust some words\n", 3, "expected"),
        ("[a]\nMODEL=x\nCTX_SIZE=1\n  MODEL = y\n", 4, "line 2"),
        ("[a]\nMODEL=x\n\n[b]\nMODEL=y\n\n[a]\n", 7, "line 1"),
        ("[a]\n=x\n", 2, "empty key"),
        ("[a]\n  = x\n", 2, "empty key"),
        ("[a]\n[bad id!]\n", 2, "header"),
        ("[a]\nX=1\n[x\n", 3, "header"),
        ("[a]\n9KEY=1\n", 2, "invalid key"),
        ("[a]\nMY KEY=1\n", 2, "invalid key"),
        ("[a]\r\nX=1\r\n[]\r\n", 3, "header"),
    ],
)
def test_parse_errors_name_line_and_reason(text, line, word):
    with pytest.raises(ConfParseError) as info:
        ConfDocument.parse(text, path="models.conf")
    assert info.value.line == line
    assert word.lower() in info.value.reason.lower()
    assert str(info.value).startswith(f"models.conf:{line}: ")


def test_duplicate_key_reason_names_key_and_first_line():
    with pytest.raises(ConfParseError) as info:
        ConfDocument.parse("[a]\nMODEL=x\nCTX_SIZE=1\nMODEL=y\n")
    assert info.value.line == 4
    assert "MODEL" in info.value.reason and "line 2" in info.value.reason


def test_key_before_first_section_mentions_profile_sections():
    with pytest.raises(ConfParseError) as info:
        ConfDocument.parse("HOST=0.0.0.0\n")
    assert info.value.line == 1
    assert "[global]" in info.value.reason and "profile" in info.value.reason


def test_invalid_utf8_reports_line_of_bad_byte(tmp_path):
    path = tmp_path / "models.conf"
    path.write_bytes(b"[a]\nMODEL=ok\nNAME=caf\xe9\n")
    with pytest.raises(ConfParseError) as info:
        ConfDocument.load(path)
    assert info.value.line == 3
    assert "UTF-8" in info.value.reason
    assert info.value.path == str(path)


def test_load_missing_file_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        ConfDocument.load(tmp_path / "nope.conf")


def test_retired_blocks_are_never_errors():
    text = "# [old]\n# MODEL=a\n# MODEL=b\n# [old]\n# X=1\n[old]\nMODEL=c\n"
    doc = ConfDocument.parse(text)
    assert [s.id for s in doc.retired()] == ["old", "old"]
    assert doc.retired()[0].entries == (Entry("MODEL", "a", 2), Entry("MODEL", "b", 3))
    assert doc.retired()[0].get("MODEL") == "b"
    assert all(s.retired for s in doc.retired())
    assert doc.section("old").get("MODEL") == "c"


def test_retired_block_ends_at_blank_line_or_non_comment():
    text = "[a]\nX=1\n# [old]\n# M=1\n# just a note\n# N=2\n\n# P=3\n[b]\n"
    doc = ConfDocument.parse(text)
    (old,) = doc.retired()
    assert old.as_dict() == {"M": "1", "N": "2"}
    assert old.line == 3


# --------------------------------------------------------------------------- line rules


def test_values_are_verbatim_apart_from_surrounding_blanks():
    text = (
        "[a]\n"
        "EXTRA_ARGS = --jinja -ot blk\\.(3[5-9]|4[0-6])\\.=CUDA1 # keep  \t\n"
        "\tNAME=\n"
        "   # indented comment\n"
        "  [b]  \n"
        "K=a=b\n"
    )
    doc = ConfDocument.parse(text)
    assert doc.section("a").as_dict() == {
        "EXTRA_ARGS": "--jinja -ot blk\\.(3[5-9]|4[0-6])\\.=CUDA1 # keep",
        "NAME": "",
    }
    assert doc.section("b").get("K") == "a=b"
    assert doc.section("b").line == 5
    assert doc.section("b").get("missing") is None
    assert doc.section("zzz") is None


def test_only_newline_ends_a_line():
    # \x0c, \x1c, U+2028 and a lone \r are content, not line breaks
    text = "# form\x0cfeed \u2028 sep\n[a]\nX=a\x1cb\rc\u2028\n\rY=1\r"
    doc = ConfDocument.parse(text)
    assert doc.render() == text
    assert doc.section("a").as_dict() == {"X": "a\x1cb\rc\u2028", "Y": "1"}
    doc.set("a", "Z", "2")
    assert doc.render() == "# form\x0cfeed \u2028 sep\n[a]\nX=a\x1cb\rc\u2028\n\rY=1\nZ=2"


def test_keys_after_a_retired_block_stay_with_the_active_section_above():
    # the original parsers skipped comments, so Y belongs to [a]; retiring [a] takes Y along
    text = "[a]\nX=1\n# [old]\n# M=2\n\nY=3\n[b]\nZ=4\n"
    doc = ConfDocument.parse(text)
    assert doc.section("a").as_dict() == {"X": "1", "Y": "3"}
    doc.retire_section("a")
    assert doc.render() == "# [a]\n# X=1\n# [old]\n# M=2\n\n# Y=3\n[b]\nZ=4\n"
    assert doc.ids() == ["b"]


def test_regexes_exported():
    assert SECTION_ID_RE.match("bench-qwen3.5_a") and not SECTION_ID_RE.match("bad id")
    assert KEY_RE.match("_X9") and not KEY_RE.match("9X")


def test_set_keeps_spacing_and_line_ending():
    doc = ConfDocument.parse("[a]\r\nKEY = old   \r\n\tOTHER=1\n")
    doc.set("a", "KEY", "new")
    doc.set("a", "OTHER", "2")
    assert doc.render() == "[a]\r\nKEY = new\r\n\tOTHER=2\n"
    assert doc.section("a").get("KEY") == "new"


def test_set_new_key_goes_after_last_key_with_dominant_ending():
    text = "[a]\r\nX=1\r\n# note\r\n\r\n[b]\r\n# empty\r\n\n[c]\r\nY=2"
    doc = ConfDocument.parse(text)
    doc.set("a", "Z", "3")
    doc.set("b", "W", "4")
    doc.set("c", "V", "5")  # after the last line, which had no newline
    assert doc.render() == (
        "[a]\r\nX=1\r\nZ=3\r\n# note\r\n\r\n[b]\r\nW=4\r\n# empty\r\n\n[c]\r\nY=2\r\nV=5"
    )
    assert doc.section("a").entries[-1] == Entry("Z", "3", 3)
    assert doc.section("c").line == 10


def test_set_validates_input():
    doc = ConfDocument.parse("[a]\nX=1\n")
    with pytest.raises(ValidationError):
        doc.set("a", "bad key", "1")
    with pytest.raises(ValidationError):
        doc.set("a", "X", "two\nlines")
    with pytest.raises(ValidationError):
        doc.set("a", "X", "cr\r")
    with pytest.raises(ProfileNotFound):
        doc.set("nope", "X", "1")
    assert doc.render() == "[a]\nX=1\n"


def test_unset():
    doc = ConfDocument.parse("[a]\nX=1\nY=2\n[b]\nX=3\n")
    assert doc.unset("a", "X") is True
    assert doc.unset("a", "X") is False
    assert doc.render() == "[a]\nY=2\n[b]\nX=3\n"
    assert doc.section("b").line == 3
    with pytest.raises(ProfileNotFound):
        doc.unset("zzz", "X")


def test_add_section_to_empty_and_unterminated_documents():
    doc = ConfDocument.parse("")
    doc.add_section("global", {"HOST": "0.0.0.0"})
    assert doc.render() == "[global]\nHOST=0.0.0.0\n"

    doc = ConfDocument.parse("[a]\r\nX=1")
    doc.add_section("b", [("MODEL", "m.gguf")], comments=["why", "#already"])
    assert doc.render() == "[a]\r\nX=1\r\n\r\n# why\r\n#already\r\n[b]\r\nMODEL=m.gguf\r\n"

    doc = ConfDocument.parse("[a]\nX=1\n\n")
    doc.add_section("b", {})
    assert doc.render() == "[a]\nX=1\n\n[b]\n"


def test_add_section_rejects_bad_input():
    doc = ConfDocument.parse("[a]\nX=1\n")
    for bad in (
        lambda: doc.add_section("a", {}),
        lambda: doc.add_section("bad id", {}),
        lambda: doc.add_section("b\n", {}),
        lambda: doc.add_section("b", {"9": "x"}),
        lambda: doc.add_section("b", [("X", "1"), ("X", "2")]),
        lambda: doc.add_section("b", {"X": "a\nb"}),
        lambda: doc.add_section("b", {}, comments=["two\nlines"]),
    ):
        with pytest.raises(ValidationError):
            bad()
    assert doc.render() == "[a]\nX=1\n"


def test_retire_section_only_touches_its_header_and_keys():
    text = "[a]\nX=1\n# why a\n\nY=2\n\n# about b\n[b]\nZ=3\n"
    doc = ConfDocument.parse(text)
    doc.retire_section("a", note="retired 2026-02-26, uncomment to reactivate")
    assert doc.render() == (
        "# retired 2026-02-26, uncomment to reactivate\n"
        "# [a]\n# X=1\n# why a\n\n# Y=2\n\n# about b\n[b]\nZ=3\n"
    )
    assert doc.ids() == ["b"]
    assert [(s.id, s.line) for s in doc.retired()] == [("a", 2)]
    with pytest.raises(ProfileNotFound):
        doc.retire_section("a")


def test_unified_diff():
    before = "[a]\nX=1\n"
    after = "[a]\nX=2"
    diff = unified_diff(before, after, "models.conf")
    assert diff.startswith("--- a/models.conf\n+++ b/models.conf\n")
    assert "-X=1\n" in diff and "+X=2\n\\ No newline at end of file\n" in diff
    assert unified_diff(before, before, "models.conf") == ""


# --------------------------------------------------------------------------- a realistic file

REALISTIC = (
    "# =============================================================================\n"
    "# models.conf — model profiles for start.sh, dashboard.py and benchmark.sh\n"
    "# Required fields: MODEL\n"
    "# Optional fields: CTX_SIZE, N_GPU_LAYERS, FIT, EXTRA_ARGS (docker-compose.yml defaults apply when omitted)\n"
    "# =============================================================================\n"
    "\n"
    "# -----------------------------------------------------------------------------\n"
    "# GLM-4.7 Flash (30B-A3B MoE, 64 experts, 4 active; MLA attention)\n"
    "# Architecture source: model card (models/documentation/GLM-4.7-Flash/README.md)\n"
    "# Tested 2026-02-23: ~147 t/s, 1 graph split, CUDA0 88% VRAM, KV cache 1632 MiB\n"
    "# -----------------------------------------------------------------------------\n"
    "\n"
    "# Strategy A: fits on one GPU, keep it there.\n"
    "[glm-flash-q4]\n"
    "NAME=GLM-4.7 Flash Q4_K_M\n"
    "DESCRIPTION=Fast general assistant, tool calling\n"
    "SPEED=~147 t/s\n"
    "MODEL=GLM-4.7-Flash/GLM-4.7-Flash-Q4_K_M.gguf\n"
    "CTX_SIZE=131072\n"
    "EXTRA_ARGS=--jinja -np 1 --temp 1.0 --top-p 0.95 --min-p 0.01 --split-mode none --main-gpu 0\n"
    "\n"
    "[glm-flash-q8]\n"
    "NAME=GLM-4.7 Flash Q8_0\n"
    "DESCRIPTION=Higher quality GLM\n"
    "SPEED=~112 t/s\n"
    "MODEL=GLM-4.7-Flash/GLM-4.7-Flash-Q8_0.gguf\n"
    "CTX_SIZE=131072\n"
    "# Previous: EXTRA_ARGS=--jinja -np 1 -ot blk\\.(3[5-9]|4[0-6])\\.=CUDA1\n"
    "EXTRA_ARGS=--jinja -np 1 --temp 1.0 --top-p 0.95 --min-p 0.01\n"
    "\n"
    "# -----------------------------------------------------------------------------\n"
    "# Qwen3.5 (Gated DeltaNet hybrid): keep --no-context-shift\n"
    "# -----------------------------------------------------------------------------\n"
    "[qwen35-35b-q6]\n"
    "NAME=Qwen3.5-35B-A3B UD-Q6_K_XL\n"
    "SPEED=~120 t/s\n"
    "MODEL=Qwen3.5/MoE/35B/UD6_K_XL/Qwen3.5-35B-A3B-UD-Q6_K_XL.gguf\n"
    "CTX_SIZE=262144\n"
    "EXTRA_ARGS=--jinja -np 1 --no-context-shift --temp 1.0 --top-p 0.95 --top-k 20 --min-p 0\n"
    "\n"
    "# NOT YET TESTED — run ./start.sh mistral4-119b-q3 and share startup logs\n"
    "[mistral4-119b-q3]\n"
    "NAME=Mistral Small 4 119B UD-Q3_K_XL\n"
    "SPEED=~TBD t/s\n"
    "MODEL=Mistral-Small-4-119b-2603/MOE/UD-Q3_K_XL/Mistral-Small-4-119B-UD-Q3_K_XL-00001-of-00003.gguf\n"
    "CTX_SIZE=262144\n"
    "EXTRA_ARGS=--jinja -np 1 --temp 0.1 --top-p 1.0 --min-p 0\n"
    "\n"
    "# --- Retired 2026-02-26 (uncomment to reactivate) ---\n"
    "# [gpt-oss-120b]\n"
    "# NAME=GPT-OSS 120B\n"
    "# MODEL=GPT-OSS-120b/gpt-oss-120b-F16-00001-of-00002.gguf\n"
    "# CTX_SIZE=131072\n"
    "# EXTRA_ARGS=--jinja -np 1 --temp 1.0 --top-p 1.0 --top-k 0 -ot blk\\.([0-9]|1[0-9])\\.ffn_.*_exps\\.=CUDA0,exps=CPU\n"
    "\n"
    "#[test-ts-split]\n"
    "#N_GPU_LAYERS=99\n"
    "#FIT=off\n"
    "#EXTRA_ARGS=-b 2048 -ub 512 --tensor-split 21,10 -ot exps=CPU\n"
    "\n"
    "# =============================================================================\n"
    "# Benchmark profiles (benchmark.sh): CTX 10240, no samplers, reasoning in content\n"
    "# =============================================================================\n"
    "[bench-glm-flash-q4]\n"
    "NAME=GLM-4.7 Flash Q4_K_M (benchmark)\n"
    "MODEL=GLM-4.7-Flash/GLM-4.7-Flash-Q4_K_M.gguf\n"
    "CTX_SIZE=10240\n"
    "EXTRA_ARGS=--jinja -np 1 --reasoning-format none --split-mode none --main-gpu 0\n"
    "\n"
    "[bench-qwen35-35b-q6]\n"
    "NAME=Qwen3.5-35B-A3B UD-Q6_K_XL (benchmark)\n"
    "MODEL=Qwen3.5/MoE/35B/UD6_K_XL/Qwen3.5-35B-A3B-UD-Q6_K_XL.gguf\n"
    "CTX_SIZE=10240\n"
    "EXTRA_ARGS=--jinja -np 1 --reasoning-format none --no-context-shift\n"
    "\n"
    "# [bench-gpt-oss-120b]\n"
    "# NAME=GPT-OSS 120B (benchmark)\n"
    "# MODEL=GPT-OSS-120b/gpt-oss-120b-F16-00001-of-00002.gguf\n"
    "# CTX_SIZE=10240\n"
)

PRODUCTION = ["glm-flash-q4", "glm-flash-q8", "qwen35-35b-q6", "mistral4-119b-q3"]
BENCH = ["bench-glm-flash-q4", "bench-qwen35-35b-q6"]


def _diff_lines(before: str, after: str) -> list[int]:
    a, b = before.splitlines(keepends=True), after.splitlines(keepends=True)
    assert len(a) == len(b)
    return [i for i, (x, y) in enumerate(zip(a, b), 1) if x != y]


@pytest.fixture
def realistic(tmp_path):
    path = tmp_path / "models.conf"
    path.write_bytes(REALISTIC.encode("utf-8"))
    return path


def test_realistic_file_parses_and_round_trips(realistic):
    doc = ConfDocument.load(realistic)
    assert doc.render().encode("utf-8") == realistic.read_bytes()
    assert doc.ids() == PRODUCTION + BENCH
    assert doc.path == realistic
    q8 = doc.section("glm-flash-q8")
    assert q8.get("EXTRA_ARGS") == "--jinja -np 1 --temp 1.0 --top-p 0.95 --min-p 0.01"
    assert list(q8.as_dict()) == ["NAME", "DESCRIPTION", "SPEED", "MODEL", "CTX_SIZE", "EXTRA_ARGS"]
    assert [s.id for s in doc.retired()] == ["gpt-oss-120b", "test-ts-split", "bench-gpt-oss-120b"]
    gpt = doc.retired()[0]
    assert gpt.get("EXTRA_ARGS").endswith(r"-ot blk\.([0-9]|1[0-9])\.ffn_.*_exps\.=CUDA0,exps=CPU")
    assert doc.retired()[1].as_dict() == {
        "N_GPU_LAYERS": "99",
        "FIT": "off",
        "EXTRA_ARGS": "-b 2048 -ub 512 --tensor-split 21,10 -ot exps=CPU",
    }
    # "# Previous: EXTRA_ARGS=..." is a comment, not a key
    assert "Previous" not in "".join(q8.as_dict())


def test_realistic_set_changes_only_that_line(realistic):
    doc = ConfDocument.load(realistic)
    before = doc.render()
    line = doc.section("qwen35-35b-q6").entries[-1].line
    doc.set("qwen35-35b-q6", "CTX_SIZE", "131072")
    assert _diff_lines(before, doc.render()) == [line - 1]
    others = {s.id: s.as_dict() for s in ConfDocument.parse(before).sections()}
    others["qwen35-35b-q6"]["CTX_SIZE"] = "131072"
    assert {s.id: s.as_dict() for s in doc.sections()} == others


def test_realistic_set_new_key_adds_one_line_in_that_section(realistic):
    doc = ConfDocument.load(realistic)
    before = doc.render().splitlines(keepends=True)
    last = doc.section("glm-flash-q8").entries[-1].line
    doc.set("glm-flash-q8", "FIT_TARGET", "128,1024")
    after = doc.render().splitlines(keepends=True)
    assert after == before[:last] + ["FIT_TARGET=128,1024\n"] + before[last:]
    assert doc.section("glm-flash-q8").get("FIT_TARGET") == "128,1024"
    assert doc.section("qwen35-35b-q6").line == ConfDocument.parse("".join(before)).section(
        "qwen35-35b-q6"
    ).line + 1


def test_realistic_unset_removes_one_line(realistic):
    doc = ConfDocument.load(realistic)
    before = doc.render().splitlines(keepends=True)
    line = next(e.line for e in doc.section("glm-flash-q4").entries if e.key == "SPEED")
    assert doc.unset("glm-flash-q4", "SPEED")
    assert doc.render().splitlines(keepends=True) == before[: line - 1] + before[line:]
    assert doc.section("glm-flash-q4").get("SPEED") is None


def test_realistic_add_section_appends_at_end(realistic):
    doc = ConfDocument.load(realistic)
    before = doc.render()
    doc.add_section(
        "bench-mistral4-119b-q3",
        {"NAME": "Mistral Small 4 119B UD-Q3_K_XL (benchmark)", "CTX_SIZE": "10240"},
        comments=["NOT YET TESTED"],
    )
    after = doc.render()
    assert after.startswith(before)
    assert after[len(before):] == (
        "\n# NOT YET TESTED\n[bench-mistral4-119b-q3]\n"
        "NAME=Mistral Small 4 119B UD-Q3_K_XL (benchmark)\nCTX_SIZE=10240\n"
    )
    assert doc.ids()[-1] == "bench-mistral4-119b-q3"


def test_realistic_retire_section(realistic):
    doc = ConfDocument.load(realistic)
    before = doc.render()
    sec = doc.section("mistral4-119b-q3")
    touched = [sec.line] + [e.line for e in sec.entries]
    doc.retire_section("mistral4-119b-q3")
    assert _diff_lines(before, doc.render()) == touched
    assert "mistral4-119b-q3" not in doc.ids()
    retired = {s.id: s for s in doc.retired()}
    assert retired["mistral4-119b-q3"].as_dict() == sec.as_dict()
    # the blank line and the banner comment after the section are untouched
    assert "\n\n# --- Retired 2026-02-26 (uncomment to reactivate) ---\n" in doc.render()

    with_note = ConfDocument.load(realistic)
    with_note.retire_section("glm-flash-q4", note="retired: superseded by q8")
    lines = with_note.render().splitlines()
    assert lines[13:15] == ["# retired: superseded by q8", "# [glm-flash-q4]"]


# --------------------------------------------------------------------------- saving


def _backups(directory, name="models.conf"):
    return sorted(p.name for p in directory.iterdir() if re.fullmatch(rf"{name}\.\d{{8}}T\d{{12}}", p.name))


def test_save_untouched_keeps_bytes_and_makes_backup(tmp_path):
    path = tmp_path / "models.conf"
    raw = "\ufeff# crlf file\r\n[a]\r\nX = 1  \r\n\n[b]\r\nY=2".encode("utf-8")
    path.write_bytes(raw)
    doc = ConfDocument.load(path)
    backups = tmp_path / "backups"
    made = doc.save(backup_dir=backups)
    assert path.read_bytes() == raw
    assert made is not None and made.parent == backups and made.read_bytes() == raw
    assert re.fullmatch(r"models\.conf\.\d{8}T\d{12}", made.name)
    assert sorted(os.listdir(tmp_path)) == ["backups", "models.conf"]  # no temp files left


def test_save_writes_edit_and_can_save_twice(tmp_path):
    path = tmp_path / "models.conf"
    path.write_text("[a]\nX=1\n")
    doc = ConfDocument.load(path)
    doc.set("a", "X", "2")
    assert doc.save() is None
    assert path.read_text() == "[a]\nX=2\n"
    doc.set("a", "X", "3")
    doc.save()
    assert path.read_text() == "[a]\nX=3\n"
    assert ConfDocument.load(path).section("a").get("X") == "3"


def test_save_prunes_backups(tmp_path):
    path = tmp_path / "models.conf"
    path.write_text("[a]\nN=0\n")
    backups = tmp_path / "bk"
    backups.mkdir()
    (backups / "other.conf.20200101T000000000000").write_text("keep me")
    doc = ConfDocument.load(path)
    made = []
    for n in range(1, 6):
        doc.set("a", "N", str(n))
        made.append(doc.save(backup_dir=backups, keep_backups=3))
    remaining = _backups(backups)
    assert remaining == sorted(p.name for p in made[-3:])
    assert [ConfDocument.load(backups / name).section("a").get("N") for name in remaining] == [
        "2",
        "3",
        "4",
    ]
    assert (backups / "other.conf.20200101T000000000000").read_text() == "keep me"


def test_save_refuses_when_file_changed_on_disk(tmp_path):
    path = tmp_path / "models.conf"
    path.write_text("[a]\nX=1\n")
    doc = ConfDocument.load(path)
    other = "[a]\nX=1\n# someone else's edit\n"
    path.write_text(other)
    doc.set("a", "X", "2")
    backups = tmp_path / "bk"
    with pytest.raises(ConfConflictError) as info:
        doc.save(backup_dir=backups)
    assert str(path) in str(info.value) and "reload" in str(info.value).lower()
    assert path.read_text() == other
    assert not backups.exists()
    assert sorted(os.listdir(tmp_path)) == ["models.conf"]


def test_save_refuses_when_file_vanished(tmp_path):
    path = tmp_path / "models.conf"
    path.write_text("[a]\nX=1\n")
    doc = ConfDocument.load(path)
    path.unlink()
    with pytest.raises(ConfConflictError):
        doc.save()
    assert not path.exists()


def test_save_preserves_mode(tmp_path):
    path = tmp_path / "models.conf"
    path.write_text("[a]\nX=1\n")
    path.chmod(0o640)
    doc = ConfDocument.load(path)
    doc.set("a", "X", "2")
    doc.save(backup_dir=tmp_path / "bk")
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert path.read_text() == "[a]\nX=2\n"


def test_parsed_document_saves_to_new_path(tmp_path):
    doc = ConfDocument.parse("[a]\nX=1\n")
    with pytest.raises(ValueError):
        doc.save()
    target = tmp_path / "new.conf"
    assert doc.save(target, backup_dir=tmp_path / "bk") is None  # nothing to back up yet
    assert target.read_text() == "[a]\nX=1\n"
    assert doc.path == target
    doc.set("a", "X", "2")
    doc.save()
    assert target.read_text() == "[a]\nX=2\n"


def test_section_is_frozen():
    section = Section("a", 1, (Entry("X", "1", 2),))
    with pytest.raises(AttributeError):
        section.id = "b"  # type: ignore[misc]
    assert section.retired is False


# --- the trimmed diff (big files): every diff applies back to the edited text -------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from mcp_server.profiles.conffile import _split_lines as _lines  # noqa: E402

_HUNK = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")


def _apply_diff(before: str, diff: str) -> str:
    src, body, out, pos, k = _lines(before), diff.splitlines(keepends=True), [], 0, 2
    while k < len(body):
        match = _HUNK.match(body[k])
        assert match, body[k]
        start = int(match.group(1)) - 1 if int(match.group(2) or 1) else int(match.group(1))
        out += src[pos:start]
        pos, k = start, k + 1
        while k < len(body) and not body[k].startswith("@@"):
            line = body[k]
            no_eol = k + 1 < len(body) and body[k + 1].startswith("\\ No newline")
            text = line[1:-1] if no_eol else line[1:]
            if line[0] in " -":
                assert src[pos] == text
                pos += 1
            if line[0] in " +":
                out.append(text)
            k += 2 if no_eol else 1
    return "".join(out + src[pos:])


@settings(max_examples=400, deadline=None, derandomize=True)
@given(st.lists(st.sampled_from(["a\n", "b\n", "[s]\n", "K=1\n"]), max_size=40), st.data())
def test_unified_diff_applies_back_to_the_new_text(lines, data):
    before = "".join(lines)
    edited = list(lines)
    for _ in range(data.draw(st.integers(0, 4))):
        where = data.draw(st.integers(0, len(edited)))
        if data.draw(st.booleans()) or not edited:
            edited.insert(where, data.draw(st.sampled_from(["new\n", "K=2\n", "b\n"])))
        else:
            del edited[min(where, len(edited) - 1)]
    after = "".join(edited)
    if data.draw(st.booleans()):
        after = after.rstrip("\n")
    diff = unified_diff(before, after, "models.conf")
    assert (diff == "") == (before == after)
    if diff:
        assert _apply_diff(before, diff) == after
