"""The Docker backend against a real dockerd and the real llama-server in the locally built image.

Needs a Docker daemon (`.ci/docker.sh` installs and starts one on a CI machine), the built engine
and the demo model. Nothing is pulled: the image is made from the local engine by
mcp_server.runtime.docker_image.build_local_image.
"""

from __future__ import annotations

import os
import secrets
import socket
import time
from pathlib import Path
from typing import Any, Iterator

import httpx
import psutil
import pytest

from mcp_server import paths

from mcp_server.runtime import docker_image as dockerimage
from mcp_server.runtime.native import owner_marks
from mcp_server.engine.argv import LaunchSpec, launch_spec
from mcp_server.files import sha256_of
from mcp_server.runtime.containers import (LABEL_INSTANCE, LABEL_MANAGED, LABEL_PROFILE, DockerBackend, DockerError,
                                       DockerImageMissing, container_name)
from mcp_server.runtime.registry import InstanceRecord, InstanceStatus, new_instance_id
from mcp_server.profiles.config import DEFAULT_DOCKER_IMAGE, Config, load_config

from .conftest import REAL_ENGINE, need

pytestmark = pytest.mark.docker

HOW = "run `.ci/docker.sh` as root (installs docker.io and starts dockerd), or start Docker"


def _daemon() -> Any:
    try:
        import docker

        client = docker.from_env()
        client.ping()
        return client
    except Exception:
        return None


@pytest.fixture(scope="module")
def docker_client() -> Iterator[Any]:
    client = _daemon()
    need(client, "a Docker daemon", HOW)
    yield client
    client.close()


@pytest.fixture(scope="module")
def image(docker_client: Any) -> str:
    """The CPU image of the real engine (built once; later runs find it by the engine's sha256)."""
    need(REAL_ENGINE, "llama-server", "run `llama-pilot engine build` (or `llama-pilot setup`)")
    started = time.monotonic()
    dockerimage.build_local_image(DEFAULT_DOCKER_IMAGE, REAL_ENGINE)
    print(f"\nimage {DEFAULT_DOCKER_IMAGE} ready in {time.monotonic() - started:.1f}s")
    return DEFAULT_DOCKER_IMAGE


@pytest.fixture
def config(demo_project: Path) -> Config:
    return load_config(demo_project)


@pytest.fixture
def backend(image: str, config: Config) -> DockerBackend:
    return DockerBackend(image=image, models_dir=config.host.models_dir)


@pytest.fixture
def cleanup(docker_client: Any) -> Iterator[list[str]]:
    """Instance ids whose containers are force-removed after the test, whatever happened."""
    ids: list[str] = []
    yield ids
    for instance in ids:
        for container in docker_client.containers.list(all=True, filters={"label": f"{LABEL_INSTANCE}={instance}"}):
            container.remove(force=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make(config: Config, tmp_path: Path, cleanup: list[str], *, extra: list[str] = (),
         profile: str = "demo") -> tuple[InstanceRecord, LaunchSpec]:
    spec = launch_spec(config.profile(profile), config, engine="llama-server", port=free_port(), model_root="/models")
    if extra:
        spec = spec.model_copy(update={"argv": [*spec.argv, *extra]})
    record = InstanceRecord(
        id=new_instance_id(profile), profile=profile, backend="docker", status=InstanceStatus.LOADING,
        host=spec.host, port=spec.port, argv=spec.argv, env={**spec.env, **owner_marks(paths.home(), "x", profile)},
        log_path=str(tmp_path / "logs" / f"{profile}.log"),
        model_path=str(config.model_path(config.profile(profile))), visible_devices=spec.visible_devices,
        started_at=time.time())
    cleanup.append(record.id)
    return record, spec


def wait_health(record: InstanceRecord, backend: DockerBackend, timeout_s: float = 120) -> float:
    """Seconds from now until /health answers 200; fails early if the container ends."""
    started = time.monotonic()
    deadline = started + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{record.base_url}/health", timeout=2).status_code == 200:
                return time.monotonic() - started
        except httpx.HTTPError:
            pass
        state = backend.state(record)
        assert state.alive, f"container ended before /health: {state}\n{backend.read_log(record)[-3000:]}"
        time.sleep(0.05)
    pytest.fail(f"/health not 200 within {timeout_s}s\n{backend.read_log(record)[-3000:]}")


def wait_ended(record: InstanceRecord, backend: DockerBackend, timeout_s: float = 60):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        state = backend.state(record)
        if not state.alive:
            return state
        time.sleep(0.1)
    pytest.fail(f"container still running after {timeout_s}s")


# ------------------------------------------------------------------------------------------------


def test_build_local_image_is_idempotent(docker_client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    need(REAL_ENGINE, "llama-server", "run `llama-pilot engine build` (or `llama-pilot setup`)")
    tag = f"llama-pilot-test/llama-server:{secrets.token_hex(4)}"
    try:
        first = dockerimage.build_local_image(tag, REAL_ENGINE)
        assert dockerimage.image_exists(tag)
        labels = dockerimage.image_labels(tag)
        assert labels and labels[dockerimage.LABEL_ENGINE_SHA] == sha256_of(Path(REAL_ENGINE).resolve())
        assert labels[dockerimage.LABEL_BACKEND] == "cpu"
        config = docker_client.images.get(tag).attrs["Config"]
        assert config["Entrypoint"] == ["/usr/local/bin/llama-server"]
        assert "8080/tcp" in config["ExposedPorts"]

        def no_rebuild(*args: object, **kwargs: object) -> None:
            raise AssertionError("build_local_image rebuilt an image that was up to date")

        monkeypatch.setattr(dockerimage, "_write_rootfs_tar", no_rebuild)
        assert dockerimage.build_local_image(tag, REAL_ENGINE) == first
    finally:
        docker_client.images.remove(tag, force=True)
    assert not dockerimage.image_exists(tag)


def test_image_runs_the_engine(docker_client: Any, image: str) -> None:
    out = docker_client.containers.run(image, ["--version"], remove=True, stdout=True, stderr=True)
    assert b"version:" in out


def test_launch_serves_chat_then_stop_archives_the_log(backend: DockerBackend, config: Config, tmp_path: Path,
                                                       cleanup: list[str], docker_client: Any) -> None:
    import docker

    record, spec = make(config, tmp_path, cleanup)
    Path(record.log_path).parent.mkdir(parents=True, exist_ok=True)
    Path(record.log_path).write_text("an earlier run\n")
    t0 = time.monotonic()
    record = backend.launch(record, spec)
    assert record.container_name == container_name(record) == f"llama-pilot-{record.id}"
    assert record.container_id
    # The host pid of the container's llama-server, so NVML's per-process view maps to it.
    assert record.pid and psutil.Process(record.pid).name() == "llama-server"
    assert record.pid_create_time
    wait_health(record, backend)
    print(f"\ndocker: launch -> /health 200 in {time.monotonic() - t0:.2f}s")
    assert backend.state(record).alive
    assert "an earlier run" in backend.read_log(record)
    assert "listening on http://" in backend.read_log(record)  # the live container's output

    reply = httpx.post(f"{record.base_url}/v1/chat/completions", timeout=120, json={
        "messages": [{"role": "user", "content": "Say hello in one word."}], "max_tokens": 16})
    assert reply.status_code == 200, reply.text
    message = reply.json()["choices"][0]["message"]
    assert (message.get("content") or message.get("reasoning_content") or "").strip()

    final = backend.stop(record, grace_s=10)
    assert not final.alive
    assert final.exit_code == 0, final
    with pytest.raises(docker.errors.NotFound):
        docker_client.containers.get(record.container_id)
    log = Path(record.log_path).read_text()
    assert log.startswith("an earlier run\n")
    assert "listening on http://" in log  # startup
    assert "print_timing" in log  # the chat request
    assert "cleaning up before exit" in log  # a graceful SIGTERM shutdown
    assert backend.read_log(record) == log  # the container is gone: the file is everything
    after = backend.state(record)
    assert not after.alive and "no longer exists" in (after.detail or "")
    # Stopping again is harmless.
    assert not backend.stop(record, grace_s=1).alive


def test_container_labels_mount_network_and_no_gpus(backend: DockerBackend, config: Config, tmp_path: Path,
                                                    cleanup: list[str], docker_client: Any) -> None:
    record, spec = make(config, tmp_path, cleanup)
    record = backend.launch(record, spec)
    try:
        container = docker_client.containers.get(record.container_id)
        labels = container.labels
        assert labels[LABEL_MANAGED] == "true"
        assert labels[LABEL_PROFILE] == "demo"
        assert labels[LABEL_INSTANCE] == record.id
        mounts = container.attrs["Mounts"]
        assert len(mounts) == 1
        assert mounts[0]["Destination"] == "/models"
        assert mounts[0]["Source"] == str(Path(config.host.models_dir).resolve())
        assert mounts[0]["RW"] is False
        host_config = container.attrs["HostConfig"]
        assert host_config["NetworkMode"] == "host"
        assert not host_config.get("DeviceRequests")
        assert container.attrs["Args"] == spec.argv[1:]
        assert container.attrs["Path"] == "/usr/local/bin/llama-server"
        wait_health(record, backend)
    finally:
        backend.stop(record, grace_s=5)


def test_bad_flag_fails_with_exit_code_and_log(backend: DockerBackend, config: Config, tmp_path: Path,
                                               cleanup: list[str], docker_client: Any) -> None:
    record, spec = make(config, tmp_path, cleanup, extra=["--no-such-flag"])
    record = backend.launch(record, spec)
    state = wait_ended(record, backend)
    assert not state.alive
    assert state.exit_code not in (None, 0), state
    assert "no-such-flag" in backend.read_log(record)  # from the exited container, still there
    final = backend.stop(record, grace_s=1)
    assert final.exit_code == state.exit_code
    assert "no-such-flag" in Path(record.log_path).read_text()
    assert not docker_client.containers.list(all=True, filters={"label": f"{LABEL_INSTANCE}={record.id}"})


def test_unmanaged_finds_labelled_containers_without_a_record(backend: DockerBackend, config: Config,
                                                             tmp_path: Path, cleanup: list[str],
                                                             docker_client: Any, image: str) -> None:
    record, spec = make(config, tmp_path, cleanup)
    record = backend.launch(record, spec)
    # A labelled container whose record is gone, already exited.
    stray_id = new_instance_id("demo")
    cleanup.append(stray_id)
    stray = docker_client.containers.create(image, ["--version"], name=f"llama-pilot-{stray_id}",
                                            labels={LABEL_MANAGED: "true", LABEL_PROFILE: "demo",
                                                    LABEL_INSTANCE: stray_id}, network_mode="host")
    stray.start()
    stray.wait(timeout=30)
    try:
        found = {u.container_id: u for u in backend.unmanaged([], paths.home())}
        assert record.container_id in found and stray.id in found
        mine = found[record.container_id]
        assert mine.backend == "docker"
        # Ours by the home label; the stray has no home label, so it is foreign (never adopted).
        assert mine.owner == "ours" and mine.is_own and mine.home == str(paths.home())
        assert found[stray.id].owner == "unmarked" and not found[stray.id].is_own
        assert {u.container_id: u.owner for u in backend.unmanaged([], paths.home() / "other")}[
            record.container_id] == "other-home"
        assert mine.port == record.port
        assert mine.pid == record.pid
        assert mine.argv[1:] == spec.argv[1:]
        # The model's host path (through the /models mount), so adopt can match the profile.
        assert mine.model_path == str(Path(config.host.models_dir).resolve() / config.profile("demo").model)
        assert mine.started_at > 0
        assert found[stray.id].pid is None  # exited

        known = {u.container_id for u in backend.unmanaged([record], paths.home())}
        assert record.container_id not in known and stray.id in known
    finally:
        backend.stop(record, grace_s=5)
        stray.remove(force=True)


def test_missing_image_says_how_to_build(config: Config, tmp_path: Path, cleanup: list[str],
                                         docker_client: Any) -> None:
    backend = DockerBackend(image="llama-pilot-test/no-such-image:0", models_dir=config.host.models_dir)
    record, spec = make(config, tmp_path, cleanup)
    with pytest.raises(DockerImageMissing, match="build_local_image"):
        backend.launch(record, spec)
    assert not docker_client.containers.list(all=True, filters={"label": f"{LABEL_INSTANCE}={record.id}"})


def test_gpu_request_without_gpu_runtime_is_a_clear_error(backend: DockerBackend, config: Config, tmp_path: Path,
                                                          cleanup: list[str], docker_client: Any,
                                                          image: str) -> None:
    """A non-CPU image with visible devices asks Docker for exactly those GPUs; without the NVIDIA
    runtime (this machine) that is an error that names the fix, and no container is left."""
    if any("nvidia" in r for r in (docker_client.info().get("Runtimes") or {})):
        pytest.skip("this Docker has the NVIDIA runtime: the request would succeed")
    base = docker_client.containers.create(image, ["--version"])
    tag = f"llama-pilot-test/llama-server:gpu-{secrets.token_hex(3)}"
    repository, version = tag.split(":")
    base.commit(repository=repository, tag=version, changes=["LABEL llama-pilot.backend=cuda"])
    base.remove()
    try:
        gpu_backend = DockerBackend(image=tag, models_dir=config.host.models_dir)
        record, spec = make(config, tmp_path, cleanup)
        record = record.model_copy(update={"visible_devices": [1]})
        with pytest.raises(DockerError, match="NVIDIA Container Toolkit"):
            gpu_backend.launch(record, spec)
        assert not docker_client.containers.list(all=True, filters={"label": f"{LABEL_INSTANCE}={record.id}"})
    finally:
        docker_client.images.remove(tag, force=True)


# -- request shape, without a daemon -------------------------------------------------------------


class _FakeImage:
    def __init__(self, labels: dict[str, str]) -> None:
        self.attrs = {"Config": {"Labels": labels}}


class _FakeContainer:
    id = "c0ffee"
    status = "running"
    attrs: dict[str, Any] = {"State": {"Pid": 0}}

    def start(self) -> None: ...

    def reload(self) -> None: ...


class _FakeClient:
    def __init__(self, labels: dict[str, str]) -> None:
        import docker

        self.created: dict[str, Any] = {}
        self._labels = labels
        self._notfound = docker.errors.NotFound
        client = self

        class Images:
            def get(self, name: str) -> _FakeImage:
                return _FakeImage(client._labels)

        class Containers:
            def get(self, ref: str) -> Any:
                raise client._notfound("no such container")

            def create(self, image: str, **kwargs: Any) -> _FakeContainer:
                client.created = {"image": image, **kwargs}
                return _FakeContainer()

        self.images, self.containers = Images(), Containers()


@pytest.mark.parametrize("labels, devices, gpus, expected", [
    ({"llama-pilot.backend": "cuda"}, [1, 0], None, {"device_ids": ["1", "0"]}),
    ({"llama-pilot.backend": "cuda"}, None, None, None),
    ({}, None, "all", {"count": -1}),
    ({"llama-pilot.backend": "cpu"}, [0], "all", None),
])
def test_device_requests(labels: dict[str, str], devices: list[int] | None, gpus: str | None,
                         expected: dict[str, Any] | None, tmp_path: Path, config: Config) -> None:
    client = _FakeClient(labels)
    backend = DockerBackend(image="x", models_dir=config.host.models_dir, gpus=gpus, client=client)  # type: ignore[arg-type]
    spec = launch_spec(config.profile("demo"), config, engine="llama-server", port=18080, model_root="/models")
    spec = spec.model_copy(update={"env": {"CUDA_VISIBLE_DEVICES": "1,0", "OTHER": "1"} if devices else {"OTHER": "1"}})
    record = InstanceRecord(id="demo-x", profile="demo", backend="docker", status=InstanceStatus.LOADING,
                            host=spec.host, port=spec.port, argv=spec.argv, env=spec.env,
                            log_path=str(tmp_path / "demo.log"), model_path="m", visible_devices=devices,
                            started_at=time.time())
    out = backend.launch(record, spec)
    created = client.created
    assert out.container_id == "c0ffee" and out.pid is None
    assert created["command"] == spec.argv[1:]
    assert created["network_mode"] == "host"
    assert created["volumes"] == {str(Path(config.host.models_dir).resolve()): {"bind": "/models", "mode": "ro"}}
    # Inside the container the chosen GPUs are numbered from 0: the host's indices must not leak in.
    assert "CUDA_VISIBLE_DEVICES" not in created["environment"] and created["environment"]["OTHER"] == "1"
    if expected is None:
        assert "device_requests" not in created
    else:
        (request,) = created["device_requests"]
        assert request["Capabilities"] == [["gpu"]]
        for key, value in expected.items():
            assert request[{"device_ids": "DeviceIDs", "count": "Count"}[key]] == value


def test_no_daemon_is_a_clear_error(config: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("docker")
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-such.sock")
    backend = DockerBackend(models_dir=config.host.models_dir)
    record, _ = make(config, tmp_path, [])
    with pytest.raises(DockerError, match=r"\.ci/docker\.sh"):
        backend.state(record)
    Path(record.log_path).parent.mkdir(parents=True, exist_ok=True)
    Path(record.log_path).write_text("kept\n")
    assert backend.read_log(record) == "kept\n"  # logs never need the daemon
    assert os.environ["DOCKER_HOST"].endswith("no-such.sock")
