"""The Docker backend: llama-server as a container, through the Docker Engine API (``docker`` SDK).

One container per instance, named ``llama-pilot-<instance id>`` and labelled so that llama-pilot
can always find its own containers again (``llama-pilot.managed=true``, ``.profile``,
``.instance``). The container uses host networking, so llama-server binds the host and port
in its argv exactly as the native backend's process does, and the models folder is mounted
read-only at ``/models`` (the runtime builds the argv with ``model_root="/models"``).

Logs: while the container exists its output lives in Docker's log; :meth:`DockerBackend.stop`
appends that output to the record's log file before removing the container, so the file holds
every run, as it does for native instances. :meth:`DockerBackend.read_log` returns the file plus
the live container's output.

Nothing is ever pulled: a missing image is an error that says how to build one
(:func:`mcp_server.runtime.docker_image.build_local_image` for the CPU image, ``docker/Dockerfile``
for the CUDA image).
"""

from __future__ import annotations

import datetime as _dt
import math
import re
from pathlib import Path, PurePosixPath
from typing import Any, Literal


from mcp_server.engine.argv import LaunchSpec
from mcp_server.runtime.native import (MARK_HOME, MARK_INSTANCE, MARK_PROFILE, ProcessState, Unmanaged, argv_model, argv_port,
                       classify_owner, create_time)
from mcp_server.errors import LlamaPilotError
from mcp_server.runtime.registry import InstanceRecord
from mcp_server.profiles.config import DEFAULT_DOCKER_IMAGE

LABEL_MANAGED = "llama-pilot.managed"
LABEL_PROFILE = "llama-pilot.profile"
LABEL_INSTANCE = "llama-pilot.instance"
LABEL_LOG = "llama-pilot.log-path"
LABEL_HOME = "llama-pilot.home"  # the LLAMA_PILOT_HOME that started it: only that home adopts or stops it
LABEL_IMAGE_BACKEND = "llama-pilot.backend"  # set on images: "cpu" images never get GPUs
MODELS_MOUNT = "/models"
NAME_PREFIX = "llama-pilot-"


class DockerError(LlamaPilotError):
    """Docker cannot be used for this instance; the message says what to do."""

    code = "docker"


class DockerUnavailable(DockerError):
    """The docker SDK is missing or no Docker daemon answers."""

    code = "docker-unavailable"


class DockerImageMissing(DockerError):
    """The configured image is not in the local Docker (llama-pilot never pulls)."""

    code = "docker-image-missing"


def container_name(record: InstanceRecord) -> str:
    return f"{NAME_PREFIX}{record.id}"


def _docker() -> Any:
    try:
        import docker
    except ImportError as exc:
        raise DockerUnavailable("the `docker` Python package is not installed: pip install 'docker>=7' "
                                "(a llama-pilot dependency; reinstall llama-pilot)") from exc
    return docker


class DockerBackend:
    """llama-server in a container of ``image``, with ``models_dir`` mounted read-only at /models.

    ``gpus="all"`` gives every container all GPUs; otherwise a container gets exactly the record's
    ``visible_devices`` (none when unset). Images labelled ``llama-pilot.backend=cpu`` (the
    locally built image) never get GPUs.
    """

    name = "docker"

    def __init__(self, image: str = DEFAULT_DOCKER_IMAGE, models_dir: str | Path = "models", *,
                 gpus: Literal["all"] | None = None, client: Any = None) -> None:
        self.image = image
        self.models_dir = str(Path(models_dir).expanduser().resolve())
        self.gpus = gpus
        self._client = client  # created on first use: constructing the backend never needs a daemon

    # -- connection ---------------------------------------------------------------------------

    @property
    def client(self) -> Any:
        if self._client is None:
            docker = _docker()
            try:
                client = docker.from_env()
                client.ping()
            except (docker.errors.DockerException, *_connection_errors()) as exc:
                raise DockerUnavailable(
                    f"no Docker daemon answers ({_short(exc)}). Start Docker (`sudo systemctl start docker`; "
                    "on a CI machine or bare VM, `.ci/docker.sh`), make sure this user may use it "
                    "(the docker group, or DOCKER_HOST), or set BACKEND=native.") from exc
            self._client = client
        return self._client

    def _find(self, record: InstanceRecord) -> Any | None:
        """The record's container, or None when it no longer exists."""
        docker = _docker()
        for ref in (record.container_id, record.container_name, container_name(record)):
            if not ref:
                continue
            try:
                return self.client.containers.get(ref)
            except docker.errors.NotFound:
                continue
            except docker.errors.APIError as exc:
                raise DockerError(f"Docker could not inspect container {ref}: {_short(exc)}") from exc
            except _connection_errors() as exc:
                raise DockerUnavailable(f"the Docker daemon stopped answering ({exc}); start it again") from exc
        return None

    # -- launch -------------------------------------------------------------------------------

    def launch(self, record: InstanceRecord, spec: LaunchSpec, hold_fd: int | None = None) -> InstanceRecord:
        # hold_fd matters only to processes that outlive their launcher; a container is created in
        # one API call and found again by its labels.
        docker = _docker()
        client = self.client
        try:
            image = client.images.get(self.image)
        except docker.errors.ImageNotFound:
            raise DockerImageMissing(
                f"Docker image {self.image} not found (llama-pilot never pulls). Build the CPU image from the "
                "local llama-server with mcp_server.runtime.docker_image.build_local_image(), or the CUDA image with "
                "`docker build -f docker/Dockerfile -t <tag> .` (docker/README.md), or set DOCKER_IMAGE "
                "in [global] to an image you have.") from None
        except docker.errors.APIError as exc:
            raise DockerError(f"Docker could not inspect image {self.image}: {_short(exc)}") from exc
        image_labels = (image.attrs.get("Config") or {}).get("Labels") or {}
        cpu_image = image_labels.get(LABEL_IMAGE_BACKEND) == "cpu"

        devices = record.visible_devices if record.visible_devices is not None else spec.visible_devices
        env = {**spec.env, **record.env}
        requests = []
        if not cpu_image and (self.gpus == "all" or devices):
            if self.gpus == "all" and not devices:
                requests = [docker.types.DeviceRequest(count=-1, capabilities=[["gpu"]])]
            else:
                requests = [docker.types.DeviceRequest(device_ids=[str(d) for d in devices or []],
                                                       capabilities=[["gpu"]])]
        if requests or cpu_image:
            # The container sees only its devices, renumbered from 0: the host's indices in
            # CUDA_VISIBLE_DEVICES would hide them. (A CPU image has no CUDA to configure.)
            env.pop("CUDA_VISIBLE_DEVICES", None)

        name = container_name(record)
        self._clear_stale(name, record)
        kwargs: dict[str, Any] = dict(
            command=list(spec.argv[1:]),  # the image's entrypoint is llama-server
            name=name,
            network_mode="host",
            volumes={self.models_dir: {"bind": MODELS_MOUNT, "mode": "ro"}},
            labels={LABEL_MANAGED: "true", LABEL_PROFILE: record.profile, LABEL_INSTANCE: record.id,
                    LABEL_LOG: record.log_path, LABEL_HOME: record.env.get(MARK_HOME, "")},
            environment=env,
            stop_signal="SIGTERM",
            detach=True,
        )
        if requests:
            kwargs["device_requests"] = requests
        # create + start rather than containers.run: run() pulls a missing image, and we never pull.
        try:
            container = client.containers.create(self.image, **kwargs)
        except docker.errors.ImageNotFound:
            raise DockerImageMissing(f"Docker image {self.image} disappeared before the container was created; "
                                     "rebuild it (mcp_server.runtime.docker_image.build_local_image())") from None
        except docker.errors.APIError as exc:
            raise DockerError(f"Docker could not create container {name}: {_short(exc)}") from exc
        try:
            container.start()
        except docker.errors.APIError as exc:
            detail = _short(exc)
            with _suppress_docker(docker):
                container.remove(force=True)
            hint = ""
            if "capabilities" in detail or "nvidia" in detail.lower() or "device driver" in detail:
                hint = (" Docker cannot hand GPUs to containers here: install the NVIDIA Container Toolkit "
                        "(nvidia-ctk runtime configure --runtime=docker, then restart dockerd), or use a CPU "
                        "image / BACKEND=native.")
            raise DockerError(f"Docker could not start container {name}: {detail}.{hint}") from exc
        with _suppress_docker(docker):
            container.reload()
        pid = int((container.attrs.get("State") or {}).get("Pid") or 0) or None
        return record.model_copy(update={
            "container_id": container.id,
            "container_name": name,
            "pid": pid,
            "pid_create_time": create_time(pid),  # None across pid namespaces (rootless, remote daemon)
            "supervisor_pid": None,
            "exit_file": None,
        })

    def _clear_stale(self, name: str, record: InstanceRecord) -> None:
        """A leftover container with our name (an earlier launch of this record) is archived and removed."""
        docker = _docker()
        try:
            old = self.client.containers.get(name)
        except docker.errors.NotFound:
            return
        if old.status in ("running", "restarting", "paused"):
            raise DockerError(f"container {name} is already running; stop it first (docker stop {name})")
        self._archive_log(old, Path(record.log_path))
        with _suppress_docker(docker):
            old.remove(force=True)

    # -- state --------------------------------------------------------------------------------

    def state(self, record: InstanceRecord) -> ProcessState:
        container = self._find(record)
        if container is None:
            return ProcessState(alive=False, exit_code=record.exit_code,
                                detail=f"container {record.container_name or record.container_id} no longer exists")
        return _state_of(container.attrs.get("State") or {})

    # -- stop ---------------------------------------------------------------------------------

    def stop(self, record: InstanceRecord, grace_s: float) -> ProcessState:
        docker = _docker()
        container = self._find(record)
        if container is None:
            return ProcessState(alive=False, exit_code=record.exit_code,
                                detail=f"container {record.container_name or record.container_id} was already gone")
        try:
            container.stop(timeout=max(0, math.ceil(grace_s)))  # SIGTERM, then SIGKILL after grace_s
        except docker.errors.NotFound:
            return ProcessState(alive=False, exit_code=record.exit_code, detail="container was already gone")
        except docker.errors.APIError as exc:
            raise DockerError(f"Docker could not stop container {container.name}: {_short(exc)}") from exc
        try:
            container.reload()
            final = _state_of(container.attrs.get("State") or {})
        except docker.errors.NotFound:  # removed by someone else meanwhile (e.g. --rm)
            return ProcessState(alive=False, exit_code=record.exit_code, detail="container was removed during stop")
        self._archive_log(container, Path(record.log_path))
        try:
            container.remove(v=True, force=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as exc:
            raise DockerError(f"container {container.name} stopped but could not be removed: {_short(exc)}; "
                              f"remove it with `docker rm -f {container.name}`") from exc
        return final

    @staticmethod
    def _archive_log(container: Any, log_path: Path) -> None:
        """Append the container's whole output to the log file, after what is already there."""
        docker = _docker()
        log_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with open(log_path, "ab") as log:
                for chunk in container.logs(stdout=True, stderr=True, stream=True, follow=False):
                    log.write(chunk)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as exc:
            with open(log_path, "ab") as log:
                log.write(f"\n(llama-pilot: the container's log could not be read: {_short(exc)})\n".encode())

    # -- logs ---------------------------------------------------------------------------------

    def read_log(self, record: InstanceRecord) -> str:
        try:
            text = Path(record.log_path).read_text(errors="replace")
        except FileNotFoundError:
            text = ""
        try:
            docker = _docker()
            container = self._find(record)
            if container is not None:
                text += container.logs(stdout=True, stderr=True).decode("utf-8", "replace")
        except DockerError:
            pass  # no SDK or no daemon: the file is all there is
        except docker.errors.DockerException:
            pass  # removed between find and logs
        return text

    # -- orphans ------------------------------------------------------------------------------

    def unmanaged(self, known: list[InstanceRecord], home: Path) -> list[Unmanaged]:
        """llama-pilot containers (running or exited) that no record owns, and running containers
        whose main process is a llama-server llama-pilot did not start (e.g. an older compose setup)."""
        docker = _docker()
        known_ids = {r.id for r in known}
        known_containers = {r.container_id for r in known if r.container_id}
        found: list[Unmanaged] = []
        try:
            ours = self.client.containers.list(all=True, filters={"label": f"{LABEL_MANAGED}=true"})
            others = self.client.containers.list()  # running only
        except docker.errors.APIError as exc:
            raise DockerError(f"Docker could not list containers: {_short(exc)}") from exc
        seen = set()
        for container in ours:
            labels = container.labels or {}
            seen.add(container.id)
            if labels.get(LABEL_INSTANCE) in known_ids or container.id in known_containers:
                continue
            marks = {MARK_HOME: labels.get(LABEL_HOME, ""), MARK_INSTANCE: labels.get(LABEL_INSTANCE, ""),
                     MARK_PROFILE: labels.get(LABEL_PROFILE, "")}
            # The Docker daemon is shared by every user who may use it: a container is "ours" only
            # by its home label, never because its home is gone.
            found.append(self._describe(container, marks, home))
        for container in others:
            if container.id in seen or container.id in known_containers:
                continue
            attrs = container.attrs
            if PurePosixPath(attrs.get("Path") or "").name != "llama-server":
                continue
            found.append(self._describe(container, {}, home))
        return found

    def _describe(self, container: Any, marks: dict[str, str], home: Path) -> Unmanaged:
        attrs = container.attrs
        state = attrs.get("State") or {}
        argv = [attrs.get("Path") or "llama-server", *(attrs.get("Args") or [])]
        pid = int(state.get("Pid") or 0) or None
        return Unmanaged(backend=self.name, pid=pid, container_id=container.id, argv=argv,
                         port=_host_port(attrs, argv_port(argv)), model_path=_host_model(attrs, argv_model(argv)),
                         started_at=_started_at(attrs), owner=classify_owner(marks, home, same_user=False),
                         home=marks.get(MARK_HOME) or None, instance=marks.get(MARK_INSTANCE) or None,
                         profile=marks.get(MARK_PROFILE) or None)


# ------------------------------------------------------------------------------------------------


class _suppress_docker:
    """Ignore Docker API errors in best-effort clean-up."""

    def __init__(self, docker: Any) -> None:
        self._errors = docker.errors.DockerException

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, exc: Any, tb: Any) -> bool:
        return kind is not None and issubclass(kind, self._errors)


def _connection_errors() -> tuple[type[BaseException], ...]:
    import requests  # a dependency of the docker SDK

    return (requests.exceptions.ConnectionError,)


def _state_of(state: dict[str, Any]) -> ProcessState:
    status = state.get("Status")
    if status in ("running", "restarting"):
        return ProcessState(alive=True)
    if status == "paused":
        return ProcessState(alive=True, detail="container is paused (docker unpause to resume)")
    if status == "created":
        return ProcessState(alive=False, detail="container was created but never started")
    code = state.get("ExitCode")
    if state.get("OOMKilled"):
        detail = "OOMKilled"
    elif state.get("Error"):
        detail = str(state["Error"])
    elif status == "dead":
        detail = "container is dead (Docker could not stop or remove it cleanly)"
    else:
        detail = None
    return ProcessState(alive=False, exit_code=int(code) if code is not None else None, detail=detail)


_FRACTION = re.compile(r"(\.\d{1,6})\d*")


def _parse_time(text: str | None) -> float | None:
    if not text or text.startswith("0001-01-01"):
        return None
    try:
        return _dt.datetime.fromisoformat(_FRACTION.sub(r"\1", text.replace("Z", "+00:00"), count=1)).timestamp()
    except ValueError:
        return None


def _started_at(attrs: dict[str, Any]) -> float:
    return (_parse_time((attrs.get("State") or {}).get("StartedAt")) or _parse_time(attrs.get("Created"))
            or 0.0)


def _host_port(attrs: dict[str, Any], port: int | None) -> int | None:
    """The host port: the argv's own with host networking, else the published one if any."""
    if port is None:
        return None
    if (attrs.get("HostConfig") or {}).get("NetworkMode") == "host":
        return port
    bindings = ((attrs.get("NetworkSettings") or {}).get("Ports") or {}).get(f"{port}/tcp") or []
    for binding in bindings:
        if str(binding.get("HostPort", "")).isdigit():
            return int(binding["HostPort"])
    return port


def _host_model(attrs: dict[str, Any], model: str | None) -> str | None:
    """The model's host path when it lies under a bind mount, else the in-container path."""
    if not model:
        return model
    inner = PurePosixPath(model)
    for mount in attrs.get("Mounts") or []:
        dest, source = mount.get("Destination"), mount.get("Source")
        if not dest or not source:
            continue
        try:
            rel = inner.relative_to(dest)
        except ValueError:
            continue
        return str(Path(source) / rel)
    return model


def _short(exc: BaseException) -> str:
    """An API error's explanation without the SDK's request URL noise."""
    explanation = getattr(exc, "explanation", None)
    text = explanation.decode() if isinstance(explanation, bytes) else explanation
    return str(text or exc).strip()
