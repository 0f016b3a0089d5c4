"""examples/image-builder.yaml against kubernetes-sigs/image-builder's own target names
(tests/data/image_builder_targets.txt): every target it lists is one of them or a documented extra,
and it covers at least FLOOR of them (bench/targets_coverage.py prints the table)."""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType

import pytest

from imagebuilder.config import PROJECT_ROOT

# The image-builder targets the example provides today; raised as provider folders land (issue 20:
# every Linux one).
FLOOR = 187  # 60 before oci, osc, scaleway, do, nutanix, vultr, oxide, huaweicloud; 81 before Flatcar baked locally; 85 before azure gen1 and cvm; 92 before the local efi variants; 104 before the AlmaLinux, RHEL and Photon OS installs and RHEL's supplied images; 121 before vSphere and Proxmox efi; 132 before arm64 on AWS; 135 before the -cloudimg names; 141 before maas and the ova base and vmx flavours; 162 before powervs; 165 before Flatcar on vSphere, Proxmox, hcloud, Nutanix and arm64 AMIs; 173 before the Flatcar ova base and vmx flavours; 175 before maas arm64 and raw-rhel-9-efi; 178 before the immutable variant; 180 before Photon OS on the local outputs (its ISO installed); 186 before Flatcar on Outscale


def _bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("targets_coverage", PROJECT_ROOT / "bench" / "targets_coverage.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return _bench()


@pytest.fixture(scope="module")
def provided(bench: ModuleType) -> dict[str, list[str]]:
    return bench.provided_targets()


def test_image_builders_names_are_read_as_its_makefile_expands_them(bench: ModuleType) -> None:
    names = bench.upstream_targets()
    assert len(names) == len(set(names)) == 218
    assert sum("windows" in name for name in names) == 31
    parsed = [bench.parse(name) for name in names]  # every one a build-<provider>-<os>[-variant]
    assert {target.provider for target in parsed} == set(bench.PROVIDERS)
    by_os = {os_id: sum(t.os == os_id for t in parsed) for os_id in ("ubuntu-2604", "rhel-9", "photon-4", "centos-10",
                                                                     "amazon-2023", "azurelinux-3", "oracle-linux-9")}
    assert by_os == {"ubuntu-2604": 32, "rhel-9": 11, "photon-4": 6, "centos-10": 4, "amazon-2023": 2,
                     "azurelinux-3": 2, "oracle-linux-9": 1}  # issue 20's counts
    assert bench.parse("build-node-ova-vsphere-clone-ubuntu-2404-efi") == bench.Target(
        "build-node-ova-vsphere-clone-ubuntu-2404-efi", "node-ova-vsphere-clone", "ubuntu-2404")
    with pytest.raises(ValueError, match="not a build-<provider>-<os>"):
        bench.parse("build-nowhere-ubuntu-2404")


def test_every_listed_target_is_image_builders_or_a_documented_extra(bench: ModuleType,
                                                                      provided: dict[str, list[str]]) -> None:
    upstream = set(bench.upstream_targets())
    extras = bench.documented_extras()
    assert not upstream & set(extras), "an extra that image-builder has is not an extra"
    unexplained = sorted(set(provided) - upstream - set(extras))
    assert unexplained == [], f"add them to tests/data/image_builder_extras.yaml with their reason: {unexplained}"
    stale = sorted(set(extras) - set(provided))
    assert stale == [], f"documented extras the example no longer lists: {stale}"
    assert all(cells for cells in provided.values())  # each target builds at least one planned cell


def test_coverage_reaches_the_floor(bench: ModuleType, provided: dict[str, list[str]]) -> None:
    result = bench.coverage(bench.upstream_targets(), provided)
    assert result.total_count == 218
    assert result.provided_count >= FLOOR, bench.table(result)
    # the OSes of issue 20 item 1 are in it on the clouds this checkout has
    for target in ("build-ami-ubuntu-2604", "build-gce-ubuntu-2604", "build-azure-sig-azurelinux-3-gen2",
                   "build-ami-amazon-2023", "build-ami-amazon-2", "build-ami-almalinux-9", "build-qemu-centos-10",
                   "build-kubevirt-qemu-centos-9", "build-node-ova-local-almalinux-9", "build-openstack-ubuntu-2604"):
        assert provided.get(target), target
