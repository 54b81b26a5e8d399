"""The sampler: bounded history per metric, stable keys, a thread that survives bad samples."""

from __future__ import annotations

import os
import threading
import time

import pytest

from mcp_server.monitoring.gpu import FakeNvml
from mcp_server.runtime.registry import InstanceRecord, InstanceStatus, Registry
from mcp_server.profiles.config import load_config
from mcp_server.profiles.edits import update_profile
from mcp_server.runtime.lifecycle import Runtime
from mcp_server.monitoring.sampler import Sampler, Snapshot

GPU_KEYS = {f"gpu{n}.{k}" for n in (0, 1) for k in ("util_pct", "mem_util_pct", "mem_used_mib", "power_w",
                                                     "temp_c", "sm_clock_mhz", "fan_pct")}


@pytest.fixture
def registry(tmp_path) -> Registry:
    return Registry(tmp_path / "state")


def me_as_instance(registry: Registry, profile: str = "alpha") -> InstanceRecord:
    record = InstanceRecord(id=f"{profile}-20250101-000000-abcd", profile=profile, backend="native",
                            status=InstanceStatus.READY, host="127.0.0.1", port=8080, argv=["llama-server"],
                            log_path="/dev/null", model_path="/m.gguf", pid=os.getpid(), started_at=time.time())
    registry.save(record)
    return record


def test_history_is_bounded_and_keys_are_stable(registry):
    fake = FakeNvml(fail={"fan:1": 3})
    sampler = Sampler(interval_s=1.0, history_len=5, gpu_source=fake, registry=registry)
    first = sampler.sample_once()
    assert isinstance(first, Snapshot) and len(first.gpu.gpus) == 2 and first.system.interval_s
    keys = sampler.keys()
    assert GPU_KEYS - {"gpu1.fan_pct"} <= set(keys) and "gpu1.fan_pct" not in keys  # refused: never invented
    assert {"cpu_pct", "load1", "ram_used_mib", "ram_available_mib", "swap_used_mib", "core0.cpu_pct"} <= set(keys)
    for n in range(7):
        fake.gpus[0]["util"] = n * 10
        sampler.sample_once()
    assert sampler.keys() == keys
    assert sampler.history("gpu0.util_pct") == [20.0, 30.0, 40.0, 50.0, 60.0]
    assert all(len(sampler.history(k)) == 5 for k in keys)
    times = [t for t, _ in sampler.series("gpu0.util_pct")]
    assert times == sorted(times)
    assert sampler.history("no.such.key") == [] and sampler.latest().gpu.gpus[0].gpu_util_pct == 60
    assert fake.calls["nvmlInit"] == 1


def test_instances_are_sampled_by_profile(registry):
    fake = FakeNvml()
    sampler = Sampler(gpu_source=fake, registry=registry)
    sampler.sample_once()
    assert not [k for k in sampler.keys() if k.startswith("instance.")]
    me_as_instance(registry)  # appears after the first sample: the registry folder changed
    fake.gpus[0]["processes"] = [(os.getpid(), 1000)]
    fake.gpus[1]["processes"] = [(os.getpid(), 24)]
    sampler.sample_once()
    sampler.sample_once()
    assert sampler.history("instance.alpha.gpu_mem_mib") == [1024.0, 1024.0]
    assert sampler.history("instance.alpha.rss_mib")[-1] > 1
    assert len(sampler.history("instance.alpha.cpu_pct")) == 1  # first seen: no CPU figure yet
    (inst,) = sampler.latest().system.instances
    assert inst.profile == "alpha" and sampler.latest().gpu.gpus[0].processes[0].profile == "alpha"


def test_thread_samples_and_stops(registry):
    sampler = Sampler(interval_s=0.05, history_len=4, gpu_source=FakeNvml(), registry=registry)
    assert sampler.latest() is None
    sampler.start()
    sampler.start()  # idempotent
    seen = []
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and sampler.samples < 6:
        seen.append(len(sampler.history("gpu0.temp_c")))  # reads while the thread writes
        time.sleep(0.01)
    sampler.stop()
    assert not sampler.running and sampler.samples >= 6 and sampler.errors == 0
    assert max(seen) <= 4 and len(sampler.history("cpu_pct")) == 4
    count = sampler.samples
    time.sleep(0.2)
    assert sampler.samples == count  # really stopped


def test_a_failing_sample_does_not_end_the_loop(registry):
    class Flaky(FakeNvml):
        broken = True

        def nvmlDeviceGetCount(self):
            if Flaky.broken:
                raise RuntimeError("driver hiccup")
            return super().nvmlDeviceGetCount()

    with Sampler(interval_s=0.05, gpu_source=Flaky(), registry=registry) as sampler:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and sampler.errors < 2:
            time.sleep(0.02)
        Flaky.broken = False
        while time.monotonic() < deadline and sampler.latest() is None:
            time.sleep(0.02)
    assert sampler.errors >= 2 and "driver hiccup" in sampler.last_error
    assert sampler.latest() is not None and len(sampler.latest().gpu.gpus) == 2


def test_gpu_off_and_no_gpu(registry):
    off = Sampler(registry=registry, gpu_enabled=False).sample_once()
    assert off.gpu.gpus == [] and off.gpu.reason == "GPU sampling is off"
    nodriver = Sampler(registry=registry, gpu_source=FakeNvml(init_error=12))
    snap = nodriver.sample_once()
    assert snap.gpu.gpus == [] and "no NVIDIA driver" in snap.gpu.reason
    assert not [k for k in nodriver.keys() if k.startswith("gpu")]


def test_concurrent_sample_once_calls_are_serialised(registry):
    sampler = Sampler(gpu_source=FakeNvml(), registry=registry, history_len=50)
    threads = [threading.Thread(target=sampler.sample_once) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sampler.samples == 4 and len(sampler.history("gpu1.power_w")) == 4


def test_bad_arguments():
    with pytest.raises(ValueError):
        Sampler(interval_s=0)
    with pytest.raises(ValueError):
        Sampler(history_len=0)


@pytest.mark.engine
def test_sampler_follows_a_real_instance(engine_path, demo_project):
    update_profile(load_config(demo_project), "global", set={"PORT": "18398", "PARALLEL": "1"})
    runtime = Runtime(load_config(demo_project))
    view = runtime.start_model("demo")
    try:
        fake = FakeNvml()
        fake.gpus[0]["processes"] = [(view.pid, 300)]
        sampler = Sampler(interval_s=0.1, gpu_source=fake)  # the default registry, as the dashboard's
        with sampler:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and len(sampler.history("instance.demo.cpu_pct")) < 2:
                time.sleep(0.05)
        assert len(sampler.history("instance.demo.cpu_pct")) >= 2
        assert sampler.history("instance.demo.rss_mib")[-1] > 50
        assert sampler.history("instance.demo.gpu_mem_mib")[-1] == 300.0
    finally:
        runtime.stop_model("all", grace_s=3)
