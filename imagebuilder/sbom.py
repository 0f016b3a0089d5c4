"""The SBOM of a built image as CycloneDX 1.5 JSON, from what the image holds.

What is in the image is what its package database says (dpkg's for Debian and Ubuntu, rpm's for
the Red Hat family), plus the release files the roles installed outside it: their versions from
the image's provenance file (``/etc/imagebuilder-release``) and their sums from the roles' record
of what they installed (``/var/lib/imagebuilder/artifacts/<download>.sha256``, the pinned sha256
checked at fetch). Nothing here comes from a list of what ought to be there.

Two builds, one reading: both make an ``ImageContents`` and the SBOM is made from that alone.

- the offline build reads the built root tree on the host (``contents_of_tree``);
- a Packer build runs the gathering script in the image once the roles are done
  (``packer/_common/sbom-input.sh.j2``: dpkg-query or rpm -qa, the provenance file, the recorded
  sums, into one file), Packer's file provisioner downloads it into the cell directory, and
  ``contents_of_file`` reads it.

CycloneDX 1.5: https://cyclonedx.org/docs/1.5/json/ (bomFormat, specVersion, components with
purl and hashes); package URLs: https://github.com/package-url/purl-spec.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from imagebuilder import __version__
from imagebuilder.atomicfile import write_atomically
from imagebuilder.errors import UserError

SPEC_VERSION = "1.5"
SBOM_SUFFIX = ".sbom.cdx.json"  # beside the image: <image name>.sbom.cdx.json
DPKG_ADMIN_DIR = "var/lib/dpkg"
DPKG_STATUS = f"{DPKG_ADMIN_DIR}/status"
RPM_DB_DIRS = ("var/lib/rpm", "usr/lib/sysimage/rpm")
OS_RELEASE_FILES = ("etc/os-release", "usr/lib/os-release")
RELEASE_FILE = "etc/imagebuilder-release"
ARTIFACTS_DIR = "var/lib/imagebuilder/artifacts"
# What each package manager is asked for, the same in the image (sbom-input.sh), on a tree and in a booted guest.
DPKG_FORMAT = "${db:Status-Status}\\t${Package}\\t${Version}\\t${Architecture}\\n"
RPM_FORMAT = r"%{NAME}\t%{EPOCHNUM}\t%{VERSION}-%{RELEASE}\t%{ARCH}\n"
# Operating systems whose image has no package database to read (the SBOM then lists the release files).
NO_PACKAGE_DATABASE = frozenset({"flatcar"})
# The file a Packer build gathers in the image and downloads (see contents_of_file for its form).
INPUT_HEADER = "imagebuilder-sbom-input 1"
INPUT_END = "--- end"
INPUT_SCRIPT = "sbom-input.sh"  # rendered into the cell directory from packer/_common/sbom-input.sh.j2
INPUT_REMOTE = "/tmp/imagebuilder-sbom-input.txt"  # where the script writes it in the image
INPUT_FILE = "sbom-input.txt"  # where Packer downloads it: the cell directory
# The release files the roles install (download name -> the provenance file's version field).
RELEASE_VERSION_FIELDS = {
    "kubelet": "KUBERNETES_VERSION", "kubeadm": "KUBERNETES_VERSION", "kubectl": "KUBERNETES_VERSION",
    "containerd": "CONTAINERD_VERSION", "runc": "RUNC_VERSION", "crictl": "CRICTL_VERSION",
    "cni_plugins": "CNI_PLUGINS_VERSION",
}
# Upstream names of the downloads whose name differs (the CNI plugins release is "plugins").
RELEASE_NAMES = {"cni_plugins": "cni-plugins"}
SOURCE_PROPERTY = "imagebuilder:source"  # dpkg, rpm or release-file
NAMESPACE = uuid.UUID("0f6b2f4e-6a34-4d0e-9a55-1d2c1d8f3a21")  # serial numbers: uuid5 of key and time


@dataclass(frozen=True)
class Package:
    name: str
    version: str
    arch: str
    source: str  # "dpkg", "rpm" or "release-file"
    purl: str
    sha256: str = ""
    url: str = ""

    @property
    def key(self) -> str:
        """What a diff matches on: the name, with the architecture where one is given."""
        return f"{self.name}:{self.arch}" if self.arch else self.name


@dataclass(frozen=True)
class ImageContents:
    """What an SBOM is made of, however it was read (a root tree, or the file gathered in the image)."""

    where: str  # the tree or file it was read from, for messages
    os_release: dict[str, str]
    release: dict[str, str]  # /etc/imagebuilder-release
    package_manager: str  # "dpkg", "rpm" or "none"
    # dpkg: (state, name, version, arch) as dpkg-query -f DPKG_FORMAT lists them;
    # rpm: (name, epoch, version-release, arch) as rpm -qa --queryformat RPM_FORMAT lists them
    package_rows: tuple[tuple[str, ...], ...]
    artifact_sums: dict[str, str] = field(default_factory=dict)  # download name -> recorded sha256

    @property
    def distro(self) -> str:
        return "-".join(v for v in (self.os_release.get("ID", ""), self.os_release.get("VERSION_ID", "")) if v)


def _key_values(text: str) -> dict[str, str]:
    values: dict[str, str] = {}
    for line in text.splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            values[name.strip()] = value.strip().strip('"').strip("'")
    return values


def _rows(text: str, width: int = 4) -> tuple[tuple[str, ...], ...]:
    return tuple(tuple((line.split("\t") + [""] * width)[:width]) for line in text.splitlines() if line.strip())


# --- reading a root tree (the offline build) -----------------------------------------------


def os_release(root: Path) -> dict[str, str]:
    for relative in OS_RELEASE_FILES:
        path = root / relative
        if path.is_file():
            return _key_values(path.read_text(errors="replace"))
    return {}


def contents_of_tree(root: Path) -> ImageContents:
    """The contents of a built root tree, read on the host."""
    info = os_release(root)
    if (root / DPKG_STATUS).is_file():
        manager, rows = "dpkg", _dpkg_status_rows(root / DPKG_STATUS)
    elif any((root / d).is_dir() and any((root / d).iterdir()) for d in RPM_DB_DIRS):
        manager, rows = "rpm", _rows(_rpm_query(root))
    else:
        manager, rows = "none", ()
    release = root / RELEASE_FILE
    artifacts = root / ARTIFACTS_DIR
    sums = {path.name.removesuffix(".sha256"): path.read_text().strip().lower()
            for path in sorted(artifacts.glob("*.sha256"))} if artifacts.is_dir() else {}
    return ImageContents(str(root), info, _key_values(release.read_text(errors="replace")) if release.is_file() else {},
                         manager, rows, sums)


def _dpkg_status_rows(status: Path) -> tuple[tuple[str, ...], ...]:
    """dpkg's status file as dpkg-query lists it: (state, name, version, arch) per paragraph."""
    rows = []
    for paragraph in status.read_text(errors="replace").split("\n\n"):
        fields = _deb822(paragraph)
        if "Package" not in fields:
            continue
        state = fields.get("Status", "").split()
        rows.append((state[2] if len(state) == 3 else "", fields["Package"], fields.get("Version", ""),
                     fields.get("Architecture", "")))
    return tuple(rows)


def _deb822(paragraph: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in paragraph.splitlines():
        if line[:1] in (" ", "\t") or ":" not in line:
            continue  # a continuation line (Description, Conffiles): not needed here
        name, _, value = line.partition(":")
        fields[name] = value.strip()
    return fields


def _rpm_query(root: Path) -> str:
    """rpm -qa of the tree's database, read with the host's rpm."""
    rpm = shutil.which("rpm")
    if rpm is None:
        raise UserError(f"{root}: the image has an rpm database but this host has no rpm to read it "
                        "| fix: install rpm on the build host")
    result = subprocess.run([rpm, "--root", str(root), "-qa", "--qf", RPM_FORMAT],
                            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise UserError(f"{root}: rpm could not read the image's package database ({result.stderr.strip()[:200]}) "
                        "| fix: check the build's root tree")
    return result.stdout


# --- reading the file gathered in the image (a Packer build) --------------------------------


def contents_of_file(path: Path) -> ImageContents:
    """The contents the gathering script wrote in the image (sbom-input.sh), as Packer downloaded them.

    The file: the header line, then sections each opened by a line ``--- <kind> [name]``:
    ``os-release`` and ``imagebuilder-release`` (the files), ``packages dpkg|rpm|none`` (the package
    manager's listing in DPKG_FORMAT or RPM_FORMAT), ``artifact <download>`` (its recorded sha256),
    and ``--- end`` last: a file cut short is refused, not read as an image with fewer packages.
    """
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        raise UserError(f"{path}: no SBOM input (the image's gathering step did not run) "
                        "| fix: render the cell again and rebuild it") from None
    lines = text.splitlines()
    if not lines or lines[0] != INPUT_HEADER or INPUT_END not in lines:
        raise UserError(f"{path}: not a complete SBOM input (expected '{INPUT_HEADER}' first and '{INPUT_END}' last) "
                        "| fix: build the cell again")
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in lines[1:lines.index(INPUT_END)]:
        if line.startswith("--- "):
            current = sections.setdefault(line[4:].strip(), [])
        elif current is not None:
            current.append(line)
    managers = [name.split()[1] for name in sections if name.startswith("packages ") and len(name.split()) == 2]
    if len(managers) != 1 or managers[0] not in ("dpkg", "rpm", "none"):
        raise UserError(f"{path}: one 'packages dpkg|rpm|none' section expected, found {managers or 'none'} "
                        "| fix: build the cell again")
    manager = managers[0]
    rows = _rows("\n".join(sections[f"packages {manager}"]))
    sums = {name.split(" ", 1)[1]: "".join(body).strip().lower() for name, body in sections.items()
            if name.startswith("artifact ")}
    return ImageContents(str(path), _key_values("\n".join(sections.get("os-release", []))),
                         _key_values("\n".join(sections.get("imagebuilder-release", []))), manager, rows, sums)


# --- the packages ------------------------------------------------------------------------


def dpkg_packages(contents: ImageContents) -> list[Package]:
    """Every package dpkg says is installed (dpkg-query's "installed" state)."""
    distro = contents.distro
    namespace = distro.split("-")[0] or "debian"
    packages: list[Package] = []
    for state, name, version, arch in contents.package_rows:
        if state != "installed" or not name:
            continue
        qualifiers = "&".join(q for q in (f"arch={arch}" if arch else "", f"distro={distro}" if distro else "") if q)
        purl = f"pkg:deb/{namespace}/{quote(name, safe='')}@{quote(version, safe='')}" + (f"?{qualifiers}" if qualifiers else "")
        packages.append(Package(name, version, arch, "dpkg", purl))
    return packages


def rpm_packages(contents: ImageContents) -> list[Package]:
    """Every package in the rpm database."""
    distro = contents.distro
    namespace = distro.split("-")[0] or "redhat"
    packages = []
    for name, epoch, version, arch in contents.package_rows:
        if not name:
            continue
        full = f"{epoch}:{version}" if epoch not in ("", "0") else version
        purl = f"pkg:rpm/{namespace}/{quote(name, safe='')}@{quote(version, safe='')}?arch={arch}" + (
            f"&epoch={epoch}" if epoch not in ("", "0") else "") + (f"&distro={distro}" if distro else "")
        packages.append(Package(name, full, arch, "rpm", purl))
    return packages


def release_packages(contents: ImageContents, downloads: dict[str, Any] | None = None) -> list[Package]:
    """The release files the roles installed: each with its version and the pinned sha256 it was installed at.

    ``downloads`` (the cell's, name -> Download) adds each file's URL and must agree with the
    sum the image records: an image whose files are not the cell's pins is not described as if they were.
    """
    if not contents.release or not contents.artifact_sums:
        return []
    packages = []
    for name, sha256 in sorted(contents.artifact_sums.items()):
        version = contents.release.get(RELEASE_VERSION_FIELDS.get(name, f"{name.upper()}_VERSION"), "").removeprefix("v")
        download = (downloads or {}).get(name)
        if download is not None and download.sha256.lower() != sha256:
            raise UserError(f"{contents.where}: {ARTIFACTS_DIR}/{name}.sha256: the image's {name} has sha256 {sha256}, "
                            f"the cell pins {download.sha256} | fix: build the cell again from a clean base")
        url = download.url if download is not None else ""
        upstream = RELEASE_NAMES.get(name, name)
        purl = f"pkg:generic/{upstream}@{quote(version, safe='')}" + (f"?download_url={quote(url, safe='')}" if url else "")
        packages.append(Package(upstream, version, "", "release-file", purl, sha256, url))
    return packages


def packages_of(contents: ImageContents, downloads: dict[str, Any] | None = None) -> list[Package]:
    if contents.package_manager == "dpkg":
        found = dpkg_packages(contents)
    elif contents.package_manager == "rpm":
        found = rpm_packages(contents)
    elif contents.os_release.get("ID", "") in NO_PACKAGE_DATABASE:
        found = []
    else:
        raise UserError(f"{contents.where}: no package database (neither {DPKG_STATUS} nor an rpm database) "
                        "| fix: point at the root of a built image")
    return found + release_packages(contents, downloads)


def sbom_document(contents: ImageContents, *, image_name: str, build_key: str, timestamp: str,
                  downloads: dict[str, Any] | None = None) -> dict[str, Any]:
    """The CycloneDX 1.5 document of the image whose contents these are."""
    info = contents.os_release
    packages = packages_of(contents, downloads)
    components = []
    for package in sorted(packages, key=lambda p: (p.name, p.arch, p.version)):
        component: dict[str, Any] = {
            "type": "application" if package.source == "release-file" else "library",
            "bom-ref": package.purl, "name": package.name, "version": package.version, "purl": package.purl,
            "properties": [{"name": SOURCE_PROPERTY, "value": package.source}],
        }
        if package.sha256:
            component["hashes"] = [{"alg": "SHA-256", "content": package.sha256}]
        if package.url:
            component["externalReferences"] = [{"type": "distribution", "url": package.url}]
        components.append(component)
    if info.get("ID"):
        components.append({"type": "operating-system", "bom-ref": f"os:{info['ID']}", "name": info["ID"],
                           "version": info.get("VERSION_ID", ""), "description": info.get("PRETTY_NAME", "")})
    return {
        "$schema": "http://cyclonedx.org/schema/bom-1.5.schema.json",
        "bomFormat": "CycloneDX",
        "specVersion": SPEC_VERSION,
        "serialNumber": f"urn:uuid:{uuid.uuid5(NAMESPACE, f'{build_key}/{timestamp}')}",
        "version": 1,
        "metadata": {
            "timestamp": _iso(timestamp),
            "tools": {"components": [{"type": "application", "name": "imagebuilder", "version": __version__}]},
            "component": {"type": "operating-system", "bom-ref": "image",
                          "name": image_name, "version": timestamp},
            "properties": [{"name": "imagebuilder:build-key", "value": build_key}],
        },
        "components": components,
    }


def _iso(timestamp: str) -> str:
    """Packer's UTC YYYYMMDDhhmmss as ISO 8601."""
    t = timestamp
    return f"{t[:4]}-{t[4:6]}-{t[6:8]}T{t[8:10]}:{t[10:12]}:{t[12:14]}Z" if len(t) == 14 and t.isdigit() else t


def encode(document: dict[str, Any]) -> bytes:
    """The bytes written and digested: one canonical form, so the digest is the file's."""
    return (json.dumps(document, indent=2, sort_keys=True) + "\n").encode()


def write_sbom(document: dict[str, Any], path: Path) -> str:
    """Write the document atomically; its sha256 (of the bytes written)."""
    data = encode(document)
    write_atomically(path, data)
    return hashlib.sha256(data).hexdigest()


# --- reading and comparing --------------------------------------------------------------


def load_sbom(path: Path) -> dict[str, Any]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{path}: no SBOM | fix: build the image again with this imagebuilder") from None
    return parse_sbom(data, str(path))


def parse_sbom(data: bytes, where: str) -> dict[str, Any]:
    """An SBOM document from its bytes (a file, an object store's object); ``where`` names it in errors."""
    try:
        document = json.loads(data)
    except ValueError as exc:
        raise UserError(f"{where}: not JSON ({exc}) | fix: build the image again") from None
    if not isinstance(document, dict) or document.get("bomFormat") != "CycloneDX":
        raise UserError(f"{where}: not a CycloneDX SBOM (bomFormat) | fix: build the image again")
    return document


def package_versions(document: dict[str, Any]) -> dict[str, str]:
    """name[:arch] -> version of every package and release file in an SBOM (not the OS entry)."""
    versions: dict[str, str] = {}
    for component in document.get("components", []):
        if component.get("type") == "operating-system":
            continue
        purl = str(component.get("purl", ""))
        arch = next((q.removeprefix("arch=") for q in purl.partition("?")[2].split("&") if q.startswith("arch=")), "")
        versions[f"{component['name']}:{arch}" if arch else component["name"]] = str(component.get("version", ""))
    return versions


@dataclass(frozen=True)
class PackageDiff:
    added: dict[str, str]
    removed: dict[str, str]
    changed: dict[str, tuple[str, str]]

    def lines(self) -> list[str]:
        return ([f"+ {name} {version}" for name, version in sorted(self.added.items())]
                + [f"- {name} {version}" for name, version in sorted(self.removed.items())]
                + [f"~ {name} {old} -> {new}" for name, (old, new) in sorted(self.changed.items())])


def diff(before: dict[str, Any], after: dict[str, Any]) -> PackageDiff:
    old, new = package_versions(before), package_versions(after)
    return PackageDiff(
        added={name: new[name] for name in new.keys() - old.keys()},
        removed={name: old[name] for name in old.keys() - new.keys()},
        changed={name: (old[name], new[name]) for name in old.keys() & new.keys() if old[name] != new[name]},
    )


# --- the boot test's view --------------------------------------------------------------

DPKG_QUERY = ["dpkg-query", "-W", "-f", DPKG_FORMAT]


def guest_dpkg_packages(session: Any) -> dict[str, str]:
    """name:arch -> version of every installed package, asked of dpkg-query in a booted guest.

    ``session``: a guestcheck.GuestSession (or anything with its ``command``), as the boot test
    holds it; compare with ``package_versions`` of the image's SBOM restricted to dpkg entries.
    """
    result = session.command(DPKG_QUERY)
    if result.get("rc") != 0:
        raise RuntimeError(f"dpkg-query in the guest failed: {str(result.get('stderr', ''))[:300]}")
    return parse_dpkg_query(result["stdout"])


def parse_dpkg_query(text: str) -> dict[str, str]:
    packages: dict[str, str] = {}
    for line in text.splitlines():
        state, name, version, arch = (line.split("\t") + ["", "", "", ""])[:4]
        if state == "installed":
            packages[f"{name}:{arch}" if arch else name] = version
    return packages


def dpkg_versions(document: dict[str, Any]) -> dict[str, str]:
    """package_versions of the SBOM's dpkg entries only: what dpkg-query lists."""
    dpkg = {"components": [c for c in document.get("components", [])
                           if {"name": SOURCE_PROPERTY, "value": "dpkg"} in c.get("properties", [])]}
    return package_versions(dpkg)
