"""Installing an OS from the vendor's installer ISO, for the clouds whose builders start from one
(vSphere's vsphere-iso, Proxmox's proxmox): the boot command that starts the unattended install
and the files Packer's HTTP server hands the installer.

The build user exists only while Packer runs: it logs in with a throw-away key (the same
`base/id_ed25519` the local build uses, made by the cloud's prepare step; `packer validate` gets a
stand-in, packer.prepare_for_validate) and is removed at the end of the build (`remove_build_user`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from imagebuilder.errors import UserError
from imagebuilder.osinfo import BASE_MIRRORS, OsInfo

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
)


def rocky_files(os_info: OsInfo, public_key: str, packages: list[str], instance_id: str) -> dict[str, str]:
    """Anaconda's kickstart: a network install from the vendor's repositories (the minimal ISO lacks
    cloud-init and the guest agents), one XFS root and no swap, the build user with this key and
    passwordless sudo in cloud-init's file (so its removal is the same as on Ubuntu), no password."""
    repositories = f"{BASE_MIRRORS['rockylinux']}/{os_info.version}"
    lines = [
        f"# {instance_id}: written by imagebuilder for one build",
        "text",
        "lang en_US.UTF-8",
        "keyboard us",
        "timezone UTC --utc",
        "network --bootproto=dhcp --activate",
        f"url --url={repositories}/BaseOS/x86_64/os/",
        f"repo --name=AppStream --baseurl={repositories}/AppStream/x86_64/os/",
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
    return {"ks.cfg": "\n".join(lines) + "\n"}


# Rocky Linux's ISO booted by BIOS (isolinux): Tab edits the boot entry, which gets the kickstart's URL.
ROCKY = Installer(
    boot_command=("<tab> inst.text inst.ks=http://{{ .HTTPIP }}:{{ .HTTPPort }}/ks.cfg<enter><wait>",),
    files=rocky_files,
)
INSTALLERS: dict[str, Installer] = {"ubuntu": UBUNTU, "rocky": ROCKY}


def installer_for(os_info: OsInfo, cloud: str) -> Installer:
    installer = INSTALLERS.get(os_info.distro)
    if installer is None:
        raise UserError(f"{cloud}: {os_info.id}: no unattended install from its ISO is known for {os_info.distro} "
                        f"(known: {', '.join(sorted(INSTALLERS))}) | fix: exclude {{os: {os_info.id}, cloud: {cloud}}}")
    return installer


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
