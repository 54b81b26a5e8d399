"""`llama-pilot serve` end to end: a real serve process, real llama-server upstreams (the demo model
and two random-weight models), a host-memory budget standing in for GPU memory."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from .serve_helpers import PROFILES, Endpoint, footprints, set_global, stop_everything, write_project


@pytest.fixture
def project(tmp_path: Path, demo_gguf: Path, engine_path: str) -> Iterator[Path]:
    conf = write_project(tmp_path / "proj", demo_gguf)
    yield conf
    stop_everything(conf)


def _budget_for(conf: Path, n: int) -> dict[str, float]:
    """Set SERVE_MEMORY_BUDGET so that any n of the three profiles fit and n+1 do not."""
    sizes = footprints(conf)
    ordered = sorted(sizes.values(), reverse=True)
    budget = sum(ordered[:n]) + min(ordered) / 2 if n < len(ordered) else sum(ordered) + 64
    set_global(conf, SERVE_MEMORY_BUDGET=f"{budget:.0f}MiB")
    return sizes


@pytest.fixture
def endpoint(project: Path, tmp_path: Path) -> Iterator[Endpoint]:
    ep = Endpoint(project, tmp_path / "serve.log")
    yield ep
    ep.stop()


def _served_by(response: httpx.Response) -> str:
    return response.headers.get("x-llama-pilot-profile", "?")


def _upstream_model(response: httpx.Response) -> str:
    """What llama-server itself says it ran: its model file's name."""
    return str(response.json().get("model", ""))


MODEL_FILE = {"demo": "gemma-3-270m", "syn-a": "a.gguf", "syn-b": "b.gguf"}


def test_alternating_clients_under_a_two_model_budget(project: Path, endpoint: Endpoint) -> None:
    _budget_for(project, 2)
    set_global(project, SERVE_MAX_WAIT="1.5")
    endpoint.start()
    results: list[dict[str, Any]] = []
    lock = threading.Lock()

    def client(i: int) -> None:
        with httpx.Client(timeout=120) as http:
            for j in range(25):
                profile = PROFILES[(i + j) % 3]
                started = time.monotonic()
                r = http.post(endpoint.url + "/v1/completions",
                              json={"model": profile, "prompt": f"client {i} request {j}", "max_tokens": 3})
                with lock:
                    results.append({"asked": profile, "status": r.status_code, "served": _served_by(r),
                                    "model": _upstream_model(r) if r.status_code == 200 else r.text,
                                    "seconds": time.monotonic() - started})

    began = time.monotonic()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    duration = time.monotonic() - began
    status = endpoint.status()
    assert len(results) == 100
    failures = [r for r in results if r["status"] != 200]
    assert not failures, failures[:3]
    wrong = [r for r in results if r["served"] != r["asked"] or MODEL_FILE[r["asked"]] not in r["model"]]
    assert not wrong, wrong[:3]
    loads = [s for s in status["swaps"] if s["action"] == "load"]
    swaps = [s for s in loads if s["unloaded"]]
    assert swaps, "a budget for two of three models must swap"
    # The bounded-wait rule: a model with demand is only unloaded for a waiter that waited max_wait.
    for swap in swaps:
        assert swap["reason"] in ("unused", "max-wait"), swap
        if swap["reason"] == "unused":
            assert swap["victims_idle"] is True, swap
        else:
            assert swap["waited_s"] >= 1.5, swap
    forced = [s for s in swaps if s["reason"] == "max-wait"]
    assert len(forced) <= duration / 1.5 + 1, (len(forced), duration)
    longest_load = max(s["load_s"] for s in loads)
    longest_answer = max(r["seconds"] for r in results)
    longest_service = sorted(r["seconds"] for r in results)[len(results) // 2] * 4  # a drained request, generously
    assert longest_answer <= 1.5 + longest_load + longest_service + 2.0, (longest_answer, longest_load)
    # Never more resident than the budget holds.
    assert status["counters"]["served"] == 100
    print(f"\nalternating: {len(swaps)} swaps ({len(forced)} forced by max-wait) in {duration:.1f} s; "
          f"longest answer {longest_answer:.2f} s, longest load {longest_load:.2f} s; "
          f"served {Counter(r['asked'] for r in results)}")


def test_a_budget_that_holds_all_three_never_swaps(project: Path, endpoint: Endpoint) -> None:
    _budget_for(project, 3)
    endpoint.start()
    for j in range(9):
        r = endpoint.complete(PROFILES[j % 3])
        assert r.status_code == 200 and _served_by(r) == PROFILES[j % 3]
    status = endpoint.status()
    assert [s for s in status["swaps"] if s["unloaded"]] == []
    assert sorted(m["profile"] for m in status["models"] if m["state"] == "ready") == sorted(PROFILES)
    assert {s["reason"] for s in status["swaps"] if s["action"] == "load"} == {"fits-beside"}


def test_a_stream_finishes_before_the_model_that_needs_its_memory_loads(project: Path, endpoint: Endpoint) -> None:
    sizes = footprints(project)
    # Room for one model only: syn-a and demo cannot share it.
    set_global(project, SERVE_MEMORY_BUDGET=f"{max(sizes.values()) + 1:.0f}MiB", SERVE_MAX_WAIT="0.2")
    endpoint.start()
    assert endpoint.complete("demo").status_code == 200
    chunks: list[tuple[float, bytes]] = []
    b_done: list[float] = []

    def stream_a() -> None:
        body = {"model": "demo", "prompt": "The history of the sea", "max_tokens": 120, "stream": True,
                "ignore_eos": True}
        with httpx.stream("POST", endpoint.url + "/v1/completions", json=body, timeout=120) as r:
            assert r.status_code == 200
            for chunk in r.iter_raw():
                chunks.append((time.monotonic(), chunk))

    t = threading.Thread(target=stream_a)
    t.start()
    while not chunks:
        time.sleep(0.01)
    r = endpoint.complete("syn-a")  # arrives mid-stream; must wait for the stream, then swap
    b_done.append(time.monotonic())
    t.join()
    assert r.status_code == 200 and _served_by(r) == "syn-a"
    text = b"".join(c for _, c in chunks).decode()
    events = [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: {")]
    assert text.rstrip().endswith("data: [DONE]"), text[-200:]
    assert events[-1]["choices"][0]["finish_reason"] == "length"
    assert sum(1 for e in events if e["choices"][0].get("text")) >= 100  # untruncated: every token came
    assert chunks[-1][0] < b_done[0]  # A finished before B answered
    swap = [s for s in endpoint.status()["swaps"] if s["action"] == "load" and s["profile"] == "syn-a"][-1]
    assert swap["unloaded"] == ["demo"] and swap["reason"] == "max-wait"


def test_streaming_is_passed_through_as_it_comes(project: Path, endpoint: Endpoint) -> None:
    endpoint.start()
    assert endpoint.complete("demo").status_code == 200
    body = {"model": "demo", "prompt": "Once", "max_tokens": 200, "stream": True, "ignore_eos": True}
    arrivals = []
    with httpx.stream("POST", endpoint.url + "/v1/completions", json=body, timeout=120) as r:
        for _ in r.iter_raw():
            arrivals.append(time.monotonic())
    assert len(arrivals) > 20
    # The first token reached us long before the answer was complete: nothing buffered it.
    assert arrivals[-1] - arrivals[0] > 0.5 * (arrivals[-1] - arrivals[0] + 1e-9)
    assert arrivals[len(arrivals) // 2] - arrivals[0] > 0.05


def test_errors_are_clear_and_decided_before_any_byte(project: Path, endpoint: Endpoint, tmp_path: Path) -> None:
    from mcp_server.profiles.config import load_config
    from mcp_server.profiles.edits import create_profile

    create_profile(load_config(project), "broken", {"MODEL": "synth/a.gguf", "CTX_SIZE": "512",
                                                    "EXTRA_ARGS": "--mmproj synth/b.gguf"})
    endpoint.start()
    bad = httpx.post(endpoint.url + "/v1/chat/completions", content=b"{not json", timeout=10)
    assert bad.status_code == 400 and "not JSON" in bad.json()["error"]["message"]
    unknown = endpoint.complete("nope")
    assert unknown.status_code == 404 and set(PROFILES) <= set(unknown.json()["error"]["known"])
    missing = httpx.post(endpoint.url + "/v1/completions", json={"prompt": "x"}, timeout=10)
    assert missing.status_code == 400 and "'model' is required" in missing.json()["error"]["message"]
    foreign = httpx.get(endpoint.url + "/v1/models", headers={"Host": "evil.example:80"}, timeout=10)
    assert foreign.status_code == 403 and "not this machine" in foreign.json()["error"]["message"]
    failed = endpoint.complete("broken")
    assert failed.status_code == 503, failed.text
    err = failed.json()["error"]
    assert err["type"] == "model_load_failed" and err["profile"] == "broken" and err["fix"] and err["code"]
    # streaming, too: the status comes after the load
    with httpx.stream("POST", endpoint.url + "/v1/completions", timeout=60,
                      json={"model": "broken", "prompt": "x", "stream": True}) as r:
        assert r.status_code == 503
    too_long = endpoint.complete("syn-a", prompt="word " * 2000)
    assert too_long.status_code == 400 and "context" in too_long.text  # llama-server's own answer, passed on
    aliased = endpoint.complete("gemma")
    assert aliased.status_code == 200 and _served_by(aliased) == "demo"
    models = httpx.get(endpoint.url + "/v1/models", timeout=10).json()["data"]
    ids = {m["id"] for m in models}
    assert {"demo", "syn-a", "gemma", "local"} <= ids
    assert next(m for m in models if m["id"] == "gemma")["llama_pilot"]["alias_of"] == "demo"
    metrics = httpx.get(endpoint.url + "/metrics", timeout=10).text
    assert 'llama_pilot_resident{model="demo"} 1' in metrics
    assert 'llamacpp:prompt_tokens_total{model="demo"}' in metrics  # the upstream's own, labelled


def test_api_key(project: Path, endpoint: Endpoint, monkeypatch: pytest.MonkeyPatch) -> None:
    set_global(project, SERVE_API_KEY="k-123")
    endpoint.start()
    assert httpx.get(endpoint.url + "/health", timeout=5).status_code == 200  # open for health checks
    assert httpx.get(endpoint.url + "/v1/models", timeout=5).status_code == 401
    wrong = httpx.get(endpoint.url + "/v1/models", headers={"Authorization": "Bearer nope"}, timeout=5)
    assert wrong.status_code == 401 and "wrong API key" in wrong.json()["error"]["message"]
    assert httpx.get(endpoint.url + "/v1/models", headers={"Authorization": "Bearer k-123"}, timeout=5).status_code == 200
    assert httpx.get(endpoint.url + "/v1/models", headers={"x-api-key": "k-123"}, timeout=5).status_code == 200


def test_queue_limit_and_a_client_that_leaves(project: Path, endpoint: Endpoint) -> None:
    sizes = footprints(project)
    set_global(project, SERVE_MEMORY_BUDGET=f"{max(sizes.values()) + 1:.0f}MiB", SERVE_MAX_WAIT="60",
               SERVE_QUEUE_LIMIT="2")
    endpoint.start()
    assert endpoint.complete("demo").status_code == 200
    # A long stream keeps demo busy; syn-a's requests must queue (max wait 60 s).
    body = {"model": "demo", "prompt": "x", "max_tokens": 400, "stream": True, "ignore_eos": True}
    streaming = threading.Thread(target=lambda: httpx.post(endpoint.url + "/v1/completions", json=body, timeout=120))
    streaming.start()
    time.sleep(0.3)
    waiting = [threading.Thread(target=lambda: endpoint.complete("syn-a")) for _ in range(2)]
    for t in waiting:
        t.start()
    deadline = time.monotonic() + 10
    while _model(endpoint, "syn-a")["queued"] < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    over = endpoint.complete("syn-a")
    assert over.status_code == 429 and int(over.headers["Retry-After"]) >= 1
    # a third client for syn-b waits, then hangs up: it is removed and loads nothing
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(endpoint.url + "/v1/completions", json={"model": "syn-b", "prompt": "x", "max_tokens": 2},
                   timeout=1.0)
    deadline = time.monotonic() + 5
    while _model(endpoint, "syn-b")["queued"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _model(endpoint, "syn-b")["queued"] == 0
    streaming.join()
    for t in waiting:
        t.join()
    status = endpoint.status()
    assert status["counters"]["abandoned"] == 1 and status["counters"]["rejected"] == 1
    assert not [s for s in status["swaps"] if s["profile"] == "syn-b"]  # never loaded for a client that left


def _model(endpoint: Endpoint, profile: str) -> dict[str, Any]:
    return next(m for m in endpoint.status()["models"] if m["profile"] == profile)


def test_upstream_killed_mid_stream_then_restarted(project: Path, endpoint: Endpoint) -> None:
    endpoint.start()
    assert endpoint.complete("demo").status_code == 200
    pid = next(i for i in _instances(project) if i.profile == "demo").pid
    body = {"model": "demo", "prompt": "x", "max_tokens": 2000, "stream": True, "ignore_eos": True}
    got = b""
    with httpx.stream("POST", endpoint.url + "/v1/completions", json=body, timeout=60) as r:
        assert r.status_code == 200
        for chunk in r.iter_raw():
            got += chunk
            if got.count(b"data: ") == 5:
                os.kill(pid, signal.SIGKILL)
    tail = got.decode().strip().splitlines()[-1]
    error = json.loads(tail[6:])["error"]
    assert "ended mid-answer" in error["message"]
    again = endpoint.complete("demo")
    assert again.status_code == 200, again.text
    actions = [(s["action"], s["profile"]) for s in endpoint.status()["swaps"]]
    assert ("lost", "demo") in actions and actions[-1] == ("load", "demo")


def test_serve_killed_then_restarted_adopts_what_runs(project: Path, endpoint: Endpoint) -> None:
    _budget_for(project, 3)
    endpoint.start()
    assert endpoint.complete("demo").status_code == 200
    assert endpoint.complete("syn-a").status_code == 200
    before = {i.profile: i.id for i in _instances(project)}
    endpoint.kill()
    # Its models live on under their keepers.
    assert {i.profile for i in _instances(project)} == {"demo", "syn-a"}
    endpoint.start()
    for profile in ("demo", "syn-a"):
        r = endpoint.complete(profile)
        assert r.status_code == 200 and r.headers["x-llama-pilot-instance"] == before[profile]
    status = endpoint.status()
    assert {s["profile"] for s in status["swaps"] if s["action"] == "adopt"} == {"demo", "syn-a"}
    assert not [s for s in status["swaps"] if s["action"] == "load"]  # no second load


def _instances(conf: Path) -> list[Any]:
    from mcp_server.profiles.config import load_config
    from mcp_server.runtime.lifecycle import Runtime

    return [i for i in Runtime(load_config(conf)).status().instances if i.status in ("loading", "ready")]


def test_progress_comments_for_a_client_that_asks(project: Path, endpoint: Endpoint) -> None:
    endpoint.start()
    body = {"model": "syn-a", "prompt": "x", "max_tokens": 4, "stream": True}
    with httpx.stream("POST", endpoint.url + "/v1/completions", json=body, timeout=60,
                      headers={"X-Llama-Pilot-Progress": "sse"}) as r:
        assert r.status_code == 200
        text = "".join(r.iter_text())
    comments = [line for line in text.splitlines() if line.startswith(":")]
    data = [line for line in text.splitlines() if line.startswith("data:")]
    assert any("queued for syn-a" in c for c in comments) and comments[-1] == ": ready", comments
    assert data[-1] == "data: [DONE]"
    assert not any("queue" in d or "loading" in d for d in data)  # progress never inside message content


def test_claude_code_messages_with_tools_through_the_endpoint(project: Path, endpoint: Endpoint) -> None:
    """What Claude Code sends with ANTHROPIC_BASE_URL pointed at the endpoint: /v1/messages, streamed,
    with a tool definition and a tool_use / tool_result exchange in the history."""
    from mcp_server.profiles.config import load_config
    from mcp_server.profiles.edits import create_profile

    create_profile(load_config(project), "claude-local", {
        "MODEL": "gemma-3-270m/gemma-3-270m-q4_k_m.gguf", "CTX_SIZE": "2048",
        "EXTRA_ARGS": "--jinja --chat-template chatml", "ALIASES": "claude-sonnet-4-5"})
    set_global(project, SERVE_API_KEY="sk-local")
    endpoint.start()
    headers = {"x-api-key": "sk-local", "anthropic-version": "2023-06-01"}
    body = {"model": "claude-sonnet-4-5", "max_tokens": 24, "stream": True, "system": "Answer in one line.",
            "tools": [{"name": "get_weather", "description": "Weather for a city",
                       "input_schema": {"type": "object", "properties": {"city": {"type": "string"}},
                                        "required": ["city"]}}],
            "messages": [
                {"role": "user", "content": "What is the weather in Paris?"},
                {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "get_weather",
                                                   "input": {"city": "Paris"}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1",
                                              "content": "sunny, 21 C"}]}]}
    with httpx.stream("POST", endpoint.url + "/v1/messages?beta=true", json=body, headers=headers, timeout=120) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["x-llama-pilot-profile"] == "claude-local"
        text = "".join(r.iter_text())
    kinds = [line[7:] for line in text.splitlines() if line.startswith("event: ")]
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop", kinds
    assert "content_block_delta" in kinds and "message_delta" in kinds
    counted = httpx.post(endpoint.url + "/v1/messages/count_tokens", headers=headers, timeout=30,
                         json={k: body[k] for k in ("model", "system", "tools", "messages")})
    assert counted.status_code == 200 and counted.json()["input_tokens"] > 20
    unauthorized = httpx.post(endpoint.url + "/v1/messages", json=body, timeout=10)
    assert unauthorized.status_code == 401


def test_policy_ttl_pin_priority_and_samplers(project: Path, endpoint: Endpoint) -> None:
    from mcp_server.profiles.config import load_config
    from mcp_server.profiles.edits import create_profile, update_profile

    sizes = footprints(project)
    # room for demo and one syn model
    set_global(project, SERVE_MEMORY_BUDGET=f"{sizes['demo'] + max(sizes['syn-a'], sizes['syn-b']) + 1:.0f}MiB",
               SERVE_MAX_WAIT="0.5")
    update_profile(load_config(project), "syn-a", set={"PRIORITY": "-1", "IDLE_TTL": "2"})
    update_profile(load_config(project), "demo", set={"PIN": "on", "TEMP": "0", "SAMPLERS": "profile"})
    create_profile(load_config(project), "demo-free", {"MODEL": "gemma-3-270m/gemma-3-270m-q4_k_m.gguf",
                                                       "CTX_SIZE": "512", "TEMP": "0"})
    endpoint.start()
    # SAMPLERS=profile: the client's temperature and seed are stripped, the profile's greedy TEMP=0 holds.
    hot = [endpoint.complete("demo", max_tokens=12, temperature=5.0, seed=s).json()["choices"][0]["text"]
           for s in (1, 2, 3)]
    assert len(set(hot)) == 1
    assert endpoint.complete("demo", max_tokens=12, temperature=0).json()["choices"][0]["text"] == hot[0]
    # PIN: demo is never the one to go. syn-b then syn-a (lower priority, used last) are loaded in turn:
    # each unloads the other, never demo.
    assert endpoint.complete("syn-b").status_code == 200
    assert endpoint.complete("syn-a").status_code == 200
    swap = [s for s in endpoint.status()["swaps"] if s["action"] == "load"][-1]
    assert swap["profile"] == "syn-a" and swap["unloaded"] == ["syn-b"]
    # demo-free needs demo's room: demo is pinned, so only the syn model can go, and that is not enough.
    blocked = endpoint.complete("demo-free")
    assert blocked.status_code == 503 and "pinned" in blocked.json()["error"]["message"]
    assert "demo" in blocked.json()["error"]["message"]
    # unpinned through the control route, demo goes (the other resident, syn-a, has the lower priority
    # but freeing it would not be enough).
    assert httpx.post(endpoint.url + "/llama-pilot/pin", json={"profile": "demo", "pinned": False},
                      timeout=10).status_code == 200
    freed = endpoint.complete("demo-free")
    assert freed.status_code == 200
    load = [s for s in endpoint.status()["swaps"] if s["action"] == "load" and s["profile"] == "demo-free"][-1]
    assert load["unloaded"] == ["demo"], load  # only what was needed: syn-a (priority -1) alone was not enough
    # IDLE_TTL=2: syn-a goes by itself once idle for 2 s (if it is still loaded)
    assert endpoint.complete("syn-b").status_code == 200
    assert endpoint.complete("syn-a").status_code == 200
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _model(endpoint, "syn-a")["state"] in ("ready", "unloading"):
        time.sleep(0.2)  # (unloading: the stop is under way; CI once looked in between)
    assert _model(endpoint, "syn-a")["state"] == "absent"
    assert any(s["action"] == "unload" and s["profile"] == "syn-a" and s["reason"] == "idle-ttl"
               for s in endpoint.status()["swaps"])
