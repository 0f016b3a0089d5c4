"""A Packer-built cloud image's SBOM and provenance kept beside it, read back by `images sbom/diff/verify`.

AWS: moto's server (S3 and EC2 over HTTP, tests/services.py); the SBOM and the DSSE envelope are
S3 objects under ``clouds.aws.sbom_bucket``, the SBOM's sha256 an AMI tag.
GCP: the GCE stand-in and the GCS emulator of tests/test_publish_gcp.py; the documents are GCS objects
under ``clouds.gcp.sbom_bucket``, the SBOM's sha256 two labels and the description.
Azure: the ARM stand-in and Azurite (the storage emulator) of tests/test_publish_azure.py; the documents
are block blobs in ``clouds.azure.sbom_container``, the SBOM's sha256 a gallery version tag.
"""

from __future__ import annotations

import shutil
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import boto3
import pytest
import yaml
from services import aws_env, moto_url  # noqa: F401 (fixtures)
from test_sbom import DPKG_STATUS, TIMESTAMP, ed25519_keys, run_cli
from test_publish_azure import arm, azurite  # noqa: F401 (fixtures: the ARM stand-in, Azurite)
from test_sbom_packer import cells, packer_job  # noqa: F401 (fixture)

from imagebuilder import attest, provenance, sbom
from imagebuilder.build import manifest_artifact
from imagebuilder.clouds.local import CATALOGUE_ENV
from imagebuilder.publishing import publish_artifact

DATA = Path(__file__).parent / "data"
REGIONS = ["us-east-1", "eu-west-1"]
BUCKET = "node-sboms"


def matrix_file(tmp_path: Path, aws: dict) -> Path:
    directory = tmp_path / "matrix"
    directory.mkdir(exist_ok=True)
    shutil.copy(DATA / "versions.lock.yaml", directory / "versions.lock.yaml")
    path = directory / "matrix.yaml"
    path.write_text(yaml.safe_dump({"os": ["debian-12"], "kubernetes": ["1.31"], "clouds": {"aws": aws}}))
    return path


def amazon_ebs_build(tmp_path: Path, cell, status: str = DPKG_STATUS, timestamp: str = TIMESTAMP):
    """What `packer build` of the aws template leaves: an AMI in moto, the manifest, the downloaded SBOM input;
    then the build's own step (manifest_artifact) writes the SBOM and provenance."""
    name = f"{cell.id}-{timestamp}"
    ec2 = boto3.client("ec2", region_name=REGIONS[0])
    snapshot = ec2.create_snapshot(VolumeId=ec2.create_volume(AvailabilityZone="us-east-1a", Size=8)["VolumeId"])
    image_id = ec2.register_image(
        Name=name, Architecture="x86_64", RootDeviceName="/dev/xvda", VirtualizationType="hvm",
        BlockDeviceMappings=[{"DeviceName": "/dev/xvda", "Ebs": {"SnapshotId": snapshot["SnapshotId"]}}])["ImageId"]
    job = packer_job(tmp_path, cell, "amazon-ebs", f"{REGIONS[0]}:{image_id}", [], status=status, timestamp=timestamp)
    return manifest_artifact(job)


@pytest.fixture
def signed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    private, public = ed25519_keys(tmp_path)
    monkeypatch.setenv(provenance.KEY_ENV, private.decode())
    monkeypatch.setenv(CATALOGUE_ENV, str(tmp_path / "catalogue"))  # an empty local catalogue
    return public


def test_aws_keeps_the_sbom_in_s3_and_sbom_diff_verify_read_it(aws_env: str, tmp_path: Path, signed: Path,  # noqa: F811
                                                                monkeypatch, capsys, cells) -> None:  # noqa: F811
    boto3.client("s3", region_name=REGIONS[0]).create_bucket(Bucket=BUCKET)
    settings = {"regions": REGIONS, "sbom_bucket": BUCKET}
    matrix = str(matrix_file(tmp_path, settings))
    artifact = amazon_ebs_build(tmp_path / "one", cells["aws"])
    ids = publish_artifact(artifact, settings)
    sbom_file = next(Path(f) for f in artifact.files if f.endswith(sbom.SBOM_SUFFIX))
    s3 = boto3.client("s3", region_name=REGIONS[0])
    key = f"sbom/{artifact.image_name}{sbom.SBOM_SUFFIX}"
    assert s3.get_object(Bucket=BUCKET, Key=key)["Body"].read() == sbom_file.read_bytes()
    tags = {t["Key"]: t["Value"] for t in boto3.client("ec2", region_name="eu-west-1").describe_images(
        ImageIds=[ids["eu-west-1"]])["Images"][0]["Tags"]}
    assert tags["imagebuilder-sbom-sha256"] == attest.sha256_of(sbom_file)

    for image_id in ids.values():  # the build region's AMI and its copy
        code, out, err = run_cli(monkeypatch, capsys, "images", "sbom", image_id, "-m", matrix)
        assert code == 0, err
        assert out.encode() == sbom_file.read_bytes()
        code, out, err = run_cli(monkeypatch, capsys, "images", "verify", image_id, "--key", str(signed), "-m", matrix)
        assert code == 0 and "verified" in out, err

    newer = DPKG_STATUS.replace("5.2.15-2+b7", "5.2.15-2+b8")
    second = amazon_ebs_build(tmp_path / "two", replace(cells["aws"], build_key="c" * 64), newer, "20261205063000")
    later = publish_artifact(second, settings)
    code, out, err = run_cli(monkeypatch, capsys, "images", "diff", ids["us-east-1"], later["us-east-1"], "-m", matrix)
    assert code == 0, err
    assert out.splitlines()[1:] == ["~ bash:amd64 5.2.15-2+b7 -> 5.2.15-2+b8"]

    s3.put_object(Bucket=BUCKET, Key=key, Body=sbom_file.read_bytes().replace(b'"bash"', b'"bash2"'))
    code, _, err = run_cli(monkeypatch, capsys, "images", "verify", ids["eu-west-1"], "--key", str(signed), "-m", matrix)
    assert code == 2 and err.count("\n") == 1 and f"s3://{BUCKET}/{key}: the SBOM has sha256" in err


def test_without_a_bucket_publishing_works_and_sbom_says_where_it_would_be(aws_env: str, tmp_path: Path,  # noqa: F811
                                                                           signed: Path, monkeypatch, capsys,
                                                                           cells) -> None:  # noqa: F811
    settings = {"regions": REGIONS[:1]}
    artifact = amazon_ebs_build(tmp_path, cells["aws"])
    (image_id,) = publish_artifact(artifact, settings).values()
    code, out, err = run_cli(monkeypatch, capsys, "images", "sbom", image_id, "-m", str(matrix_file(tmp_path, settings)))
    assert code == 2 and out == "" and err.count("\n") == 1
    assert "clouds.aws.sbom_bucket is not set" in err
    assert f"s3://<sbom_bucket>/sbom/{artifact.image_name}{sbom.SBOM_SUFFIX}" in err


def test_gcp_keeps_the_sbom_in_gcs_and_sbom_verify_read_it(tmp_path: Path, signed: Path, monkeypatch, capsys,
                                                           cells) -> None:  # noqa: F811
    gcp = pytest.importorskip("test_publish_gcp")
    from google.auth.credentials import AnonymousCredentials

    from imagebuilder import attest as attest_module
    from imagebuilder.clouds.gcp.settings import GcpSettings
    from imagebuilder.clouds.gcp.store import GcpImageStore
    from imagebuilder.clouds.local import LocalCatalogue

    with gcp_services(gcp) as (compute, gcs):
        name = "capi-debian-12-k8s-1-31-" + TIMESTAMP
        compute.images[(gcp.PROJECT, name)] = {
            "kind": "compute#image", "id": "79", "name": name, "status": "READY",
            "creationTimestamp": "2026-12-04T06:30:00.000+00:00", "selfLink": compute.link(gcp.PROJECT, "images", name),
            "labels": {}, "labelFingerprint": "fp0", "family": "", "description": ""}
        artifact = manifest_artifact(packer_job(tmp_path, cells["gcp"], "googlecompute", name, [], name=name))
        store = GcpImageStore(GcpSettings(project_id=gcp.PROJECT, sbom_bucket=gcp.BUCKET),
                              credentials=AnonymousCredentials(), api_endpoint=compute.base_url, storage_endpoint=gcs,
                              backoff=0.0, poll_interval=0.0)
        (image_id,) = store.publish(artifact).values()
        sbom_file = next(Path(f) for f in artifact.files if f.endswith(sbom.SBOM_SUFFIX))
        assert store._get_object(f"sbom/{name}{sbom.SBOM_SUFFIX}") == sbom_file.read_bytes()
        labels = compute.images[(gcp.PROJECT, name)]["labels"]
        assert labels["imagebuilder-sbom-sha256"] + labels["imagebuilder-sbom-sha256-2"] == attest.sha256_of(sbom_file)
        monkeypatch.setattr(attest_module, "stores_to_ask", lambda target, declared: [LocalCatalogue(), store])
        code, out, err = run_cli(monkeypatch, capsys, "images", "sbom", image_id)
        assert code == 0 and out.encode() == sbom_file.read_bytes(), err
        code, out, err = run_cli(monkeypatch, capsys, "images", "verify", image_id, "--key", str(signed))
        assert code == 0 and "verified" in out, err
        image = compute.images[(gcp.PROJECT, name)]  # the description, whence the metadata is read, changed
        image["description"] = gcp.describe(replace(artifact.metadata, sbom_sha256="0" * 64))
        code, _, err = run_cli(monkeypatch, capsys, "images", "verify", image_id, "--key", str(signed))
        assert code == 2 and err.count("\n") == 1 and "imagebuilder-sbom-sha256" in err, err


@contextmanager
def gcp_services(gcp):
    """The GCS emulator and the GCE stand-in, as test_publish_gcp's fixtures start them."""
    port = gcp.free_port()
    server = gcp.gcs_emulator.create_server("127.0.0.1", port, in_memory=True, default_bucket=gcp.BUCKET)
    server.start()
    compute = gcp.GcpComputeStandin(read_source=lambda url: b"")
    compute.start()
    try:
        yield compute, f"http://127.0.0.1:{port}"
    finally:
        compute.stop()
        server.stop()


def test_azure_keeps_the_sbom_in_a_blob_and_sbom_verify_read_it(tmp_path: Path, signed: Path, monkeypatch, capsys,
                                                                 cells, azurite, arm) -> None:  # noqa: F811
    from imagebuilder import attest as attest_module
    from imagebuilder.clouds.azure.settings import AzureSettings
    from imagebuilder.clouds.azure.store import AzureImageStore
    from imagebuilder.clouds.local import LocalCatalogue

    azure = pytest.importorskip("test_publish_azure")
    name = f"azure-debian-12-k8s-1.31-{TIMESTAMP}"
    artifact = manifest_artifact(packer_job(tmp_path, cells["azure"], "azure-arm", azure.MANAGED_IMAGE, [], name=name))
    settings = AzureSettings(resource_group=azure.RG, gallery=azure.GALLERY, location="westeurope",
                             target_regions=["westeurope"], sbom_container="sboms")
    store = AzureImageStore(settings, subscription_id=azure.SUB, credential=azure.FakeCredential(),
                            base_url=arm.base_url, storage_account=azurite.account,
                            blob_endpoint=azurite.blob_endpoint, blob_credential=azurite.credential,
                            polling_interval=0, sleep=lambda _: None, retry_total=3, retry_backoff=0.0)
    store.publish(artifact)
    (record,) = store.find_by_build_key(artifact.build_key)
    sbom_file = next(Path(f) for f in artifact.files if f.endswith(sbom.SBOM_SUFFIX))
    assert record.tags["imagebuilder-sbom-sha256"] == attest.sha256_of(sbom_file)
    assert store._get_object(f"sbom/{record.name}{sbom.SBOM_SUFFIX}") == sbom_file.read_bytes()
    monkeypatch.setattr(attest_module, "stores_to_ask", lambda target, declared: [LocalCatalogue(), store])
    code, out, err = run_cli(monkeypatch, capsys, "images", "sbom", record.image_id)
    assert code == 0 and out.encode() == sbom_file.read_bytes(), err
    code, out, err = run_cli(monkeypatch, capsys, "images", "verify", record.image_id, "--key", str(signed))
    assert code == 0 and "verified" in out, err
    store._put_object(f"sbom/{record.name}{provenance.PROVENANCE_SUFFIX}", b"{}")
    code, _, err = run_cli(monkeypatch, capsys, "images", "verify", record.image_id, "--key", str(signed))
    assert code == 2 and err.count("\n") == 1 and "not a DSSE envelope" in err, err
