"""Kubernetes sysext images: contents, reproducibility, checksums, signed SHA256SUMS and the check
systemd-sysupdate makes, sysupdate and node configs, downloads, the S3 upload (moto server) and the
strategy comparison."""

from __future__ import annotations

import base64
import configparser
import hashlib
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from mirror import DEFAULT_FIXTURE_VERSIONS, FixtureFile, build_fixture_release, mirrors_for, serve_directory

from imagebuilder import sysext as sx
from imagebuilder import sysext_signing as signing
from imagebuilder.clouds import registry
from imagebuilder.config import load_matrix
from imagebuilder.downloads import fetch
from imagebuilder.errors import UserError
from imagebuilder.planner import plan
from imagebuilder.versions import Download

REPO = Path(__file__).resolve().parents[1]
DATA = Path(__file__).parent / "data"
MINOR = "1.31"
K8S = DEFAULT_FIXTURE_VERSIONS["kubernetes"]
BASE_URL = "https://sysext.example.org/kubernetes"
IMAGE = f"kubernetes-v{K8S}-x86-64.raw"


@dataclass(frozen=True)
class SigningKey:
    """A throwaway GnuPG home with one ed25519 signing key, no passphrase."""
    home: Path
    fingerprint: str
    armored_secret: str
    keyring: Path  # the public key, binary, as nodes have it in /etc/systemd/import-pubring.gpg


def gpg(home: Path, *args: str) -> str:
    return subprocess.run(["gpg", "--batch", "--homedir", str(home), *args], capture_output=True,
                          check=True).stdout.decode()


@contextmanager
def signing_key(home: Path, name: str) -> Iterator[SigningKey]:
    home.mkdir(mode=0o700)
    try:
        gpg(home, "--passphrase", "", "--quick-gen-key", f"{name} <{name}@example.org>", "ed25519", "sign", "never")
        fingerprint = next(line.split(":")[9] for line in gpg(home, "--with-colons", "--list-secret-keys").splitlines()
                           if line.startswith("fpr:"))
        secret = gpg(home, "--pinentry-mode", "loopback", "--passphrase", "", "--armor",
                     "--export-secret-keys", fingerprint)
        keyring = home.parent / f"{name}-pubring.gpg"
        gpg(home, "--output", str(keyring), "--export", fingerprint)
        yield SigningKey(home=home, fingerprint=fingerprint, armored_secret=secret, keyring=keyring)
    finally:
        signing.stop_agent(home)


@dataclass(frozen=True)
class Fixture:
    base_url: str
    files: dict[str, dict[str, FixtureFile]]  # arch -> download name -> file
    key: SigningKey

    @property
    def signing_env(self) -> dict[str, str]:
        return {signing.SIGNING_KEY_ENV: self.key.armored_secret}

    def lock(self, wrong: str | None = None) -> dict:
        """A versions lock pinning the fixture sums; ``wrong`` names a file whose sum is falsified."""
        components: dict[str, dict] = {}
        for name, amd64 in self.files["amd64"].items():
            sums = {arch: files[name].sha256 for arch, files in self.files.items()}
            if name == wrong:
                sums["amd64"] = hashlib.sha256(b"not the file").hexdigest()
            entry = components.setdefault(amd64.component, {"version": DEFAULT_FIXTURE_VERSIONS[amd64.component],
                                                            "files": {}})
            entry["files"][name] = {"path": amd64.path.replace("amd64", "{arch}"), "sha256": sums}
        return {"schema": 1, "minors": {MINOR: {"pause": "3.10", "components": components}}}


@pytest.fixture(scope="module")
def fixture_mirror(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fixture]:
    root = tmp_path_factory.mktemp("sysext-mirror")
    files = {arch: build_fixture_release(root, DEFAULT_FIXTURE_VERSIONS, arch) for arch in ("amd64", "arm64")}
    gnupg = tmp_path_factory.mktemp("gnupg")
    with serve_directory(root) as base_url, signing_key(gnupg / "home", "sysext") as key:
        yield Fixture(base_url=base_url, files=files, key=key)


def write_matrix(directory: Path, fixture: Fixture, wrong: str | None = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "versions.lock.yaml").write_text(yaml.safe_dump(fixture.lock(wrong)))
    matrix = {
        "versions_file": "versions.lock.yaml",
        "os": ["flatcar"],
        "kubernetes": [MINOR],
        "clouds": {"openstack": {}},
        "mirrors": mirrors_for(fixture.base_url),
    }
    path = directory / "matrix.yaml"
    path.write_text(yaml.safe_dump(matrix))
    return path


# Runs the real CLI entry point (its error handling: one line, exit 2), with the sysext group
# added if the CLI does not carry it yet.
CLI = ("import sys; from imagebuilder.cli import cli, main; from imagebuilder.cli.sysext import sysext; "
       "cli.commands.setdefault('sysext', sysext); sys.argv = ['imagebuilder', *sys.argv[1:]]; main()")


def run_cli(*args: str, cwd: Path, cache: Path, extra_env: dict[str, str] | None = None,
            umask: int | None = None) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if key != "SOURCE_DATE_EPOCH"}
    env.update({"IMAGEBUILDER_CACHE": str(cache), "IMAGEBUILDER_CATALOGUE": str(cwd / "catalogue"),
                "PYTHONPATH": str(REPO), **(extra_env or {})})
    preexec = (lambda: os.umask(umask)) if umask is not None else None
    return subprocess.run([sys.executable, "-c", CLI, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300, preexec_fn=preexec)


def build_cli(work: Path, fixture: Fixture, *extra: str, base_url: str | None = BASE_URL, signed: bool = True,
              **kwargs) -> subprocess.CompletedProcess[str]:
    """`sysext build`, signed by default with the fixture key given as the environment variable."""
    matrix = write_matrix(work / "in", fixture)
    args = ["sysext", "build", "-m", str(matrix), "--k8s", MINOR, "-o", str(work / "out"), *extra]
    if base_url:
        args += ["--base-url", base_url]
    if signed:
        kwargs["extra_env"] = {**fixture.signing_env, **kwargs.get("extra_env", {})}
    result = run_cli(*args, cwd=work, cache=kwargs.pop("cache", work / "cache"), **kwargs)
    assert result.returncode == 0, result.stderr
    return result


@pytest.fixture(scope="module")
def built(fixture_mirror: Fixture, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The output directory of one x86-64 build with a base URL."""
    work = tmp_path_factory.mktemp("sysext-build")
    build_cli(work, fixture_mirror)
    return work / "out"


def unsquashfs_listing(image: Path) -> list[tuple[str, str, str]]:
    """(mode, owner, path) per entry, from `unsquashfs -lls`."""
    out = subprocess.run(["unsquashfs", "-lls", str(image)], capture_output=True, text=True, check=True).stdout
    entries = []
    for line in out.splitlines():
        fields = line.split()
        if len(fields) >= 6 and fields[-1].startswith("squashfs-root"):
            entries.append((fields[0], fields[1], fields[-1].removeprefix("squashfs-root")))
    return entries


def unsquashfs_cat(image: Path, path: str) -> str:
    return subprocess.run(["unsquashfs", "-cat", str(image), path], capture_output=True, text=True,
                          check=True).stdout


# -- the image ------------------------------------------------------------------------------------


def test_image_name_and_contents_owned_by_root(built: Path) -> None:
    assert (built / IMAGE).is_file()
    entries = {path: (mode, owner) for mode, owner, path in unsquashfs_listing(built / IMAGE)}
    for binary in ("kubelet", "kubeadm", "kubectl"):
        assert entries[f"/usr/bin/{binary}"][0] == "-rwxr-xr-x"
    for plugin in ("bridge", "host-local", "loopback", "portmap"):
        assert entries[f"/usr/libexec/kubernetes/cni/{plugin}"][0] == "-rwxr-xr-x"
    assert "/usr/libexec/kubernetes/cni/LICENSE" not in entries
    assert entries["/usr/lib/systemd/system/kubelet.service"][0] == "-rw-r--r--"
    assert "/usr/lib/systemd/system/kubelet.service.d/10-kubeadm.conf" in entries
    assert "/usr/lib/extension-release.d/extension-release.kubernetes" in entries
    assert {owner for _mode, owner in entries.values()} == {"root/root"}
    # only /usr and /opt are merged by systemd-sysext: nothing else may be in the image
    assert {path.split("/")[1] for path in entries if path} == {"usr"}


def test_binaries_are_the_pinned_release(built: Path, tmp_path: Path) -> None:
    subprocess.run(["unsquashfs", "-q", "-n", "-d", str(tmp_path / "root"), str(built / IMAGE)], check=True,
                   capture_output=True)
    version = subprocess.run([str(tmp_path / "root/usr/bin/kubeadm"), "version", "-o", "short"],
                             capture_output=True, text=True, check=True).stdout.strip()
    assert version == f"v{K8S}"


def test_release_file(built: Path) -> None:
    release = unsquashfs_cat(built / IMAGE, "usr/lib/extension-release.d/extension-release.kubernetes")
    fields = dict(line.split("=", 1) for line in release.splitlines())
    assert fields == {"ID": "_any", "ARCHITECTURE": "x86-64", "EXTENSION_RELOAD_MANAGER": "1"}


def test_os_id_release_file_and_arm64_name(fixture_mirror: Fixture, tmp_path: Path) -> None:
    build_cli(tmp_path, fixture_mirror, "--arch", "arm64", "--os-id", "flatcar", "--sysext-level", "1.0")
    image = tmp_path / "out" / f"kubernetes-v{K8S}-arm64.raw"
    release = unsquashfs_cat(image, "usr/lib/extension-release.d/extension-release.kubernetes")
    assert release.splitlines()[:3] == ["ID=flatcar", "SYSEXT_LEVEL=1.0", "ARCHITECTURE=arm64"]
    kubelet = unsquashfs_cat(image, "usr/bin/kubelet").encode()
    assert hashlib.sha256(kubelet).hexdigest() == fixture_mirror.files["arm64"]["kubelet"].sha256


def test_os_id_without_sysext_level_is_refused(fixture_mirror: Fixture, tmp_path: Path) -> None:
    matrix = write_matrix(tmp_path / "in", fixture_mirror)
    result = run_cli("sysext", "build", "-m", str(matrix), "--k8s", MINOR, "-o", str(tmp_path / "out"),
                     "--os-id", "flatcar", cwd=tmp_path, cache=tmp_path / "cache")
    assert result.returncode == 2
    assert "--sysext-level" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_without_k8s_builds_what_the_sysext_cells_need(fixture_mirror: Fixture, tmp_path: Path) -> None:
    matrix = write_matrix(tmp_path / "in", fixture_mirror)  # flatcar, sysext by default, amd64
    result = run_cli("sysext", "build", "-m", str(matrix), "-o", str(tmp_path / "out"), cwd=tmp_path,
                     cache=tmp_path / "cache")
    assert result.returncode == 0, result.stderr
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == ["SHA256SUMS", IMAGE]
    refused = run_cli("sysext", "build", "-m", str(matrix), "-o", str(tmp_path / "arm"), "--arch", "arm64",
                      cwd=tmp_path, cache=tmp_path / "cache")
    assert refused.returncode == 2 and "no cell uses strategy sysext on arm64" in refused.stderr
    assert not (tmp_path / "arm").exists()


def test_k8s_takes_the_minor_or_its_pinned_patch(fixture_mirror: Fixture) -> None:
    from imagebuilder.versions import VersionsLock

    lock = VersionsLock.model_validate(fixture_mirror.lock())
    assert sx.resolve_minor(MINOR, lock) == sx.resolve_minor(f"v{K8S}", lock) == MINOR
    with pytest.raises(UserError, match=f"pins {K8S} for {MINOR}"):
        sx.resolve_minor(f"{MINOR}.999", lock)


def test_reproducible_across_directories_times_and_umask(fixture_mirror: Fixture, built: Path,
                                                         tmp_path: Path) -> None:
    other_tmp = tmp_path / "tmp"
    other_tmp.mkdir()
    # Another cache (so the fetched files have other mtimes), TMPDIR, working directory and umask.
    build_cli(tmp_path, fixture_mirror, extra_env={"TMPDIR": str(other_tmp)}, umask=0o077)
    again = tmp_path / "out"
    names = sorted(path.name for path in built.iterdir())
    assert names == sorted(path.name for path in again.iterdir())
    for name in names:
        if name == "SHA256SUMS.gpg":  # carries its signing time: a new signature of the same SHA256SUMS
            assert signing.verify_directory(again, fixture_mirror.key.keyring)
            continue
        assert (built / name).read_bytes() == (again / name).read_bytes(), name


def test_source_date_epoch_sets_every_time(fixture_mirror: Fixture, built: Path, tmp_path: Path) -> None:
    epoch = 1700000000  # 2023-11-14 22:13:20 UTC
    build_cli(tmp_path, fixture_mirror, extra_env={"SOURCE_DATE_EPOCH": str(epoch)})
    image = tmp_path / "out" / IMAGE
    assert image.read_bytes() != (built / IMAGE).read_bytes()
    listing = subprocess.run(["unsquashfs", "-lls", str(image)], env={**os.environ, "TZ": "UTC"},
                             capture_output=True, text=True, check=True).stdout
    stamps = {" ".join(line.split()[3:5]) for line in listing.splitlines() if "squashfs-root" in line}
    assert stamps == {"2023-11-14 22:13"}
    superblock = subprocess.run(["unsquashfs", "-s", str(image)], env={**os.environ, "TZ": "UTC"},
                                capture_output=True, text=True, check=True).stdout
    assert "Tue Nov 14 22:13:20 2023" in superblock


def test_wrong_checksum_fails_clearly_and_writes_nothing(fixture_mirror: Fixture, tmp_path: Path) -> None:
    matrix = write_matrix(tmp_path / "in", fixture_mirror, wrong="kubelet")
    out = tmp_path / "out"
    result = run_cli("sysext", "build", "-m", str(matrix), "--k8s", MINOR, "-o", str(out), "--base-url", BASE_URL,
                     cwd=tmp_path, cache=tmp_path / "cache", extra_env=fixture_mirror.signing_env)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    kubelet = fixture_mirror.files["amd64"]["kubelet"]
    assert kubelet.url(fixture_mirror.base_url) in lines[0]
    assert hashlib.sha256(b"not the file").hexdigest() in lines[0]  # expected
    assert kubelet.sha256 in lines[0]  # actual
    assert not out.exists()
    assert not list((tmp_path / "cache").rglob(kubelet.sha256))  # nothing unverified kept either


def test_sha256sums_lists_every_published_file(built: Path) -> None:
    listed = {}
    for line in (built / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split("  ", 1)
        listed[name] = digest
    published = {path.name for path in built.iterdir() if path.name not in ("SHA256SUMS", "SHA256SUMS.gpg")}
    assert set(listed) == published
    for name, digest in listed.items():
        assert hashlib.sha256((built / name).read_bytes()).hexdigest() == digest


def test_second_minor_in_same_directory_keeps_the_first_in_sha256sums(fixture_mirror: Fixture,
                                                                       tmp_path: Path) -> None:
    build_cli(tmp_path, fixture_mirror)
    build_cli(tmp_path, fixture_mirror, "--arch", "arm64")
    names = {line.split("  ", 1)[1] for line in (tmp_path / "out" / "SHA256SUMS").read_text().splitlines()}
    assert {IMAGE, f"kubernetes-v{K8S}-arm64.raw"} <= names


def test_without_base_url_only_the_image_and_sums(fixture_mirror: Fixture, tmp_path: Path) -> None:
    result = build_cli(tmp_path, fixture_mirror, base_url=None)
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == ["SHA256SUMS", "SHA256SUMS.gpg", IMAGE]
    assert "--base-url" in result.stdout


# -- units ---------------------------------------------------------------------------------------


def test_kubelet_unit_copies_cni_plugins_without_replacing_existing(built: Path, tmp_path: Path) -> None:
    unit = unsquashfs_cat(built / IMAGE, "usr/lib/systemd/system/kubelet.service")
    pre = [line.split("=", 1)[1] for line in unit.splitlines() if line.startswith("ExecStartPre=")]
    assert len(pre) == 1 and pre[0].startswith("/bin/sh -c '")
    script = pre[0].removeprefix("/bin/sh -c '").removesuffix("'").replace("$$", "$")  # systemd's unescaping
    plugins, opt = tmp_path / "plugins", tmp_path / "opt-cni-bin"
    plugins.mkdir()
    for name in ("bridge", "portmap"):
        (plugins / name).write_text(f"ours {name}")
    script = script.replace(f"/{sx.CNI_IMAGE_DIR}", str(plugins)).replace("/opt/cni/bin", str(opt))
    opt.mkdir()
    (opt / "portmap").write_text("installed by the CNI provider")
    subprocess.run(["sh", "-c", script], check=True)
    assert (opt / "bridge").read_text() == "ours bridge"
    assert (opt / "portmap").read_text() == "installed by the CNI provider"
    dropin = unsquashfs_cat(built / IMAGE, "usr/lib/systemd/system/kubelet.service.d/10-kubeadm.conf")
    assert "ExecStart=\n" in dropin and "$KUBELET_KUBEADM_ARGS" in dropin


def test_units_pass_systemd_analyze_verify(built: Path, tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    subprocess.run(["unsquashfs", "-q", "-n", "-d", str(tmp_path / "root"), str(built / IMAGE)], check=True,
                   capture_output=True)
    units = tmp_path / "root/usr/lib/systemd/system"
    result = subprocess.run(["systemd-analyze", "verify", str(units / "kubelet.service")], capture_output=True,
                            text=True, env={**os.environ, "SYSTEMD_UNIT_PATH": f"{units}:"}, timeout=60)
    complaints = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    # The one complaint allowed: this host has no /usr/bin/kubelet (the image would provide it).
    # Unknown keys, bad sections or bad escaping in the unit or the drop-in would show up here.
    assert all("Command /usr/bin/kubelet is not executable" in line for line in complaints), complaints
    assert result.returncode == (1 if complaints else 0)


# -- sysupdate and node configs --------------------------------------------------------------------


def read_transfer(path: Path) -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=True)
    parser.optionxform = str  # type: ignore[assignment]  # systemd keys are case-sensitive
    parser.read_string(path.read_text())
    return parser


def test_sysupdate_transfer_file(built: Path) -> None:
    transfer = read_transfer(built / f"kubernetes-{MINOR}.conf")
    assert transfer.sections() == ["Transfer", "Source", "Target"]
    source, target = transfer["Source"], transfer["Target"]
    assert transfer["Transfer"]["Verify"] == "yes"  # SHA256SUMS.gpg checked against the node's keyring
    assert source["Type"] == "url-file" and target["Type"] == "regular-file"
    assert source["Path"].rstrip("/") == BASE_URL
    assert target["Path"] == "/opt/extensions/kubernetes"
    assert target["CurrentSymlink"] == "/etc/extensions/kubernetes.raw"
    assert int(target["InstancesMax"]) >= 2
    for pattern in (source["MatchPattern"], target["MatchPattern"]):
        # sysupdate's wildcards: @v the version, %a the host architecture (x86-64 here)
        regex = re.escape(pattern).replace("@v", r"(?P<v>[0-9][0-9A-Za-z.~+-]*)").replace("%a", "x86-64")
        match = re.fullmatch(regex, IMAGE)
        assert match and match["v"] == K8S.split(".")[2]
        assert not re.fullmatch(regex, IMAGE.replace(f"v{MINOR}.", "v1.32."))  # patch updates only


# The Ignition v3.3.0 config spec (docs/configuration-v3_3.md upstream): the keys each object
# may carry, for the parts our configs use.
IGNITION_KEYS = {
    "": {"ignition", "storage", "systemd", "passwd", "kernelArguments"},
    "ignition": {"version", "config", "timeouts", "security", "proxy"},
    "storage": {"disks", "raid", "filesystems", "files", "directories", "links", "luks"},
    "file": {"path", "overwrite", "contents", "append", "mode", "user", "group"},
    "contents": {"compression", "source", "httpHeaders", "verification"},
    "verification": {"hash"},
    "link": {"path", "overwrite", "user", "group", "target", "hard"},
    "systemd": {"units"},
    "unit": {"name", "enabled", "mask", "contents", "dropins"},
    "dropin": {"name", "contents"},
}


def check_ignition_3_3(config: dict) -> None:
    def keys(obj: dict, kind: str) -> None:
        assert isinstance(obj, dict) and set(obj) <= IGNITION_KEYS[kind], (kind, set(obj) - IGNITION_KEYS[kind])

    keys(config, "")
    keys(config["ignition"], "ignition")
    assert config["ignition"]["version"] == "3.3.0"
    keys(config["storage"], "storage")
    paths: list[str] = []
    for entry in config["storage"].get("files", []):
        keys(entry, "file")
        keys(entry["contents"], "contents")
        scheme = urllib.parse.urlsplit(entry["contents"]["source"]).scheme
        assert scheme in ("http", "https", "tftp", "s3", "gs", "data")
        if "verification" in entry["contents"]:
            keys(entry["contents"]["verification"], "verification")
            assert re.fullmatch(r"sha512-[0-9a-f]{128}|sha256-[0-9a-f]{64}", entry["contents"]["verification"]["hash"])
        assert isinstance(entry["mode"], int) and entry["mode"] <= 0o777  # decimal, no special bits
        paths.append(entry["path"])
    for link in config["storage"].get("links", []):
        keys(link, "link")
        assert isinstance(link["target"], str) and isinstance(link.get("hard", False), bool)
        paths.append(link["path"])
    assert all(path.startswith("/") for path in paths) and len(paths) == len(set(paths))
    if "systemd" in config:
        keys(config["systemd"], "systemd")
        for unit in config["systemd"]["units"]:
            keys(unit, "unit")
            for dropin in unit.get("dropins", []):
                keys(dropin, "dropin")


def test_ignition_json_fetches_verifies_and_links_the_image(built: Path) -> None:
    config = json.loads((built / IMAGE.replace(".raw", ".ign")).read_text())
    check_ignition_3_3(config)
    files = {entry["path"]: entry for entry in config["storage"]["files"]}
    node_image = f"/opt/extensions/kubernetes/{IMAGE}"
    assert files[node_image]["contents"]["source"] == f"{BASE_URL}/{IMAGE}"
    assert files[node_image]["contents"]["verification"]["hash"] == \
        "sha512-" + hashlib.sha512((built / IMAGE).read_bytes()).hexdigest()
    assert config["storage"]["links"] == [{"path": "/etc/extensions/kubernetes.raw", "target": node_image,
                                           "hard": False}]
    transfer = files[f"/etc/sysupdate.kubernetes.d/kubernetes-{MINOR}.conf"]["contents"]["source"]
    assert transfer.startswith("data:,")
    assert urllib.parse.unquote(transfer.removeprefix("data:,")) == (built / f"kubernetes-{MINOR}.conf").read_text()
    units = {unit["name"]: unit for unit in config["systemd"]["units"]}
    assert units["systemd-sysupdate.timer"]["enabled"] is True
    assert "systemd-sysupdate -C kubernetes update" in units["systemd-sysupdate.service"]["dropins"][0]["contents"]


def test_ignition_validate_accepts_the_configs(built: Path, fixture_mirror: Fixture, tmp_path: Path) -> None:
    """Ignition's own validator (Debian's ignition package) on both variants of the config."""
    if shutil.which("ignition-validate") is None:
        pytest.fail("ignition-validate is not installed (apt-get install ignition)")
    build_cli(tmp_path, fixture_mirror, "--no-updates")
    for config in (built / IMAGE.replace(".raw", ".ign"), tmp_path / "out" / IMAGE.replace(".raw", ".ign")):
        result = subprocess.run(["ignition-validate", str(config)], capture_output=True, text=True)
        assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr
    broken = json.loads(config.read_text())
    broken["storage"]["files"][0]["contents"]["verification"]["hash"] = "sha512-00"
    (tmp_path / "broken.ign").write_text(json.dumps(broken))
    result = subprocess.run(["ignition-validate", str(tmp_path / "broken.ign")], capture_output=True, text=True)
    assert result.returncode != 0  # the validator does check what we rely on


def test_butane_is_the_same_config(built: Path) -> None:
    butane = yaml.safe_load((built / IMAGE.replace(".raw", ".bu")).read_text())
    assert (butane["variant"], butane["version"]) == ("flatcar", "1.0.0")
    assert sx.to_ignition(butane) == json.loads((built / IMAGE.replace(".raw", ".ign")).read_text())


def test_container_linux_config_for_cluster_api(built: Path) -> None:
    clc = yaml.safe_load((built / IMAGE.replace(".raw", ".clc.yaml")).read_text())
    image_file = next(entry for entry in clc["storage"]["files"] if entry["path"].endswith(".raw"))
    assert image_file["filesystem"] == "root"
    remote = image_file["contents"]["remote"]
    assert remote["url"] == f"{BASE_URL}/{IMAGE}"
    assert remote["verification"]["hash"] == {"function": "sha512",
                                              "sum": hashlib.sha512((built / IMAGE).read_bytes()).hexdigest()}
    assert clc["storage"]["links"][0]["path"] == "/etc/extensions/kubernetes.raw"


def test_no_updates_leaves_out_sysupdate(fixture_mirror: Fixture, tmp_path: Path) -> None:
    build_cli(tmp_path, fixture_mirror, "--no-updates")
    config = json.loads((tmp_path / "out" / IMAGE.replace(".raw", ".ign")).read_text())
    check_ignition_3_3(config)
    assert "systemd" not in config and len(config["storage"]["files"]) == 1
    assert not (tmp_path / "out" / f"kubernetes-{MINOR}.conf").exists()


# -- a real merge with this host's systemd-sysext ---------------------------------------------------


def sysext_merge(image: Path, scratch: Path, then: str) -> subprocess.CompletedProcess[str]:
    """Merge ``image`` as a node does (the versioned file in /opt/extensions/kubernetes, found through
    the stable name kubernetes.raw in a search path), then run ``then``; in a private mount namespace
    with its own /run and /opt, so the host never sees the merge."""
    opt = scratch / "opt"
    opt.mkdir(parents=True)
    script = f"""set -e
mount -t tmpfs tmpfs /run
mount --bind {opt} /opt
mkdir -p /run/extensions /opt/extensions/kubernetes
cp {image} /opt/extensions/kubernetes/
ln -s /opt/extensions/kubernetes/{image.name} /run/extensions/kubernetes.raw
mount --make-rshared /
systemd-sysext merge
{then}
"""
    return subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def merged(built: Path, tmp_path_factory: pytest.TempPathFactory) -> subprocess.CompletedProcess[str]:
    if shutil.which("systemd-sysext") is None or shutil.which("unshare") is None or os.geteuid() != 0:
        pytest.skip("needs root, unshare and systemd-sysext")
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"no mount namespaces here: {probe.stderr.strip()}")
    return sysext_merge(built / IMAGE, tmp_path_factory.mktemp("merge"),
                        "kubeadm version -o short\nsystemd-analyze verify kubelet.service")


def test_systemd_sysext_merges_the_image_through_the_stable_name(merged: subprocess.CompletedProcess[str]) -> None:
    assert merged.returncode == 0, merged.stderr
    assert "Merged extensions into '/usr'" in merged.stdout + merged.stderr
    assert merged.stdout.strip().splitlines()[-1] == f"v{K8S}"
    # With the image merged, systemd-analyze verify finds nothing wrong with kubelet.service
    # and its drop-in (it would print unknown keys, bad escaping or missing commands).
    assert "kubelet" not in merged.stderr.replace("Using extensions 'kubernetes'", "")


def test_systemd_sysext_refuses_another_os_id(merged: subprocess.CompletedProcess[str], fixture_mirror: Fixture,
                                              tmp_path: Path) -> None:
    if merged.returncode != 0:
        pytest.skip("systemd-sysext cannot merge on this machine")
    host_id = dict(line.split("=", 1) for line in Path("/etc/os-release").read_text().splitlines() if "=" in line)["ID"]
    other = "flatcar" if host_id.strip('"') != "flatcar" else "debian"
    build_cli(tmp_path, fixture_mirror, "--os-id", other, "--sysext-level", "1.0")
    result = sysext_merge(tmp_path / "out" / IMAGE, tmp_path / "scratch", "kubeadm version -o short")
    assert result.returncode != 0 and f"v{K8S}" not in result.stdout


# -- downloads ---------------------------------------------------------------------------------------


@contextmanager
def flaky_server(body: bytes, failures: int, status: int = 503) -> Iterator[tuple[str, list[int]]]:
    """Serves ``body`` at /file after answering ``status`` ``failures`` times; records each answer."""
    answers: list[int] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - stdlib name
            code = status if len(answers) < failures else 200
            answers.append(code)
            self.send_response(code)
            self.send_header("Content-Length", str(len(body) if code == 200 else 0))
            self.end_headers()
            if code == 200:
                self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/file", answers
    finally:
        server.shutdown()
        server.server_close()


def test_fetch_retries_transient_errors_then_caches(tmp_path: Path) -> None:
    body = b"release file\n"
    pinned = Download(url="", sha256=hashlib.sha256(body).hexdigest())
    with flaky_server(body, failures=2) as (url, answers):
        path = fetch(pinned.model_copy(update={"url": url}), cache=tmp_path, sleep=lambda _s: None)
        assert path.read_bytes() == body and answers == [503, 503, 200]
        again = fetch(pinned.model_copy(update={"url": url}), cache=tmp_path, sleep=lambda _s: None)
        assert again == path and len(answers) == 3  # served from the cache
    path.write_bytes(b"damaged")  # a damaged cache entry is fetched again, never used
    with flaky_server(body, failures=0) as (url, answers):
        assert fetch(pinned.model_copy(update={"url": url}), cache=tmp_path).read_bytes() == body
        assert answers == [200]


def test_fetch_gives_up_after_bounded_retries_and_not_on_404(tmp_path: Path) -> None:
    body = b"x"
    pinned = Download(url="", sha256=hashlib.sha256(body).hexdigest())
    with flaky_server(body, failures=10) as (url, answers):
        with pytest.raises(UserError, match=r"failed after 3 attempts \(HTTP 503\)"):
            fetch(pinned.model_copy(update={"url": url}), cache=tmp_path, sleep=lambda _s: None)
        assert len(answers) == 3
    with flaky_server(body, failures=10, status=404) as (url, answers):
        with pytest.raises(UserError, match="HTTP 404"):
            fetch(pinned.model_copy(update={"url": url}), cache=tmp_path, sleep=lambda _s: None)
        assert answers == [404]
    assert not list(tmp_path.rglob(".*"))  # no temporary file is left behind


# -- S3 (moto server over HTTP) ------------------------------------------------------------------------


def test_upload_to_s3_merges_sha256sums(fixture_mirror: Fixture, built: Path, tmp_path: Path) -> None:
    boto3 = pytest.importorskip("boto3")
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        env = {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "testing",
               "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
        s3 = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
        s3.create_bucket(Bucket="sysext")
        other = f"{'0' * 64}  kubernetes-v1.30.9-x86-64.raw\n"
        s3.put_object(Bucket="sysext", Key="k8s/SHA256SUMS", Body=other.encode())
        build_cli(tmp_path, fixture_mirror, "--s3-bucket", "sysext", "--s3-prefix", "k8s", extra_env=env)
        keys = {obj["Key"] for obj in s3.list_objects_v2(Bucket="sysext")["Contents"]}
        assert keys == {f"k8s/{path.name}" for path in built.iterdir()}
        downloaded = tmp_path / "bucket"
        downloaded.mkdir()
        for name in ("SHA256SUMS", "SHA256SUMS.gpg"):
            (downloaded / name).write_bytes(s3.get_object(Bucket="sysext", Key=f"k8s/{name}")["Body"].read())
        # the merged manifest is the one signed
        signing.check_signature(downloaded / "SHA256SUMS", downloaded / "SHA256SUMS.gpg", fixture_mirror.key.keyring)
        remote = s3.get_object(Bucket="sysext", Key=f"k8s/{IMAGE}")["Body"].read()
        assert remote == (built / IMAGE).read_bytes()
        sums = s3.get_object(Bucket="sysext", Key="k8s/SHA256SUMS")["Body"].read().decode()
        assert other in sums and f"{hashlib.sha256(remote).hexdigest()}  {IMAGE}\n" in sums
    finally:
        server.stop()


# -- plan --compare --------------------------------------------------------------------------------------


def test_compare_strategies_on_the_test_matrix() -> None:
    cells = plan(load_matrix(DATA / "matrix.yaml"))
    report = sx.compare_strategies(cells)
    bake, configured, everywhere = report.strategies
    aws_regions = 2  # tests/data/matrix.yaml: regions [us-east-1, eu-west-1]
    aws = [cell for cell in cells if cell.cloud == "aws"]
    assert bake.images_built == len(cells) == 31
    assert bake.image_copies_stored == len(cells) + (aws_regions - 1) * len(aws)
    assert bake.sysexts_built == 0 and bake.stock_images_imported == 0
    flatcar = [cell for cell in cells if cell.os == "flatcar"]
    assert {cell.strategy for cell in flatcar} == {"sysext"}  # the OS default
    assert configured.images_built == len(cells) - len(flatcar) == 25
    assert configured.sysexts_built == 3  # 1.30, 1.31, 1.32 on amd64
    assert configured.stock_images_imported == 1  # flatcar into Glance; aws lists the vendor's AMI
    assert everywhere.images_built == 0
    assert everywhere.sysexts_built == 4  # debian 1.32 is arm64: one more (minor, arch)
    assert bake.storage_gib > configured.storage_gib > everywhere.storage_gib
    assert sx.sysext_targets(cells) == [("1.30", "amd64"), ("1.31", "amd64"), ("1.32", "amd64")]
    expected_bake = sum(registry.get(c.cloud).image_gib * sx.copies_per_image(c) for c in cells)
    assert bake.storage_gib == round(expected_bake, 1)


def test_compare_output(tmp_path: Path) -> None:
    result = run_cli("sysext", "compare", "-m", str(DATA / "matrix.yaml"), cwd=tmp_path, cache=tmp_path / "c")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "31 cells"
    assert re.match(r"bake everything\s+31\s+43\s+0\s+0\s+\d", lines[2])
    assert lines[-1].startswith("assumptions: ")
    as_json = run_cli("sysext", "compare", "-m", str(DATA / "matrix.yaml"), "--format", "json", cwd=tmp_path,
                      cache=tmp_path / "c")
    assert [s["name"] for s in json.loads(as_json.stdout)["strategies"]] == \
        ["bake everything", "as configured", "sysext everywhere"]


def test_published_to_the_local_catalogue(fixture_mirror: Fixture, tmp_path: Path) -> None:
    catalogue = tmp_path / "catalogue"
    result = build_cli(tmp_path, fixture_mirror, extra_env={"IMAGEBUILDER_CATALOGUE": str(catalogue)})
    image = next((tmp_path / "out").glob("kubernetes-v*.raw"))
    published = catalogue / "sysext" / image.name
    assert published.read_bytes() == image.read_bytes()
    assert f"catalogued in {catalogue / 'sysext'}" in result.stdout
    sums = dict(reversed(line.split("  ")) for line in (catalogue / "sysext" / "SHA256SUMS").read_text().splitlines())
    assert sums[image.name] == hashlib.sha256(image.read_bytes()).hexdigest()
    assert (catalogue / "sysext" / f"kubernetes-{MINOR}.conf").exists()
    assert signing.verify_directory(catalogue / "sysext", fixture_mirror.key.keyring)


# -- signed updates: SHA256SUMS.gpg and the check systemd-sysupdate makes ------------------------------
# sysupdate.d(5) Verify=yes: SHA256SUMS.gpg must verify against /etc/systemd/import-pubring.gpg, then
# each downloaded image against SHA256SUMS. Debian 12 has no systemd-sysupdate: `sysext verify` makes
# both checks with gpg, as systemd-sysupdate does.


def verify_cli(directory: Path, keyring: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return run_cli("sysext", "verify", str(directory), "--keyring", str(keyring), cwd=cwd, cache=cwd / "cache")


def test_signature_verifies_with_the_public_key(built: Path, fixture_mirror: Fixture, tmp_path: Path) -> None:
    result = verify_cli(built, fixture_mirror.key.keyring, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "SHA256SUMS.gpg verifies" in result.stdout
    # gpgv, the other verifier, agrees: a plain detached OpenPGP signature of SHA256SUMS
    gpgv = subprocess.run(["gpgv", "--keyring", str(fixture_mirror.key.keyring), str(built / "SHA256SUMS.gpg"),
                           str(built / "SHA256SUMS")], capture_output=True, text=True)
    assert gpgv.returncode == 0, gpgv.stderr


def tampered_copy(built: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "served"
    shutil.copytree(built, copy)
    return copy


def refusal(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert "the update is refused" in lines[0]
    return lines[0].removeprefix("imagebuilder: ")


def test_altered_sha256sums_after_signing_is_refused(built: Path, fixture_mirror: Fixture, tmp_path: Path) -> None:
    served = tampered_copy(built, tmp_path)
    sums = served / "SHA256SUMS"
    evil = hashlib.sha256(b"someone else's kubelet").hexdigest()
    sums.write_text(re.sub(r"^[0-9a-f]{64}(?=  " + re.escape(IMAGE) + "$)", evil, sums.read_text(), flags=re.M))
    (served / IMAGE).write_bytes(b"someone else's kubelet")  # and the image that matches the new sum
    assert "SHA256SUMS.gpg: does not verify" in refusal(verify_cli(served, fixture_mirror.key.keyring, tmp_path))


def test_altered_image_after_signing_is_refused(built: Path, fixture_mirror: Fixture, tmp_path: Path) -> None:
    served = tampered_copy(built, tmp_path)
    image = bytearray((served / IMAGE).read_bytes())
    image[-1] ^= 0xFF
    (served / IMAGE).write_bytes(bytes(image))
    line = refusal(verify_cli(served, fixture_mirror.key.keyring, tmp_path))
    assert f"{IMAGE}: sha256 {hashlib.sha256(image).hexdigest()} but SHA256SUMS says" in line


def test_unsigned_or_foreign_key_is_refused(built: Path, fixture_mirror: Fixture, tmp_path: Path) -> None:
    with signing_key(tmp_path / "other", "other") as other:
        assert "does not verify" in refusal(verify_cli(built, other.keyring, tmp_path))
    served = tampered_copy(built, tmp_path)
    (served / "SHA256SUMS.gpg").unlink()
    assert "SHA256SUMS.gpg: missing" in refusal(verify_cli(served, fixture_mirror.key.keyring, tmp_path))


def node_keyring(config: dict) -> bytes:
    entry = next(e for e in config["storage"]["files"] if e["path"] == "/etc/systemd/import-pubring.gpg")
    assert entry["mode"] == 0o644
    source = entry["contents"]["source"]
    assert source.startswith("data:;base64,")
    return base64.b64decode(source.removeprefix("data:;base64,"))


def test_node_configs_install_the_public_key(built: Path, fixture_mirror: Fixture, tmp_path: Path) -> None:
    ignition = json.loads((built / IMAGE.replace(".raw", ".ign")).read_text())
    butane = yaml.safe_load((built / IMAGE.replace(".raw", ".bu")).read_text())
    clc = yaml.safe_load((built / IMAGE.replace(".raw", ".clc.yaml")).read_text())
    clc_entry = next(e for e in clc["storage"]["files"] if e["path"] == "/etc/systemd/import-pubring.gpg")
    installed = node_keyring(ignition)
    assert installed == node_keyring(butane) == base64.b64decode(
        clc_entry["contents"]["remote"]["url"].removeprefix("data:;base64,"))
    assert installed == fixture_mirror.key.keyring.read_bytes()
    assert b"PRIVATE KEY" not in installed
    # the keyring a node gets is the one that verifies the update
    (tmp_path / "node-pubring.gpg").write_bytes(installed)
    assert signing.verify_directory(built, tmp_path / "node-pubring.gpg") == sorted(
        line.split("  ", 1)[1] for line in (built / "SHA256SUMS").read_text().splitlines())


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    return lines[0].removeprefix("imagebuilder: ")


def try_build(work: Path, fixture: Fixture, *extra: str, env: dict[str, str] | None = None
              ) -> subprocess.CompletedProcess[str]:
    matrix = write_matrix(work / "in", fixture)
    return run_cli("sysext", "build", "-m", str(matrix), "--k8s", MINOR, "-o", str(work / "out"), *extra,
                   cwd=work, cache=work / "cache", extra_env=env)


def test_http_base_url_needs_insecure(fixture_mirror: Fixture, tmp_path: Path) -> None:
    plain = "http://sysext.example.org/kubernetes"
    line = one_line_error(try_build(tmp_path, fixture_mirror, "--base-url", plain, env=fixture_mirror.signing_env))
    assert line.startswith(f"--base-url {plain}") and "https://" in line and "--insecure" in line
    assert not (tmp_path / "out").exists()
    build_cli(tmp_path, fixture_mirror, "--insecure", base_url=plain)
    assert read_transfer(tmp_path / "out" / f"kubernetes-{MINOR}.conf")["Transfer"]["Verify"] == "yes"


def test_updates_without_a_signing_key_need_insecure(fixture_mirror: Fixture, tmp_path: Path) -> None:
    line = one_line_error(try_build(tmp_path, fixture_mirror, "--base-url", BASE_URL))
    assert "--signing-key" in line and "--insecure" in line and signing.SIGNING_KEY_ENV in line
    assert not (tmp_path / "out").exists()
    build_cli(tmp_path / "insecure", fixture_mirror, "--insecure", signed=False)
    out = tmp_path / "insecure" / "out"
    assert read_transfer(out / f"kubernetes-{MINOR}.conf")["Transfer"]["Verify"] == "no"
    assert not (out / "SHA256SUMS.gpg").exists()
    ignition = json.loads((out / IMAGE.replace(".raw", ".ign")).read_text())
    assert "/etc/systemd/import-pubring.gpg" not in {entry["path"] for entry in ignition["storage"]["files"]}
    build_cli(tmp_path / "pinned", fixture_mirror, "--no-updates", signed=False)  # the sha512 in the config suffices


def test_signing_key_from_the_users_keyring(fixture_mirror: Fixture, tmp_path: Path) -> None:
    key = fixture_mirror.key
    result = build_cli(tmp_path, fixture_mirror, "--signing-key", key.fingerprint, signed=False,
                       extra_env={"GNUPGHOME": str(key.home)})
    out = tmp_path / "out"
    assert signing.verify_directory(out, key.keyring)
    secret_body = key.armored_secret.splitlines()[3]  # a line of the key itself, past the armor header
    for path in out.iterdir():
        assert secret_body.encode() not in path.read_bytes() and b"PRIVATE KEY" not in path.read_bytes()
    assert secret_body not in result.stdout + result.stderr
    missing = one_line_error(try_build(tmp_path / "nokey", fixture_mirror, "--base-url", BASE_URL,
                                       "--signing-key", "0" * 40, env={"GNUPGHOME": str(key.home)}))
    assert missing.startswith(f"--signing-key {'0' * 40}: no secret keys match |")


def test_rebuilding_unsigned_removes_a_stale_signature(fixture_mirror: Fixture, tmp_path: Path) -> None:
    build_cli(tmp_path, fixture_mirror, base_url=None)
    assert (tmp_path / "out" / "SHA256SUMS.gpg").exists()
    build_cli(tmp_path, fixture_mirror, base_url=None, signed=False)
    assert not (tmp_path / "out" / "SHA256SUMS.gpg").exists()


def test_signing_key_file_with_a_passphrase(fixture_mirror: Fixture, tmp_path: Path) -> None:
    home = tmp_path / "locked"
    home.mkdir(mode=0o700)
    try:
        gpg(home, "--pinentry-mode", "loopback", "--passphrase", "s3cret", "--quick-gen-key",
            "locked <locked@example.org>", "ed25519", "sign", "never")
        secret_file = tmp_path / "signing.asc"
        secret_file.write_text(gpg(home, "--pinentry-mode", "loopback", "--passphrase", "s3cret", "--armor",
                                   "--export-secret-keys"))
        gpg(home, "--output", str(tmp_path / "locked.gpg"), "--export")
    finally:
        signing.stop_agent(home)
    wrong = one_line_error(try_build(tmp_path / "wrong", fixture_mirror, "--base-url", BASE_URL,
                                     "--signing-key-file", str(secret_file),
                                     env={signing.PASSPHRASE_ENV: "not it"}))
    assert wrong.startswith(f"--signing-key-file {secret_file}: gpg cannot sign")
    assert signing.PASSPHRASE_ENV in wrong and "not it" not in wrong
    assert not (tmp_path / "wrong" / "out").exists()  # found out before anything was built
    build_cli(tmp_path, fixture_mirror, "--signing-key-file", str(secret_file), signed=False,
              extra_env={signing.PASSPHRASE_ENV: "s3cret"})
    assert signing.verify_directory(tmp_path / "out", tmp_path / "locked.gpg")
