"""The KubeVirt containerDisk output (imagebuilder/clouds/kubevirt/): a cell builds as qemu's, its qcow2
becomes a scratch OCI image (/disk/<name>.qcow2 owned 107:107, the metadata as labels and annotations)
pushed to a real registry (Debian's docker-registry on 127.0.0.1); `images list/resolve` and `prune`
work on it through the CLI, deleting where the registry allows it and saying why where it does not.
No build or VM: the disk is a small qcow2 made here."""

from __future__ import annotations

import base64
import http.server
import io
import json
import tarfile
import threading
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import requests
import yaml
from registry import serve_registry
from test_raw_output import MINOR, built, cells_of, cli, cli_command, disk_content

from imagebuilder.clouds import CloudError
from imagebuilder.pipeline import TargetHooks
from imagebuilder.planner import Cell
from imagebuilder.render import render_cells
from imagebuilder.targets import select, targets

REPOSITORY_PATH = "capi/node"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def write_matrix(path: Path, registry: str, **settings: object) -> Path:
    path.write_text(yaml.safe_dump({
        "versions_file": str(Path(__file__).resolve().parents[1] / "versions.lock.yaml"),
        "os": ["debian-12"], "kubernetes": [MINOR],
        "clouds": {"qemu": {"boot_test": False},
                   "kubevirt": {"registry": registry, "tls_verify": False, "boot_test": False, **settings}},
        "retention": {"keep_newest": 1, "min_age_days": 0, "deprecate_grace_days": 0},
    }))
    return path


def kubevirt_cell(matrix: Path) -> Cell:
    return cells_of(matrix)[f"kubevirt-debian-12-k8s-{MINOR}"]


def push(cell: Cell, root: Path, timestamp: str, seed: int, key: str | None = None) -> dict[str, str]:
    """A build of the cell (another build key with `key`) through the cloud's finish and publish."""
    cell = replace(cell, build_key=key * 64) if key else cell
    job, artifact = built(cell, root, timestamp, disk_content(seed))
    return TargetHooks(publish=True).finish(job, artifact).ids


def api(address: str, path: str, accept: str = OCI_MANIFEST) -> requests.Response:
    return requests.get(f"http://{address}/v2/{REPOSITORY_PATH}/{path}", headers={"Accept": accept}, timeout=10)


def tags(address: str) -> list[str]:
    response = api(address, "tags/list")
    return sorted(response.json().get("tags") or []) if response.status_code == 200 else []


def test_a_kubevirt_cell_is_a_qemu_cell_with_another_output_and_image_builder_s_target(tmp_path: Path) -> None:
    matrix = write_matrix(tmp_path / "matrix.yaml", "registry.example.com/capi/node")
    cells = cells_of(matrix)
    qemu, kubevirt = cells[f"qemu-debian-12-k8s-{MINOR}"], cells[f"kubevirt-debian-12-k8s-{MINOR}"]
    assert kubevirt.base_image == qemu.base_image and kubevirt.image_name == qemu.image_name
    assert kubevirt.build_key != qemu.build_key
    render_cells([qemu, kubevirt], tmp_path / "out", None)
    assert ((tmp_path / "out" / kubevirt.id / "kubevirt.pkr.hcl").read_text()
            == (tmp_path / "out" / qemu.id / "qemu.pkr.hcl").read_text())
    # where it is published is not what it is: the registry, TLS and the in-use check stay out of the key
    moved = kubevirt_cell(write_matrix(tmp_path / "moved.yaml", "other.example.com:5000/nodes",
                                       in_use_check="tags"))
    assert moved.build_key == kubevirt.build_key
    assert kubevirt_cell(write_matrix(tmp_path / "big.yaml", "registry.example.com/capi/node",
                                      disk_size_mb=10240)).build_key != kubevirt.build_key
    # image-builder's names: the target, and the provider name declaring the cloud
    assert targets(cells.values())[f"build-kubevirt-qemu-debian-12"] == [kubevirt.id]
    assert [c.id for c in select(list(cells.values()), [f"build-kubevirt-qemu-debian-12-k8s-{MINOR}"])] == [kubevirt.id]
    aliased = yaml.safe_load(matrix.read_text())
    aliased["clouds"]["kubevirt-qemu"] = aliased["clouds"].pop("kubevirt")
    (tmp_path / "aliased.yaml").write_text(yaml.safe_dump(aliased))
    assert kubevirt_cell(tmp_path / "aliased.yaml").build_key == kubevirt.build_key


def test_a_registry_that_is_not_a_repository_is_one_line(tmp_path: Path) -> None:
    matrix = write_matrix(tmp_path / "matrix.yaml", "Registry.example.com/Capi:latest")
    result = cli_command({}, tmp_path, "plan", "-m", str(matrix))
    assert result.returncode == 2, result.stdout + result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert "clouds.kubevirt.registry" in line and "write host[:port]/path" in line


def test_the_containerdisk_is_pushed_listed_resolved_deprecated_and_deleted(tmp_path: Path) -> None:
    with serve_registry(tmp_path / "registry") as address:
        repository = f"{address}/{REPOSITORY_PATH}"
        matrix = write_matrix(tmp_path / "matrix.yaml", repository)
        cell = kubevirt_cell(matrix)
        older = push(cell, tmp_path / "build", "20260101000000", seed=1, key="1")
        newer = push(cell, tmp_path / "build", "20260102000000", seed=2)
        assert push(cell, tmp_path / "again", "20260103000000", seed=3) == newer  # found by build key: no push
        (older_id,), (newer_id,) = older.values(), newer.values()
        assert newer_id.startswith(f"{repository}@sha256:") and older_id != newer_id
        stem = f"debian-12-kube-{cell.kubernetes_version}-20260102000000"
        tag = f"debian-12-kube-v{cell.kubernetes_version}-{cell.build_key[:12]}"
        assert tags(address) == sorted([tag, f"debian-12-kube-v{cell.kubernetes_version}-{'1' * 12}"])

        # the layout KubeVirt reads: one layer, disk/<name>.qcow2 owned 107:107; the metadata as labels
        manifest = api(address, f"manifests/{tag}")
        assert manifest.headers["Docker-Content-Digest"] == newer_id.split("@")[1]
        body = manifest.json()
        (layer,) = body["layers"]
        with tarfile.open(fileobj=io.BytesIO(api(address, f"blobs/{layer['digest']}").content)) as tar:
            disk = tar.getmember(f"disk/{stem}.qcow2")
            assert (disk.uid, disk.gid) == (107, 107) and disk.isfile()
            assert tar.extractfile(disk).read() == (tmp_path / "build" / cell.id / "20260102000000" / "output"
                                                    / f"{stem}.qcow2").read_bytes()
            assert [m.name for m in tar.getmembers() if m.isfile()] == [f"disk/{stem}.qcow2"]
        config = api(address, f"blobs/{body['config']['digest']}").json()
        labels = config["config"]["Labels"]
        assert labels["imagebuilder-build-key"] == cell.build_key and labels["imagebuilder-os"] == "debian-12"
        assert labels["org.opencontainers.image.version"] == f"v{cell.kubernetes_version}"
        assert body["annotations"]["imagebuilder-build-key"] == cell.build_key
        assert config["created"] == "2026-01-02T00:00:00Z" and config["os"] == "linux"

        env = {"IMAGEBUILDER_CATALOGUE": str(tmp_path / "catalogue")}
        listed = json.loads(cli(env, tmp_path, "images", "list", "-m", str(matrix), "--cloud", "kubevirt",
                                "--output", "json").stdout)
        assert [r["image_id"] for r in listed] == [newer_id, older_id]  # newest first
        assert listed[0]["build_key"] == cell.build_key and listed[0]["published"]
        resolved = cli(env, tmp_path, "images", "resolve", "-m", str(matrix), "--cloud", "kubevirt",
                       "--os", "debian-12", "--k8s", MINOR)
        assert resolved.returncode == 0 and resolved.stdout.strip() == newer_id

        # in use unknown by default: nothing pruned, and the reason said
        unknown = cli(env, tmp_path, "prune", "-m", str(matrix), "--cloud", "kubevirt", "--apply")
        assert "cannot tell whether KubeVirt VMs still pull it" in unknown.stdout, unknown.stdout
        assert "0 deprecated" in unknown.stdout and len(tags(address)) == 2

        # "tags": a tag that is not imagebuilder's keeps the image it points to
        matrix = write_matrix(tmp_path / "matrix.yaml", repository, in_use_check="tags")
        older_manifest = api(address, f"manifests/sha256:{older_id.split(':')[-1]}")
        stable = requests.put(f"http://{address}/v2/{REPOSITORY_PATH}/manifests/stable", data=older_manifest.content,
                              headers={"Content-Type": OCI_MANIFEST}, timeout=10)
        assert stable.status_code == 201
        used = cli(env, tmp_path, "prune", "-m", str(matrix), "--cloud", "kubevirt", "--apply")
        assert "in use by tag stable" in used.stdout and "0 deprecated" in used.stdout, used.stdout
        requests.put(  # `stable` moves on to the newer image: the older one is no one's now
            f"http://{address}/v2/{REPOSITORY_PATH}/manifests/stable", headers={"Content-Type": OCI_MANIFEST},
                     data=api(address, f"manifests/{tag}").content, timeout=10)

        # now the older one goes: deprecated (a second tag names the time), then deleted with its tags
        deprecated = cli(env, tmp_path, "prune", "-m", str(matrix), "--cloud", "kubevirt", "--apply")
        assert "1 deprecated" in deprecated.stdout, deprecated.stdout
        older_hex = older_id.split(":")[-1]
        assert any(t.startswith(f"sha256-{older_hex}.deprecated-") for t in tags(address))
        resolved = cli(env, tmp_path, "images", "resolve", "-m", str(matrix), "--cloud", "kubevirt",
                       "--os", "debian-12", "--k8s", MINOR)
        assert resolved.stdout.strip() == newer_id
        deleted = cli(env, tmp_path, "prune", "-m", str(matrix), "--cloud", "kubevirt", "--apply")
        assert deleted.returncode == 0 and "1 deleted" in deleted.stdout, deleted.stdout
        assert tags(address) == sorted(["stable", tag])
        assert api(address, f"manifests/sha256:{older_hex}").status_code == 404
        listed = json.loads(cli(env, tmp_path, "images", "list", "-m", str(matrix), "--cloud", "kubevirt",
                                "--output", "json").stdout)
        assert [r["image_id"] for r in listed] == [newer_id]


def test_a_registry_that_refuses_deletes_keeps_the_image_and_says_why(tmp_path: Path) -> None:
    with serve_registry(tmp_path / "registry", delete=False) as address:
        matrix = write_matrix(tmp_path / "matrix.yaml", f"{address}/{REPOSITORY_PATH}", in_use_check="tags")
        cell = kubevirt_cell(matrix)
        (older_id,) = push(cell, tmp_path / "build", "20260101000000", seed=1, key="1").values()
        push(cell, tmp_path / "build", "20260102000000", seed=2)
        env = {"IMAGEBUILDER_CATALOGUE": str(tmp_path / "catalogue")}
        assert "1 deprecated" in cli(env, tmp_path, "prune", "-m", str(matrix), "--cloud", "kubevirt",
                                     "--apply").stdout
        refused = cli_command(env, tmp_path, "prune", "-m", str(matrix), "--cloud", "kubevirt", "--apply")
        assert refused.returncode != 0
        failed = [line for line in refused.stdout.splitlines() if "delete FAILED" in line]
        assert len(failed) == 1 and "refuses deletes (405 UNSUPPORTED" in failed[0], refused.stdout
        assert "storage.delete.enabled: true" in failed[0] and "1 failed" in refused.stdout
        listed = json.loads(cli(env, tmp_path, "images", "list", "-m", str(matrix), "--cloud", "kubevirt",
                                "--output", "json").stdout)
        assert older_id in [r["image_id"] for r in listed]  # kept


def test_credentials_come_from_containers_auth_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with serve_registry(tmp_path / "registry", login=("builder", "s3cret")) as address:
        matrix = write_matrix(tmp_path / "matrix.yaml", f"{address}/{REPOSITORY_PATH}")
        cell = kubevirt_cell(matrix)
        auth_file = tmp_path / "auth.json"
        monkeypatch.setenv("REGISTRY_AUTH_FILE", str(auth_file))
        for name in ("IMAGEBUILDER_REGISTRY_USERNAME", "IMAGEBUILDER_REGISTRY_PASSWORD"):
            monkeypatch.delenv(name, raising=False)
        auth_file.write_text(json.dumps({"auths": {address: {"auth": base64.b64encode(b"builder:wrong").decode()}}}))
        with pytest.raises(CloudError, match=r"401 .*\| fix: log in"):
            push(cell, tmp_path / "denied", "20260101000000", seed=1)
        auth_file.write_text(json.dumps({"auths": {address: {"auth": base64.b64encode(b"builder:s3cret").decode()}}}))
        (image_id,) = push(cell, tmp_path / "build", "20260101000000", seed=1).values()
        env = {"IMAGEBUILDER_CATALOGUE": str(tmp_path / "catalogue"), "REGISTRY_AUTH_FILE": str(auth_file)}
        listed = json.loads(cli(env, tmp_path, "images", "list", "-m", str(matrix), "--cloud", "kubevirt",
                                "--output", "json").stdout)
        assert [r["image_id"] for r in listed] == [image_id]
        assert "s3cret" not in json.dumps(listed) and "s3cret" not in matrix.read_text()

        # the end-to-end test's hook, on a qcow2 built elsewhere; credentials from the environment this time
        from imagebuilder.clouds.kubevirt import containerdisk_of

        monkeypatch.delenv("REGISTRY_AUTH_FILE")
        monkeypatch.setenv("HOME", str(tmp_path))  # no auth.json of this machine's
        monkeypatch.setenv("IMAGEBUILDER_REGISTRY_USERNAME", "builder")
        monkeypatch.setenv("IMAGEBUILDER_REGISTRY_PASSWORD", "s3cret")
        job, artifact = built(replace(cell, build_key="2" * 64), tmp_path / "elsewhere", "20260102000000",
                              disk_content(2))
        qcow2 = Path(artifact.files[0])
        settings = {"registry": f"{address}/{REPOSITORY_PATH}", "tls_verify": False}
        hooked = containerdisk_of(qcow2, artifact.metadata, settings)
        assert hooked.startswith(f"{address}/{REPOSITORY_PATH}@sha256:") and hooked != image_id
        assert containerdisk_of(qcow2, artifact.metadata, settings) == hooked  # found again, not pushed twice
        assert not list(qcow2.parent.glob(".containerdisk-*"))  # buildah's storage removed


def test_the_example_provides_image_builder_s_kubevirt_targets() -> None:
    from click.testing import CliRunner

    from imagebuilder.cli import cli as imagebuilder_cli

    example = Path(__file__).resolve().parents[1] / "examples" / "image-builder.yaml"
    minor = yaml.safe_load(example.read_text())["kubernetes"][0]
    result = CliRunner().invoke(imagebuilder_cli, ["targets", "-m", str(example), "--format", "json"],
                                catch_exceptions=False)
    found = {entry["target"]: entry["cells"] for entry in json.loads(result.stdout)}
    assert found["build-kubevirt-qemu-debian-12"] == [f"kubevirt-debian-12-k8s-{minor}"]
    assert found["build-kubevirt-qemu-flatcar"] == [f"kubevirt-flatcar-k8s-{minor}"]  # Flatcar baked locally
    # what `make build-kubevirt-qemu-debian-12` passes: --only 'kubevirt-qemu-debian-12-k8s-*'
    planned = CliRunner().invoke(imagebuilder_cli, ["plan", "-m", str(example), "--offline", "--format", "json",
                                                    "--only", "kubevirt-qemu-debian-12-k8s-*"], catch_exceptions=False)
    assert [cell["id"] for cell in json.loads(planned.stdout)] == [f"kubevirt-debian-12-k8s-{minor}"]


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@contextmanager
def token_service(root: Path, login: tuple[str, str]) -> Iterator[tuple[str, str]]:
    """A Docker token service (the distribution spec's token auth) on 127.0.0.1: checks the Basic login and
    answers a JWT for the scope asked, signed ES256 by a self-signed certificate in its x5c header.
    Yields (its realm URL, the registry's `auth:` section that trusts it). docker-registry verifies
    each token for real (signature against the bundle, issuer, audience, expiry, actions)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "imagebuilder test token issuer")])
    now = datetime.now(timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(hours=1))
            .not_valid_after(now + timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    bundle = root / "token-issuer.pem"
    root.mkdir(parents=True, exist_ok=True)
    bundle.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    x5c = [base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()]
    expected = "Basic " + base64.b64encode(f"{login[0]}:{login[1]}".encode()).decode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            query = urllib.parse.parse_qs(urllib.parse.urlparse(self.path).query)
            if self.headers.get("Authorization") != expected:
                self.send_response(401)
                self.end_headers()
                return
            access = []
            for scope in query.get("scope", []):
                kind, repository, actions = scope.split(":")
                access.append({"type": kind, "name": repository, "actions": actions.split(",")})
            issued = int(time.time())
            claims = {"iss": "imagebuilder-test", "sub": login[0], "aud": "imagebuilder-registry", "iat": issued,
                      "nbf": issued - 10, "exp": issued + 300, "jti": str(issued), "access": access}
            signing_input = (_b64url(json.dumps({"alg": "ES256", "typ": "JWT", "x5c": x5c}).encode()) + "."
                             + _b64url(json.dumps(claims).encode()))
            r, s = decode_dss_signature(key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
            token = signing_input + "." + _b64url(r.to_bytes(32, "big") + s.to_bytes(32, "big"))
            body = json.dumps({"token": token}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    realm = f"http://127.0.0.1:{server.server_address[1]}/token"
    try:
        yield realm, (f"auth:\n  token:\n    realm: {realm}\n    service: imagebuilder-registry\n"
                      f"    issuer: imagebuilder-test\n    rootcertbundle: {bundle}\n")
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_a_registry_asking_for_a_bearer_token_gets_one_from_its_token_service(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with token_service(tmp_path / "tokens", ("builder", "s3cret")) as (_, auth_config), \
            serve_registry(tmp_path / "registry", auth_config=auth_config) as address:
        for headers in ({}, {"Authorization": "Bearer not.a.token"}):  # the registry checks what it is given
            assert requests.get(f"http://{address}/v2/{REPOSITORY_PATH}/tags/list", headers=headers,
                                timeout=10).status_code == 401
        matrix = write_matrix(tmp_path / "matrix.yaml", f"{address}/{REPOSITORY_PATH}", in_use_check="tags")
        cell = kubevirt_cell(matrix)
        monkeypatch.setenv("HOME", str(tmp_path))  # no auth.json of this machine's
        monkeypatch.delenv("REGISTRY_AUTH_FILE", raising=False)
        monkeypatch.setenv("IMAGEBUILDER_REGISTRY_USERNAME", "builder")
        monkeypatch.setenv("IMAGEBUILDER_REGISTRY_PASSWORD", "s3cret")
        (older_id,) = push(cell, tmp_path / "build", "20260101000000", seed=1, key="1").values()
        (newer_id,) = push(cell, tmp_path / "build", "20260102000000", seed=2).values()
        env = {"IMAGEBUILDER_CATALOGUE": str(tmp_path / "catalogue"), "HOME": str(tmp_path),
               "IMAGEBUILDER_REGISTRY_USERNAME": "builder", "IMAGEBUILDER_REGISTRY_PASSWORD": "s3cret"}
        listed = json.loads(cli(env, tmp_path, "images", "list", "-m", str(matrix), "--cloud", "kubevirt",
                                "--output", "json").stdout)
        assert [r["image_id"] for r in listed] == [newer_id, older_id]
        for step in ("1 deprecated", "1 deleted"):  # a pull,push token, then a delete one
            pruned = cli(env, tmp_path, "prune", "-m", str(matrix), "--cloud", "kubevirt", "--apply")
            assert step in pruned.stdout and "0 failed" in pruned.stdout, pruned.stdout
        monkeypatch.setenv("IMAGEBUILDER_REGISTRY_PASSWORD", "wrong")
        with pytest.raises(CloudError, match=r"401 .*\| fix: log in"):
            push(cell, tmp_path / "denied", "20260103000000", seed=3, key="3")
