"""Kubernetes as a systemd-sysext image: nodes boot a stock OS image and merge Kubernetes at boot.

One image per Kubernetes patch release and architecture, named
``kubernetes-v1.31.4-x86-64.raw``: a squashfs holding kubelet, kubeadm, kubectl, the CNI
plugins, the kubelet unit with its kubeadm drop-in, and the release file
``usr/lib/extension-release.d/extension-release.kubernetes``. The release file carries the
stable name ``kubernetes`` (not the versioned file name), because systemd-sysext matches it
against the name the image has in the search path, and nodes reach the image through the
symlink ``/etc/extensions/kubernetes.raw``.

Beside each image, in the output directory (everything served from one ``--base-url``):

- ``SHA256SUMS`` over every file there: the manifest systemd-sysupdate downloads, and
  ``SHA256SUMS.gpg``, its detached signature with the user's key (``sysext_signing``);
- ``kubernetes-1.31.conf``: a sysupdate.d transfer file that follows patch releases of one
  minor only, with ``Verify=yes`` (nodes check SHA256SUMS.gpg against the public key the node
  configs install as /etc/systemd/import-pubring.gpg); ``Verify=no`` only with ``--insecure``;
- ``kubernetes-v1.31.4-x86-64.bu`` (Butane, variant flatcar 1.0.0) and ``.ign`` (the same
  as Ignition spec 3.3.0 JSON), for a Flatcar node; ``.clc.yaml`` (Container Linux Config),
  for Cluster API's ``KubeadmConfig.spec.ignition.containerLinuxConfig.additionalConfig``.
  All three come from one description of the node (``node_config``).

Reproducible: files are owned by root, every time stamp is SOURCE_DATE_EPOCH, modes are
normalised, squashfs sorts directory entries itself, compression is fixed. Two builds of
the same pins give the same bytes (all but SHA256SUMS.gpg, whose signature carries its time).
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import os
import shutil
import stat
import subprocess
import tarfile
import tempfile
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from imagebuilder import sysext_signing as signing
from imagebuilder.atomicfile import write_atomically
from imagebuilder.clouds import registry
from imagebuilder.downloads import fetch_all, sha256_file
from imagebuilder.errors import UserError
from imagebuilder.planner import Cell
from imagebuilder.versions import UPSTREAM_MIRRORS, Download, VersionsLock, downloads_for

NAME = "kubernetes"  # the extension's name: release file suffix and the /etc/extensions symlink
# Debian/Go architecture names (the versions file) -> systemd's (ARCHITECTURE=, %a, file names).
SYSTEMD_ARCH: dict[str, str] = {"amd64": "x86-64", "arm64": "arm64"}
DEBIAN_ARCH: dict[str, str] = {systemd: debian for debian, systemd in SYSTEMD_ARCH.items()}
BINARIES: tuple[str, ...] = ("kubeadm", "kubectl", "kubelet")
CNI_DOWNLOAD = "cni_plugins"
ANY_OS = "_any"
# Without SOURCE_DATE_EPOCH in the environment, every time stamp is the epoch, as sysext-bakery's
# reproducible builds do: the pins, not the clock, identify a build.
DEFAULT_SOURCE_DATE_EPOCH = 0
# Fixed compression, part of the reproducibility contract. xz rather than zstd: every kernel
# that mounts squashfs images of systemd 249+ distributions (Flatcar, Ubuntu, Debian, RHEL 9)
# has SQUASHFS_XZ; zstd squashfs support is not universal.
MKSQUASHFS_COMPRESSION: tuple[str, ...] = ("-comp", "xz", "-b", "128K")
# Where a node keeps the images and the symlink systemd-sysext merges (REFERENCE.md, sysext).
NODE_IMAGE_DIR = "/opt/extensions/kubernetes"
NODE_SYMLINK = f"/etc/extensions/{NAME}.raw"
NODE_SYSUPDATE_DIR = f"/etc/sysupdate.{NAME}.d"  # component dir: `systemd-sysupdate -C kubernetes`
SYSUPDATE_INSTANCES_MAX = 3
BUTANE_VARIANT = ("flatcar", "1.0.0")
IGNITION_VERSION = "3.3.0"  # what Butane flatcar 1.0.0 emits; Flatcar 3185.0.0+ reads it

# The CNI plugins ship inside /usr and are copied to /opt/cni/bin when kubelet starts, as
# sysext-bakery does, rather than shipped in /opt/cni/bin directly (systemd-sysext would merge
# /opt too): a merged hierarchy is a read-only overlay, and CNI providers (Calico, Cilium,
# Flannel...) write their own plugins into /opt/cni/bin from a DaemonSet. Copying leaves
# /opt/cni/bin writable, and never replaces a plugin a provider has installed there.
CNI_IMAGE_DIR = "usr/libexec/kubernetes/cni"

# The unit and drop-in the kubeadm packages install (REFERENCE.md: "what a node image needs").
KUBELET_UNIT = f"""\
[Unit]
Description=kubelet: The Kubernetes Node Agent
Documentation=https://kubernetes.io/docs/
Wants=network-online.target
After=network-online.target

[Service]
# Copy the CNI plugins of this extension into a writable /opt/cni/bin, keeping any already there.
ExecStartPre=/bin/sh -c 'mkdir -p /opt/cni/bin && for f in /{CNI_IMAGE_DIR}/*; do t=/opt/cni/bin/$${{f##*/}}; [ -e "$$t" ] || cp -p "$$f" "$$t"; done'
ExecStart=/usr/bin/kubelet
Restart=always
StartLimitInterval=0
RestartSec=10

[Install]
WantedBy=multi-user.target
"""
KUBEADM_DROPIN = """\
# kubeadm's kubelet flags: kubeadm init/join writes kubeadm-flags.env and config.yaml.
[Service]
Environment="KUBELET_KUBECONFIG_ARGS=--bootstrap-kubeconfig=/etc/kubernetes/bootstrap-kubelet.conf --kubeconfig=/etc/kubernetes/kubelet.conf"
Environment="KUBELET_CONFIG_ARGS=--config=/var/lib/kubelet/config.yaml"
EnvironmentFile=-/var/lib/kubelet/kubeadm-flags.env
# Last-resort overrides (KUBELET_EXTRA_ARGS); prefer nodeRegistration.kubeletExtraArgs.
EnvironmentFile=-/etc/default/kubelet
EnvironmentFile=-/etc/sysconfig/kubelet
ExecStart=
ExecStart=/usr/bin/kubelet $KUBELET_KUBECONFIG_ARGS $KUBELET_CONFIG_ARGS $KUBELET_KUBEADM_ARGS $KUBELET_EXTRA_ARGS
"""
# Run the kubernetes component's transfers (the stock service reads /etc/sysupdate.d only), and
# flag a reboot when the symlink moved, for kured or Flatcar's update operator to act on.
SYSUPDATE_DROPIN = f"""\
[Service]
ExecStartPre=/usr/bin/sh -c "readlink --canonicalize {NODE_SYMLINK} > /run/{NAME}-sysext-before"
ExecStart=
ExecStart=/usr/lib/systemd/systemd-sysupdate -C {NAME} update
ExecStartPost=/usr/bin/sh -c "readlink --canonicalize {NODE_SYMLINK} | cmp -s - /run/{NAME}-sysext-before || touch /run/reboot-required"
"""


@dataclass(frozen=True)
class SysextRequest:
    minor: str  # "1.31"
    arch: str  # "amd64" or "arm64" (Debian names, as in the versions file)
    base_url: str | None = None  # where the output directory will be served; None: image only
    os_id: str = ANY_OS
    sysext_level: str | None = None  # required when os_id is not _any
    mirrors: dict[str, str] = field(default_factory=dict)
    updates: bool = True  # nodes get the sysupdate transfer file and systemd-sysupdate.timer
    source_date_epoch: int | None = None  # None: $SOURCE_DATE_EPOCH, else DEFAULT_SOURCE_DATE_EPOCH
    public_keyring: bytes | None = None  # the signing key's public part: nodes verify updates with it
    insecure: bool = False  # allow an http:// base URL and, without a key, unverified updates (Verify=no)


@dataclass(frozen=True)
class SysextResult:
    image: Path
    kubernetes_version: str
    sha256: str
    size: int
    files: tuple[Path, ...]  # every file written in the output directory, the image first


def normalize_arch(arch: str) -> str:
    """Accept either spelling (x86-64 or amd64, arm64); return the Debian one."""
    if arch in SYSTEMD_ARCH:
        return arch
    if arch in DEBIAN_ARCH:
        return DEBIAN_ARCH[arch]
    raise UserError(f"--arch {arch}: unknown architecture | fix: use one of x86-64, arm64")


def image_name(kubernetes_version: str, arch: str) -> str:
    return f"{NAME}-v{kubernetes_version}-{SYSTEMD_ARCH[arch]}.raw"


def transfer_file_name(minor: str) -> str:
    return f"{NAME}-{minor}.conf"


def resolve_source_date_epoch(requested: int | None) -> int:
    if requested is not None:
        return requested
    raw = os.environ.get("SOURCE_DATE_EPOCH")
    if raw is None:
        return DEFAULT_SOURCE_DATE_EPOCH
    if not raw.isdigit() or int(raw) >= 2**32:
        raise UserError(f"SOURCE_DATE_EPOCH={raw}: not a Unix time squashfs can store "
                        "| fix: set it to whole seconds since 1970, below 2^32")
    return int(raw)


def release_file(request: SysextRequest) -> str:
    """The extension-release file: which hosts may merge the image."""
    lines = [f"ID={request.os_id}"]
    if request.os_id != ANY_OS:
        lines.append(f"SYSEXT_LEVEL={request.sysext_level}")
    lines += [f"ARCHITECTURE={SYSTEMD_ARCH[request.arch]}", "EXTENSION_RELOAD_MANAGER=1"]
    return "\n".join(lines) + "\n"


def resolve_minor(requested: str, versions: VersionsLock) -> str:
    """`--k8s` takes a minor ("1.31") or its pinned patch ("1.31.4", "v1.31.4"); returns the minor."""
    parts = requested.removeprefix("v").split(".")
    minor = ".".join(parts[:2])
    if len(parts) == 3 and minor in versions.minors:
        pinned = versions.minors[minor].kubernetes_version
        if requested.removeprefix("v") != pinned:
            raise UserError(f"--k8s {requested}: the versions file pins {pinned} for {minor} "
                            f"| fix: pass --k8s {minor}, or pin {requested} with 'imagebuilder versions update'")
    return minor


def check_request(request: SysextRequest, versions: VersionsLock) -> None:
    if request.minor not in versions.minors:
        known = ", ".join(sorted(versions.minors)) or "none"
        raise UserError(f"--k8s {request.minor}: not in the versions file (pinned: {known}) | fix: pick a "
                        f"pinned minor or add it with 'imagebuilder versions update --minor {request.minor}'")
    if request.arch not in SYSTEMD_ARCH:
        raise UserError(f"--arch {request.arch}: unknown architecture | fix: use one of x86-64, arm64")
    if request.os_id != ANY_OS and not request.sysext_level:
        raise UserError(f"--os-id {request.os_id} needs --sysext-level: systemd-sysext matches SYSEXT_LEVEL "
                        "against the host's os-release | fix: pass --sysext-level, or drop --os-id for ID=_any")
    if request.base_url is None:
        return
    scheme = urllib.parse.urlsplit(request.base_url).scheme
    if scheme not in ("http", "https"):
        raise UserError(f"--base-url {request.base_url}: systemd-sysupdate and Ignition fetch over http(s) "
                        "| fix: give an https:// URL")
    if scheme == "http" and not request.insecure:
        raise UserError(f"--base-url {request.base_url}: plain http lets anyone on the path replace what nodes "
                        "fetch | fix: serve it over https://, or pass --insecure to accept that")
    if request.updates and request.public_keyring is None and not request.insecure:
        raise UserError(f"--base-url {request.base_url}: nodes would take updates unverified (no signing key) "
                        f"| fix: {signing.NO_KEY_FIX}; or --no-updates, or --insecure for Verify=no")


def sysext_downloads(request: SysextRequest, versions: VersionsLock) -> tuple[str, dict[str, Download]]:
    """The Kubernetes version and the files of the sysext (binaries and CNI plugins)."""
    pins = versions.minors[request.minor]
    mirrors = {**UPSTREAM_MIRRORS, **request.mirrors}
    every = downloads_for(pins, request.arch, mirrors)
    wanted = (*BINARIES, CNI_DOWNLOAD)
    missing = [name for name in wanted if name not in every]
    if missing:
        raise UserError(f"versions file, minor {request.minor}: no pin for {', '.join(missing)} "
                        "| fix: add them with 'imagebuilder versions update'")
    return pins.kubernetes_version, {name: every[name] for name in wanted}


def build(request: SysextRequest, versions: VersionsLock, output_dir: Path,
          cache: Path | None = None, signer: signing.Signer | None = None) -> SysextResult:
    """Fetch and verify the pinned files, pack the image, and write it with its companions;
    SHA256SUMS is signed when a ``signer`` is given.

    Nothing is written in ``output_dir`` unless everything before succeeded.
    """
    check_request(request, versions)
    kubernetes_version, downloads = sysext_downloads(request, versions)
    epoch = resolve_source_date_epoch(request.source_date_epoch)
    local = fetch_all(downloads, cache=cache)  # raises on any checksum mismatch, before any write
    name = image_name(kubernetes_version, request.arch)
    with tempfile.TemporaryDirectory(prefix="imagebuilder-sysext-") as work:
        work_dir = Path(work)
        root = work_dir / "root"
        populate_tree(root, request, local)
        normalize_tree(root, epoch)
        staged = work_dir / "out"
        staged.mkdir()
        image = staged / name
        pack_squashfs(root, image, epoch)
        digest = sha256_file(image)
        companions: dict[str, str] = {}
        if request.base_url is not None:
            companions = companion_files(request, kubernetes_version, image)
        for file_name, text in companions.items():
            (staged / file_name).write_text(text)
        written = publish_into(staged, output_dir)
    sums = write_signed_sums(output_dir, signer)
    return SysextResult(image=output_dir / name, kubernetes_version=kubernetes_version, sha256=digest,
                        size=(output_dir / name).stat().st_size, files=(*written, *sums))


def populate_tree(root: Path, request: SysextRequest, local: dict[str, Path]) -> None:
    bin_dir = root / "usr" / "bin"
    bin_dir.mkdir(parents=True)
    for binary in BINARIES:
        shutil.copyfile(local[binary], bin_dir / binary)
        (bin_dir / binary).chmod(0o755)
    extract_cni(local[CNI_DOWNLOAD], root / CNI_IMAGE_DIR)
    units = root / "usr" / "lib" / "systemd" / "system"
    (units / "kubelet.service.d").mkdir(parents=True)
    (units / "kubelet.service").write_text(KUBELET_UNIT)
    (units / "kubelet.service.d" / "10-kubeadm.conf").write_text(KUBEADM_DROPIN)
    release_dir = root / "usr" / "lib" / "extension-release.d"
    release_dir.mkdir(parents=True)
    (release_dir / f"extension-release.{NAME}").write_text(release_file(request))


def extract_cni(archive: Path, dest: Path) -> None:
    """The plugin executables of the CNI release tarball, flat in ``dest``; nothing else is taken."""
    dest.mkdir(parents=True)
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar.getmembers():
                if not member.isfile():
                    continue
                plugin = Path(member.name).name
                if not member.mode & 0o111 or plugin in ("", ".", ".."):
                    continue  # LICENSE, README: not plugins
                source = tar.extractfile(member)
                assert source is not None
                with source, (dest / plugin).open("wb") as out:
                    shutil.copyfileobj(source, out)
                (dest / plugin).chmod(0o755)
    except tarfile.TarError as error:
        raise UserError(f"{archive}: not a CNI plugins tarball ({error}) | fix: check the cni_plugins pin") from None
    if not any(dest.iterdir()):
        raise UserError(f"{archive}: the CNI plugins tarball holds no executable | fix: check the cni_plugins pin")


def normalize_tree(root: Path, epoch: int) -> None:
    """Modes 0755 (directories, executables) or 0644, every time stamp the epoch."""
    paths = sorted(root.rglob("*"), reverse=True)  # children before parents: dir mtimes stay put
    for path in paths:
        mode = path.lstat().st_mode
        executable = stat.S_ISDIR(mode) or mode & 0o111
        path.chmod(0o755 if executable else 0o644)
    for path in [*paths, root]:
        os.utime(path, (epoch, epoch), follow_symlinks=False)
    root.chmod(0o755)
    os.utime(root, (epoch, epoch))


def mksquashfs_command(root: Path, image: Path, epoch: int) -> list[str]:
    return [
        "mksquashfs", str(root), str(image),
        "-noappend", "-all-root", "-no-xattrs", "-no-exports", "-reproducible",
        *MKSQUASHFS_COMPRESSION,
        "-mkfs-time", str(epoch), "-all-time", str(epoch),
        "-quiet", "-no-progress",
    ]


def pack_squashfs(root: Path, image: Path, epoch: int) -> None:
    if shutil.which("mksquashfs") is None:
        raise UserError("mksquashfs not found | fix: apt-get install squashfs-tools (4.5 or newer)")
    # mksquashfs refuses SOURCE_DATE_EPOCH together with -mkfs-time/-all-time; we pass both times.
    env = {key: value for key, value in os.environ.items() if key != "SOURCE_DATE_EPOCH"}
    result = subprocess.run(mksquashfs_command(root, image, epoch), capture_output=True, text=True, env=env)
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip().splitlines()
        raise UserError(f"mksquashfs failed: {detail[-1] if detail else 'exit ' + str(result.returncode)} "
                        "| fix: check squashfs-tools is 4.5 or newer")


def publish_into(staged: Path, output_dir: Path) -> tuple[Path, ...]:
    """Move the staged files into ``output_dir``: same file system first, then atomic renames."""
    output_dir.mkdir(parents=True, exist_ok=True)
    landing = Path(tempfile.mkdtemp(prefix=".staging-", dir=output_dir))
    try:
        names = sorted(path.name for path in staged.iterdir())
        names.sort(key=lambda file_name: not file_name.endswith(".raw"))  # the image first
        for file_name in names:
            shutil.copyfile(staged / file_name, landing / file_name)
            (landing / file_name).chmod(0o644)
        for file_name in names:
            os.replace(landing / file_name, output_dir / file_name)
    finally:
        shutil.rmtree(landing, ignore_errors=True)
    return tuple(output_dir / file_name for file_name in names)


def publish_local(result: SysextResult, catalogue_root: Path | None = None,
                  signer: signing.Signer | None = None) -> list[Path]:
    """The image and its companions in the local catalogue's sysext/ directory, with SHA256SUMS:
    a directory a node can be pointed at (--base-url) as it is."""
    from imagebuilder.clouds.local import default_catalogue_dir, place_file

    target = (catalogue_root or default_catalogue_dir()) / "sysext"
    placed = []
    for path in result.files:
        if path.name not in MANIFEST_NAMES:
            place_file(path, target / path.name)
            placed.append(target / path.name)
    return [*placed, *write_signed_sums(target, signer)]


MANIFEST_NAMES = (signing.SUMS_NAME, signing.SIGNATURE_NAME)  # not listed in SHA256SUMS themselves


def write_signed_sums(directory: Path, signer: signing.Signer | None) -> tuple[Path, ...]:
    """SHA256SUMS, and its signature when there is a signer; a signature left from an earlier
    build is removed otherwise, since it no longer matches."""
    sums = write_sha256sums(directory)
    if signer is None:
        (directory / signing.SIGNATURE_NAME).unlink(missing_ok=True)
        return (sums,)
    return sums, signing.sign_sums(signer, directory)


def write_sha256sums(output_dir: Path) -> Path:
    """SHA256SUMS over every published file in the directory (every minor, arch and companion)."""
    lines = [
        f"{sha256_file(path)}  {path.name}\n"
        for path in sorted(output_dir.iterdir())
        if path.is_file() and path.name not in MANIFEST_NAMES and not path.name.startswith(".")
    ]
    sums = output_dir / "SHA256SUMS"
    write_atomically(sums, "".join(lines))
    return sums


# -- companions: sysupdate transfer file and node configs ---------------------------------------


def transfer_file(minor: str, base_url: str, verify: bool) -> str:
    """sysupdate.d(5) transfer: patch releases of one minor, for this node's architecture (%a)."""
    pattern = f"{NAME}-v{minor}.@v-%a.raw"
    verification = (
        f"# SHA256SUMS.gpg must verify against {signing.NODE_KEYRING}, then each image against SHA256SUMS.\n"
        "Verify=yes" if verify else
        "# --insecure: SHA256SUMS is not signed; each image is still checked against its sum in it.\nVerify=no")
    return f"""\
# imagebuilder: Kubernetes {minor} patch updates as a systemd-sysext image.
# Run by `systemd-sysupdate -C {NAME} update` from {NODE_SYSUPDATE_DIR}/.
[Transfer]
{verification}

[Source]
Type=url-file
Path={base_url.rstrip('/')}/
MatchPattern={pattern}

[Target]
Type=regular-file
Path={NODE_IMAGE_DIR}
MatchPattern={pattern}
CurrentSymlink={NODE_SYMLINK}
InstancesMax={SYSUPDATE_INSTANCES_MAX}
"""


def node_config(request: SysextRequest, kubernetes_version: str, image_url: str, image_sha512: str) -> dict[str, Any]:
    """What a node needs, as a Butane (flatcar 1.0.0) document: the source of the other formats."""
    node_image = f"{NODE_IMAGE_DIR}/{image_name(kubernetes_version, request.arch)}"
    files: list[dict[str, Any]] = [{
        "path": node_image,
        "mode": 0o644,
        "contents": {"source": image_url, "verification": {"hash": f"sha512-{image_sha512}"}},
    }]
    config: dict[str, Any] = {
        "variant": BUTANE_VARIANT[0],
        "version": BUTANE_VARIANT[1],
        "storage": {
            "files": files,
            "links": [{"path": NODE_SYMLINK, "target": node_image, "hard": False}],
        },
    }
    if request.updates and request.base_url is not None:
        files.append({
            "path": f"{NODE_SYSUPDATE_DIR}/{transfer_file_name(request.minor)}",
            "mode": 0o644,
            "contents": {"inline": transfer_file(request.minor, request.base_url,
                                                 verify=request.public_keyring is not None)},
        })
        if request.public_keyring is not None:
            # Binary keyring (gpg --export): what systemd's gpg --keyring= reads.
            files.append({
                "path": signing.NODE_KEYRING,
                "mode": 0o644,
                "contents": {"source": "data:;base64," + base64.b64encode(request.public_keyring).decode()},
            })
        config["systemd"] = {"units": [
            {"name": "systemd-sysupdate.timer", "enabled": True},
            {"name": "systemd-sysupdate.service",
             "dropins": [{"name": f"{NAME}.conf", "contents": SYSUPDATE_DROPIN}]},
        ]}
    return config


def data_url(text: str) -> str:
    return "data:," + urllib.parse.quote(text, safe="")


def to_ignition(butane: dict[str, Any]) -> dict[str, Any]:
    """Butane -> Ignition 3.3.0 for the subset node_config uses (inline contents become data URLs)."""
    if (butane.get("variant"), butane.get("version")) != BUTANE_VARIANT:
        raise ValueError(f"only Butane {BUTANE_VARIANT} is translated here")
    ignition: dict[str, Any] = {"ignition": {"version": IGNITION_VERSION}}
    storage = copy.deepcopy(butane.get("storage", {}))
    for entry in storage.get("files", []):
        contents = entry.get("contents", {})
        if "inline" in contents:
            contents["source"] = data_url(contents.pop("inline"))
    ignition["storage"] = storage
    if "systemd" in butane:
        ignition["systemd"] = copy.deepcopy(butane["systemd"])
    return ignition


def to_container_linux_config(butane: dict[str, Any]) -> dict[str, Any]:
    """The same node config as a Container Linux Config, the format of Cluster API's
    ``KubeadmConfig.spec.ignition.containerLinuxConfig.additionalConfig`` (ct; sha512 hashes only)."""
    files = []
    for entry in butane["storage"]["files"]:
        contents = entry["contents"]
        clc_file: dict[str, Any] = {"filesystem": "root", "path": entry["path"], "mode": entry["mode"]}
        if "inline" in contents:
            clc_file["contents"] = {"inline": contents["inline"]}
        elif "verification" not in contents:
            clc_file["contents"] = {"remote": {"url": contents["source"]}}
        else:
            function, _, digest = contents["verification"]["hash"].partition("-")
            clc_file["contents"] = {"remote": {"url": contents["source"],
                                               "verification": {"hash": {"function": function, "sum": digest}}}}
        files.append(clc_file)
    clc: dict[str, Any] = {"storage": {
        "files": files,
        "links": [{"filesystem": "root", **link} for link in butane["storage"]["links"]],
    }}
    if "systemd" in butane:
        clc["systemd"] = copy.deepcopy(butane["systemd"])
    return clc


class _LiteralDumper(yaml.SafeDumper):
    """Multi-line strings as YAML literal blocks, so units stay readable in the snippets."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_LiteralDumper.add_representer(str, _represent_str)


def to_yaml(data: dict[str, Any], header: str) -> str:
    body = yaml.dump(data, Dumper=_LiteralDumper, sort_keys=False, default_flow_style=False, width=1000)
    return header + body


def companion_files(request: SysextRequest, kubernetes_version: str, image: Path) -> dict[str, str]:
    """File name -> text of the files published beside the image (those that need --base-url)."""
    assert request.base_url is not None
    base = request.base_url.rstrip("/")
    stem = image.name.removesuffix(".raw")
    sha512 = hashlib.sha512(image.read_bytes()).hexdigest()
    butane = node_config(request, kubernetes_version, f"{base}/{image.name}", sha512)
    usage = (f"# imagebuilder: fetch {image.name} at first boot and merge it with systemd-sysext.\n")
    files = {
        f"{stem}.bu": to_yaml(butane, usage + "# Butane (flatcar); its Ignition JSON is beside it as .ign.\n"),
        f"{stem}.ign": json.dumps(to_ignition(butane), indent=2, sort_keys=True) + "\n",
        f"{stem}.clc.yaml": to_yaml(to_container_linux_config(butane), usage + (
            "# Container Linux Config for Cluster API: paste under "
            "KubeadmConfig.spec.ignition.containerLinuxConfig.additionalConfig (format: ignition).\n")),
    }
    if request.updates:
        files[transfer_file_name(request.minor)] = transfer_file(request.minor, base,
                                                                 verify=request.public_keyring is not None)
    return files


# -- plan --compare: what each strategy builds and stores ------------------------------------------

# Storage assumptions: GiB per stored image copy and whether a stock image is imported are each
# cloud's (Cloud.image_gib, Cloud.imports_stock_image in imagebuilder/clouds/<cloud>/).
# Uncompressed upstream sizes (MiB) of what a sysext holds, and the squashfs ratio of our
# MKSQUASHFS_COMPRESSION on Kubernetes' Go binaries: measured on four real kubectl releases
# (1.30-1.33, 216 MiB) -> 51.7 MiB, 0.24 (zstd-15 0.26, gzip 0.30); rounded up.
SYSEXT_CONTENT_MIB: dict[str, float] = {"kubelet": 77.0, "kubeadm": 65.0, "kubectl": 55.0, "cni_plugins": 50.0}
SQUASHFS_RATIO = 0.25
SYSEXT_GIB = sum(SYSEXT_CONTENT_MIB.values()) * SQUASHFS_RATIO / 1024  # ~62 MiB, stored once


@dataclass(frozen=True)
class StrategyTotals:
    name: str
    images_built: int  # OS images a Packer build makes
    image_copies_stored: int  # OS image copies kept (cloud regions and replicas count)
    stock_images_imported: int  # vendor images imported as they are (no build)
    sysexts_built: int  # one per (minor, arch)
    storage_gib: float


@dataclass(frozen=True)
class ComparisonReport:
    cells: int
    strategies: tuple[StrategyTotals, ...]
    assumptions: str


def sysext_targets(cells: Iterable[Cell]) -> list[tuple[str, str]]:
    """The (minor, arch) sysext images the sysext cells of a plan need, instead of a build per cell."""
    wanted = {(cell.kubernetes, cell.arch) for cell in cells if cell.strategy == "sysext"}
    return sorted(wanted, key=lambda target: (tuple(int(part) for part in target[0].split(".")), target[1]))


def copies_per_image(cell: Cell) -> int:
    """Stored copies of one image (regions, replicas: the cloud's Cloud.copies_per_image)."""
    return registry.get(cell.cloud).copies_per_image(cell.settings)


def strategy_totals(name: str, cells: Iterable[Cell], strategy_of: dict[str, str]) -> StrategyTotals:
    built = copies = 0
    storage = 0.0
    stock: set[tuple[str, str, str]] = set()
    sysexts: set[tuple[str, str]] = set()
    for cell in cells:
        if strategy_of[cell.id] == "sysext":
            stock.add((cell.cloud, cell.os, cell.arch))
            sysexts.add((cell.kubernetes, cell.arch))
            continue
        built += 1
        copies += copies_per_image(cell)
        storage += copies_per_image(cell) * registry.get(cell.cloud).image_gib
    imported = [key for key in stock if registry.get(key[0]).imports_stock_image]
    storage += sum(registry.get(cloud).image_gib for cloud, _os, _arch in imported) + len(sysexts) * SYSEXT_GIB
    return StrategyTotals(name=name, images_built=built, image_copies_stored=copies,
                          stock_images_imported=len(imported), sysexts_built=len(sysexts),
                          storage_gib=round(storage, 1))


def compare_strategies(cells: list[Cell]) -> ComparisonReport:
    """Bake everything, the matrix as configured, and sysext everywhere, over the same cells."""
    as_configured = {cell.id: cell.strategy for cell in cells}
    return ComparisonReport(
        cells=len(cells),
        strategies=(
            strategy_totals("bake everything", cells, {cell.id: "bake" for cell in cells}),
            strategy_totals("as configured", cells, as_configured),
            strategy_totals("sysext everywhere", cells, {cell.id: "sysext" for cell in cells}),
        ),
        assumptions=(
            "GiB per stored image copy: " + ", ".join(f"{name} {cloud.image_gib:g}"
                                                       for name, cloud in registry.clouds().items())
            + f"; sysext {SYSEXT_GIB * 1024:.0f} MiB (kubelet+kubeadm+kubectl+CNI "
            f"{sum(SYSEXT_CONTENT_MIB.values()):.0f} MiB x {SQUASHFS_RATIO}), stored once per minor and arch; "
            "stock images cost nothing where the vendor publishes them, one import on "
            + "/".join(sorted(name for name, cloud in registry.clouds().items() if cloud.imports_stock_image))
        ),
    )


def format_comparison(report: ComparisonReport) -> str:
    header = ("strategy", "images built", "copies stored", "stock imports", "sysexts", "storage GiB")
    rows = [header] + [
        (s.name, str(s.images_built), str(s.image_copies_stored), str(s.stock_images_imported),
         str(s.sysexts_built), f"{s.storage_gib:.1f}")
        for s in report.strategies
    ]
    widths = [max(len(row[index]) for row in rows) for index in range(len(header))]
    lines = [f"{report.cells} cells"]
    for row in rows:
        lines.append("  ".join(cell.ljust(width) if index == 0 else cell.rjust(width)
                               for index, (cell, width) in enumerate(zip(row, widths))))
    lines.append(f"assumptions: {report.assumptions}")
    return "\n".join(lines) + "\n"


def comparison_json(report: ComparisonReport) -> dict[str, Any]:
    return {"cells": report.cells, "assumptions": report.assumptions,
            "strategies": [s.__dict__ for s in report.strategies]}
