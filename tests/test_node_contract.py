"""The node contract: the shared role's defaults name what a node image has, the installing roles
write it from there and the validate role checks it from there, restating none of it.

Fast: the role files are read as data, and the validate role's own tasks and checks template are
walked against this host through the boot test's agent (imagebuilder/guestcheck.py) with every
contract value replaced, so a check that kept a value of its own would still show it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import REPO

ROLES = REPO / "ansible" / "roles"
CONTRACT_FILE = ROLES / "imagebuilder" / "defaults" / "main.yml"
CONTRACT_MARKER = "# The node contract"
VALIDATE = ROLES / "validate"
VALIDATE_FILES = sorted(p for d in ("defaults", "tasks", "templates", "vars") for p in (VALIDATE / d).rglob("*")
                        if p.is_file())
# Paths the OS, the kernel, systemd or cloud-init fix (no role chooses them): validate may name these.
OS_PATHS = {"/dev/null", "/etc/fstab", "/etc/ssh", "/proc/modules", "/proc/self/mountinfo", "/proc/swaps",
            "/var/lib/cloud/instance", "/var/log"}
# Contract lists of clouds (not values of the node: they select what applies to a cell).
CLOUD_LISTS = {"imagebuilder_ntp_from_dhcp"}
# Characters of one token: a default value inside a longer one (/probe/etc/x, probe-overlay) is not that value.
TOKEN = r"[\w./:-]"


def contract() -> dict[str, Any]:
    """The contract section of the shared role's defaults (after its marker comment)."""
    text = CONTRACT_FILE.read_text()
    assert CONTRACT_MARKER in text, f"{CONTRACT_FILE}: no '{CONTRACT_MARKER}' section"
    return yaml.safe_load(text.split(CONTRACT_MARKER, 1)[1].split("\n", 1)[1]) or {}


def other_roles_variables() -> set[str]:
    """Every variable an installing role declares in its own defaults."""
    names: set[str] = set()
    for defaults in ROLES.glob("*/defaults/main.yml"):
        if defaults.parent.parent.name not in ("imagebuilder", "validate"):
            names |= set(yaml.safe_load(defaults.read_text()) or {})
    return names


def leaves(value: Any) -> list[str]:
    """Every string in a value (dict keys too), templates left out."""
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in [str(k), *leaves(v)]]
    if isinstance(value, list):
        return [s for v in value for s in leaves(v)]
    return [value] if isinstance(value, str) and "{{" not in value else []


def program_names() -> set[str]:
    """The programs validate asks for their version: how to ask is validate's own knowledge."""
    data = yaml.safe_load((VALIDATE / "defaults/main.yml").read_text())
    return {b["argv"][0] for b in data["validate_binaries"] if "{{" not in b["argv"][0]}


def contract_values() -> set[str]:
    """The contract's own values that validate must not write: family and cloud keys excluded
    (they index the tables), and the names validate runs as programs."""
    data = contract()
    per_key = {"imagebuilder_sysctls", "imagebuilder_release_fields"}  # their keys are contract too
    values: set[str] = set()
    for name, value in data.items():
        if name in CLOUD_LISTS:
            continue
        values |= set(leaves(value if name in per_key else strip_keys(value)))
    return {v for v in values if len(v) >= 3} - program_names()


def strip_keys(value: Any) -> Any:
    if isinstance(value, dict):
        return [strip_keys(v) for v in value.values()]
    if isinstance(value, list):
        return [strip_keys(v) for v in value]
    return value


def found(value: str, text: str) -> bool:
    """``value`` as a token of ``text``; a path also as the start of a longer one (/opt/cni/bin/bridge).
    The OS paths validate may name are not looked in: a contract directory that holds one (the
    immutable variant's persistent /etc, /var/log) is not restated by naming /etc/fstab or /var/log."""
    text = re.sub("|".join(rf"(?<!{TOKEN}){re.escape(path)}(?![\w.:-])" for path in sorted(OS_PATHS, key=len, reverse=True)),
                  " ", text)
    after = r"(?![\w.:-])" if value.startswith("/") else rf"(?!{TOKEN})"
    return re.search(rf"(?<!{TOKEN}){re.escape(value)}{after}", text) is not None


# --------------------------------------------------------------------------------- static


def test_contract_is_where_the_docs_say() -> None:
    data = contract()
    for name in ("imagebuilder_kernel_modules", "imagebuilder_sysctls", "imagebuilder_base_services",
                 "imagebuilder_masked_units", "imagebuilder_release_file", "imagebuilder_release_fields",
                 "imagebuilder_cni_bin_dir", "imagebuilder_path"):
        assert name in data, name
    assert "roles/imagebuilder/defaults/main.yml" in (REPO / "docs/architecture.md").read_text()


def test_validate_reads_no_installing_role_variable() -> None:
    """validate names only contract (imagebuilder_*), cell and its own variables; loads no other role's files."""
    others = other_roles_variables()
    assert "node_packages" in others and "providers_datasources" in others  # the scan sees them
    for path in VALIDATE_FILES:
        text = path.read_text()
        used = sorted(name for name in others if re.search(rf"\b{name}\b", text))
        assert not used, f"{path.relative_to(REPO)} reads {used}: take them from the node contract"
        assert "include_vars" not in text and "vars_files" not in text, path


def test_validate_restates_no_contract_value() -> None:
    """No module, sysctl, service, unit, package or path of the contract is written in validate's files."""
    values = contract_values()
    assert {"overlay", "net.ipv4.ip_forward", "/etc/imagebuilder-release", "auditd", "apt-daily.timer",
            "/opt/cni/bin", "walinuxagent"} <= values  # the scan looks for these
    for path in VALIDATE_FILES:
        text = path.read_text()
        restated = sorted(v for v in values if found(v, text))
        assert not restated, f"{path.relative_to(REPO)} restates {restated}: use the contract's variables"
        paths = set(re.findall(r"(?<![\w}.])/(?:etc|opt|usr|var|run|proc|lib|dev|sys|srv|home|root)\b[\w./*-]*", text))
        assert paths <= OS_PATHS, f"{path.relative_to(REPO)} names {sorted(paths - OS_PATHS)}: a contract path?"


# ------------------------------------------------------------- the checks, contract moved


def moved(name: str, value: Any) -> Any:
    """A contract value no default equals: paths under /probe, names prefixed probe-."""
    if name in CLOUD_LISTS:
        return value
    if isinstance(value, dict):
        rekey = name in ("imagebuilder_sysctls", "imagebuilder_release_fields")
        return {(f"PROBE_{k}" if name == "imagebuilder_release_fields" else f"probe.{k}") if rekey else k:
                moved(name, v) for k, v in value.items()}
    if isinstance(value, list):
        return [moved(name, v) for v in value]
    if not isinstance(value, str):
        return value
    if "{{" in value:  # derived from other contract values: it moves with them
        from ansible.template import trust_as_template

        return trust_as_template(value)  # as trusted as the defaults file it comes from
    if ":///" in value:
        return value.replace(":///", ":///probe/", 1)
    if value.startswith("/"):
        return "/probe" + value
    return "probe-" + value


# What differs per family among the checks below: the time service, a masked unit, a held runtime package.
FAMILY_CHECKS = {
    "debian": {"service active: probe-chrony", "unit masked: probe-apt-daily.timer", "package held: probe-runc"},
    "redhat": {"service active: probe-chronyd", "unit masked: probe-dnf-makecache.timer",
               "package held: probe-containerd.io"},
    "tdnf": {"service active: probe-chronyd", "unit masked: probe-tdnf-cache-updateinfo.timer",
             "package held: probe-runc"},
}


@pytest.mark.parametrize(("cloud", "family"), [("qemu", "debian"), ("azure", "debian"), ("qemu", "tdnf"),
                                               ("qemu", "redhat")])
def test_validate_checks_follow_the_contract(cloud: str, family: str) -> None:
    """Every contract value moved: the validate role's checks (its own tasks and template, run against this
    host, as the family's target) name the moved values and none of the defaults."""
    from imagebuilder import guestcheck

    moved_contract = {name: moved(name, value) for name, value in contract().items()}
    variables = {
        **moved_contract,
        "imagebuilder_versions": {"kubernetes": "1.31.4", "containerd": "1.7.24", "runc": "1.2.3",
                                  "crictl": "1.31.1", "cni_plugins": "1.6.1"},
        "imagebuilder_build_key": "k" * 64, "imagebuilder_pause_image": "registry.k8s.io/pause:3.10",
        "imagebuilder_cloud": cloud, "containerd_install_method": "package", "kubernetes_install_method": "package",
        "imagebuilder_images": [{"name": "registry.k8s.io/pause", "tag": "3.10", "digest": "sha256:" + "0" * 64,
                                 "source": "registry.k8s.io/pause"}],
        "imagebuilder_family": family,
    }
    with guestcheck.GuestSession(["sh", "-c"], become="") as session:
        checks = guestcheck.RoleRunner(variables, role_dir=VALIDATE).run(session)
    names = {c.name for c in checks}
    expected = {
        "module loaded at boot: probe-br_netfilter", "module loaded: probe-overlay",
        "sysctl configured: probe.net.ipv4.ip_forward", "sysctl live: probe.kernel.panic",
        "service enabled: probe-containerd", "service enabled: probe-kubelet", "service enabled: probe-auditd",
        *FAMILY_CHECKS[family], "service not active: probe-kubelet", "package held: probe-kubeadm",
        "file: /probe/etc/imagebuilder-release has PROBE_IMAGEBUILDER_BUILD_KEY=" + "k" * 64,
        "file: /probe/etc/imagebuilder-release has PROBE_KUBERNETES_VERSION=v1.31.4",
        'file: /probe/etc/containerd/config.toml has config_path = "/probe/etc/containerd/certs.d"',
        "file: /probe/etc/crictl.yaml has runtime-endpoint: unix:///probe/run/containerd/containerd.sock",
        "file: /probe/etc/systemd/system/cloud-final.service.d/10-imagebuilder-runtime.conf"
        " has After=probe-containerd.service",
    }
    if cloud == "azure":
        expected |= {"service enabled: probe-walinuxagent", "service enabled: probe-imagebuilder-azure-wireserver.service",
                     "agent installed: probe-waagent", "chrony: probe-makestep 1.0 -1"}
    else:
        expected |= {"agent installed: probe-qemu-guest-agent", "chrony: sourcedir /probe/run/chrony-dhcp"}
    assert expected <= names, sorted(expected - names)
    details = {c.name: c.detail for c in checks}
    assert "/probe/usr/local/libexec/imagebuilder/containerd-images is missing" in details["image present: registry.k8s.io/pause:3.10"]
    assert details["hygiene: empty machine-id"].startswith("/probe/etc/machine-id ")
    assert details["hygiene: no hostname"].startswith("/probe/etc/hostname ")
    assert details["CNI bridge plugin version".join(("binary: ", ""))].startswith("/probe/opt/cni/bin/bridge ")
    values = contract_values()
    for check in checks:
        kept = sorted(v for v in values if found(v, check.name) or found(v, check.detail))
        assert not kept, f"[{check.name}] {check.detail}: still names the default {kept}"


def test_validate_immutable_checks_follow_the_contract() -> None:
    """An immutable cell's checks (fstab during the build, the mounts once booted) name the moved contract's
    label, mount point and paths, and fail on this host, which has none of them."""
    from imagebuilder import guestcheck

    moved_contract = {name: moved(name, value) for name, value in contract().items()}
    variables = {
        **moved_contract, "imagebuilder_immutable": True, "validate_hygiene_checks": False,
        "imagebuilder_versions": {"kubernetes": "1.31.4", "containerd": "1.7.24", "runc": "1.2.3",
                                  "crictl": "1.31.1", "cni_plugins": "1.6.1"},
        "imagebuilder_build_key": "k" * 64, "imagebuilder_pause_image": "registry.k8s.io/pause:3.10",
        "imagebuilder_cloud": "qemu", "containerd_install_method": "package", "kubernetes_install_method": "package",
        "imagebuilder_images": [], "imagebuilder_family": "debian",
    }
    with guestcheck.GuestSession(["sh", "-c"], become="") as session:
        checks = guestcheck.RoleRunner(variables, role_dir=VALIDATE).run(session)
    immutable = {c.name: c for c in checks if c.name.startswith("immutable: ")}
    expected = {"immutable: / read-only in fstab", "immutable: fstab mounts /probe/var/lib/cluster-api-data",
                "immutable: fstab binds /probe/etc", "immutable: fstab binds /probe/opt/cni/bin",
                "immutable: fstab binds /probe/var/lib/kubelet", "immutable: fstab mounts tmpfs on /probe/tmp",
                "immutable: / mounted read-only", "immutable: mounted /probe/var/lib/cluster-api-data",
                "immutable: bind mounted /probe/etc", "immutable: bind mounted /probe/var/log",
                "immutable: tmpfs mounted on /probe/var/tmp"}
    assert expected <= set(immutable), sorted(expected - set(immutable))
    assert not any(immutable[name].ok for name in expected if "/probe" in name), "a /probe path passed on this host"
    assert "expected a bind from /probe/var/lib/cluster-api-data/persistent/probe/etc" in \
        immutable["immutable: fstab binds /probe/etc"].detail
    assert "expected /persistent/probe/etc of /probe/var/lib/cluster-api-data's device" in \
        immutable["immutable: bind mounted /probe/etc"].detail
    values = contract_values()
    for check in immutable.values():
        kept = sorted(v for v in values if found(v, check.name) or found(v, check.detail))
        assert not kept, f"[{check.name}] {check.detail}: still names the default {kept}"
    # The default cell has none of these checks.
    variables["imagebuilder_immutable"] = False
    with guestcheck.GuestSession(["sh", "-c"], become="") as session:
        plain = guestcheck.RoleRunner(variables, role_dir=VALIDATE).run(session)
    assert not [c.name for c in plain if c.name.startswith("immutable: ")]
