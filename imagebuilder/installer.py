"""Installing an OS from the vendor's installer ISO, for the clouds whose builders start from one
(vSphere's vsphere-iso, Proxmox's proxmox, and the local qemu build of an OS with no disk image of
ours, osinfo LocalBase "installer"): the boot command that starts the unattended install
and the files Packer's HTTP server hands the installer.

The build user exists only while Packer runs: it logs in with a throw-away key (the same
`base/id_ed25519` the local build uses, made by the cloud's prepare step; `packer validate` gets a
stand-in, packer.prepare_for_validate) and is removed at the end of the build (`remove_build_user`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from imagebuilder import supplied
from imagebuilder.errors import UserError
from imagebuilder.osinfo import BASE_MIRRORS, OsInfo

if TYPE_CHECKING:
    from imagebuilder.planner import Cell

BUILD_USER = "builder"
# Where the cell's build directory keeps the key and the files served to the installer.
KEY_FILE = "base/id_ed25519"
HTTP_DIRECTORY = "base/seed"


# A kickstart-installed system's own NoCloud seed, so that its first boot finds a datasource (a
# fallback to None is a warning, and `cloud-init status --wait` fails on warnings).
BUILD_SEED = "/var/lib/cloud/seed/nocloud-net"


def remove_build_user(then: str = "") -> str:
    """The command that removes the build user, its sudo rule (cloud-init's file) and the build's seed
    before the image is sealed, then runs `then` (a shutdown) in the same root shell: the user's sudo
    is gone by then."""
    return (f"sudo sh -c 'userdel --force --remove {BUILD_USER}; rm -f /etc/sudoers.d/90-cloud-init-users; "
            f"rm -rf {BUILD_SEED}{'; ' + then if then else ''}'")


@dataclass(frozen=True)
class Installer:
    """How one distribution installs unattended from its ISO."""

    boot_command: tuple[str, ...]  # Packer's boot_command ({{ .HTTPIP }}/{{ .HTTPPort }}: its HTTP server)
    # (the OS, the build user's public key, the packages to add, an instance id) -> the files served
    # from HTTP_DIRECTORY
    files: Callable[[OsInfo, str, list[str], str], dict[str, str]]
    # The boot command works under UEFI firmware too (the ISO boots GRUB either way), so the efi
    # variant installs with it; False: the BIOS boot loader's keys only (isolinux).
    uefi: bool = False


def ubuntu_files(os_info: OsInfo, public_key: str, packages: list[str], instance_id: str) -> dict[str, str]:
    """Subiquity's autoinstall: one disk, no swap, the guest agent, OpenSSH, and the build user
    (passwordless sudo, this key, no password)."""
    autoinstall = {
        "version": 1,
        # The installer's own sshd would answer Packer before the system is installed.
        "early-commands": ["systemctl stop ssh"],
        "locale": "en_US.UTF-8",
        "keyboard": {"layout": "us"},
        "ssh": {"install-server": True, "allow-pw": False},
        "storage": {"layout": {"name": "direct"}, "swap": {"size": 0}},
        "packages": packages,
        "user-data": {"users": [{"name": BUILD_USER, "shell": "/bin/bash", "sudo": "ALL=(ALL) NOPASSWD:ALL",
                                 "lock_passwd": True, "ssh_authorized_keys": [public_key]}]},
    }
    return {"user-data": "#cloud-config\n" + yaml.safe_dump({"autoinstall": autoinstall}, sort_keys=False),
            "meta-data": f"instance-id: {instance_id}\n"}


# Ubuntu's live-server ISO (subiquity): GRUB's command line starts the kernel with `autoinstall` and
# the NoCloud data source on Packer's HTTP server, which serves user-data and meta-data.
UBUNTU = Installer(
    boot_command=(
        "c<wait>",
        "linux /casper/vmlinuz --- autoinstall ds='nocloud-net;s=http://{{ .HTTPIP }}:{{ .HTTPPort }}/'<enter><wait>",
        "initrd /casper/initrd<enter><wait>",
        "boot<enter>",
    ),
    files=ubuntu_files,
    uefi=True,  # the live-server ISO starts GRUB under BIOS and UEFI alike: the same command line
)


KICKSTART = "ks.cfg"  # Anaconda's, served from HTTP_DIRECTORY


def kickstart(os_info: OsInfo, public_key: str, packages: list[str], instance_id: str,
              source: tuple[str, ...]) -> dict[str, str]:
    """Anaconda's kickstart installing from `source` (its url/repo or cdrom lines): one XFS root and no
    swap, cloud-init and the guest agents, the build user with this key and passwordless sudo in
    cloud-init's file (so its removal is the same as on Ubuntu), no password."""
    lines = [
        f"# {instance_id}: written by imagebuilder for one build",
        "text",
        "lang en_US.UTF-8",
        "keyboard us",
        "timezone UTC --utc",
        "network --bootproto=dhcp --activate",
        *source,
        "rootpw --lock",
        f"user --name={BUILD_USER} --lock",
        f'sshkey --username={BUILD_USER} "{public_key}"',
        "zerombr",
        "clearpart --all --initlabel",
        "reqpart",
        "part / --fstype=xfs --size=1 --grow",
        "bootloader --timeout=1",
        "services --enabled=sshd,cloud-init",
        "reboot --eject",
        "",
        "%packages",
        "@^minimal-environment",
        "cloud-init",
        "sudo",
        *packages,
        "%end",
        "",
        "%post",
        f"echo '{BUILD_USER} ALL=(ALL) NOPASSWD:ALL' > /etc/sudoers.d/90-cloud-init-users",
        "chmod 0440 /etc/sudoers.d/90-cloud-init-users",
        f"mkdir -p {BUILD_SEED}",
        f"echo 'instance-id: {instance_id}' > {BUILD_SEED}/meta-data",
        f"echo '#cloud-config' > {BUILD_SEED}/user-data",
        "%end",
    ]
    return {KICKSTART: "\n".join(lines) + "\n"}


def rocky_files(os_info: OsInfo, public_key: str, packages: list[str], instance_id: str) -> dict[str, str]:
    """A network install from the vendor's repositories: the minimal ISO lacks cloud-init and the guest agents."""
    repositories = f"{BASE_MIRRORS['rockylinux']}/{os_info.version}"
    return kickstart(os_info, public_key, packages, instance_id,
                     (f"url --url={repositories}/BaseOS/x86_64/os/",
                      f"repo --name=AppStream --baseurl={repositories}/AppStream/x86_64/os/"))


def dvd_files(os_info: OsInfo, public_key: str, packages: list[str], instance_id: str) -> dict[str, str]:
    """An install from the DVD ISO alone (AlmaLinux's, RHEL's): Anaconda adds the DVD's AppStream
    beside its BaseOS, which hold cloud-init and the guest agents. RHEL needs no subscription for it:
    the build registers later, from the environment (the node role)."""
    return kickstart(os_info, public_key, packages, instance_id, ("cdrom",))


# An ISO booted by BIOS (isolinux): Tab edits the boot entry, which gets the kickstart's URL.
ANACONDA_BOOT = ("<tab> inst.text inst.ks=http://{{ .HTTPIP }}:{{ .HTTPPort }}/" + KICKSTART + "<enter><wait>",)
ROCKY = Installer(boot_command=ANACONDA_BOOT, files=rocky_files)
DVD = Installer(boot_command=ANACONDA_BOOT, files=dvd_files)


def photon_files(os_info: OsInfo, public_key: str, packages: list[str], instance_id: str) -> dict[str, str]:
    """Photon OS's installer reads a JSON kickstart (its `ks=` boot option): the whole disk, the
    packages of a minimal system with cloud-init, OpenSSH, sudo and the guest agents from the ISO's own
    repository, root's password locked, and a postinstall script that adds the build user with this
    key and passwordless sudo (cloud-init's file, as elsewhere) and the system's own NoCloud seed."""
    script = [
        "#!/bin/sh",
        f"useradd -m -U -s /bin/bash {BUILD_USER}",
        f"usermod -p '*' {BUILD_USER}",  # no password, not locked: sshd refuses keys of a locked account
        f"install -d -m 0700 -o {BUILD_USER} -g {BUILD_USER} /home/{BUILD_USER}/.ssh",
        f"echo '{public_key}' > /home/{BUILD_USER}/.ssh/authorized_keys",
        f"chown {BUILD_USER}:{BUILD_USER} /home/{BUILD_USER}/.ssh/authorized_keys",
        f"chmod 0600 /home/{BUILD_USER}/.ssh/authorized_keys",
        f"echo '{BUILD_USER} ALL=(ALL) NOPASSWD:ALL' > /etc/sudoers.d/90-cloud-init-users",
        "chmod 0440 /etc/sudoers.d/90-cloud-init-users",
        f"mkdir -p {BUILD_SEED}",
        f"echo 'instance-id: {instance_id}' > {BUILD_SEED}/meta-data",
        f"echo '#cloud-config' > {BUILD_SEED}/user-data",
        "systemctl enable sshd cloud-init",
    ]
    config = {
        "hostname": "localhost",
        # vSphere's pvscsi controller (Proxmox's and the local qemu build's virtio-scsi): the first SCSI disk
        "disk": "/dev/sda",
        "password": {"crypted": True, "text": "*", "age": -1},  # no root password
        "packages": sorted({*PHOTON_PACKAGES, *packages}),
        "postinstall": script,
    }
    return {PHOTON_KICKSTART: json.dumps(config, indent=2) + "\n"}


PHOTON_KICKSTART = "ks.json"
# The packages of image-builder's Photon OS kickstart that the roles rely on (the rest come with them).
PHOTON_PACKAGES = ("bash", "ca-certificates", "cloud-init", "filesystem", "initramfs", "iptables", "iproute2",
                   "linux", "openssh-server", "photon-release", "photon-repos", "rpm", "sudo", "tdnf",
                   "util-linux", "which")
_PHOTON_KS = "ks=http://{{ .HTTPIP }}:{{ .HTTPPort }}/" + PHOTON_KICKSTART
# Photon OS 5's ISO at isolinux's boot: prompt; 4's at GRUB's command line (as image-builder boots them).
# insecure_installation=1: the installer fetches the kickstart over plain HTTP (Packer's server).
PHOTON_5 = Installer(
    boot_command=("<esc><wait> vmlinuz initrd=initrd.img root=/dev/ram0 loglevel=3 photon.media=cdrom "
                  f"{_PHOTON_KS} insecure_installation=1<enter><wait>",),
    files=photon_files)
PHOTON_4 = Installer(
    boot_command=("<esc><wait>c<wait>",
                  "linux /isolinux/vmlinuz root=/dev/ram0 loglevel=3 insecure_installation=1 photon.media=cdrom "
                  f"{_PHOTON_KS}<enter><wait>",
                  "initrd /isolinux/initrd.img<enter><wait>",
                  "boot<enter>"),
    files=photon_files)
# By OS id first (Photon OS's releases boot differently), then by distribution.
INSTALLERS: dict[str, Installer] = {"ubuntu": UBUNTU, "rocky": ROCKY, "almalinux": DVD, "rhel": DVD,
                                    "photon-4": PHOTON_4, "photon-5": PHOTON_5}


def iso_of(cell: Cell, resolved: dict[str, str] | None = None) -> tuple[str, str]:
    """(URL, Packer's iso_checksum) of the cell's installer ISO: the OS table's, or the user's (supplied.py),
    or for Flatcar the release the plan resolved (`resolved`, the render context's)."""
    if cell.os_info.family == "flatcar":
        from imagebuilder import flatcar

        return flatcar.iso_variables(cell, resolved or {})
    if supplied.is_supplied(cell.base_image):
        url, sha256 = supplied.require(cell)
        return url, f"sha256:{sha256}"
    return cell.base_image["iso_url"], cell.base_image["iso_checksum"]


def flatcar_files(os_info: OsInfo, public_key: str, packages: list[str], instance_id: str) -> dict[str, str]:
    """The Ignition config the installed Flatcar boots with for the build (imagebuilder.flatcar)."""
    from imagebuilder import flatcar

    return {flatcar.BUILD_IGNITION: json.dumps(flatcar.build_ignition(BUILD_USER, public_key), indent=2) + "\n"}


def flatcar_installer(reference: dict[str, str]) -> Installer:
    """Flatcar's ISO boots to a shell logged in as `core`: it fetches the build's Ignition config from
    Packer's HTTP server, installs the channel's current release with the cloud's OEM onto the one disk
    (flatcar-install -s) and reboots into it, where Packer logs in as the build user."""
    from imagebuilder import flatcar

    return Installer(
        boot_command=(
            "<wait60>",
            f"curl -fsSLo /tmp/{flatcar.BUILD_IGNITION} http://{{{{ .HTTPIP }}}}:{{{{ .HTTPPort }}}}/{flatcar.BUILD_IGNITION}<enter><wait5>",
            f"sudo flatcar-install -s -C {reference['channel']} -o {reference['oem']} -i /tmp/{flatcar.BUILD_IGNITION} "
            "&& sudo systemctl reboot<enter>",
        ),
        files=flatcar_files,
    )


def installer_for(os_info: OsInfo, cloud: str) -> Installer:
    if os_info.family == "flatcar" and os_info.image(cloud, "amd64"):
        return flatcar_installer(os_info.image(cloud, "amd64") or {})
    installer = INSTALLERS.get(os_info.id) or INSTALLERS.get(os_info.distro)
    if installer is None:
        raise UserError(f"{cloud}: {os_info.id}: no unattended install from its ISO is known for {os_info.distro} "
                        f"(known: {', '.join(sorted(INSTALLERS))}) | fix: exclude {{os: {os_info.id}, cloud: {cloud}}}")
    return installer


def installs_locally(cell: Cell) -> bool:
    """The local qemu build of this cell installs the OS from the vendor's ISO (osinfo LocalBase kind
    "installer": Photon OS) rather than starting from a disk; a cell built on an image built here (the ova
    vmx flavour) boots that image's disk instead."""
    local = cell.os_info.local_base
    return local is not None and local.kind == "installer" and "iso_url" in cell.base_image


def uefi_unbuilt(cell_id: str, os_info: OsInfo, cloud: str, variant: str) -> str | None:
    """Why this efi variant cell cannot install from the OS's ISO under UEFI firmware, or None."""
    installer = INSTALLERS.get(os_info.distro)
    if installer is None or installer.uefi:
        return None  # no installer at all: installer_for says so when the cell renders
    return (f"{cell_id}: {os_info.distro}'s ISO boot command is for its BIOS boot loader; no UEFI boot command "
            f"is known for it yet | fix: exclude {{os: {os_info.id}, cloud: {cloud}, variant: {variant}}}")


def write_install_files(cell_dir: Path, os_info: OsInfo, cloud: str, packages: list[str],
                        key: Path | None = None) -> None:
    """The build user's key and the installer's files in the cell's build directory: a fresh
    throw-away key, or a copy of `key` (a private key with its `.pub` beside it)."""
    installer = installer_for(os_info, cloud)
    public = place_key(cell_dir, key)
    http = cell_dir / HTTP_DIRECTORY
    http.mkdir(parents=True, exist_ok=True)
    for name, content in installer.files(os_info, public, packages, f"build-{cell_dir.name}").items():
        (http / name).write_text(content)


def place_key(cell_dir: Path, key: Path | None = None) -> str:
    """KEY_FILE in the cell's build directory: a fresh throw-away key, or a copy of `key`; its public key."""
    from imagebuilder import qemu

    target = cell_dir / KEY_FILE
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in (target, target.with_name(target.name + ".pub")):
        stale.unlink(missing_ok=True)
    if key is None:
        return qemu.make_ssh_key(target.parent, target.name).public
    key = key.expanduser()
    public = key.with_name(key.name + ".pub")
    if not key.is_file() or not public.is_file():
        raise UserError(f"{key}: no such SSH key pair (the key and its .pub) | fix: create it with "
                        f"ssh-keygen -t ed25519 -f {key}, or name another in template_ssh_key")
    target.touch(mode=0o600)
    target.write_bytes(key.read_bytes())
    target.with_name(target.name + ".pub").write_bytes(public.read_bytes())
    return public.read_text().strip()
