"""Retention on the other stores, through the CLI: the local catalogue, and OpenStack against a
real Glance (with a stand-in speaking Nova's servers API and Cinder's volumes API, as no
emulator of either exists).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest
from services import glance_url, openstack_env, qcow2_file, sample_metadata  # noqa: F401,F811 (fixtures)

from imagebuilder.artifact import Artifact
from imagebuilder.clouds import store_for
from imagebuilder.clouds.local import LocalCatalogue
from imagebuilder.clouds.openstack.settings import OpenstackSettings

ROOT = Path(__file__).resolve().parent.parent
NOW = datetime.now(timezone.utc)


def stamp(days_ago: float) -> str:
    # Packer's UTC YYYYMMDDhhmmss, the only form retention trusts (unix seconds are kept, not guessed at).
    return (NOW - timedelta(days=days_ago)).strftime("%Y%m%d%H%M%S")


def artifact(tmp_path: Path, key: str, days_ago: float, cloud: str = "qemu") -> Artifact:
    image = tmp_path / "builds" / key / "node.qcow2"
    qcow2_file(image, "1M")
    metadata = sample_metadata(build_key=key * 64, build_timestamp=stamp(days_ago), cell=f"{cloud}-debian-12-k8s-1.31")
    return Artifact(cell_id=metadata.cell, cloud=cloud, build_key=key * 64, image_name=f"node-{key}",
                    metadata=metadata, ids={"default": str(image)}, files=[str(image)])


def prune(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "imagebuilder.cli", "prune", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def decisions(result: subprocess.CompletedProcess[str]) -> dict[str, tuple[str, str]]:
    report = json.loads(result.stdout)
    return {image["name"]: (image["action"], image["reason"]) for image in report["images"]}


# -- the local catalogue ---------------------------------------------------------------------


def test_local_catalogue_is_pruned_in_stages(tmp_path: Path) -> None:
    catalogue = LocalCatalogue(tmp_path / "catalogue")
    for key, days in (("a", 1), ("b", 2), ("c", 3), ("d", 30), ("e", 40), ("f", 50), ("g", 60)):
        catalogue.publish(artifact(tmp_path, key, days))
    records = {r.name: r for r in catalogue.list_images()}
    catalogue.deprecate(records["node-f"], NOW - timedelta(days=20))
    catalogue.deprecate(records["node-g"], NOW - timedelta(days=20))
    catalogue.tag(records["node-g"], {"imagebuilder-protect": "golden"})
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "IMAGEBUILDER_CATALOGUE": str(tmp_path / "catalogue"),
           "IMAGEBUILDER_CACHE": str(tmp_path / "cache")}

    dry = prune("--cloud", "local", "--output", "json", env=env)
    assert dry.returncode == 0, dry.stderr
    assert decisions(dry) == {
        "node-a": ("keep", "newest 3"), "node-b": ("keep", "newest 3"), "node-c": ("keep", "newest 3"),
        "node-d": ("deprecate", "older than the newest 3, not in use; delete after 14d"),
        "node-e": ("deprecate", "older than the newest 3, not in use; delete after 14d"),
        "node-f": ("delete", f"deprecated since {NOW - timedelta(days=20):%Y-%m-%d}, grace over"),
        "node-g": ("keep", "protected (imagebuilder-protect)"),
    }
    assert len(catalogue.list_images()) == 7  # a dry run changes nothing

    applied = prune("--cloud", "local", "--apply", env=env)
    assert applied.returncode == 0, applied.stderr
    left = {r.name: r for r in catalogue.list_images()}
    assert sorted(left) == ["node-a", "node-b", "node-c", "node-d", "node-e", "node-g"]
    assert not (tmp_path / "catalogue" / "images" / records["node-f"].image_id).exists()
    assert left["node-d"].deprecated_at is not None and left["node-a"].deprecated_at is None

    again = decisions(prune("--cloud", "local", "--output", "json", env=env))
    assert again["node-d"][1].startswith("deprecated, grace until")
    assert {action for action, _ in again.values()} == {"keep"}


def test_local_files_left_by_a_killed_delete_are_swept_young_ones_are_not(tmp_path: Path) -> None:
    import os

    catalogue = LocalCatalogue(tmp_path / "catalogue")
    catalogue.publish(artifact(tmp_path, "a", 1))
    (left_over := tmp_path / "catalogue" / "images" / "local-deadbeef").mkdir()
    (left_over / "node.qcow2").write_bytes(b"x")
    os.utime(left_over, (0, 0))  # from long ago
    (in_flight := tmp_path / "catalogue" / "images" / "local-beingpublished").mkdir()  # a publish placing its file
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "IMAGEBUILDER_CATALOGUE": str(tmp_path / "catalogue"),
           "IMAGEBUILDER_CACHE": str(tmp_path / "cache")}
    report = json.loads(prune("--cloud", "local", "--output", "json", env=env).stdout)
    assert [o["resource_id"] for o in report["orphans"]] == ["local-deadbeef"]
    assert prune("--cloud", "local", "--apply", env=env).returncode == 0
    assert not left_over.exists() and in_flight.exists() and len(catalogue.list_images()) == 1


# -- OpenStack: a real Glance, and Nova's servers API ------------------------------------------


PROJECT = "8a1e0000000040008000000000000001"  # the credentials' project
OTHER_PROJECT = "8a1e0000000040008000000000000002"


@dataclass
class Volume:
    image_id: str  # the image it was made from (volume_image_metadata.image_id)
    server_id: str | None = None  # the server it is attached to (its boot disk)
    project: str = PROJECT


class NovaStandin(ThreadingHTTPServer):
    """Nova: GET /v2.1/ (version discovery) and GET /v2.1/servers?image=... as Nova answers them.
    Cinder: GET /v3/ and GET /v3/{project_id}/volumes/detail, each volume with its
    ``volume_image_metadata`` and ``attachments`` as the Block Storage v3 API documents them;
    other projects' volumes only with ``all_tenants`` (https://docs.openstack.org/api-ref/block-storage/v3/)."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _NovaHandler)
        self.servers: dict[str, str] = {}  # server id -> image id ("" when booted from a volume)
        self.volumes: dict[str, Volume] = {}  # volume id -> what it holds
        self.requests: list[str] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v2.1/"

    @property
    def cinder_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v3/{PROJECT}/"

    def volume_details(self, project: str, all_tenants: bool) -> list[dict[str, Any]]:
        return [{"id": volume_id, "name": f"boot-{volume_id[:4]}", "status": "in-use" if v.server_id else "available",
                 "bootable": "true", "size": 10, "os-vol-tenant-attr:tenant_id": v.project,
                 "volume_image_metadata": {"image_id": v.image_id, "image_name": "node", "disk_format": "qcow2"},
                 "attachments": [{"server_id": v.server_id, "attachment_id": f"at-{volume_id}", "volume_id": volume_id,
                                  "device": "/dev/vda", "host_name": None, "id": volume_id}] if v.server_id else []}
                for volume_id, v in self.volumes.items() if all_tenants or v.project == project]


class _NovaHandler(BaseHTTPRequestHandler):
    server: NovaStandin

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802
        self.server.requests.append(self.path)
        parsed = urlparse(self.path)
        base = f"http://127.0.0.1:{self.server.server_address[1]}/v2.1"
        volumes = re.fullmatch(r"/v3/(?P<project>[0-9a-f]+)/volumes/detail", parsed.path)
        if parsed.path.rstrip("/") in ("", "/v2.1"):
            body: dict[str, Any] = {"version": {"id": "v2.1", "status": "CURRENT", "version": "2.96",
                                                "min_version": "2.1", "updated": "2013-07-23T11:33:21Z",
                                                "links": [{"rel": "self", "href": base + "/"}]}}
        elif parsed.path.rstrip("/") == "/v3":
            root = f"http://127.0.0.1:{self.server.server_address[1]}/v3/"
            body = {"version": {"id": "v3.0", "status": "CURRENT", "version": "3.71", "min_version": "3.0",
                                "updated": "2023-08-31T00:00:00Z", "links": [{"rel": "self", "href": root}]}}
        elif volumes:
            all_tenants = parse_qs(parsed.query).get("all_tenants", ["0"])[0].lower() in ("1", "true")
            body = {"volumes": self.server.volume_details(volumes["project"], all_tenants)}
        elif parsed.path.rstrip("/") == "/v2.1/servers":
            query = parse_qs(parsed.query)
            wanted = query.get("image", [None])[0]
            body = {"servers": [{"id": sid, "name": f"node-{sid[:4]}", "links": []}
                                for sid, image in self.server.servers.items() if wanted in (None, image)]}
        else:
            self.send_response(404)
            self.end_headers()
            return
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def nova() -> Iterator[NovaStandin]:
    server = NovaStandin()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def os_env(tmp_path: Path, glance: str, nova_url: str | None) -> dict[str, str]:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
    env.update(OS_CLIENT_CONFIG_FILE=str(tmp_path / "no-clouds.yaml"), OS_AUTH_TYPE="none",
               OS_IMAGE_ENDPOINT_OVERRIDE=glance + "/", IMAGEBUILDER_CACHE=str(tmp_path / "cache"),
               IMAGEBUILDER_CATALOGUE=str(tmp_path / "catalogue"))
    if nova_url:
        env["OS_COMPUTE_ENDPOINT_OVERRIDE"] = nova_url
        env["OS_BLOCK_STORAGE_ENDPOINT_OVERRIDE"] = nova_url.replace("/v2.1/", f"/v3/{PROJECT}/")
    return env


def test_glance_images_in_use_by_a_server_stay_and_the_rest_are_pruned(
        openstack_env: str, nova: NovaStandin, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OS_COMPUTE_ENDPOINT_OVERRIDE", nova.url)
    monkeypatch.setenv("OS_BLOCK_STORAGE_ENDPOINT_OVERRIDE", nova.cinder_url)
    store = store_for("openstack", OpenstackSettings())
    ids = {key: store.publish(artifact(tmp_path, key, days, cloud="openstack"))
           for key, days in (("a", 1), ("b", 2), ("c", 3), ("d", 30), ("e", 40), ("f", 50))}
    image = {key: next(iter(found.values())) for key, found in ids.items()}
    records = {r.image_id: r for r in store.list_images()}
    store.deprecate(records[image["e"]], NOW - timedelta(days=30))
    store.deprecate(records[image["f"]], NOW - timedelta(days=30))
    nova.servers["5e1f0000-0000-4000-8000-000000000001"] = image["e"]
    env = os_env(tmp_path, openstack_env, nova.url)

    dry = prune("--cloud", "openstack", "--output", "json", env=env)
    assert dry.returncode == 0, dry.stderr
    planned = decisions(dry)
    assert planned["node-e"] == ("keep", "in use by server 5e1f0000-0000-4000-8000-000000000001")
    assert planned["node-f"][0] == "delete" and planned["node-d"][0] == "deprecate"
    assert any("image=" in request for request in nova.requests)

    applied = prune("--cloud", "openstack", "--apply", "--output", "json", env=env)
    assert applied.returncode == 0, applied.stderr
    left = {r.image_id: r for r in store.list_images()}
    assert image["f"] not in left and image["e"] in left
    assert left[image["d"]].deprecated_at is not None  # hidden (os_hidden) and dated
    assert all(image[k] in left for k in "abc")


def test_glance_without_nova_keeps_everything_and_says_why(openstack_env: str, tmp_path: Path) -> None:
    store = store_for("openstack", OpenstackSettings())
    mine = {next(iter(store.publish(artifact(tmp_path, key, days, cloud="openstack")).values()))
            for key, days in (("a", 1), ("b", 2), ("c", 3), ("d", 30))}
    old = next(r for r in store.list_images() if r.name == "node-d")
    store.deprecate(old, NOW - timedelta(days=30))
    result = prune("--cloud", "openstack", "--apply", "--output", "json", env=os_env(tmp_path, openstack_env, None))
    assert result.returncode == 1  # the run could not do its job: say so in the exit status
    action, reason = decisions(result)["node-d"]
    assert action == "keep" and reason.startswith("in-use check failed: openstack default: cannot list the servers "
                                                  "(Nova): "), reason
    assert mine <= {r.image_id for r in store.list_images()}


def test_glance_images_booted_from_volume_or_tagged_protect_stay(
        openstack_env: str, nova: NovaStandin, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A server booted from a volume names no image: the volume's volume_image_metadata does. A
    Glance tag imagebuilder-protect (PUT /v2/images/{id}/tags/{tag}) protects like the property."""
    monkeypatch.setenv("OS_COMPUTE_ENDPOINT_OVERRIDE", nova.url)
    monkeypatch.setenv("OS_BLOCK_STORAGE_ENDPOINT_OVERRIDE", nova.cinder_url)
    store = store_for("openstack", OpenstackSettings())
    image = {key: next(iter(store.publish(artifact(tmp_path, key, days, cloud="openstack")).values()))
             for key, days in (("a", 1), ("b", 2), ("c", 3), ("d", 30), ("e", 40), ("f", 50), ("g", 60))}
    records = {r.image_id: r for r in store.list_images()}
    for key in "efg":
        store.deprecate(records[image[key]], NOW - timedelta(days=30))
    nova.servers["5e1f0000-0000-4000-8000-0000000000b1"] = ""  # booted from volume: no image id
    nova.volumes["7c0d0000-0000-4000-8000-0000000000d1"] = Volume(image["e"], "5e1f0000-0000-4000-8000-0000000000b1")
    nova.volumes["7c0d0000-0000-4000-8000-0000000000d2"] = Volume(image["d"], project=OTHER_PROJECT)  # not attached
    store.conn.image.add_tag(image["f"], "imagebuilder-protect")  # a Glance tag, not a property
    env = os_env(tmp_path, openstack_env, nova.url)

    dry = prune("--cloud", "openstack", "--output", "json", env=env)
    assert dry.returncode == 0, dry.stderr
    planned = decisions(dry)
    assert planned["node-e"] == ("keep", "in use by server 5e1f0000-0000-4000-8000-0000000000b1 "
                                         "(boot volume 7c0d0000-0000-4000-8000-0000000000d1)")
    assert planned["node-d"] == ("keep", "in use by volume 7c0d0000-0000-4000-8000-0000000000d2")
    assert planned["node-f"] == ("keep", "protected (imagebuilder-protect)")
    assert planned["node-g"][0] == "delete"
    assert sum("/volumes/detail?all_tenants" in r for r in nova.requests) == 1  # one listing for all images

    applied = prune("--cloud", "openstack", "--apply", "--output", "json", env=env)
    assert applied.returncode == 0, applied.stderr
    left = {r.image_id for r in store.list_images()}
    assert image["g"] not in left and {image[k] for k in "abcdef"} <= left
