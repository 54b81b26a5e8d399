"""A CPU image of the locally built llama-server, made without any registry.

``build_local_image`` copies the engine binary (and the llama.cpp tools built beside it), every
shared library ``ldd`` lists for them and the dynamic loader into a minimal root file system,
tars it and ``docker import``s it with ``ENTRYPOINT ["/usr/local/bin/llama-server"]``. Nothing is
pulled, so it works on a machine whose Docker has no registry access (CI, air-gapped hosts).

The image is labelled with the engine binary's sha256; a second call with the same binary
returns the existing image without rebuilding. The real, user-facing image (CUDA or CPU, built
from source) is ``docker/Dockerfile``; this one exists so that the Docker backend can run
anywhere a llama-server has been built.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

from mcp_server.errors import LlamaPilotError
from mcp_server.files import exclusive_lock, sha256_of
from mcp_server.paths import cache_dir
from mcp_server.profiles.config import DEFAULT_DOCKER_IMAGE

ENTRYPOINT = "/usr/local/bin/llama-server"
TOOLS = ("llama-bench", "llama-fit-params", "ggml-rpc-server")
LABEL_ENGINE_SHA = "llama-pilot.engine-sha256"
LABEL_BACKEND = "llama-pilot.backend"
LABEL_BUILDER = "llama-pilot.image-builder"
BUILDER_VERSION = "2"  # bump when the rootfs layout changes: images with another value are rebuilt

# Libraries the NVIDIA Container Toolkit injects from the host driver; copying the build host's
# copies into an image would pin it to that driver version.
_DRIVER_LIBS = re.compile(r"^(libcuda\.so|libnvidia-|libnvcuvid\.so|libnvidia-ml\.so)")
_LDD_ARROW = re.compile(r"^\s*(\S+)\s+=>\s+(\S+)\s+\(0x[0-9a-f]+\)")
_LDD_PLAIN = re.compile(r"^\s*(/\S+)\s+\(0x[0-9a-f]+\)")
_LDD_MISSING = re.compile(r"^\s*(\S+)\s+=>\s+not found")

_PASSWD = ("root:x:0:0:root:/root:/usr/sbin/nologin\n"
           "llama:x:1000:1000:llama-server:/tmp:/usr/sbin/nologin\n"
           "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n")
_GROUP = "root:x:0:\nllama:x:1000:\nnogroup:x:65534:\n"


class DockerImageError(LlamaPilotError):
    """The local image cannot be built or inspected."""

    code = "docker-image"


def _client() -> Any:
    try:
        import docker
    except ImportError as exc:
        raise DockerImageError("the `docker` Python package is missing: pip install 'docker>=7' "
                               "(it is a dependency of llama-pilot; reinstall the package)") from exc
    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as exc:
        raise DockerImageError(f"no Docker daemon answers ({exc}): start Docker (`systemctl start docker`, "
                               "or `.ci/docker.sh` on a CI machine) and try again") from exc
    return client


def image_labels(tag: str = DEFAULT_DOCKER_IMAGE, client: Any = None) -> dict[str, str] | None:
    """The image's labels, or None when no image has this tag."""
    import docker

    client = client or _client()
    try:
        image = client.images.get(tag)
    except docker.errors.ImageNotFound:
        return None
    return dict((image.attrs.get("Config") or {}).get("Labels") or {})


def image_exists(tag: str = DEFAULT_DOCKER_IMAGE) -> bool:
    """True when the local Docker has an image with this tag (never pulls)."""
    return image_labels(tag) is not None


def _engine(engine_path: str | os.PathLike[str] | None) -> Path:
    if engine_path is not None:
        path = Path(engine_path).expanduser().resolve()
        if not path.is_file():
            raise DockerImageError(f"{path} is not a file: pass the path of a built llama-server")
        return path
    from mcp_server.engine.binary import locate_engine

    return Path(locate_engine().path).resolve()


def shared_libraries(binary: Path) -> list[Path]:
    """Absolute paths of the libraries ``ldd`` lists for ``binary``, the loader included.

    The paths are the ones the loader will look up (symlinks are kept as named, their targets
    copied); a library ldd cannot find is an error, since the image could never run.
    """
    try:
        out = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DockerImageError(f"could not run ldd on {binary}: {exc} (install libc-bin)") from exc
    text = out.stdout + out.stderr
    if "not a dynamic executable" in text or "statically linked" in text:
        return []
    if out.returncode != 0:
        raise DockerImageError(f"ldd {binary} failed: {text.strip()}")
    libs: list[Path] = []
    missing = []
    for line in text.splitlines():
        if m := _LDD_MISSING.match(line):
            missing.append(m.group(1))
        elif m := _LDD_ARROW.match(line):
            libs.append(Path(m.group(2)))
        elif m := _LDD_PLAIN.match(line):
            libs.append(Path(m.group(1)))
    if missing:
        raise DockerImageError(f"{binary} needs libraries ldd cannot find: {', '.join(missing)}")
    return [p for p in libs if not _DRIVER_LIBS.match(p.name)]


def _rootfs_files(server: Path) -> dict[str, Path]:
    """Image path -> host file, for the server, its sibling tools and backends, and their libraries."""
    bindir = server.parent
    files: dict[str, Path] = {ENTRYPOINT: server}
    for name in TOOLS:
        tool = bindir / name
        if tool.is_file() and os.access(tool, os.X_OK):
            files[f"/usr/local/bin/{name}"] = tool
    # Builds with shared libraries (or GGML_BACKEND_DL) keep their .so files beside the binaries
    # and find them through $ORIGIN; put them beside the binaries in the image too.
    for lib in sorted(bindir.glob("*.so*")):
        if lib.is_file():
            files[f"/usr/local/bin/{lib.name}"] = lib
    for binary in list(files.values()):
        for lib in shared_libraries(binary):
            if lib.parent.resolve() == bindir.resolve():
                files[f"/usr/local/bin/{lib.name}"] = lib
            else:
                files.setdefault(str(lib), lib)
    return files


def _write_rootfs_tar(files: dict[str, Path], out: Path) -> None:
    """A tar of the minimal root file system: owned by root, real file contents, no symlinks."""
    now = int(time.time())

    def add_dir(tar: tarfile.TarFile, name: str, mode: int = 0o755) -> None:
        info = tarfile.TarInfo(name.lstrip("/"))
        info.type, info.mode, info.mtime = tarfile.DIRTYPE, mode, now
        tar.addfile(info)

    def add_text(tar: tarfile.TarFile, name: str, text: str, mode: int = 0o644) -> None:
        data = text.encode()
        info = tarfile.TarInfo(name.lstrip("/"))
        info.size, info.mode, info.mtime = len(data), mode, now
        tar.addfile(info, io.BytesIO(data))

    dirs = {"/etc", "/tmp", "/models", "/usr", "/usr/local", "/usr/local/bin", "/root", "/dev", "/proc", "/sys"}
    for target in files:
        parent = Path(target).parent
        while str(parent) != "/":
            dirs.add(str(parent))
            parent = parent.parent
    with tarfile.open(out, "w") as tar:
        for d in sorted(dirs, key=lambda p: (p.count("/"), p)):
            add_dir(tar, d, 0o1777 if d == "/tmp" else 0o700 if d == "/root" else 0o755)
        add_text(tar, "/etc/passwd", _PASSWD)
        add_text(tar, "/etc/group", _GROUP)
        add_text(tar, "/etc/nsswitch.conf", "passwd: files\ngroup: files\nhosts: files dns\n")
        add_text(tar, "/etc/hosts", "127.0.0.1 localhost\n::1 localhost\n")
        for target, source in sorted(files.items()):
            real = source.resolve()
            info = tar.gettarinfo(str(real), arcname=target.lstrip("/"))
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            info.mode = 0o755
            with real.open("rb") as fh:
                tar.addfile(info, fh)


def build_local_image(tag: str = DEFAULT_DOCKER_IMAGE, engine_path: str | os.PathLike[str] | None = None,
                      *, force: bool = False) -> str:
    """Build (or find) the CPU image of ``engine_path`` (default: ``locate_engine()``); returns its id.

    Skips the build when ``tag`` already names an image labelled with the same engine sha256
    (and the same builder version), unless ``force``.
    """
    server = _engine(engine_path)
    digest = sha256_of(server)
    client = _client()
    with exclusive_lock(cache_dir() / "docker" / (re.sub(r"[^A-Za-z0-9_.-]", "_", tag) + ".lock")):
        labels = image_labels(tag, client)
        previous = client.images.get(tag).id if labels is not None else None
        if (not force and labels is not None and labels.get(LABEL_ENGINE_SHA) == digest
                and labels.get(LABEL_BUILDER) == BUILDER_VERSION):
            return client.images.get(tag).id
        files = _rootfs_files(server)
        changes = [
            f'ENTRYPOINT ["{ENTRYPOINT}"]',
            "EXPOSE 8080",
            "WORKDIR /tmp",
            f"LABEL {LABEL_ENGINE_SHA}={digest}",
            f"LABEL {LABEL_BACKEND}=cpu",
            f"LABEL {LABEL_BUILDER}={BUILDER_VERSION}",
            "LABEL org.opencontainers.image.title=llama-server",
            'LABEL org.opencontainers.image.description="llama-server built locally by llama-pilot"',
        ]
        with tempfile.TemporaryDirectory(prefix="llama-pilot-image-") as tmp:
            tarball = Path(tmp) / "rootfs.tar"
            try:
                _write_rootfs_tar(files, tarball)
            except OSError as exc:
                raise DockerImageError(f"could not write the image's file system: {exc}") from exc
            repository, _, version = tag.rpartition(":") if ":" in tag.split("/")[-1] else (tag, "", "latest")
            try:
                result = client.api.import_image_from_file(str(tarball), repository=repository, tag=version,
                                                           changes=changes)
            except Exception as exc:  # docker.errors.APIError and transport errors alike
                raise DockerImageError(f"docker import of {tag} failed: {exc}") from exc
        image_id = _imported_id(result)
        try:
            image = client.images.get(tag)
        except Exception as exc:
            raise DockerImageError(f"docker import reported {image_id or result!r} but {tag} is not there: "
                                   f"{exc}") from exc
        got = (image.attrs.get("Config") or {}).get("Labels") or {}
        if got.get(LABEL_ENGINE_SHA) != digest:
            raise DockerImageError(f"imported {tag} lacks the {LABEL_ENGINE_SHA} label: this Docker does not "
                                   "apply LABEL changes on import; upgrade Docker (20.10 or newer)")
        if previous and previous != image.id:
            # The old image lost its tag; drop it unless a container still uses it.
            with contextlib.suppress(Exception):
                client.images.remove(previous, noprune=False)
        return image.id


def _imported_id(result: Any) -> str | None:
    """The image id from import's streamed JSON ("status": "sha256:..."), if it said one."""
    text = result if isinstance(result, str) else str(result)
    m = re.search(r"sha256:[0-9a-f]{64}", text)
    return m.group(0) if m else None


def image_size(tag: str = DEFAULT_DOCKER_IMAGE) -> int | None:
    """Size in bytes of the local image, or None when it does not exist."""
    import docker

    client = _client()
    try:
        return int(client.images.get(tag).attrs.get("Size") or 0)
    except docker.errors.ImageNotFound:
        return None


def remove_image(tag: str = DEFAULT_DOCKER_IMAGE) -> bool:
    """Remove the image (containers still using it keep it alive); True when one was removed."""
    import docker

    client = _client()
    try:
        client.images.remove(tag)
    except docker.errors.ImageNotFound:
        return False
    return True


__all__ = ["build_local_image", "image_exists", "image_labels", "image_size", "remove_image",
           "shared_libraries", "DockerImageError", "ENTRYPOINT"]
