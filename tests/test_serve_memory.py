"""serve's memory decision (pure arithmetic) and its policy keys in models.conf."""

from __future__ import annotations

import pytest

from mcp_server.errors import ValidationError
from mcp_server.profiles.config import load_config
from mcp_server.serve.memory import Footprint, Resident, decide, parse_budget
from mcp_server.serve.policy import (ServeRefused, alias_conflicts, check_bind, model_names, policy_for,
                                     serve_settings, strip_samplers)


def fp(name: str, **mib: float) -> Footprint:
    return Footprint(profile=name, mib=mib, source="estimate")


def test_fits_beside_when_every_device_has_room() -> None:
    d = decide(fp("b", gpu0=900, host=100), [Resident("a", fp("a", gpu0=500))], {"gpu0": 1000, "host": 200})
    assert d.fits and not d.victims


def test_only_devices_serve_checks_count() -> None:
    # host is not in the room (GPUs only, no declared budget): its need does not block
    assert decide(fp("b", gpu0=100, host=10**6), [], {"gpu0": 200}).fits


def test_unloads_idle_before_busy_then_lowest_priority_then_least_recent() -> None:
    residents = [Resident("busy", fp("busy", gpu0=600), busy=True, last_used=1),
                 Resident("old", fp("old", gpu0=600), last_used=1),
                 Resident("new", fp("new", gpu0=600), last_used=9),
                 Resident("low", fp("low", gpu0=600), priority=-5, last_used=10)]
    assert decide(fp("b", gpu0=500), residents, {"gpu0": 0}).victims == ["low"]
    assert decide(fp("b", gpu0=1100), residents, {"gpu0": 0}).victims == ["low", "old"]


def test_never_a_pinned_one_and_says_which_pins_block() -> None:
    d = decide(fp("b", gpu0=500), [Resident("p", fp("p", gpu0=600), pinned=True)], {"gpu0": 0})
    assert not d.possible and d.blocked_by_pins == ["p"] and d.short_mib == {"gpu0": 500}


def test_only_residents_on_the_short_device_and_only_as_many_as_needed() -> None:
    residents = [Resident("other-gpu", fp("x", gpu1=5000), last_used=0),
                 Resident("small", fp("s", gpu0=100), last_used=1),
                 Resident("big", fp("g", gpu0=2000), last_used=2)]
    d = decide(fp("b", gpu0=1500), residents, {"gpu0": 0, "gpu1": 0})
    # greedy takes small then big; small alone never sufficed and big alone does: only big goes
    assert d.victims == ["big"]


def test_too_big_for_the_machine() -> None:
    d = decide(fp("b", gpu0=10_000), [Resident("a", fp("a", gpu0=1000))], {"gpu0": 2000})
    assert not d.possible and d.short_mib == {"gpu0": 7000} and not d.blocked_by_pins


def test_a_worker_takes_one_profile_and_its_resident_is_the_one_to_go() -> None:
    """Two profiles on worker a never sit side by side, even with GPU room to spare; a profile on
    worker b, or on none, is not moved for it."""
    from mcp_server.serve.memory import describe_short, worker_room

    residents = [Resident("on-a", fp("on-a", host=100, **{"worker:a": 1}), last_used=5),
                 Resident("on-b", fp("on-b", **{"worker:b": 1}), last_used=0),
                 Resident("local", fp("local", gpu0=500), last_used=0)]
    room = {"gpu0": 10_000, **worker_room(["a", "b", "c"], residents)}
    assert room["worker:a"] == 0 and room["worker:b"] == 0 and room["worker:c"] == 1
    assert decide(fp("also-a", gpu0=100, **{"worker:a": 1}), residents, room).victims == ["on-a"]
    assert decide(fp("on-c", **{"worker:c": 1}), residents, room).fits
    pinned = [Resident("on-a", fp("on-a", **{"worker:a": 1}), pinned=True)]
    d = decide(fp("also-a", **{"worker:a": 1}), pinned, worker_room(["a"], pinned))
    assert not d.possible and d.blocked_by_pins == ["on-a"]
    assert describe_short(d.short_mib) == "worker a"
    assert describe_short({"gpu0": 812.4, "worker:b": 1}) == "gpu0 812 MiB, worker b"


def test_budget_sizes() -> None:
    assert parse_budget("2GiB") == 2048
    with pytest.raises(ValidationError, match="SERVE_MEMORY_BUDGET"):
        parse_budget("lots")


def test_policy_keys_and_names(write_conf) -> None:  # type: ignore[no-untyped-def]
    conf = write_conf("""
        [global]
        SERVE_PORT=8111
        SERVE_MAX_WAIT=2.5
        PRIORITY=1

        [a]
        MODEL=a.gguf
        ALIASES=gpt-4o, fast
        PIN=on
        IDLE_TTL=300
        SAMPLERS=profile

        [b]
        MODEL=b.gguf
        ALIASES=fast,a
        PRIORITY=-3
    """)
    config = load_config(conf)
    a, b = policy_for(config.profile("a")), policy_for(config.profile("b"))
    assert (a.aliases, a.pinned, a.idle_ttl_s, a.samplers, a.priority) == (["gpt-4o", "fast"], True, 300, "profile", 1)
    assert (b.pinned, b.priority, b.samplers) == (False, -3, "client")
    assert model_names(config) == {"a": "a", "b": "b", "gpt-4o": "a", "fast": "a"}
    assert len(alias_conflicts(config)) == 2
    settings = serve_settings(config)
    assert (settings.port, settings.max_wait_s, settings.host) == (8111, 2.5, "127.0.0.1")
    payload = {"model": "a", "temperature": 2, "top_k": 5, "messages": []}
    assert strip_samplers(payload) == ["temperature", "top_k"] and payload == {"model": "a", "messages": []}


def test_bad_policy_values_are_refused_with_the_key(write_conf) -> None:  # type: ignore[no-untyped-def]
    from mcp_server.errors import LlamaPilotError

    for line in ("PIN=yes", "PRIORITY=high", "IDLE_TTL=-1", "SAMPLERS=strip"):
        conf = write_conf(f"[a]\nMODEL=a.gguf\n{line}\n")
        with pytest.raises(LlamaPilotError, match=line.split("=")[0]):
            load_config(conf)


def test_a_public_address_needs_a_key(write_conf, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.delenv("LLAMA_PILOT_API_KEY", raising=False)
    config = load_config(write_conf("[global]\nSERVE_HOST=0.0.0.0\n\n[a]\nMODEL=a.gguf\n"))
    with pytest.raises(ServeRefused, match="without an API key"):
        check_bind(serve_settings(config))
    monkeypatch.setenv("LLAMA_PILOT_API_KEY", "s3cret")
    check_bind(serve_settings(config))  # with a key it may
    check_bind(serve_settings(config, host="127.0.0.1"))
