"""A big models.conf stays fast (issue 11, item 9): lint reads each model file once per run and only
up to its tokenizer, and section lookups are by index. The timings themselves are a benchmark
(benchmarks/profile_scale.py, results in docs/benchmarks/profile-scale.md), not a test."""

from __future__ import annotations

from pathlib import Path

from mcp_server.model_files import reader as ggufmeta

from mcp_server.profiles import lint
from mcp_server.profiles.conffile import ConfDocument
from mcp_server.profiles.config import load_config
from mcp_server.model_files.synthetic import MIN_VOCAB, DenseShape, dense_tensors, write_gguf


def _big_vocab_model(path: Path, seed: int) -> None:
    tensors, metadata = dense_tensors(DenseShape(extra_vocab=151_936 - MIN_VOCAB))
    write_gguf(path, tensors, metadata, "llama", sparse=True, seed=seed)


def test_lint_reads_each_file_once_and_stops_at_the_tokenizer(write_conf, monkeypatch):
    lines = []
    for i in range(1000):
        lines += [f"[p{i}]", f"MODEL=m{i % 5}.gguf", f"CTX_SIZE={1024 + i}", "EXTRA_ARGS=--jinja", ""]
    conf = write_conf("\n".join(lines))
    for i in range(5):
        _big_vocab_model(conf.parent / "models" / f"m{i}.gguf", seed=i)
    reads: list[Path] = []
    real = ggufmeta.model_keys

    def counting(path):  # type: ignore[no-untyped-def]
        reads.append(Path(path))
        return real(path)

    monkeypatch.setattr(ggufmeta, "model_keys", counting)
    findings = lint.lint_profiles(load_config(conf)).findings
    assert len(reads) == 5 and len(set(reads)) == 5
    assert not [f for f in findings if f.severity == "error"]


def test_model_keys_stop_before_the_tokenizer_arrays(tmp_path):
    path = tmp_path / "m.gguf"
    _big_vocab_model(path, seed=1)
    keys = ggufmeta.model_keys(path)
    full = ggufmeta.read_metadata(path)
    assert keys["general.architecture"] == "llama" and "llama.block_count" in keys
    assert "tokenizer.ggml.tokens" not in keys and "tokenizer.ggml.tokens" in full
    assert all(full[k] == v for k, v in keys.items() if not k.startswith("tokenizer."))


def test_section_lookup_is_by_index_and_follows_edits():
    doc = ConfDocument.parse("".join(f"[s{i}]\nMODEL=x\n" for i in range(3000)))
    assert doc.section("s2999").line == 5999
    doc.set("s5", "CTX_SIZE", "1")
    doc.retire_section("s6")
    assert doc.section("s5").get("CTX_SIZE") == "1" and doc.section("s6") is None
    assert doc.section("s2999").line == 6000  # one line added above it
