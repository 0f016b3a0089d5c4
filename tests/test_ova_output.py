"""The OVA output (imagebuilder/clouds/ova/): the local disk as a streamOptimized VMDK with an OVF
1.x descriptor vSphere accepts and a manifest of SHA256 sums, tarred descriptor first; catalogued
as its own store. No build or VM: the disk is a small qcow2 made here."""

from __future__ import annotations

import hashlib
import json
import subprocess
import tarfile
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from test_raw_output import MINOR, built, cells_of, disk_content

from imagebuilder.cli import cli
from imagebuilder.config import PROJECT_ROOT
from imagebuilder.pipeline import TargetHooks

OVF = "http://schemas.dmtf.org/ovf/envelope/1"
RASD = "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData"
VSSD = "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData"
VMW = "http://www.vmware.com/schema/ovf"
NS = {"ovf": OVF, "rasd": RASD, "vssd": VSSD}


def q(namespace: str, tag: str) -> str:
    return f"{{{namespace}}}{tag}"


@pytest.fixture
def published(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[dict, Path, bytes]:
    monkeypatch.setenv("IMAGEBUILDER_CATALOGUE", str(tmp_path / "catalogue"))
    matrix = tmp_path / "matrix.yaml"
    matrix.write_text(yaml.safe_dump({
        "versions_file": str(PROJECT_ROOT / "versions.lock.yaml"), "os": ["ubuntu-2404"], "kubernetes": [MINOR],
        "clouds": {"ova": {"boot_test": False, "ova_cpus": 4, "ova_memory_mb": 8192}},
    }))
    cell = cells_of(matrix)[f"ova-ubuntu-2404-k8s-{MINOR}"]
    content = disk_content(3)
    job, artifact = built(cell, tmp_path / "build", "20260101000000", content)
    TargetHooks(publish=True).finish(job, artifact)
    result = CliRunner().invoke(cli, ["images", "list", "-m", str(matrix), "--cloud", "ova", "--output", "json"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.stdout
    (record,) = json.loads(result.stdout)
    return record, tmp_path, content


def check_ova(ova: Path, sums: Path) -> dict:
    """An OVA as vSphere reads it: a POSIX ustar archive, the descriptor first, then the manifest whose
    sha256 sums match the members, then a streamOptimized VMDK; the .sha256sum beside it checks. Returns
    `qemu-img info` of the VMDK (the end-to-end test compares it with the built disk)."""
    assert ova.read_bytes()[257:265] == b"ustar\x0000"  # POSIX ustar, as OVF 1.x requires
    stem = ova.stem
    digests: dict[str, str] = {}
    with tarfile.open(ova) as archive:
        members = archive.getmembers()
        assert all(m.isfile() for m in members)
        names = [m.name for m in members]
        assert names == [f"{stem}.ovf", f"{stem}.mf", f"{stem}-disk1.vmdk"]  # the descriptor first
        for member in members:
            stream = archive.extractfile(member)
            assert stream is not None
            digests[member.name] = hashlib.file_digest(stream, "sha256").hexdigest()
            if member.name.endswith(".mf"):
                manifest_text = archive.extractfile(member).read().decode()  # type: ignore[union-attr]
        vmdk = sums.parent / f".{stem}-check.vmdk"
        with vmdk.open("wb") as out:
            out.write(archive.extractfile(members[2]).read())  # type: ignore[union-attr]
    manifest = dict(line.removeprefix("SHA256(").split(")= ") for line in manifest_text.splitlines())
    assert manifest == {name: digests[name] for name in (names[0], names[2])}
    assert sums.name == f"{ova.name}.sha256sum"
    assert subprocess.run(["sha256sum", "--check", "--strict", sums.name], cwd=sums.parent).returncode == 0
    try:
        info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(vmdk)], capture_output=True,
                                         text=True, check=True).stdout)
        assert info["format"] == "vmdk" and info["format-specific"]["data"]["create-type"] == "streamOptimized"
    finally:
        vmdk.unlink()
    return info


def ova_properties(ova: Path) -> dict[str, str]:
    """The descriptor's product properties (the vApp properties image-builder sets)."""
    with tarfile.open(ova) as archive:
        descriptor = archive.extractfile(archive.getmembers()[0]).read()  # type: ignore[union-attr]
    system = ET.fromstring(descriptor).find("ovf:VirtualSystem", NS)
    assert system is not None
    return {p.get(q(OVF, "key")): p.get(q(OVF, "value")) for p in system.findall("ovf:ProductSection/ovf:Property", NS)}


def test_the_ova_is_descriptor_first_with_a_manifest_that_matches(published: tuple[dict, Path, bytes]) -> None:
    record, tmp_path, content = published
    ova = Path(record["files"][0])
    assert ova.suffix == ".ova" and record["cloud"] == "ova"
    check_ova(ova, Path(record["files"][1]))
    with tarfile.open(ova) as archive:
        vmdk_bytes = archive.extractfile(archive.getmembers()[2]).read()  # type: ignore[union-attr]
    vmdk = tmp_path / "disk1.vmdk"
    vmdk.write_bytes(vmdk_bytes)
    back = tmp_path / "back.raw"
    subprocess.run(["qemu-img", "convert", "-f", "vmdk", "-O", "raw", str(vmdk), str(back)], check=True)
    assert back.read_bytes() == content  # the VMDK holds the disk


def test_the_descriptor_has_what_vsphere_requires(published: tuple[dict, Path, bytes]) -> None:
    record, _, content = published
    ova = Path(record["files"][0])
    with tarfile.open(ova) as archive:
        members = archive.getmembers()
        raw = archive.extractfile(members[0]).read()  # type: ignore[union-attr]
        vmdk_size = members[2].size
        vmdk_name = members[2].name
    assert raw.startswith(b'<?xml version="1.0" encoding="UTF-8"?>')
    envelope = ET.fromstring(raw)
    assert envelope.tag == q(OVF, "Envelope")
    # the OVF envelope's children in the order DSP0243 requires: References, sections, content
    assert [child.tag for child in envelope] == [q(OVF, "References"), q(OVF, "DiskSection"),
                                                 q(OVF, "NetworkSection"), q(OVF, "VirtualSystem")]
    (file_ref,) = envelope.findall("ovf:References/ovf:File", NS)
    assert file_ref.get(q(OVF, "href")) == vmdk_name and int(file_ref.get(q(OVF, "size"))) == vmdk_size
    (disk,) = envelope.findall("ovf:DiskSection/ovf:Disk", NS)
    assert disk.get(q(OVF, "fileRef")) == file_ref.get(q(OVF, "id"))
    assert disk.get(q(OVF, "format")) == "http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"
    assert disk.get(q(OVF, "capacityAllocationUnits")) == "byte * 2^20"
    assert int(disk.get(q(OVF, "capacity"))) * 2**20 >= len(content)
    assert envelope.find("ovf:DiskSection/ovf:Info", NS) is not None
    (network,) = envelope.findall("ovf:NetworkSection/ovf:Network", NS)
    assert network.get(q(OVF, "name")) == "VM Network"

    system = envelope.find("ovf:VirtualSystem", NS)
    assert system is not None and system.get(q(OVF, "id")) and system.find("ovf:Info", NS) is not None
    os_section = system.find("ovf:OperatingSystemSection", NS)
    assert os_section is not None and os_section.get(q(VMW, "osType")) == "ubuntu64Guest"
    hardware = system.find("ovf:VirtualHardwareSection", NS)
    assert hardware is not None and hardware.find("ovf:Info", NS) is not None
    assert hardware.findtext("ovf:System/vssd:VirtualSystemType", namespaces=NS) == "vmx-15"
    items = {int(item.findtext("rasd:ResourceType", namespaces=NS)): item for item in hardware.findall("ovf:Item", NS)}
    assert sorted(items) == [3, 4, 6, 10, 17]  # CPU, memory, SCSI controller, ethernet, disk
    for item in items.values():
        tags = [child.tag.split("}")[1] for child in item]
        assert all(child.tag.startswith(f"{{{RASD}}}") for child in item) and tags == sorted(tags)  # schema order
    assert items[3].findtext("rasd:VirtualQuantity", namespaces=NS) == "4"
    assert items[4].findtext("rasd:VirtualQuantity", namespaces=NS) == "8192"
    assert items[4].findtext("rasd:AllocationUnits", namespaces=NS) == "byte * 2^20"
    ids = [item.findtext("rasd:InstanceID", namespaces=NS) for item in items.values()]
    assert len(set(ids)) == len(ids)
    assert items[17].findtext("rasd:HostResource", namespaces=NS) == f"ovf:/disk/{disk.get(q(OVF, 'diskId'))}"
    assert items[17].findtext("rasd:Parent", namespaces=NS) == items[6].findtext("rasd:InstanceID", namespaces=NS)
    assert items[10].findtext("rasd:Connection", namespaces=NS) == network.get(q(OVF, "name"))

    assert hardware.findall(q(VMW, "Config")) == []  # BIOS: no firmware said, as before the efi variant

    properties = ova_properties(ova)
    assert properties["KUBERNETES_SEMVER"] == record["kubernetes_version"]
    assert properties["DISTRO_NAME"] == "ubuntu" and properties["DISTRO_ARCH"] == "amd64"
    assert properties["IMAGEBUILDER_BUILD_KEY"] == record["build_key"]
    assert properties["BUILD_TIMESTAMP"] == "20260101000000"
    assert json.loads(properties["VERSIONS"])["kubernetes"]


def test_the_efi_ova_says_so_in_the_descriptor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The efi variant's OVA: the qemu efi build's disk, its VirtualHardwareSection ending with the
    firmware setting vSphere reads (`<vmw:Config ovf:required="false" vmw:key="firmware" vmw:value="efi"/>`)."""
    monkeypatch.setenv("IMAGEBUILDER_CATALOGUE", str(tmp_path / "catalogue"))
    matrix = tmp_path / "matrix.yaml"
    matrix.write_text(yaml.safe_dump({
        "versions_file": str(PROJECT_ROOT / "versions.lock.yaml"), "os": ["ubuntu-2404"], "kubernetes": [MINOR],
        "clouds": {"ova": {"boot_test": False, "variants": ["efi"]}},
    }))
    cells = cells_of(matrix)
    efi = cells[f"ova-ubuntu-2404-efi-k8s-{MINOR}"]
    assert efi.build_key != cells[f"ova-ubuntu-2404-k8s-{MINOR}"].build_key
    job, artifact = built(efi, tmp_path / "build", "20260101000000", disk_content(5))
    done = TargetHooks(publish=False).finish(job, artifact)
    ova = Path(done.files[0])
    check_ova(ova, Path(done.files[1]))
    with tarfile.open(ova) as archive:
        envelope = ET.fromstring(archive.extractfile(archive.getmembers()[0]).read())  # type: ignore[union-attr]
    hardware = envelope.find("ovf:VirtualSystem/ovf:VirtualHardwareSection", NS)
    assert hardware is not None
    (config,) = hardware.findall(q(VMW, "Config"))
    assert list(hardware)[-1] is config  # after the items, as the section's extensions go
    assert (config.get(q(OVF, "required")), config.get(q(VMW, "key")), config.get(q(VMW, "value"))) == \
        ("false", "firmware", "efi")
    assert ova_properties(ova)["IMAGEBUILDER_BUILD_KEY"] == efi.build_key


def test_the_ova_target_name_is_image_builders() -> None:
    result = CliRunner().invoke(cli, ["targets", "-m", str(PROJECT_ROOT / "examples" / "image-builder.yaml"),
                                      "--format", "json"], catch_exceptions=False)
    found = {entry["target"]: entry["cells"] for entry in json.loads(result.stdout)}
    minor = yaml.safe_load((PROJECT_ROOT / "examples" / "image-builder.yaml").read_text())["kubernetes"][0]
    assert found["build-node-ova-local-ubuntu-2204"] == [f"ova-ubuntu-2204-k8s-{minor}"]
    assert found["build-node-ova-local-ubuntu-2204-efi"] == [f"ova-ubuntu-2204-efi-k8s-{minor}"]
    assert found["build-node-ova-local-flatcar"] == [f"ova-flatcar-k8s-{minor}"]  # baked locally (flatcar.py)
