"""The hub client and quant listing against a fake hub: a real HTTP server on loopback."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from mcp_server.hub.client import HubClient, HubError, RepoGated, RepoNotFound
from mcp_server.hub.quants import list_quants, pick, split_spec
from mcp_server.model_files.synthetic import DenseShape, write_dense

from .fake_hub import FakeHub, FakeRepo, Running


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[FakeHub]:
    files = tmp_path / "hubfiles"
    small = write_dense(files / "m-Q8_0.gguf", DenseShape(), seed=1)
    shards = {}
    for i in (1, 2, 3):
        shards[f"UD-Q4_K_XL/M-UD-Q4_K_XL-{i:05d}-of-00003.gguf"] = write_dense(
            files / f"shard{i}.gguf", DenseShape(), seed=i)
    readme = files / "README.md"
    readme.write_text("# M\nTemperature 0.6\n")
    hub = FakeHub(repos={
        "org/M-GGUF": FakeRepo(files={"M-Q8_0.gguf": small, "M-Q4_K_M.gguf": small, **shards,
                                      "mmproj-M-F16.gguf": small, "README.md": readme, "imatrix.dat": readme},
                               downloads=500),
        "org/Broken-GGUF": FakeRepo(files={"B-Q4_K_M-00001-of-00002.gguf": small}),
        "org/Gated-GGUF": FakeRepo(files={"G-Q4_K_M.gguf": small}, gated=True, downloads=10),
        "org/Plain": FakeRepo(files={"model.safetensors": readme, "README.md": readme}),
    })
    server = Running(hub)
    yield hub
    server.stop()


def test_quants_are_grouped_with_shards_sizes_kinds_and_card(hub: FakeHub) -> None:
    with HubClient(hub.url) as client:
        quants = list_quants("org/M-GGUF", client)
    by_tag = {s.tag: s for s in quants.sets if s.kind == "model"}
    assert set(by_tag) == {"Q8_0", "Q4_K_M", "UD-Q4_K_XL"}
    split = by_tag["UD-Q4_K_XL"]
    assert split.shards == 3 and len(split.files) == 3 and not split.missing
    assert split.total_bytes == sum(p.stat().st_size for n, p in hub.repos["org/M-GGUF"].files.items() if "UD" in n)
    kinds = {s.kind for s in quants.sets}
    assert kinds == {"model", "mmproj", "imatrix"}
    assert quants.card == "README.md" and quants.commit == hub.repos["org/M-GGUF"].commit
    assert pick(quants, "ud-q4_k_xl") is split
    with pytest.raises(HubError, match="it has: .*Q8_0"):
        pick(quants, "IQ2_XXS")


def test_a_split_with_a_shard_missing_on_the_hub(hub: FakeHub) -> None:
    with HubClient(hub.url) as client:
        quants = list_quants("org/Broken-GGUF", client)
    with pytest.raises(HubError, match="B-Q4_K_M-00002-of-00002.gguf missing"):
        pick(quants, "Q4_K_M")


def test_errors_name_the_endpoint_and_the_fix(hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_TOKEN", raising=False)
    with HubClient(hub.url) as client:
        with pytest.raises(RepoNotFound, match=f"org/Nope-GGUF was not found on {hub.url}"):
            list_quants("org/Nope-GGUF", client)
        with pytest.raises(RepoGated, match="HF_TOKEN"):
            list_quants("org/Gated-GGUF", client)
        with pytest.raises(HubError, match="has no GGUF"):
            list_quants("org/Plain", client)
        with pytest.raises(HubError, match="not a Hugging Face repo id"):
            list_quants("../../etc", client)
    monkeypatch.setenv("HF_TOKEN", "hf_good")
    with HubClient(hub.url) as client:  # the token from the environment opens the gated repo
        assert list_quants("org/Gated-GGUF", client).sets[0].tag == "Q4_K_M"
    with HubClient("http://127.0.0.1:9") as client:
        with pytest.raises(HubError, match="cannot reach the hub at http://127.0.0.1:9"):
            client.search("x")


def test_search_and_ranged_reads(hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    with HubClient() as client:  # HF_ENDPOINT, read when the client is made
        assert [h.repo for h in client.search("gguf")][:2] == ["org/M-GGUF", "org/Gated-GGUF"]
        head = client.read_range("org/M-GGUF", "main", "M-Q8_0.gguf", 0, 3)
        assert head == b"GGUF" and hub.range_requests == 1
        hub.ignore_range = True
        with pytest.raises(HubError, match="ignored the byte range"):
            client.read_range("org/M-GGUF", "main", "M-Q8_0.gguf", 0, 3)


def test_specs() -> None:
    assert split_spec("org/M-GGUF@v2:Q4_K_M") == ("org/M-GGUF", "v2", "Q4_K_M")
    assert split_spec("org/M-GGUF") == ("org/M-GGUF", "main", None)


def test_fit_from_headers_only_matches_the_local_plan(tmp_path: Path) -> None:
    """A 3-shard ~60 GB MoE (sparse) on the hub: the remote check reads only headers, and plans
    exactly what plan_placement plans for the same file on disk."""
    from mcp_server.hub.fit import check_fit
    from mcp_server.model_files.synthetic import write_model
    from mcp_server.placement.operations import plan_placement

    shape = dict(n_layer=48, n_embd=4096, n_head=32, n_head_kv=4, head_dim=128, n_expert=128, n_expert_used=8,
                 n_ff_expert=1536, n_ctx_train=131072, n_vocab=32000)
    shards = write_model("moe", tmp_path / "big" / "Big-UD-Q4_K_XL", shape, sparse=True, n_shards=3)
    total = sum(p.stat().st_size for p in shards)
    assert total > 55 * 2**30
    hub = FakeHub(repos={"org/Big-GGUF": FakeRepo(files={f"UD-Q4_K_XL/{p.name}": p for p in shards})})
    server = Running(hub)
    try:
        with HubClient(hub.url) as client:
            result = check_fit("org/Big-GGUF", ctx=32768, gpus="24GiB,16GiB", kv_type="q8_0", client=client)
    finally:
        server.stop()
    (fit,) = result.quants
    assert fit.tag == "UD-Q4_K_XL" and fit.error is None
    local = plan_placement(None, str(shards[0]), ctx=32768, gpus="24GiB,16GiB", kv_type="q8_0", agent=False).plan
    assert fit.settings == local.settings and fit.strategy == local.strategy
    assert fit.fits == local.estimate.fits and fit.gpu_mib == [round(d.total_mib, 1) for d in local.estimate.devices]
    assert result.header_bytes == hub.bytes_sent < 3 * 16 * 2**20  # headers only: a few MiB per shard
    assert result.header_bytes / total < 0.001
    assert result.recommended == "UD-Q4_K_XL" or not fit.fits


@pytest.fixture
def download_hub(tmp_path: Path) -> Iterator[FakeHub]:
    files = tmp_path / "dl"
    parts = {f"Q8_0/W-Q8_0-{i:05d}-of-00002.gguf": write_dense(files / f"w{i}.gguf",
                                                                DenseShape(n_embd=256, n_ff=512, extra_vocab=3000),
                                                                seed=i) for i in (1, 2)}
    hub = FakeHub(repos={"org/W-GGUF": FakeRepo(files=parts)})
    server = Running(hub)
    yield hub
    server.stop()


def _same(hub: FakeHub, models: Path) -> bool:
    return all((models / "org/W-GGUF" / n).read_bytes() == p.read_bytes() for n, p in hub.repos["org/W-GGUF"].files.items())


def test_download_verifies_resumes_after_a_cut_and_refetches_a_corrupt_file(download_hub: FakeHub,
                                                                             tmp_path: Path) -> None:
    from mcp_server.hub.download import download_quant

    hub, models = download_hub, tmp_path / "models"
    total = sum(p.stat().st_size for p in hub.repos["org/W-GGUF"].files.values())
    hub.cut_after = 300_000  # the first body breaks off: the same call continues with Range
    hub.corrupt_once = {"Q8_0/W-Q8_0-00002-of-00002.gguf"}
    seen = []
    with HubClient(hub.url) as client:
        result = download_quant("org/W-GGUF:Q8_0", models, client=client, progress=seen.append)
    assert _same(hub, models) and all(f.verified for f in result.files)
    assert result.model == "org/W-GGUF/Q8_0/W-Q8_0-00001-of-00002.gguf"
    second = result.files[1]
    assert second.refetched and not result.files[0].refetched
    size2 = hub.repos["org/W-GGUF"].files["Q8_0/W-Q8_0-00002-of-00002.gguf"].stat().st_size
    assert result.fetched_bytes == total + size2  # the cut lost nothing; only the corrupt file came twice
    assert seen and seen[-1].done_bytes == seen[-1].total_bytes
    assert not list(models.rglob("*.part")) and not list(models.rglob("*.lock"))
    # Again: everything is there and verified, nothing is fetched.
    with HubClient(hub.url) as client:
        again = download_quant("org/W-GGUF:Q8_0", models, client=client)
    assert again.fetched_bytes == 0


def test_a_partial_file_continues_and_a_server_ignoring_range_restarts_it(download_hub: FakeHub,
                                                                          tmp_path: Path) -> None:
    from mcp_server.hub.download import download_quant

    hub, models = download_hub, tmp_path / "models"
    name = "Q8_0/W-Q8_0-00001-of-00002.gguf"
    source = hub.repos["org/W-GGUF"].files[name]
    part = models / "org/W-GGUF" / (name + ".part")
    part.parent.mkdir(parents=True)
    part.write_bytes(source.read_bytes()[:123_456])  # what a killed run left behind
    with HubClient(hub.url) as client:
        result = download_quant("org/W-GGUF:Q8_0", models, client=client)
    assert result.files[0].resumed_from == 123_456
    assert result.files[0].fetched_bytes == source.stat().st_size - 123_456
    assert _same(hub, models)
    (models / "org/W-GGUF" / name).unlink()
    part.write_bytes(source.read_bytes()[:5000])
    hub.ignore_range = True
    with HubClient(hub.url) as client:
        result = download_quant("org/W-GGUF:Q8_0", models, client=client)
    assert result.files[0].fetched_bytes == source.stat().st_size and _same(hub, models)


def test_download_refusals(download_hub: FakeHub, tmp_path: Path) -> None:
    from mcp_server.hub.download import download_quant

    with HubClient(download_hub.url) as client:
        with pytest.raises(HubError, match="name the quant"):
            download_quant("org/W-GGUF", tmp_path, client=client)
        with pytest.raises(HubError, match="no quant 'Q2_K'.*it has: Q8_0"):
            download_quant("org/W-GGUF:Q2_K", tmp_path, client=client)


def test_kill_9_mid_download_then_run_again(download_hub: FakeHub, tmp_path: Path) -> None:
    """The real command in its own process, killed with SIGKILL halfway; the second run fetches only
    what is missing (under 1% again) and verifies the whole file."""
    import os
    import signal
    import subprocess
    import sys
    import time

    hub, models = download_hub, tmp_path / "models"
    hub.delay_per_chunk_s = 0.05  # 256 KiB chunks, slowly
    env = {**os.environ, "HF_ENDPOINT": hub.url}
    argv = [sys.executable, "-m", "mcp_server", "cli", "hub", "download", "org/W-GGUF:Q8_0", "--to", str(models),
            "--json"]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    part = models / "org/W-GGUF/Q8_0/W-Q8_0-00001-of-00002.gguf.part"
    deadline = time.monotonic() + 30
    size = hub.repos["org/W-GGUF"].files["Q8_0/W-Q8_0-00001-of-00002.gguf"].stat().st_size
    while time.monotonic() < deadline and (not part.exists() or part.stat().st_size < size // 2):
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    left = part.stat().st_size
    assert 0 < left < size
    hub.delay_per_chunk_s = 0.0
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    import json

    result = json.loads(done.stdout)
    first = result["files"][0]
    assert first["resumed_from"] == left and first["verified"]
    refetched_share = (first["fetched_bytes"] - (size - left)) / size
    assert refetched_share < 0.01
    assert _same(hub, models)
