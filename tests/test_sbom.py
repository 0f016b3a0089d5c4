"""SBOM (CycloneDX 1.5) and signed provenance (in-toto + SLSA v1 in DSSE) of local images.

The SBOM is read from root trees: a small one written here (a dpkg status file and what the roles
record of the release files they install) and the Debian 12 rootfs the role tests run in, compared
with dpkg-query reading the same database. Validation is CycloneDX's own JSON schema, as shipped
by cyclonedx-python-lib (JsonStrictValidator). The CLI is run end to end over a catalogue in tmp.
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator
from nullcells import null_cells
from services import qcow2_file

from imagebuilder import attest, provenance, sbom
from imagebuilder.artifact import Artifact
from imagebuilder.cli import main
from imagebuilder.clouds.local import CATALOGUE_ENV, LocalCatalogue
from imagebuilder.errors import UserError
from imagebuilder.metadata import ImageMetadata
from imagebuilder.render import cell_metadata

TIMESTAMP = "20261204063000"
DPKG_STATUS = """\
Package: bash
Status: install ok installed
Priority: required
Architecture: amd64
Version: 5.2.15-2+b7
Description: GNU Bourne Again SHell
 Bash is an sh-compatible command language interpreter.

Package: libc6
Status: install ok installed
Architecture: amd64
Multi-Arch: same
Version: 2.36-9+deb12u9

Package: libc6
Status: install ok installed
Architecture: i386
Multi-Arch: same
Version: 2.36-9+deb12u9

Package: vim-tiny
Status: install ok installed
Architecture: amd64
Version: 2:9.0.1378-2

Package: nano
Status: deinstall ok config-files
Architecture: amd64
Version: 7.2-1
"""


def fake_root(root: Path, cell, status: str = DPKG_STATUS, components: tuple[str, ...] = ("kubelet", "containerd", "cni_plugins")) -> Path:
    """A root tree as the roles leave it: a dpkg database, the provenance file, the installed sums."""
    (root / "var/lib/dpkg").mkdir(parents=True)
    (root / "var/lib/dpkg/status").write_text(status)
    (root / "etc").mkdir()
    (root / "etc/os-release").write_text('PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\nVERSION_ID="12"\n')
    (root / "etc/imagebuilder-release").write_text(
        f"IMAGEBUILDER_BUILD_KEY={cell.build_key}\nKUBERNETES_VERSION=v{cell.versions['kubernetes']}\n"
        f"CONTAINERD_VERSION={cell.versions['containerd']}\nCNI_PLUGINS_VERSION={cell.versions['cni_plugins']}\n")
    artifacts = root / "var/lib/imagebuilder/artifacts"
    artifacts.mkdir(parents=True)
    for name in components:
        (artifacts / f"{name}.sha256").write_text(cell.downloads[name].sha256 + "\n")
    return root


@pytest.fixture(scope="module")
def qemu_cell(tmp_path_factory: pytest.TempPathFactory):
    """A planned qemu cell (real pins, downloads and build key) of the test matrix."""
    cells = null_cells(tmp_path_factory.mktemp("plan"), {"qemu": {}}, minors=["1.31"], oses=["debian-12"])
    (cell,) = [c for c in cells if c.cloud == "qemu"]
    return cell


def validate_cyclonedx(document: dict) -> None:
    error = JsonStrictValidator(SchemaVersion.V1_5).validate_str(json.dumps(document))
    assert error is None, str(error)


def test_sbom_of_a_tree_validates_and_lists_what_is_installed(tmp_path: Path, qemu_cell) -> None:
    root = fake_root(tmp_path / "root", qemu_cell)
    document = sbom.sbom_document(sbom.contents_of_tree(root), image_name="img", build_key=qemu_cell.build_key, timestamp=TIMESTAMP,
                                  downloads=qemu_cell.downloads)
    validate_cyclonedx(document)
    versions = sbom.package_versions(document)
    k8s = qemu_cell.versions["kubernetes"]
    assert versions == {"bash:amd64": "5.2.15-2+b7", "libc6:amd64": "2.36-9+deb12u9", "libc6:i386": "2.36-9+deb12u9",
                        "vim-tiny:amd64": "2:9.0.1378-2", "kubelet": k8s,
                        "containerd": qemu_cell.versions["containerd"], "cni-plugins": qemu_cell.versions["cni_plugins"]}
    kubelet = next(c for c in document["components"] if c["name"] == "kubelet")
    assert kubelet["hashes"] == [{"alg": "SHA-256", "content": qemu_cell.downloads["kubelet"].sha256}]
    assert kubelet["externalReferences"][0]["url"] == qemu_cell.downloads["kubelet"].url
    vim = next(c for c in document["components"] if c["name"] == "vim-tiny")
    assert vim["purl"] == "pkg:deb/debian/vim-tiny@2%3A9.0.1378-2?arch=amd64&distro=debian-12"
    assert sbom.encode(document) == sbom.encode(sbom.sbom_document(
        sbom.contents_of_tree(root), image_name="img", build_key=qemu_cell.build_key, timestamp=TIMESTAMP, downloads=qemu_cell.downloads))


def test_a_tree_whose_release_file_is_not_the_pin_is_refused(tmp_path: Path, qemu_cell) -> None:
    root = fake_root(tmp_path / "root", qemu_cell)
    (root / "var/lib/imagebuilder/artifacts/kubelet.sha256").write_text("0" * 64 + "\n")
    with pytest.raises(UserError, match="kubelet has sha256 0000"):
        sbom.sbom_document(sbom.contents_of_tree(root), image_name="img", build_key="k", timestamp=TIMESTAMP, downloads=qemu_cell.downloads)
    with pytest.raises(UserError, match="no package database"):
        sbom.sbom_document(sbom.contents_of_tree(tmp_path), image_name="img", build_key="k", timestamp=TIMESTAMP)


class TreeSession:
    """GuestSession's ``command`` answered by the host's dpkg-query over a tree's database."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def command(self, argv: list[str], **_: object) -> dict[str, object]:
        result = subprocess.run([argv[0], f"--admindir={self.root / 'var/lib/dpkg'}", *argv[1:]],
                                capture_output=True, text=True)
        return {"rc": result.returncode, "stdout": result.stdout, "stderr": result.stderr}


def test_sbom_of_the_debian_rootfs_is_what_dpkg_query_lists(debian_rootfs: Path) -> None:
    document = sbom.sbom_document(sbom.contents_of_tree(debian_rootfs), image_name="rootfs", build_key="k", timestamp=TIMESTAMP)
    validate_cyclonedx(document)
    listed = sbom.guest_dpkg_packages(TreeSession(debian_rootfs))
    assert len(listed) > 100 and "libc6:amd64" in listed
    assert sbom.dpkg_versions(document) == listed


# ---------------------------------------------------------------- the catalogue and the CLI


def ed25519_keys(tmp_path: Path) -> tuple[bytes, Path]:
    key = ed25519.Ed25519PrivateKey.generate()
    public = tmp_path / "signer.pub"
    public.write_bytes(key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
    return key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()), public


def built_artifact(tmp_path: Path, cell, status: str = DPKG_STATUS, timestamp: str = TIMESTAMP) -> Artifact:
    """What the offline build leaves in output/: a qcow2, its SBOM and provenance, and the artifact record."""
    output = tmp_path / f"build-{timestamp}" / "output"
    name = f"debian-12-kube-v{cell.versions['kubernetes']}-{timestamp}"
    image = qcow2_file(output / f"{name}.qcow2", "1M")
    root = fake_root(tmp_path / f"root-{timestamp}", cell, status)
    sbom_file = attest.sbom_path(output, name)
    sbom_sha256 = attest.write_sbom_of_tree(root, sbom_file, cell, name, timestamp)
    tags = {**cell_metadata(cell).to_tags(), "imagebuilder-build-timestamp": timestamp,
            "imagebuilder-sbom-sha256": sbom_sha256}
    now = datetime.now(timezone.utc)
    statement = attest.build_statement(
        cell, image=image, image_ids={"local": f"local-{cell.build_key[:16]}"}, metadata=tags, sbom_file=sbom_file,
        sbom_sha256=sbom_sha256, git_commit="0123456789abcdef", base_key="base", invocation_id="run-1",
        started=now, finished=now, builder="offline")
    written = attest.write_provenance(statement, attest.provenance_path(output, name))
    metadata = ImageMetadata.from_tags(tags)
    return Artifact(cell_id=cell.id, cloud="qemu", build_key=cell.build_key, image_name=name, metadata=metadata,
                    ids={"default": str(image)}, files=[str(image), str(sbom_file), str(written.path)],
                    versions=dict(cell.versions))


def run_cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["imagebuilder", *argv])
    code = 0
    try:
        main()
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def signed_image(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, qemu_cell):
    private, public = ed25519_keys(tmp_path)
    monkeypatch.setenv(provenance.KEY_ENV, private.decode())
    monkeypatch.setenv(CATALOGUE_ENV, str(tmp_path / "catalogue"))
    artifact = built_artifact(tmp_path, qemu_cell)
    (image_id,) = LocalCatalogue().publish(artifact).values()
    return LocalCatalogue().get(image_id), public


def test_catalogue_keeps_the_sbom_and_sbom_prints_it(signed_image, monkeypatch, capsys, qemu_cell) -> None:
    record, _ = signed_image
    assert Path(record.extra["sbom"]).parent == Path(record.extra["path"]).parent
    assert Path(record.extra["provenance"]).is_file()
    for target in (record.image_id, qemu_cell.id):
        code, out, err = run_cli(monkeypatch, capsys, "images", "sbom", target)
        assert code == 0, err
        assert out.encode() == Path(record.extra["sbom"]).read_bytes()
        assert attest.sha256_of(Path(record.extra["sbom"])) == record.metadata.sbom_sha256
    code, _, err = run_cli(monkeypatch, capsys, "images", "sbom", "local-nothing")
    assert code == 2 and err.count("\n") == 1 and "no image or cell" in err


def test_verify_passes_untampered(signed_image, monkeypatch, capsys) -> None:
    record, public = signed_image
    code, out, err = run_cli(monkeypatch, capsys, "images", "verify", record.image_id, "--key", str(public))
    assert code == 0, err
    assert "verified" in out


def _tamper_sbom(record, tmp_path: Path) -> None:
    path = Path(record.extra["sbom"])
    path.write_text(path.read_text().replace('"bash"', '"bash2"'))


def _tamper_metadata(record, tmp_path: Path) -> None:
    LocalCatalogue().tag(record, {"imagebuilder-git-commit": "ffffffffffffffff"})


def _tamper_provenance(record, tmp_path: Path) -> None:
    path = Path(record.extra["provenance"])
    envelope = json.loads(path.read_text())
    statement = json.loads(provenance.base64.b64decode(envelope["payload"]))
    statement["predicate"]["buildDefinition"]["externalParameters"]["buildKey"] = "b" * 64
    envelope["payload"] = provenance.base64.b64encode(json.dumps(statement).encode()).decode()
    path.write_text(json.dumps(envelope))


def _tamper_image(record, tmp_path: Path) -> None:
    with open(record.extra["path"], "ab") as image:
        image.write(b"\0")


def _other_key(record, tmp_path: Path) -> None:
    other = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "signer.pub").write_bytes(other.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))


@pytest.mark.parametrize(("tamper", "says"), [
    (_tamper_sbom, "the SBOM has sha256"),
    (_tamper_metadata, "metadata imagebuilder-git-commit is 'ffffffffffffffff', the provenance says"),
    (_tamper_provenance, "the signature does not verify"),
    (_tamper_image, "the image has sha256"),
    (_other_key, "the signature does not verify"),
])
def test_verify_fails_with_one_line_when_anything_changed(signed_image, monkeypatch, capsys, tmp_path, tamper,
                                                          says) -> None:
    record, public = signed_image
    tamper(record, tmp_path)
    code, out, err = run_cli(monkeypatch, capsys, "images", "verify", record.image_id, "--key", str(public))
    assert code == 2
    assert err.count("\n") == 1 and says in err, err
    assert "Traceback" not in err


def test_sbom_digest_in_the_metadata_must_match_the_file(signed_image, monkeypatch, capsys) -> None:
    """The metadata's SBOM digest is checked against the file even where the signed statement agrees with the file."""
    record, public = signed_image
    _tamper_metadata_sbom = {"imagebuilder-sbom-sha256": "0" * 64}
    LocalCatalogue().tag(record, _tamper_metadata_sbom)
    code, _, err = run_cli(monkeypatch, capsys, "images", "verify", record.image_id, "--key", str(public))
    assert code == 2 and "imagebuilder-sbom-sha256" in err and err.count("\n") == 1


def test_unsigned_build_is_written_and_refused_by_verify(tmp_path, monkeypatch, capsys, qemu_cell) -> None:
    monkeypatch.delenv(provenance.KEY_ENV, raising=False)
    monkeypatch.delenv(provenance.KEY_FILE_ENV, raising=False)
    monkeypatch.setenv(CATALOGUE_ENV, str(tmp_path / "catalogue"))
    _, public = ed25519_keys(tmp_path)
    artifact = built_artifact(tmp_path, qemu_cell)
    envelope = json.loads(Path(artifact.files[2]).read_text())
    assert envelope["signatures"] == [] and envelope["payloadType"] == provenance.PAYLOAD_TYPE
    (image_id,) = LocalCatalogue().publish(artifact).values()
    code, _, err = run_cli(monkeypatch, capsys, "images", "verify", image_id, "--key", str(public))
    assert code == 2 and "not signed" in err and err.count("\n") == 1


def test_ecdsa_key_from_a_file_signs(tmp_path, monkeypatch, qemu_cell) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "key.pem").write_bytes(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    (tmp_path / "key.pub").write_bytes(key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
    monkeypatch.delenv(provenance.KEY_ENV, raising=False)
    monkeypatch.setenv(provenance.KEY_FILE_ENV, str(tmp_path / "key.pem"))
    artifact = built_artifact(tmp_path, qemu_cell)
    statement = provenance.open_envelope(Path(artifact.files[2]), provenance.load_public_key(tmp_path / "key.pub"))
    predicate = statement["predicate"]
    assert predicate["buildDefinition"]["externalParameters"]["buildKey"] == qemu_cell.build_key
    names = {d["name"] for d in predicate["buildDefinition"]["resolvedDependencies"]}
    assert {"download:kubelet", "download:containerd", "base-image", "templates", "ansible", "imagebuilder"} <= names
    assert [s["name"] for s in statement["subject"]] == [Path(artifact.files[0]).name, Path(artifact.files[1]).name]
    (tmp_path / "key.pem").write_text("not a key")
    with pytest.raises(UserError, match="not an unencrypted PEM private key"):
        provenance.configured_key()


def test_diff_names_added_removed_and_changed_packages(tmp_path, monkeypatch, capsys, qemu_cell) -> None:
    monkeypatch.setenv(CATALOGUE_ENV, str(tmp_path / "catalogue"))
    catalogue = LocalCatalogue()
    (first,) = catalogue.publish(built_artifact(tmp_path / "a", qemu_cell)).values()
    newer = DPKG_STATUS.replace("5.2.15-2+b7", "5.2.15-2+b8").replace(
        "Package: vim-tiny", "Package: vim-small") + "\nPackage: jq\nStatus: install ok installed\nArchitecture: amd64\nVersion: 1.6-2.1\n"
    from dataclasses import replace
    second_cell = replace(qemu_cell, build_key="c" * 64)
    (second,) = catalogue.publish(built_artifact(tmp_path / "b", second_cell, newer, "20261205063000")).values()
    code, out, err = run_cli(monkeypatch, capsys, "images", "diff", first, second)
    assert code == 0, err
    assert out.splitlines()[1:] == ["+ jq:amd64 1.6-2.1", "+ vim-small:amd64 2:9.0.1378-2",
                                    "- vim-tiny:amd64 2:9.0.1378-2", "~ bash:amd64 5.2.15-2+b7 -> 5.2.15-2+b8"]
    code, out, _ = run_cli(monkeypatch, capsys, "images", "diff", first, second, "--output", "json")
    assert json.loads(out)["changed"] == {"bash:amd64": {"from": "5.2.15-2+b7", "to": "5.2.15-2+b8"}}
