"""The SBOM of a Packer build: gathered in the image by the rendered script, downloaded, turned into the
SBOM and signed provenance by the same code as the offline build's.

No VM boots here: the rendered gathering script runs on the host over a root tree (its
IMAGEBUILDER_SBOM_ROOT, the host's dpkg-query reading the tree's database), and what it writes is
what Packer's file provisioner downloads. That the download itself happens is the end-to-end test's.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from nullcells import null_cells
from services import qcow2_file
from test_sbom import DPKG_STATUS, TIMESTAMP, ed25519_keys, fake_root, run_cli, validate_cyclonedx

from imagebuilder import attest, provenance, sbom
from imagebuilder.build import Job, manifest_artifact
from imagebuilder.clouds.local import CATALOGUE_ENV, LocalCatalogue
from imagebuilder.errors import UserError
from imagebuilder.render import cell_metadata, render_sbom_script


@pytest.fixture(scope="module")
def cells(tmp_path_factory: pytest.TempPathFactory):
    planned = null_cells(tmp_path_factory.mktemp("plan"), {"qemu": {}, "aws": {}, "gcp": {"project_id": "p"},
                                                               "azure": {"resource_group": "rg"}},
                         minors=["1.31"],
                         oses=["debian-12"])
    return {cell.cloud: cell for cell in planned}


def gather(root: Path, out: Path) -> Path:
    """The rendered script, run as the image runs it, over ``root``."""
    script = out.parent / sbom.INPUT_SCRIPT
    script.write_text(render_sbom_script())
    subprocess.run(["sh", str(script), str(out)], env={"PATH": "/usr/bin:/bin:/usr/sbin:/sbin",
                                                       "IMAGEBUILDER_SBOM_ROOT": str(root)}, check=True)
    return out


def test_the_gathered_file_reads_as_the_tree_does(tmp_path: Path, cells) -> None:
    cell = cells["qemu"]
    root = fake_root(tmp_path / "root", cell)
    gathered = gather(root, tmp_path / sbom.INPUT_FILE)
    from_file, from_tree = sbom.contents_of_file(gathered), sbom.contents_of_tree(root)
    assert from_file.package_manager == "dpkg" and from_file.artifact_sums.keys() == {"kubelet", "containerd",
                                                                                      "cni_plugins"}
    same = ("os_release", "release", "package_manager", "artifact_sums")
    assert [getattr(from_file, name) for name in same] == [getattr(from_tree, name) for name in same]
    # dpkg-query lists what dpkg's status says, in its order: the same installed packages either way
    installed = lambda c: sorted(r for r in c.package_rows if r[0] == "installed")  # noqa: E731
    assert installed(from_file) == installed(from_tree) and len(installed(from_file)) == 4
    one = dict(image_name="img", build_key=cell.build_key, timestamp=TIMESTAMP, downloads=cell.downloads)
    assert sbom.encode(sbom.sbom_document(from_file, **one)) == sbom.encode(sbom.sbom_document(from_tree, **one))


def test_a_gathered_file_cut_short_or_without_packages_is_refused(tmp_path: Path, cells) -> None:
    gathered = gather(fake_root(tmp_path / "root", cells["qemu"]), tmp_path / sbom.INPUT_FILE)
    text = gathered.read_text()
    (tmp_path / "short.txt").write_text(text[: len(text) // 2])
    with pytest.raises(UserError, match="not a complete SBOM input"):
        sbom.contents_of_file(tmp_path / "short.txt")
    (tmp_path / "none.txt").write_text(text.replace("--- packages dpkg", "--- packages none"))
    with pytest.raises(UserError, match="no package database"):
        sbom.packages_of(sbom.contents_of_file(tmp_path / "none.txt"))
    flatcar = text.replace("--- packages dpkg", "--- packages none").replace("ID=debian", "ID=flatcar")
    (tmp_path / "flatcar.txt").write_text(flatcar)
    names = {p.name for p in sbom.packages_of(sbom.contents_of_file(tmp_path / "flatcar.txt"))}
    assert names == {"kubelet", "containerd", "cni-plugins"}  # no package database: the release files
    with pytest.raises(UserError, match="no SBOM input"):
        sbom.contents_of_file(tmp_path / "absent.txt")


def packer_job(tmp_path: Path, cell, builder_type: str, artifact_id: str, files: list[str],
               status: str = DPKG_STATUS, timestamp: str = TIMESTAMP, name: str = "") -> Job:
    """A cell directory as `packer build` leaves it: the manifest and the downloaded SBOM input."""
    directory = tmp_path / cell.id
    directory.mkdir(parents=True, exist_ok=True)
    name = name or f"{cell.id}-{timestamp}"
    tags = {**cell_metadata(cell).to_tags(), "imagebuilder-build-timestamp": timestamp}
    manifest = {"builds": [{"name": "node", "builder_type": builder_type, "build_time": 1,
                            "files": [{"name": f, "size": 1} for f in files] or None, "artifact_id": artifact_id,
                            "packer_run_uuid": "run-7", "custom_data": {
                                "metadata": json.dumps(tags), "versions": json.dumps(cell.versions),
                                "image_name": name}}],
                "last_run_uuid": "run-7"}
    (directory / "packer-manifest.json").write_text(json.dumps(manifest))
    gather(fake_root(tmp_path / f"root-{cell.cloud}", cell, status), directory / sbom.INPUT_FILE)
    (directory / "build.log").write_text("")
    return Job(cell=cell, directory=directory, estimate=1.0)


def test_a_cloud_build_gets_its_sbom_and_signed_provenance(tmp_path: Path, monkeypatch, cells) -> None:
    private, public = ed25519_keys(tmp_path)
    monkeypatch.setenv(provenance.KEY_ENV, private.decode())
    cell = cells["aws"]
    job = packer_job(tmp_path, cell, "amazon-ebs", "us-east-1:ami-0123456789abcdef0", [])
    artifact = manifest_artifact(job)
    sbom_file, envelope = (Path(f) for f in artifact.files)
    assert sbom_file.parent == job.directory and sbom_file.name == f"{artifact.image_name}{sbom.SBOM_SUFFIX}"
    document = sbom.load_sbom(sbom_file)
    validate_cyclonedx(document)
    assert {"containerd", "kubelet", "bash:amd64"} <= sbom.package_versions(document).keys()
    assert artifact.metadata.sbom_sha256 == attest.sha256_of(sbom_file)
    statement = provenance.open_envelope(envelope, provenance.load_public_key(public))
    image, sbom_subject = statement["subject"]
    assert image["name"] == artifact.image_name
    assert image["digest"]["sha256"] == attest.image_ids_digest({"us-east-1": "ami-0123456789abcdef0"})
    assert image["annotations"]["imageIds"] == {"us-east-1": "ami-0123456789abcdef0"}
    assert image["annotations"]["imageMetadata"] == artifact.metadata.to_tags()
    assert sbom_subject["digest"]["sha256"] == artifact.metadata.sbom_sha256
    assert statement["predicate"]["runDetails"]["metadata"]["invocationId"] == "run-7"
    # the manifest says what the artifact says, as the offline build's does
    custom = json.loads((job.directory / "packer-manifest.json").read_text())["builds"][-1]
    assert json.loads(custom["custom_data"]["metadata"])["imagebuilder-sbom-sha256"] == artifact.metadata.sbom_sha256
    assert "SBOM" in job.log_path.read_text()


def test_a_build_without_the_sbom_input_is_left_as_it_was(tmp_path: Path, cells) -> None:
    job = packer_job(tmp_path, cells["aws"], "amazon-ebs", "us-east-1:ami-0123456789abcdef0", [])
    (job.directory / sbom.INPUT_FILE).unlink()
    artifact = manifest_artifact(job)
    assert artifact.files == [] and artifact.metadata.sbom_sha256 == ""
    assert "no sbom-input.txt" in job.log_path.read_text()


def test_the_packer_qemu_image_is_catalogued_with_its_sbom_and_verifies(tmp_path: Path, monkeypatch, capsys,
                                                                         cells) -> None:
    private, public = ed25519_keys(tmp_path)
    monkeypatch.setenv(provenance.KEY_ENV, private.decode())
    monkeypatch.setenv(CATALOGUE_ENV, str(tmp_path / "catalogue"))
    cell = cells["qemu"]
    name = f"{cell.id}-{TIMESTAMP}"
    qcow2_file(tmp_path / cell.id / "output" / f"{name}.qcow2", "1M")
    job = packer_job(tmp_path, cell, "qemu", f"{name}.qcow2", [f"output/{name}.qcow2"])
    artifact = manifest_artifact(job)
    assert [Path(f).parent.name for f in artifact.files] == ["output"] * 3
    (image_id,) = LocalCatalogue().publish(artifact).values()
    code, out, err = run_cli(monkeypatch, capsys, "images", "verify", image_id, "--key", str(public))
    assert code == 0 and "verified" in out, err
    code, out, err = run_cli(monkeypatch, capsys, "images", "sbom", cell.id)
    assert code == 0 and sbom.dpkg_versions(json.loads(out)) == {
        "bash:amd64": "5.2.15-2+b7", "libc6:amd64": "2.36-9+deb12u9", "libc6:i386": "2.36-9+deb12u9",
        "vim-tiny:amd64": "2:9.0.1378-2"}  # fake_root's status file: what is installed, not nano's config-files


def test_gathered_from_the_debian_rootfs_the_sbom_is_the_tree_s(tmp_path: Path, debian_rootfs: Path, cells) -> None:
    """Over a real Debian 12 tree (hundreds of packages, multi-arch, continuation lines), the file the
    image gathers makes the same SBOM as reading the tree."""
    gathered = gather(debian_rootfs, tmp_path / sbom.INPUT_FILE)
    one = dict(image_name="rootfs", build_key="k", timestamp=TIMESTAMP)
    from_file = sbom.sbom_document(sbom.contents_of_file(gathered), **one)
    assert len(from_file["components"]) > 100
    assert sbom.encode(from_file) == sbom.encode(sbom.sbom_document(sbom.contents_of_tree(debian_rootfs), **one))
