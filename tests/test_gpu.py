"""GPU stats through an injected NVML-like source (CI has no GPU), the no-driver path with the
real pynvml, CUDA vs NVML order, and process -> instance mapping against a real llama-server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from mcp_server.monitoring import gpu as gpumod
from mcp_server.cli.main import cli
from mcp_server.monitoring.gpu import FakeNvml, GpuReport, apply_visible_devices, heuristic_fastest_first, gpu_stats
from mcp_server.runtime.registry import InstanceRecord, InstanceStatus
from mcp_server.profiles.config import load_config
from mcp_server.profiles.edits import update_profile
from mcp_server.runtime.lifecycle import Runtime

RTX_4090, RTX_5070_TI = 0, 1  # NVML indices: bus 01 and bus 02


def nvml_available() -> bool:
    try:
        import pynvml

        pynvml.nvmlInit()
        pynvml.nvmlShutdown()
        return True
    except Exception:
        return False


def record(profile: str = "demo", *, pid: int | None = None, backend: str = "native", **extra) -> InstanceRecord:
    values = dict(id=f"{profile}-20250101-000000-abcd", profile=profile, backend=backend,
                  status=InstanceStatus.READY, host="127.0.0.1", port=8080, argv=["llama-server"],
                  log_path="/dev/null", model_path="/m.gguf", pid=pid, started_at=time.time())
    values.update(extra)
    return InstanceRecord(**values)


def cuda(report: GpuReport) -> dict[int, int | None]:
    return {g.nvml_index: g.cuda_index for g in report.gpus}


# -- fields -------------------------------------------------------------------------------------


def test_two_gpus_every_field():
    fake = FakeNvml()
    fake.gpus[RTX_4090].update(used_mib=20480, util=97, mem_util=45, temp=66, power_w=351.4, sm_clock=2520,
                               mem_clock=10501, fan=41)
    report = gpu_stats(fake, instances=[], env={})
    assert report.reason is None and report.driver_version == "575.64.03" and report.cuda_driver_version == "12.9"
    g0, g1 = report.gpus
    assert (g0.nvml_index, g0.name, g0.compute_capability, g0.pci_bus_id) == (
        0, "NVIDIA GeForce RTX 4090", "8.9", "00000000:01:00.0")
    assert g0.uuid == "GPU-4090a1b2-0000-1111-2222-333344445555" and g0.cuda_cores == 16384
    assert (g0.memory_total_mib, g0.memory_used_mib, g0.memory_reserved_mib) == (24564, 20480, 300)
    assert g0.memory_free_mib == 24564 - 20480 - 300
    assert (g0.gpu_util_pct, g0.mem_util_pct, g0.temperature_c, g0.power_w, g0.power_limit_w) == (97, 45, 66, 351.4, 450.0)
    assert (g0.sm_clock_mhz, g0.mem_clock_mhz, g0.fan_pct) == (2520, 10501, 41)
    assert (g1.name, g1.compute_capability, g1.memory_total_mib) == ("NVIDIA GeForce RTX 5070 Ti", "12.0", 16303)


def test_refused_fields_are_none_and_unsupported_ones_are_not_asked_again():
    fake = FakeNvml(fail={"fan": 3, "power:1": 999, "uuid:1": 4, "cc:0": 3})
    first = gpu_stats(fake, instances=[], env={})
    assert [g.fan_pct for g in first.gpus] == [None, None]
    assert first.gpus[1].power_w is None and first.gpus[0].power_w == 20.0
    assert first.gpus[1].uuid is None and first.gpus[0].uuid
    assert first.gpus[0].compute_capability is None and first.gpus[1].compute_capability == "12.0"
    gpu_stats(fake, instances=[], env={})
    gpu_stats(fake, instances=[], env={})
    assert fake.calls["nvmlDeviceGetFanSpeed"] == 2  # once per GPU: "not supported" is remembered
    assert fake.calls["nvmlDeviceGetUUID"] == 2  # static facts are read once per session
    fake.fail.pop("power:1")  # a transient error is asked again
    assert gpu_stats(fake, instances=[], env={}).gpus[1].power_w == 20.0


def test_memory_v1_fallback_without_reserved():
    fake = FakeNvml()
    del FakeNvml.nvmlMemory_v2  # an older binding: no v2 memory info
    try:
        g0 = gpu_stats(fake, instances=[], env={}).gpus[0]
    finally:
        FakeNvml.nvmlMemory_v2 = 0x02000028
    assert g0.memory_reserved_mib == 0 and g0.memory_free_mib == 24564 - 512


def test_one_nvml_init_per_source_and_recovery_after_shutdown():
    fake = FakeNvml()
    for _ in range(5):
        assert len(gpu_stats(fake, instances=[], env={}).gpus) == 2
    assert fake.calls["nvmlInit"] == 1
    fake.nvmlShutdown()  # someone else shut NVML down under us
    assert len(gpu_stats(fake, instances=[], env={}).gpus) == 2
    assert fake.calls["nvmlInit"] == 2


def test_processes_compute_and_graphics_merged():
    fake = FakeNvml()
    fake.gpus[0]["processes"] = [(4242, 1000), (4343, None)]
    fake.gpus[0]["graphics"] = [(4242, 1000), (4444, 64)]
    procs = {p.pid: p for p in gpu_stats(fake, instances=[], env={}).gpus[0].processes}
    assert procs[4242].type == "compute+graphics" and procs[4242].used_mib == 1000
    assert procs[4343].used_mib is None and procs[4444].type == "graphics"
    assert all(p.instance_id is None for p in procs.values())


def test_a_gpu_that_cannot_be_opened_is_named():
    report = gpu_stats(FakeNvml(fail={"handle:1": 15 + 100}), instances=[], env={})
    assert [g.nvml_index for g in report.gpus] == [0] and "could not open GPU 1" in report.reason


# -- no driver, no GPU --------------------------------------------------------------------------


@pytest.mark.parametrize("code, words", [(12, "no NVIDIA driver"), (9, "driver is not loaded"),
                                         (4, "permission"), (999, "NVML could not start")])
def test_no_driver_is_a_plain_reason(code, words):
    fake = FakeNvml(init_error=code)
    report = gpu_stats(fake, instances=[], env={})
    assert report.gpus == [] and words in report.reason and report.cuda_order_source is None
    gpu_stats(fake, instances=[], env={})
    assert fake.calls["nvmlInit"] == 1  # not retried every second


def test_driver_without_gpus():
    report = gpu_stats(FakeNvml(gpus=[]), instances=[], env={})
    assert report.gpus == [] and report.reason == "NVML found no NVIDIA GPU"


def test_missing_pynvml_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)
    report = gpu_stats(instances=[])
    assert report.gpus == [] and "nvidia-ml-py" in report.reason


def test_real_pynvml_here():
    report = gpu_stats(instances=[])
    if nvml_available():
        assert report.gpus and report.reason is None
    else:
        assert report.gpus == [] and report.reason


# -- CUDA order ---------------------------------------------------------------------------------


def test_fastest_first_estimate_puts_the_newer_architecture_first():
    # Documented limit: CUDA's FASTEST_FIRST rule is unpublished; the estimate sorts by compute
    # capability first, so the 5070 Ti (12.0) is CUDA0 although the 4090 (8.9) is faster.
    report = gpu_stats(FakeNvml(), instances=[], env={})
    assert cuda(report) == {RTX_4090: 1, RTX_5070_TI: 0} and report.cuda_order_source == "heuristic"
    assert report.cuda_device_order == "FASTEST_FIRST"


def test_same_architecture_faster_card_first_then_bus():
    gpus = [gpumod.fake_gpu("NVIDIA GeForce RTX 4060", "00000000:01:00.0", (8, 9), 3072, 8188, 115, "GPU-a"),
            gpumod.fake_gpu("NVIDIA GeForce RTX 4090", "00000000:02:00.0", (8, 9), 16384, 24564, 450, "GPU-b"),
            gpumod.fake_gpu("NVIDIA GeForce RTX 4090", "00000000:03:00.0", (8, 9), 16384, 24564, 450, "GPU-c")]
    assert cuda(gpu_stats(FakeNvml(gpus), instances=[], env={})) == {0: 2, 1: 0, 2: 1}
    # Without core counts the estimate falls back to memory size.
    assert cuda(gpu_stats(FakeNvml(gpus, fail={"cores": 3}), instances=[], env={})) == {0: 2, 1: 0, 2: 1}


def test_pci_bus_id_order_matches_nvml():
    report = gpu_stats(FakeNvml(), instances=[], env={"CUDA_DEVICE_ORDER": "PCI_BUS_ID"})
    assert cuda(report) == {RTX_4090: 0, RTX_5070_TI: 1} and report.cuda_order_source == "pci-bus-id"


@pytest.mark.parametrize("order, visible, expected", [
    ("", "0", {RTX_4090: None, RTX_5070_TI: 0}),           # CUDA index 0 is the 5070 Ti
    ("", "1", {RTX_4090: 0, RTX_5070_TI: None}),
    ("", "1,0", {RTX_4090: 0, RTX_5070_TI: 1}),
    ("", " 1 , 0 ", {RTX_4090: 0, RTX_5070_TI: 1}),
    ("", "", {RTX_4090: None, RTX_5070_TI: None}),         # empty hides every GPU
    ("", "0,7,1", {RTX_4090: None, RTX_5070_TI: 0}),       # an invalid index ends the list
    ("", "0,0,1", {RTX_4090: None, RTX_5070_TI: 0}),       # so does a repeated one
    ("", "GPU-4090a1b2-0000-1111-2222-333344445555", {RTX_4090: 0, RTX_5070_TI: None}),
    ("", "GPU-4090,GPU-5070", {RTX_4090: 0, RTX_5070_TI: 1}),  # unique UUID prefixes
    ("", "5070c3d4", {RTX_4090: None, RTX_5070_TI: 0}),    # the GPU- prefix is optional
    ("", "GPU-,0", {RTX_4090: None, RTX_5070_TI: None}),   # ambiguous prefix: invalid
    ("", "MIG-GPU-4090a1b2/1/0", {RTX_4090: None, RTX_5070_TI: None}),
    ("PCI_BUS_ID", "0", {RTX_4090: 0, RTX_5070_TI: None}),
    ("PCI_BUS_ID", "1,0", {RTX_4090: 1, RTX_5070_TI: 0}),
    ("pci_bus_id", "1", {RTX_4090: None, RTX_5070_TI: 0}),
])
def test_cuda_visible_devices(order, visible, expected):
    env = {"CUDA_VISIBLE_DEVICES": visible, **({"CUDA_DEVICE_ORDER": order} if order else {})}
    report = gpu_stats(FakeNvml(), instances=[], env=env)
    assert cuda(report) == expected and report.cuda_visible_devices == visible


def test_cuda_driver_answer_wins_over_the_estimate():
    asked = []

    def probe():
        asked.append(1)
        return ["0000:01:00.0", "0000:02:00.0"]  # libcuda's format: 4-digit domain

    report = gpu_stats(FakeNvml(), instances=[], env={}, cuda_probe=probe)
    assert cuda(report) == {RTX_4090: 0, RTX_5070_TI: 1} and report.cuda_order_source == "cuda-driver"
    # With visibility narrowed, the driver sees only part of the order: the estimate is used.
    narrowed = gpu_stats(FakeNvml(), instances=[], env={"CUDA_VISIBLE_DEVICES": "0"}, cuda_probe=probe)
    assert narrowed.cuda_order_source == "heuristic" and len(asked) == 1
    # A driver answer that does not match NVML's GPUs is not trusted.
    odd = gpu_stats(FakeNvml(), instances=[], env={}, cuda_probe=lambda: ["0000:01:00.0"])
    assert odd.cuda_order_source == "heuristic"
    assert gpu_stats(FakeNvml(), instances=[], env={}, cuda_probe=lambda: None).cuda_order_source == "heuristic"


def test_libcuda_probe_is_harmless_without_a_driver():
    if nvml_available():
        pytest.skip("a GPU is present: the probe answers (tests/gpu covers it)")
    assert gpumod.cuda_driver_order() is None


def test_order_helpers_directly():
    report = gpu_stats(FakeNvml(), instances=[], env={})
    assert heuristic_fastest_first(report.gpus) == [RTX_5070_TI, RTX_4090]
    assert apply_visible_devices([1, 0], report.gpus, None) == {1: 0, 0: 1}


# -- owners -------------------------------------------------------------------------------------


@pytest.fixture
def child():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc
    proc.kill()
    proc.wait()


def test_process_of_a_native_instance_and_its_descendants(child):
    me = record("alpha", pid=99999999, supervisor_pid=os.getpid())
    fake = FakeNvml()
    fake.gpus[0]["processes"] = [(child.pid, 900), (1, 10)]
    procs = {p.pid: p for p in gpu_stats(fake, instances=[me], env={}).gpus[0].processes}
    assert (procs[child.pid].profile, procs[child.pid].instance_id) == ("alpha", me.id)
    assert procs[1].profile is None


def test_stale_and_ended_records_own_nothing(child):
    stale = record("stale", pid=child.pid, pid_create_time=1.0)  # pid reused by another program
    ended = record("ended", pid=child.pid, status=InstanceStatus.STOPPED)
    fake = FakeNvml()
    fake.gpus[0]["processes"] = [(child.pid, 900)]
    (proc,) = gpu_stats(fake, instances=[stale, ended], env={}).gpus[0].processes
    assert proc.profile is None


def test_docker_process_found_by_its_cgroup(monkeypatch):
    cid = "f" * 64
    box = record("boxed", backend="docker", pid=None, container_id=cid, visible_devices=[RTX_5070_TI])
    monkeypatch.setattr(gpumod, "_cgroup_text", lambda pid: f"0::/system.slice/docker-{cid}.scope\n"
                        if pid == 5555 else "0::/user.slice\n")
    fake = FakeNvml()
    fake.gpus[RTX_5070_TI]["processes"] = [(5555, 700), (6666, 10)]
    procs = {p.pid: p for p in gpu_stats(fake, instances=[box], env={}).gpus[RTX_5070_TI].processes}
    assert (procs[5555].profile, procs[5555].container_id, procs[5555].cuda_index) == ("boxed", cid, 0)
    assert procs[6666].profile is None


def test_cuda_index_inside_each_instance():
    # Native with CUDA_VISIBLE_DEVICES=1: CUDA index 1 is the 4090 (fastest-first estimate), seen as CUDA0.
    native = record("one", pid=os.getpid(), env={"CUDA_VISIBLE_DEVICES": "1"})
    fake = FakeNvml()
    fake.gpus[RTX_4090]["processes"] = [(os.getpid(), 100)]
    (proc,) = gpu_stats(fake, instances=[native], env={}).gpus[RTX_4090].processes
    assert proc.cuda_index == 0
    # Its own CUDA_DEVICE_ORDER wins over ours.
    pci = record("one", pid=os.getpid(), env={"CUDA_VISIBLE_DEVICES": "1", "CUDA_DEVICE_ORDER": "PCI_BUS_ID"})
    fake.gpus[RTX_4090]["processes"], fake.gpus[RTX_5070_TI]["processes"] = [], [(os.getpid(), 100)]
    (proc,) = gpu_stats(fake, instances=[pci], env={}).gpus[RTX_5070_TI].processes
    assert proc.cuda_index == 0
    # Without visibility limits both GPUs keep the machine-wide CUDA numbering.
    plain = record("two", pid=os.getpid())
    fake.gpus[RTX_4090]["processes"] = [(os.getpid(), 100)]
    report = gpu_stats(fake, instances=[plain], env={})
    assert [p.cuda_index for g in report.gpus for p in g.processes] == [1, 0]


@pytest.mark.engine
def test_real_native_instance_is_named(engine_path, demo_project):
    update_profile(load_config(demo_project), "global", set={"PORT": "18390", "PARALLEL": "1"})
    runtime = Runtime(load_config(demo_project))
    view = runtime.start_model("demo")
    try:
        fake = FakeNvml()
        fake.gpus[RTX_5070_TI]["processes"] = [(view.pid, 812), (os.getpid(), 64)]
        report = gpu_stats(fake)  # instances from the registry, as the CLI and the MCP server do
        procs = {p.pid: p for p in report.gpus[RTX_5070_TI].processes}
        server = procs[view.pid]
        assert (server.profile, server.instance_id, server.used_mib, server.name) == ("demo", view.id, 812,
                                                                                      "llama-server")
        # llama-pilot starts servers with CUDA_DEVICE_ORDER=PCI_BUS_ID, so inside the server the
        # 5070 Ti (bus 02) is CUDA1, as nvidia-smi numbers it, not CUDA0 as "fastest first" would.
        assert server.cuda_index == 1
        assert procs[os.getpid()].profile is None  # the test process is not part of the instance
    finally:
        runtime.stop_model("all", grace_s=3)
    fake.gpus[RTX_5070_TI]["processes"] = [(view.pid, 812)]
    assert gpu_stats(fake).gpus[RTX_5070_TI].processes[0].profile is None  # stopped: owns nothing


# -- front doors --------------------------------------------------------------------------------


def test_cli_gpu_json_without_a_gpu():
    result = subprocess.run([sys.executable, "-m", "mcp_server", "cli", "gpu", "--json"], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    if nvml_available():
        assert data["gpus"]
    else:
        assert data["gpus"] == [] and "no NVIDIA driver" in data["reason"]
    table = CliRunner().invoke(cli, ["gpu"], catch_exceptions=False)
    assert table.exit_code == 0 and (nvml_available() or table.output.startswith("no GPUs: no NVIDIA driver"))


def test_cli_gpu_table_with_two_gpus_and_a_profile(monkeypatch, child):
    fake = FakeNvml(fail={"fan:1": 3})
    fake.gpus[RTX_4090]["processes"] = [(child.pid, 20000)]
    monkeypatch.setattr(gpumod, "_default_source", lambda: (fake, None))
    monkeypatch.setattr(gpumod, "_live", lambda instances: [record("qwen3-30b", pid=child.pid)])
    result = CliRunner().invoke(cli, ["gpu"], catch_exceptions=False)
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert lines[0].split()[:2] == ["NVML", "CUDA"]
    assert lines[1].split()[:2] == ["0", "1"] and "RTX 4090" in lines[1] and "20480/24564" not in lines[1]
    assert lines[2].split()[:2] == ["1", "0"] and "12.0" in lines[2]
    proc_line = next(line for line in lines if str(child.pid) in line)
    assert "qwen3-30b" in proc_line and "20000" in proc_line and "CUDA1" in proc_line
    assert "CUDA_DEVICE_ORDER=FASTEST_FIRST" in result.output and "estimated" in result.output
    data = json.loads(CliRunner().invoke(cli, ["gpu", "--json"], catch_exceptions=False).output)
    assert data["gpus"][0]["processes"][0]["profile"] == "qwen3-30b"


def test_cli_gpu_watch_redraws_until_ctrl_c(monkeypatch):
    fake = FakeNvml()
    monkeypatch.setattr(gpumod, "_default_source", lambda: (fake, None))
    monkeypatch.setattr(gpumod, "_live", lambda instances: [])
    ticks = []

    def sleep(seconds):
        ticks.append(seconds)
        if len(ticks) == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(time, "sleep", sleep)
    result = CliRunner().invoke(cli, ["gpu", "--json", "--watch", "0.5"], catch_exceptions=False)
    assert result.exit_code == 0
    frames = [json.loads(line) for line in result.output.splitlines()]
    assert len(frames) == 3 and all(len(f["gpus"]) == 2 for f in frames) and 0 < ticks[0] <= 0.5
    assert CliRunner().invoke(cli, ["gpu", "--watch", "0"]).exit_code == 2



@pytest.mark.anyio
async def test_mcp_gpu_stats_tool(write_conf):
    from mcp import Client

    from mcp_server.server.app import build_server

    conf = write_conf("[global]\nMODELS_DIR=models\n\n[alpha]\nMODEL=a.gguf\n")
    async with Client(build_server(conf), raise_exceptions=True) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
        assert tools["gpu_stats"].annotations.read_only_hint is True and tools["gpu_stats"].output_schema
        result = await client.call_tool("gpu_stats", {})
        data = result.structured_content
        if nvml_available():
            assert data["gpus"]
        else:
            assert data["gpus"] == [] and data["reason"]
