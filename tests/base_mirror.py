"""Fixture sites of the qemu base images, laid out as upstream lays them out, for a local HTTP server.

- ``publish_debian(root, stamp)``: ``debian/dists/bookworm{,-updates}/InRelease`` and
  ``debian-security/dists/bookworm-security/InRelease`` (the suites the Debian base is built
  from), each with a ``Date:`` of ``stamp``; publishing again with another stamp is a new release.
- ``publish_ubuntu(root, content)``: ``ubuntu/releases/{jammy,noble}/release/`` cloud images with
  their ``SHA256SUMS`` (GNU format).
- ``publish_rocky(root, content)``: ``rocky/9/images/x86_64/`` the GenericCloud qcow2 under its
  dated name and its ``latest`` name, with Rocky's BSD-style ``CHECKSUM``.
- ``base_mirrors(url)``: the matrix ``mirrors:`` entries that point imagebuilder at them.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from imagebuilder.distributions import debian

UBUNTU_RELEASES = {"jammy": "22.04", "noble": "24.04"}
ROCKY_DATED = "Rocky-9-GenericCloud-Base-9.5-{stamp}.0.x86_64.qcow2"
ROCKY_LATEST = "Rocky-9-GenericCloud-Base.latest.x86_64.qcow2"


def _write(path: Path, content: bytes) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return hashlib.sha256(content).hexdigest()


def publish_debian(root: Path, stamp: str, security_stamp: str | None = None) -> None:
    for base, suite, when in (("debian", debian.SUITE, stamp), ("debian", f"{debian.SUITE}-updates", stamp),
                              ("debian-security", f"{debian.SUITE}-security", security_stamp or stamp)):
        _write(root / base / "dists" / suite / "InRelease",
               f"Origin: Debian\nSuite: {suite}\nDate: {when}\nSHA256:\n".encode())


def publish_ubuntu(root: Path, content: bytes = b"ubuntu cloud image") -> dict[str, str]:
    """codename -> the sha256 of its amd64 image."""
    sums = {}
    for codename, version in UBUNTU_RELEASES.items():
        directory = root / "ubuntu" / "releases" / codename / "release"
        name = f"ubuntu-{version}-server-cloudimg-amd64.img"
        sums[codename] = _write(directory / name, content + codename.encode())
        (directory / "SHA256SUMS").write_text(f"{sums[codename]} *{name}\n{'0' * 64} *other.img\n")
    return sums


def publish_rocky(root: Path, content: bytes = b"rocky cloud image", stamp: str = "20241118") -> tuple[str, str]:
    """(the dated file name, its sha256); the `latest` name is the same image."""
    directory = root / "rocky" / "9" / "images" / "x86_64"
    dated = ROCKY_DATED.format(stamp=stamp)
    digest = _write(directory / dated, content)
    _write(directory / ROCKY_LATEST, content)
    (directory / "CHECKSUM").write_text(f"# Rocky-9-GenericCloud\nSHA256 ({dated}) = {digest}\n"
                                        f"SHA256 ({ROCKY_LATEST}) = {digest}\n")
    return dated, digest


def base_mirrors(url: str) -> dict[str, str]:
    return {"debian": f"{url}/debian", "debian_security": f"{url}/debian-security",
            "ubuntu_cloud_images": f"{url}/ubuntu", "rockylinux": f"{url}/rocky"}


# -- AWS: the vendors' AMIs on moto --------------------------------------------------------------
# moto keeps each account's images apart, so a vendor's AMI is registered in the vendor's account
# (x-moto-account-id) and a DescribeImages for that owner is answered from that account.

def _in_account(params: dict, **_: object) -> None:
    body = params.get("body")
    owner = body.get("Owner.1") if isinstance(body, dict) else None
    if owner:
        params["headers"]["x-moto-account-id"] = owner


def owners_session() -> "boto3.session.Session":
    import boto3

    session = boto3.session.Session()
    session.events.register("before-call.ec2.DescribeImages", _in_account)
    return session


def register_vendor_ami(moto_url: str, owner: str, name: str, region: str = "us-east-1") -> str:
    """Register an AMI as its vendor (owner) publishes one; returns its id. CreationDate has whole
    seconds: register the next one at least a second later for it to be the newest."""
    import boto3

    ec2 = boto3.client("ec2", region_name=region, endpoint_url=moto_url)
    ec2.meta.events.register("before-call.ec2.RegisterImage",
                             lambda params, **_: params["headers"].__setitem__("x-moto-account-id", owner))
    return str(ec2.register_image(Name=name, RootDeviceName="/dev/sda1", VirtualizationType="hvm",
                                  Architecture="x86_64")["ImageId"])
