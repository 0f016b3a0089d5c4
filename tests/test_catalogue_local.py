"""The local catalogue: qemu builds published as JSON records plus a hard link to the qcow2."""

from __future__ import annotations

import json
import os
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from click.testing import CliRunner
from services import qcow2_file, sample_metadata

from imagebuilder.artifact import Artifact
from imagebuilder.clouds import CloudError, ImageFilter, store_for
from imagebuilder.clouds.local import CATALOGUE_ENV, LocalCatalogue, default_catalogue_dir
from imagebuilder.cli.images import images
from imagebuilder.publishing import publish_artifact
from imagebuilder.pipeline import catalogue_lookup
from imagebuilder.errors import UserError


def qemu_artifact(tmp_path: Path, minor: str = "1.31", key: str = "a", timestamp: str = "1764064800",
                  os_id: str = "debian-12") -> Artifact:
    version = f"v{minor}.4"
    build_key = key * 64
    cell = f"qemu-{os_id}-k8s-{minor}"
    image = qcow2_file(tmp_path / "build" / cell / f"{os_id}-kube-{version}.qcow2", "1M")
    metadata = sample_metadata(kubernetes_version=version, kubernetes_minor=minor, build_key=build_key, cell=cell,
                               build_timestamp=timestamp, os=os_id)
    return Artifact(cell_id=cell, cloud="qemu", build_key=build_key, image_name=image.stem, metadata=metadata,
                    ids={"default": str(image)}, files=[str(image)], versions={"kubernetes": minor + ".4"})


@pytest.fixture
def catalogue(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> LocalCatalogue:
    monkeypatch.setenv(CATALOGUE_ENV, str(tmp_path / "catalogue"))
    return LocalCatalogue()


def test_publish_writes_one_record_and_links_the_qcow2(catalogue: LocalCatalogue, tmp_path: Path) -> None:
    artifact = qemu_artifact(tmp_path)
    ids = publish_artifact(artifact)  # a qemu artifact goes to the local catalogue
    assert list(ids) == ["local"]
    (record,) = catalogue.list_images()
    assert record.image_id == ids["local"]
    assert record.metadata == artifact.metadata
    assert record.name == artifact.image_name
    stored = Path(record.extra["path"])
    assert stored.is_relative_to(catalogue.root)
    assert os.stat(stored).st_ino == os.stat(artifact.files[0]).st_ino  # a hard link, not a copy
    data = json.loads((catalogue.records_dir / f"{record.image_id}.json").read_text())
    assert data["tags"]["imagebuilder-build-key"] == artifact.build_key
    assert not [p for p in catalogue.root.rglob("*") if p.name.endswith(".tmp")]


def test_publishing_the_same_build_key_again_changes_nothing(catalogue: LocalCatalogue, tmp_path: Path) -> None:
    artifact = qemu_artifact(tmp_path)
    first = catalogue.publish(artifact)
    record_file = catalogue.records_dir / f"{first['local']}.json"
    before = record_file.read_text()
    assert catalogue.publish(artifact) == first
    assert record_file.read_text() == before
    assert len(catalogue.list_images()) == 1
    assert len(list(catalogue.records_dir.iterdir())) == 1


def test_publish_restores_a_missing_image_file(catalogue: LocalCatalogue, tmp_path: Path) -> None:
    artifact = qemu_artifact(tmp_path)
    image_id = catalogue.publish(artifact)["local"]
    stored = Path(catalogue.get(image_id).extra["path"])
    stored.unlink()
    assert catalogue.get(image_id).state == "missing"
    assert catalogue.publish(artifact)["local"] == image_id
    assert stored.is_file() and catalogue.get(image_id).state == "available"


def test_filters_newest_first_and_find_by_build_key(catalogue: LocalCatalogue, tmp_path: Path) -> None:
    old = qemu_artifact(tmp_path / "old", key="b", timestamp="1700000000")
    new = qemu_artifact(tmp_path / "new", key="c", timestamp="1760000000")
    other = qemu_artifact(tmp_path / "other", minor="1.32", key="d")
    for artifact in (old, new, other):
        catalogue.publish(artifact)
    ids = [r.metadata.build_key[0] for r in catalogue.list_images(ImageFilter(kubernetes_minor="1.31"))]
    assert ids == ["c", "b"]
    minors = [r.metadata.kubernetes_minor for r in catalogue.list_images(ImageFilter(kubernetes_minor="1.32"))]
    assert minors == ["1.32"]
    assert catalogue.list_images(ImageFilter(os="ubuntu-24.04")) == []
    (found,) = catalogue.find_by_build_key(old.build_key)
    assert found.metadata == old.metadata
    assert catalogue.find_by_build_key("f" * 64) == []


def test_tag_deprecate_and_delete(catalogue: LocalCatalogue, tmp_path: Path) -> None:
    record = catalogue.get(catalogue.publish(qemu_artifact(tmp_path))["local"])
    catalogue.tag(record, {"team": "platform"})
    assert catalogue.get(record.image_id).tags["team"] == "platform"
    assert catalogue.get(record.image_id).metadata == record.metadata  # ours survive other tags
    when = datetime(2026, 1, 2, 3, 4, tzinfo=timezone.utc)
    catalogue.deprecate(record, when)
    assert catalogue.get(record.image_id).deprecated_at == when
    path = Path(record.extra["path"])
    assert catalogue.delete(record) == [record.image_id]
    assert not path.exists() and catalogue.list_images() == []
    with pytest.raises(CloudError, match="no image"):
        catalogue.delete(record)


def test_share_and_copy_elsewhere_are_refused(catalogue: LocalCatalogue, tmp_path: Path) -> None:
    record = catalogue.get(catalogue.publish(qemu_artifact(tmp_path))["local"])
    with pytest.raises(CloudError, match="cannot be shared"):
        catalogue.share(record, ["123456789012"])
    with pytest.raises(CloudError, match="eu-west-1"):
        catalogue.copy_to_regions(record, ["eu-west-1"])
    assert catalogue.copy_to_regions(record, ["local"]) == {"local": record.image_id}


def test_artifact_without_an_image_file_is_a_one_line_error(catalogue: LocalCatalogue, tmp_path: Path) -> None:
    artifact = qemu_artifact(tmp_path)
    Path(artifact.files[0]).unlink()
    with pytest.raises(CloudError) as caught:
        catalogue.publish(artifact)
    assert "\n" not in str(caught.value) and "qemu-debian-12-k8s-1.31" in str(caught.value)
    assert catalogue.list_images() == []


def test_a_corrupt_record_is_named_in_the_error(catalogue: LocalCatalogue, tmp_path: Path) -> None:
    image_id = catalogue.publish(qemu_artifact(tmp_path))["local"]
    record_file = catalogue.records_dir / f"{image_id}.json"
    record_file.write_text("{half a rec")
    with pytest.raises(CloudError, match=str(record_file)):
        catalogue.list_images()


def test_default_location_is_the_user_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(CATALOGUE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_catalogue_dir() == tmp_path / "xdg" / "imagebuilder" / "catalogue"
    assert LocalCatalogue(tmp_path / "elsewhere").root == tmp_path / "elsewhere"
    assert store_for("qemu").root == default_catalogue_dir()  # type: ignore[attr-defined]


def test_catalogue_lookup_finds_a_cells_image(catalogue: LocalCatalogue, tmp_path: Path) -> None:
    artifact = qemu_artifact(tmp_path)

    class CellLike:
        cloud, settings, build_key = "qemu", {"max_parallel": 1}, artifact.build_key

    assert catalogue_lookup(CellLike()) is None
    image_id = catalogue.publish(artifact)["local"]
    assert catalogue_lookup(CellLike()) == f"local:{image_id}"


def run_images(*args: str) -> str:
    """The images group as cli.main runs it: UserErrors propagate."""
    result = CliRunner().invoke(images, list(args), standalone_mode=False, catch_exceptions=False,
                               env={"COLUMNS": "160"})
    return result.output


def test_images_list_and_resolve_commands(catalogue: LocalCatalogue, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no matrix.yaml here: only the local catalogue
    old = qemu_artifact(tmp_path / "old", key="b", timestamp="1700000000")
    new = qemu_artifact(tmp_path / "new", key="c", timestamp="1760000000")
    old_id, new_id = catalogue.publish(old)["local"], catalogue.publish(new)["local"]
    listed = json.loads(run_images("list", "--output", "json"))
    assert [entry["image_id"] for entry in listed] == [new_id, old_id]
    assert listed[0]["kubernetes_version"] == "v1.31.4" and listed[0]["cloud"] == "local"
    assert json.loads(run_images("list", "--cloud", "local", "--k8s", "1.32", "--output", "json")) == []
    table = run_images("list", "--cloud", "local", "--output", "table")
    assert new_id in table and "2 images" in table
    assert run_images("resolve", "--cloud", "local", "--os", "debian-12", "--k8s", "1.31").strip() == new_id
    catalogue.deprecate(catalogue.get(new_id), datetime.now(timezone.utc) - timedelta(minutes=1))
    assert run_images("resolve", "--cloud", "qemu", "--os", "debian-12", "--k8s", "1.31").strip() == old_id


def test_resolve_without_an_image_and_bad_minor_are_user_errors(catalogue: LocalCatalogue, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match="no usable image .none published. | fix"):
        run_images("resolve", "--cloud", "local", "--os", "debian-12", "--k8s", "1.31")
    with pytest.raises(UserError, match="not a Kubernetes minor"):
        run_images("list", "--k8s", "1.31.4")
    with pytest.raises(UserError, match="no such matrix file"):
        run_images("list", "-m", str(tmp_path / "missing.yaml"))


def test_store_for_routes_every_cloud_and_explains_what_is_missing() -> None:
    aws = store_for("aws", {"regions": ["eu-west-1"], "max_parallel": 3})
    assert aws.settings.regions == ["eu-west-1"]  # type: ignore[attr-defined]
    assert store_for("openstack").cloud == "openstack"
    with pytest.raises(UserError, match="project_id: Field required | fix: declare the cloud"):
        store_for("gcp")  # GCP needs its project from the matrix
    with pytest.raises(UserError, match=r"^cloud 'nosuch' has no image store \| fix: use one of local, aws"):
        store_for("nosuch")
    with pytest.raises(UserError, match=r"^vsphere: images are not managed yet .*\| fix: look there"):
        store_for("vsphere")


def test_build_time_reads_packers_timestamp() -> None:
    from datetime import datetime, timezone

    from imagebuilder.clouds import ImageRecord, sort_newest_first
    from imagebuilder.metadata import ImageMetadata

    def record(stamp: str) -> ImageRecord:
        meta = ImageMetadata("debian-12", "12", "v1.35.1", "1.35", "amd64", stamp, "c", "0", "g", stamp)
        return ImageRecord("local", "local", stamp, stamp, datetime(2020, 1, 1, tzinfo=timezone.utc), meta)

    older, newer = record("20261124000000"), record("20261125101500")
    assert newer.build_time == datetime(2026, 11, 25, 10, 15, tzinfo=timezone.utc)
    assert sort_newest_first([older, newer])[0] is newer
