"""The containerDisk: a scratch OCI image holding the qcow2 as /disk/<name>.qcow2, owned 107:107 (the
qemu user KubeVirt's virt-launcher runs as), the image metadata as labels and annotations.

Made with buildah in its own storage (vfs, under a work directory removed afterwards), committed as
an oci-archive beside the qcow2: `<name>.containerdisk.tar`, pushed by the store (store.py). The
layer is not compressed: the qcow2 already is (qemu-img -c), gzip would spend a CPU-minute per
gigabyte to save about one per cent. The image's time is the build's (buildah --timestamp), so the
same qcow2 and metadata make the same digest.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from imagebuilder.errors import UserError
from imagebuilder.metadata import ImageMetadata

DISK_DIR = "/disk"
QEMU_UID_GID = "107:107"  # KubeVirt's containerDisk layout: the disk readable by virt-launcher's qemu
ARCHIVE_SUFFIX = ".containerdisk.tar"
OCI = "org.opencontainers.image."


@dataclass(frozen=True)
class ContainerDisk:
    archive: Path  # an oci-archive holding one image
    disk_path: str  # /disk/<name>.qcow2 inside it


def image_labels(metadata: ImageMetadata, name: str) -> dict[str, str]:
    """The labels (and annotations) of the image: imagebuilder's metadata, and the OCI keys that say
    what it is (title, version: the Kubernetes one, revision, created)."""
    built = metadata.built_at()
    return {
        **metadata.to_tags(),
        f"{OCI}title": name,
        f"{OCI}description": f"Kubernetes {metadata.kubernetes_version} node image ({metadata.os}, {metadata.arch}) "
                             "as a KubeVirt containerDisk",
        f"{OCI}version": metadata.kubernetes_version,
        f"{OCI}revision": metadata.git_commit,
        **({f"{OCI}created": built.strftime("%Y-%m-%dT%H:%M:%SZ")} if built else {}),
    }


def build(qcow2: Path, metadata: ImageMetadata, archive: Path | None = None,
          workdir: Path | None = None) -> ContainerDisk:
    """The containerDisk of `qcow2` as an oci-archive (default: `<qcow2 stem>.containerdisk.tar` beside it).

    buildah's storage lives under `workdir` (default: a temporary directory beside the archive) and
    is removed afterwards, whatever happens."""
    archive = archive or qcow2.with_name(qcow2.stem + ARCHIVE_SUFFIX)
    disk_path = f"{DISK_DIR}/{qcow2.name}"
    labels = image_labels(metadata, qcow2.stem)
    built = metadata.built_at()
    work = Path(tempfile.mkdtemp(prefix=".containerdisk-", dir=workdir or archive.parent))
    partial = archive.with_name(f".{archive.name}.tmp")
    try:
        container = _buildah(work, "from", "--quiet", "scratch")
        _buildah(work, "copy", "--quiet", "--chown", QEMU_UID_GID, container, str(qcow2), disk_path)
        settings = ["--os", "linux", "--arch", metadata.arch]
        for key, value in labels.items():
            settings += ["--label", f"{key}={value}", "--annotation", f"{key}={value}"]
        _buildah(work, "config", *settings, container)
        partial.unlink(missing_ok=True)
        _buildah(work, "commit", "--quiet", "--rm", "--format", "oci",
                 *(["--timestamp", str(int(built.timestamp()))] if built else []),
                 container, f"oci-archive:{partial}")
        partial.replace(archive)
    finally:
        partial.unlink(missing_ok=True)
        shutil.rmtree(work, ignore_errors=True)
    return ContainerDisk(archive=archive, disk_path=disk_path)


def _buildah(work: Path, *args: str) -> str:
    command = ["buildah", "--storage-driver", "vfs", "--root", str(work / "storage"),
               "--runroot", str(work / "run"), *args]
    try:
        done = subprocess.run(command, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise UserError("buildah is not installed | fix: apt-get install buildah (it makes the containerDisk)") from None
    if done.returncode != 0:
        last = " ".join((done.stderr or done.stdout).split())[-300:]
        raise UserError(f"buildah {args[0]} failed: {last} | fix: see that error; buildah runs with "
                        f"--storage-driver vfs under {work}")
    return done.stdout.strip()
