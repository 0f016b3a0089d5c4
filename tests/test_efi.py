"""The variants rendered: the qemu efi cell's GPT disk with its EFI system partition (made here from a
small tree, checked with sfdisk, blkid and mtools, no VM), OVMF on the boot test's QEMU command line,
and Azure's security types in the template where the installed Packer can take them."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from imagebuilder import offline, qemu
from imagebuilder.config import PROJECT_ROOT, load_matrix
from imagebuilder.distributions import debian
from test_render import load_hcl
from imagebuilder.planner import plan
from imagebuilder.render import render_cells

DATA = Path(__file__).parent / "data"
ROOT_UUID = "0b6bd9a2-5d3c-4b7e-9f0e-2c1d3e4f5a6b"
DISK = 1300 * 1024**2  # the smallest that leaves the root 1 GiB
MATRIX = ('versions_file: versions.lock.yaml\nos: [ubuntu-2204, debian-12]\nkubernetes: ["1.31"]\n'
          'clouds:\n  qemu:\n    variants: [efi]\n  azure:\n    resource_group: g\n    variants: [cvm, trustedlaunch]\n'
          'exclude:\n  - {os: debian-12, variant: cvm}\n')


@pytest.fixture
def cells(tmp_path: Path) -> dict:
    shutil.copy(DATA / "versions.lock.yaml", tmp_path / "versions.lock.yaml")
    (tmp_path / "m.yaml").write_text(MATRIX)
    return {cell.id: cell for cell in plan(load_matrix(tmp_path / "m.yaml"))}


def test_the_efi_disk_is_gpt_with_the_esp_as_partition_15_and_the_root_as_1(tmp_path: Path) -> None:
    for tool in ("sfdisk", "mkfs.vfat", "mcopy", "mdir", "blkid", "debugfs"):
        assert shutil.which(tool), f"{tool} missing: apt-get install $(.ci/apt-packages)"
    tree = tmp_path / "root"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc/hostname").write_text("efi\n")
    esp = tmp_path / "esp"
    (esp / "EFI/BOOT").mkdir(parents=True)
    (esp / "EFI/BOOT/BOOTX64.EFI").write_bytes(b"MZ shim")
    disk = tmp_path / "disk.raw"
    debian.write_efi_disk(tree, esp, disk, DISK, ROOT_UUID)

    table = json.loads(subprocess.run(["sfdisk", "--json", str(disk)], capture_output=True, text=True,
                                      check=True).stdout)["partitiontable"]
    assert table["label"] == "gpt" and table["id"] == debian.derived_uuid(ROOT_UUID, "gpt").upper()
    parts = {p["node"][len(str(disk)):]: p for p in table["partitions"]}
    assert set(parts) == {"1", "15"}
    assert (parts["15"]["type"], parts["15"]["start"] * 512, parts["15"]["size"] * 512) == \
        (debian.ESP_TYPE, debian.ESP_START, debian.ESP_SIZE)
    assert parts["1"]["type"] == debian.LINUX_FS_TYPE and parts["1"]["start"] * 512 == debian.EFI_ROOT_START
    assert (parts["1"]["start"] + parts["1"]["size"]) * 512 == DISK - debian.GPT_BACKUP_RESERVE

    def probe(offset: int) -> str:
        return subprocess.run(["blkid", "-p", "-O", str(offset), "-o", "export", str(disk)], capture_output=True,
                              text=True, check=True).stdout

    esp_fs = probe(debian.ESP_START)
    volume = debian.esp_volume_id(ROOT_UUID)
    assert "TYPE=vfat" in esp_fs and "VERSION=FAT32" in esp_fs and f"UUID={volume[:4]}-{volume[4:]}" in esp_fs
    assert f"UUID={volume[:4]}-{volume[4:]} /boot/efi vfat" in debian.esp_fstab_line(ROOT_UUID)
    root_fs = probe(debian.EFI_ROOT_START)
    assert "TYPE=ext4" in root_fs and f"UUID={ROOT_UUID}" in root_fs
    listing = subprocess.run(["mtype", "-i", f"{disk}@@{debian.ESP_START}", "::/EFI/BOOT/BOOTX64.EFI"],
                             capture_output=True, text=True)
    assert listing.stdout == "MZ shim", listing.stderr
    hostname = subprocess.run(["debugfs", "-R", "cat /etc/hostname", f"{disk}"], capture_output=True, text=True)
    assert hostname.returncode != 0 or "efi" not in hostname.stdout  # the root is at its offset, not at 0
    disk.unlink()
    with pytest.raises(Exception, match=r"leaves the root under 1 GiB .* \| fix: a larger disk_size_mb"):
        debian.write_efi_disk(tree, esp, disk, 1024**3, ROOT_UUID)


def test_an_efi_cell_is_built_offline_and_boot_tested_under_ovmf(cells: dict, tmp_path: Path) -> None:
    efi, bios = cells["qemu-debian-12-efi-k8s-1.31"], cells["qemu-debian-12-k8s-1.31"]
    assert (offline.firmware_of(efi), offline.firmware_of(bios)) == ("efi", "bios")
    assert efi.build_key != bios.build_key
    # update-grub is told of the GPT disk (root partition 1 as on BIOS)
    assert "partmap) echo 'gpt'" in offline.grub_probe_answers(ROOT_UUID, "efi")
    assert "compatibility_hint) echo 'hd0,gpt1'" in offline.grub_probe_answers(ROOT_UUID, "efi")
    assert "partmap) echo 'msdos'" in offline.grub_probe_answers(ROOT_UUID)
    # the boot test: OVMF's code read-only, a private copy of its variables per VM
    variables = qemu.ovmf_vars(tmp_path)
    assert variables.read_bytes() == qemu.OVMF_VARS.read_bytes() and variables.parent == tmp_path
    command = qemu.qemu_command(tmp_path / "d.qcow2", port=2222, serial_log=tmp_path / "s", accel="tcg",
                                efi_vars=variables)
    drives = [command[i + 1] for i, arg in enumerate(command) if arg == "-drive"]
    assert f"if=pflash,format=raw,unit=0,file={qemu.OVMF_CODE},readonly=on" in drives
    assert f"if=pflash,format=raw,unit=1,file={variables}" in drives
    assert not any("pflash" in arg for arg in qemu.qemu_command(tmp_path / "d.qcow2", port=2222,
                                                               serial_log=tmp_path / "s", accel="tcg"))
    assert qemu.Expected.from_dict({"firmware": "efi"}).firmware == "efi"
    assert "ovmf" in (PROJECT_ROOT / ".ci/apt-packages.txt").read_text().split()


@pytest.mark.parametrize("packer_version, rendered", [(None, True), ((1, 6, 6), False)])
def test_azure_security_types_render_where_packer_has_them(cells: dict, tmp_path: Path, packer_version,
                                                            rendered: bool) -> None:
    ids = ("azure-ubuntu-2204-cvm-k8s-1.31", "azure-ubuntu-2204-trustedlaunch-k8s-1.31", "azure-ubuntu-2204-k8s-1.31")
    out = {r.cell.id: r.directory for r in render_cells([cells[i] for i in ids], tmp_path / "out", packer_version)}

    def source(cell_id: str) -> dict:
        return load_hcl((out[cell_id] / "azure.pkr.hcl").read_text())["source"][0]["azure-arm"]["node"]

    cvm, trusted, default = (source(i) for i in ids)
    for block in (default, *(() if rendered else (cvm, trusted))):
        assert not {"security_type", "vtpm_enabled", "security_encryption_type"} & set(block)
    if rendered:
        assert (cvm["security_type"], cvm["secure_boot_enabled"], cvm["vtpm_enabled"],
                cvm["security_encryption_type"]) == ("ConfidentialVM", True, True, "VMGuestStateOnly")
        assert cvm["shared_image_gallery_destination"][0]["confidential_vm_image_encryption_type"] == \
            "EncryptedVMGuestStateOnlyWithPmk"
        assert (trusted["security_type"], trusted["secure_boot_enabled"], trusted["vtpm_enabled"]) == \
            ("TrustedLaunch", True, True)
        assert "confidential_vm_image_encryption_type" not in trusted["shared_image_gallery_destination"][0]
    for directory in out.values():  # as `packer fmt` writes it
        if shutil.which("packer"):
            result = subprocess.run(["packer", "fmt", "-check", "-diff", "."], cwd=directory, capture_output=True,
                                    text=True)
            assert result.returncode == 0, result.stdout + result.stderr


def test_rhels_kvm_image_makes_the_raw_efi_cell_as_ubuntus_cloud_image_does(tmp_path: Path) -> None:
    """image-builder's build-raw-rhel-9-efi: Red Hat's KVM guest image boots UEFI as it is, so the cell is
    built as its BIOS cell (any builder) and boot-tested under OVMF; Rocky's stays refused."""
    from imagebuilder import local_target
    from imagebuilder.clouds import registry

    shutil.copy(DATA / "versions.lock.yaml", tmp_path / "versions.lock.yaml")
    (tmp_path / "m.yaml").write_text('versions_file: versions.lock.yaml\nos: [rhel-9, rockylinux-9]\n'
                                     'kubernetes: ["1.31"]\nclouds:\n  raw:\n    variants: [efi]\n')
    cells = {cell.id: cell for cell in plan(load_matrix(tmp_path / "m.yaml"))}
    rhel, rocky = cells["raw-rhel-9-efi-k8s-1.31"], cells["raw-rockylinux-9-efi-k8s-1.31"]
    assert offline.firmware_of(rhel) == "efi" and local_target.efi_from_vendor_image(rhel)
    assert registry.get("raw").variant_unbuilt(rhel) is None
    assert rhel.build_key != cells["raw-rhel-9-k8s-1.31"].build_key
    reason = registry.get("raw").variant_unbuilt(rocky)
    assert reason is not None and "the efi variant is made by the offline builder only" in reason
    assert registry.get("raw").image_builder_target("rhel-9", "amd64", "efi") == "build-raw-rhel-9-efi"
