"""`imagebuilder versions update` against release sites served from 127.0.0.1, and the shipped lock file.

The fixture mirror is laid out as the upstream release sites are (dl.k8s.io/release and the
GitHub release directories), each component under its own base URL, with sum files in the
formats each project publishes: a bare sum (dl.k8s.io, CNI), `SUM  NAME` (containerd,
crictl) and one `runc.sha256sum` for a whole runc release.
"""

from __future__ import annotations

import functools
import hashlib
import re
import threading
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from imagebuilder import versions_update
from imagebuilder.versions import ARCHES, COMPONENTS, UPSTREAM_MIRRORS, VersionsLock, downloads_for
from imagebuilder.versions_update import (
    VersionsUpdateError,
    check_mirrors,
    parse_assignments,
    parse_sum,
    render_lock,
    update_versions,
)

REPO = Path(__file__).resolve().parents[1]
HEADER = "# Test lock file: the sums of the fixture mirror.\n# Refreshed by imagebuilder versions update.\n"

# The upstream layout, written down here independently of imagebuilder.versions.
LAYOUT: dict[str, dict[str, str]] = {
    "kubernetes": {name: "v{v}/bin/linux/{arch}/" + name for name in ("kubeadm", "kubelet", "kubectl")},
    "containerd": {"containerd": "v{v}/containerd-{v}-linux-{arch}.tar.gz"},
    "runc": {"runc": "v{v}/runc.{arch}"},
    "crictl": {"crictl": "v{v}/crictl-v{v}-linux-{arch}.tar.gz"},
    "cni_plugins": {"cni_plugins": "v{v}/cni-plugins-linux-{arch}-v{v}.tgz"},
}
OTHERS = {"containerd": "1.7.24", "runc": "1.2.3", "crictl": "1.31.1", "cni_plugins": "1.6.1"}


# ------------------------------------------------------------------ the mirror


class _Handler(SimpleHTTPRequestHandler):
    server: _MirrorServer

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        pass

    def do_GET(self) -> None:  # noqa: N802 - the base class's name
        self.server.hits[self.path] += 1
        failure = self.server.failures.get(self.path)
        if failure and failure[0] > 0:
            failure[0] -= 1
            self.send_error(failure[1])
            return
        super().do_GET()


class _MirrorServer(ThreadingHTTPServer):
    request_queue_size = 64  # the default backlog of 5 drops concurrent connects (1 s SYN retry)
    daemon_threads = True
    hits: Counter[str]
    failures: dict[str, list[int]]  # path -> [times left, HTTP status]


@dataclass
class Mirror:
    root: Path
    url: str
    server: _MirrorServer

    @property
    def mirrors(self) -> dict[str, str]:
        return {component: f"{self.url}/{component}" for component in COMPONENTS}

    def publish(self, component: str, version: str, tag: str = "") -> dict[tuple[str, str], str]:
        """Release files and their sum files; returns {(file, arch): sha256}."""
        sums: dict[tuple[str, str], str] = {}
        runc_lines: list[str] = []
        for name, layout in LAYOUT[component].items():
            for arch in ARCHES:
                rel = layout.format(v=version, arch=arch)
                target = self.root / component / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                content = f"{component} {name} {version} {arch} {tag}\n".encode()
                target.write_bytes(content)
                digest = hashlib.sha256(content).hexdigest()
                sums[(name, arch)] = digest
                if component in ("kubernetes", "cni_plugins"):
                    Path(f"{target}.sha256").write_text(digest + ("\n" if component == "cni_plugins" else ""))
                elif component == "containerd":
                    Path(f"{target}.sha256sum").write_text(f"{digest}  {target.name}\n")
                elif component == "crictl":
                    Path(f"{target}.sha256").write_text(f"{digest}  {target.name}\n")
                else:
                    runc_lines.append(f"{digest}  {target.name}\n")
        if runc_lines:
            runc_lines.append(f"{hashlib.sha256(b'source').hexdigest()}  runc.tar.xz\n")
            (self.root / "runc" / f"v{version}" / "runc.sha256sum").write_text("".join(runc_lines))
        return sums

    def stable(self, minor: str, answer: str) -> None:
        (self.root / "kubernetes").mkdir(parents=True, exist_ok=True)
        (self.root / "kubernetes" / f"stable-{minor}.txt").write_text(answer + "\n")

    def fail(self, path: str, times: int, status: int) -> None:
        self.server.failures[path] = [times, status]


@pytest.fixture
def mirror(tmp_path: Path) -> Iterator[Mirror]:
    root = tmp_path / "mirror"
    root.mkdir()
    server = _MirrorServer(("127.0.0.1", 0), functools.partial(_Handler, directory=str(root)))
    server.hits = Counter()
    server.failures = {}
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield Mirror(root, f"http://127.0.0.1:{server.server_address[1]}", server)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def lock_entry(k8s: str, pause: str, sums: dict[str, dict[tuple[str, str], str]], versions: dict[str, str]) -> dict:
    components = {}
    for component in COMPONENTS:
        version = k8s if component == "kubernetes" else versions[component]
        components[component] = {"version": version, "files": {
            name: {"path": layout.replace("{v}", version),
                   "sha256": {arch: sums[component][(name, arch)] for arch in ARCHES}}
            for name, layout in LAYOUT[component].items()
        }}
    return {"pause": pause, "components": components}


@dataclass
class Release:
    lock_path: Path
    old_k8s: dict[tuple[str, str], str]
    new_k8s: dict[tuple[str, str], str]
    others: dict[str, dict[tuple[str, str], str]]


@pytest.fixture
def release(mirror: Mirror, tmp_path: Path) -> Release:
    """Lock pins 1.30.9 (current) and 1.31.4; the mirror has released 1.31.5."""
    others = {component: mirror.publish(component, version) for component, version in OTHERS.items()}
    k8s_130 = mirror.publish("kubernetes", "1.30.9")
    old_k8s = mirror.publish("kubernetes", "1.31.4")
    new_k8s = mirror.publish("kubernetes", "1.31.5")
    mirror.stable("1.30", "v1.30.9")
    mirror.stable("1.31", "v1.31.5")
    data = {"schema": 1, "minors": {
        "1.30": lock_entry("1.30.9", "3.9", {**others, "kubernetes": k8s_130}, OTHERS),
        "1.31": lock_entry("1.31.4", "3.10", {**others, "kubernetes": old_k8s}, OTHERS),
    }}
    lock_path = tmp_path / "work" / "versions.lock.yaml"
    lock_path.parent.mkdir()
    lock_path.write_text(HEADER + yaml.safe_dump(data, sort_keys=False))
    return Release(lock_path, old_k8s, new_k8s, others)


def load(path: Path) -> VersionsLock:
    return VersionsLock.model_validate(yaml.safe_load(path.read_text()))


def run(release: Release, mirror: Mirror, **kwargs) -> versions_update.UpdateReport:
    kwargs.setdefault("mirrors", mirror.mirrors)
    return update_versions(release.lock_path, timeout=5, **kwargs)


# ------------------------------------------------------------------ the update


def test_update_moves_to_the_new_patch_and_reads_every_sum(release: Release, mirror: Mirror) -> None:
    report = run(release, mirror)

    assert report.written and not report.created
    lock = load(release.lock_path)
    k8s = lock.minors["1.31"].components["kubernetes"]
    assert k8s.version == "1.31.5"
    for name in ("kubeadm", "kubelet", "kubectl"):
        assert k8s.files[name].path == f"v1.31.5/bin/linux/{{arch}}/{name}"
        for arch in ARCHES:
            assert k8s.files[name].sha256[arch] == release.new_k8s[(name, arch)]
            assert k8s.files[name].sha256[arch] != release.old_k8s[(name, arch)]
    # the other components keep their versions and their (unchanged) sums
    for minor in ("1.30", "1.31"):
        assert lock.minors[minor].component_versions() == {
            "kubernetes": "1.30.9" if minor == "1.30" else "1.31.5", **OTHERS}
    assert lock.minors["1.30"].pause == "3.9"
    assert lock.minors["1.31"].components["runc"].files["runc"].sha256["arm64"] == \
        release.others["runc"][("runc", "arm64")]
    # the report names the move and each changed sum, and nothing else
    items = {(change.minor, change.item) for change in report.changes}
    assert ("1.31", "kubernetes") in items
    assert {(c.minor, c.item) for c in report.changes if c.item != "kubernetes"} == {
        ("1.31", f"{name} {arch}") for name in ("kubeadm", "kubelet", "kubectl") for arch in ARCHES}
    assert not report.suspicious
    assert any("1.31: kubernetes 1.31.4 -> 1.31.5" == line for line in report.lines())
    # stable files, 3 k8s sums per minor and arch, 1 each for containerd/crictl/cni per arch, one runc file
    assert report.fetched == 2 + 2 * 3 * len(ARCHES) + 3 * len(ARCHES) + 1
    assert mirror.server.hits["/runc/v1.2.3/runc.sha256sum"] == 1  # shared by arches and minors, read once


def test_written_file_keeps_header_and_round_trips(release: Release, mirror: Mirror) -> None:
    run(release, mirror)
    text = release.lock_path.read_text()
    assert text.startswith(HEADER)
    lock = load(release.lock_path)
    assert render_lock(lock, HEADER) == text
    assert VersionsLock.model_validate(yaml.safe_load(render_lock(lock))) == lock
    assert list(release.lock_path.parent.iterdir()) == [release.lock_path]  # no temporary file left


def test_pinned_urls_serve_files_with_the_pinned_sums(release: Release, mirror: Mirror) -> None:
    run(release, mirror)
    pins = load(release.lock_path).minors["1.31"]
    for arch in ARCHES:
        downloads = downloads_for(pins, arch, mirror.mirrors)
        assert len(downloads) == 7
        for download in downloads.values():
            with urllib.request.urlopen(download.url, timeout=5) as response:
                assert hashlib.sha256(response.read()).hexdigest() == download.sha256


def test_second_run_changes_nothing(release: Release, mirror: Mirror) -> None:
    run(release, mirror)
    before = release.lock_path.read_bytes()
    stat_before = release.lock_path.stat().st_mtime_ns
    report = run(release, mirror)
    assert not report.changed and not report.written
    assert release.lock_path.read_bytes() == before
    assert release.lock_path.stat().st_mtime_ns == stat_before
    assert report.lines()[-1].endswith(f"is up to date (2 minor(s) checked, {report.fetched} file(s) fetched)")


def test_dry_run_reports_without_writing(release: Release, mirror: Mirror) -> None:
    before = release.lock_path.read_bytes()
    report = run(release, mirror, write=False)
    assert report.changed and not report.written
    assert release.lock_path.read_bytes() == before
    assert "dry run" in report.lines()[-1]


def test_only_the_named_minor_is_fetched(release: Release, mirror: Mirror) -> None:
    report = run(release, mirror, minors=["1.31"])
    assert report.minors == ["1.31"]
    assert mirror.server.hits["/kubernetes/stable-1.31.txt"] == 1
    assert mirror.server.hits["/kubernetes/stable-1.30.txt"] == 0
    assert load(release.lock_path).minors["1.30"].kubernetes_version == "1.30.9"


@pytest.mark.parametrize("broken, status", [
    ("/kubernetes/v1.31.5/bin/linux/arm64/kubelet.sha256", 404),
    ("/runc/v1.2.3/runc.sha256sum", 403),
    ("/kubernetes/stable-1.31.txt", 404),
])
def test_http_error_names_the_url_and_leaves_the_file(release: Release, mirror: Mirror, broken: str,
                                                      status: int) -> None:
    mirror.fail(broken, times=99, status=status)
    before = release.lock_path.read_bytes()
    with pytest.raises(VersionsUpdateError) as caught:
        run(release, mirror)
    message = str(caught.value)
    assert f"{mirror.url}{broken}" in message and f"HTTP {status}" in message
    assert "\n" not in message
    assert mirror.server.hits[broken] == 1  # a 4xx is not retried
    assert release.lock_path.read_bytes() == before
    assert list(release.lock_path.parent.iterdir()) == [release.lock_path]


@pytest.mark.parametrize("path, content, problem", [
    ("crictl/v1.31.1/crictl-v1.31.1-linux-amd64.tar.gz.sha256", "<html>rate limited</html>\n", "is not a sha256"),
    ("kubernetes/v1.31.5/bin/linux/amd64/kubeadm.sha256", "abc123\n", "is not a sha256"),
    ("cni_plugins/v1.6.1/cni-plugins-linux-arm64-v1.6.1.tgz.sha256", "", "empty"),
    ("containerd/v1.7.24/containerd-1.7.24-linux-arm64.tar.gz.sha256sum",
     f"{'a' * 64}  containerd-1.7.24-linux-amd64.tar.gz\n", "no sha256 for containerd-1.7.24-linux-arm64.tar.gz"),
    ("runc/v1.2.3/runc.sha256sum", f"{'b' * 64}  runc.amd64\n", "no sha256 for runc.arm64"),
    ("kubernetes/stable-1.31.txt", "v1.32.0\n", "not a 1.31 release"),
    ("kubernetes/stable-1.31.txt", "<!doctype html>", "expected a version like v1.31.0"),
    ("kubernetes/stable-1.31.txt", "v1.31.3\n", "older than the pinned 1.31.4"),
])
def test_malformed_answer_names_the_url_and_leaves_the_file(release: Release, mirror: Mirror, path: str,
                                                            content: str, problem: str) -> None:
    (mirror.root / path).write_text(content)
    before = release.lock_path.read_bytes()
    with pytest.raises(VersionsUpdateError) as caught:
        run(release, mirror)
    assert f"{mirror.url}/{path}" in str(caught.value)
    assert problem in str(caught.value)
    assert release.lock_path.read_bytes() == before


def test_transient_errors_are_retried(release: Release, mirror: Mirror, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(versions_update, "RETRY_DELAY", 0.01)
    mirror.fail("/kubernetes/v1.31.5/bin/linux/amd64/kubectl.sha256", times=2, status=503)
    report = run(release, mirror)
    assert report.written
    assert mirror.server.hits["/kubernetes/v1.31.5/bin/linux/amd64/kubectl.sha256"] == 3


def test_retries_are_bounded(release: Release, mirror: Mirror, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(versions_update, "RETRY_DELAY", 0.01)
    mirror.fail("/containerd/v1.7.24/containerd-1.7.24-linux-amd64.tar.gz.sha256sum", times=99, status=502)
    before = release.lock_path.read_bytes()
    with pytest.raises(VersionsUpdateError, match=r"HTTP 502 .*\(after 3 tries\)"):
        run(release, mirror, attempts=3)
    assert mirror.server.hits["/containerd/v1.7.24/containerd-1.7.24-linux-amd64.tar.gz.sha256sum"] == 3
    assert release.lock_path.read_bytes() == before


def test_unreachable_mirror_is_one_line(release: Release, mirror: Mirror) -> None:
    mirrors = {**mirror.mirrors, "crictl": "http://127.0.0.1:9/crictl"}  # discard port: refused
    with pytest.raises(VersionsUpdateError) as caught:
        run(release, mirror, mirrors=mirrors, attempts=1)
    assert str(caught.value).startswith("http://127.0.0.1:9/crictl/v1.31.1/crictl-v1.31.1-linux-")
    assert "\n" not in str(caught.value)


def test_same_version_new_sum_is_flagged(release: Release, mirror: Mirror) -> None:
    republished = mirror.publish("containerd", "1.7.24", tag="republished")
    report = run(release, mirror)
    flagged = {(c.minor, c.item) for c in report.suspicious}
    assert flagged == {(minor, f"containerd {arch}") for minor in ("1.30", "1.31") for arch in ARCHES}
    assert any(line.startswith("! 1.31: containerd amd64 sha256 changed although its version did not")
               for line in report.lines())
    assert load(release.lock_path).minors["1.30"].components["containerd"].files["containerd"].sha256["amd64"] == \
        republished[("containerd", "amd64")]


def test_pin_moves_a_component_and_its_path(release: Release, mirror: Mirror) -> None:
    new = mirror.publish("containerd", "1.7.25")
    report = run(release, mirror, minors=["1.31"], pins={"containerd": "1.7.25"})
    lock = load(release.lock_path)
    pinned = lock.minors["1.31"].components["containerd"]
    assert pinned.version == "1.7.25"
    assert pinned.files["containerd"].path == "v1.7.25/containerd-1.7.25-linux-{arch}.tar.gz"
    assert pinned.files["containerd"].sha256 == {arch: new[("containerd", arch)] for arch in ARCHES}
    assert lock.minors["1.30"].components["containerd"].version == "1.7.24"
    assert not report.suspicious
    assert ("1.31", "containerd", "1.7.24", "1.7.25") in {(c.minor, c.item, c.old, c.new) for c in report.changes}


def test_new_minor_is_added_from_the_newest_pins(release: Release, mirror: Mirror) -> None:
    k8s = mirror.publish("kubernetes", "1.32.2")
    crictl = mirror.publish("crictl", "1.32.0")
    mirror.stable("1.32", "v1.32.2")
    report = run(release, mirror, minors=["1.32"])
    assert report.added == ["1.32"]
    lock = load(release.lock_path)
    assert list(lock.minors) == ["1.30", "1.31", "1.32"]  # an ascending file stays ascending
    added = lock.minors["1.32"]
    assert added.pause == "3.10"  # from 1.31, the newest pinned minor
    assert added.component_versions() == {"kubernetes": "1.32.2", "containerd": "1.7.24", "runc": "1.2.3",
                                          "crictl": "1.32.0", "cni_plugins": "1.6.1"}
    assert added.components["kubernetes"].files["kubelet"].sha256["arm64"] == k8s[("kubelet", "arm64")]
    assert added.components["crictl"].files["crictl"].path == "v1.32.0/crictl-v1.32.0-linux-{arch}.tar.gz"
    assert added.components["crictl"].files["crictl"].sha256["amd64"] == crictl[("crictl", "amd64")]
    assert lock.minors["1.31"].kubernetes_version == "1.31.4"  # not selected, not touched


def test_new_minor_without_a_crictl_release_says_how_to_pin(release: Release, mirror: Mirror) -> None:
    mirror.publish("kubernetes", "1.32.2")
    mirror.stable("1.32", "v1.32.2")
    with pytest.raises(VersionsUpdateError, match=r"/crictl/v1\.32\.0/crictl-v1\.32\.0-linux-.*HTTP 404"):
        run(release, mirror, minors=["1.32"])


def test_missing_file_is_created_from_pins(mirror: Mirror, tmp_path: Path) -> None:
    for component, version in OTHERS.items():
        mirror.publish(component, version)
    mirror.publish("kubernetes", "1.31.5")
    mirror.publish("crictl", "1.31.0")
    mirror.stable("1.31", "v1.31.5")
    path = tmp_path / "new" / "versions.lock.yaml"
    path.parent.mkdir()
    with pytest.raises(VersionsUpdateError, match="--pin containerd=VERSION"):
        update_versions(path, ["1.31"], mirror.mirrors, timeout=5)
    assert not path.exists()
    pins = {"containerd": "1.7.24", "runc": "1.2.3", "cni_plugins": "1.6.1", "pause": "3.10"}
    report = update_versions(path, ["1.31"], mirror.mirrors, pins=pins, timeout=5)
    assert report.created and report.written
    text = path.read_text()
    assert text.startswith(versions_update.DEFAULT_HEADER)
    lock = load(path)
    assert lock.minors["1.31"].component_versions()["crictl"] == "1.31.0"
    assert lock.minors["1.31"].pause == "3.10"
    assert "created" in report.lines()[-1]


def test_missing_file_without_minors_says_how(tmp_path: Path) -> None:
    with pytest.raises(VersionsUpdateError, match="does not exist: name the minors"):
        update_versions(tmp_path / "versions.lock.yaml", None, {})


@pytest.mark.parametrize("kwargs, message", [
    ({"mirrors": {"containrd": "http://x"}}, "--mirror containrd: unknown component"),
    ({"mirrors": {"runc": "ftp://x"}}, "start it with http://, https:// or file://"),
    ({"pins": {"kubernetes": "1.31.2"}}, "comes from stable-<minor>.txt"),
    ({"pins": {"containerd": "v2.0.0"}}, "no leading v"),
    ({"pins": {"etcd": "3.5.0"}}, "--pin etcd: unknown name"),
    ({"minors": ["1.3x"]}, "--minor 1.3x: not a Kubernetes minor"),
])
def test_bad_arguments_are_one_line_and_fetch_nothing(release: Release, mirror: Mirror, kwargs: dict,
                                                      message: str) -> None:
    with pytest.raises(VersionsUpdateError, match=re.escape(message)):
        run(release, mirror, **kwargs)
    assert sum(mirror.server.hits.values()) == 0


def test_broken_lock_file_is_reported_with_its_line(release: Release, mirror: Mirror) -> None:
    release.lock_path.write_text(HEADER + "schema: 1\nminors:\n  '1.31':\n    pause: '3.10'\n    componets: {}\n")
    with pytest.raises(Exception) as caught:
        run(release, mirror)
    assert getattr(caught.value, "exit_code", None) == 2
    assert str(release.lock_path) in str(caught.value)
    assert sum(mirror.server.hits.values()) == 0


def test_file_urls_work_for_an_offline_mirror(release: Release, mirror: Mirror) -> None:
    mirrors = {component: (mirror.root / component).as_uri() for component in COMPONENTS}
    report = run(release, mirror, mirrors=mirrors)
    assert report.written and load(release.lock_path).minors["1.31"].kubernetes_version == "1.31.5"
    assert sum(mirror.server.hits.values()) == 0


# ------------------------------------------------------------------ pieces


def test_default_mirrors_are_the_upstream_sites() -> None:
    assert check_mirrors({}) == {c: url.rstrip("/") for c, url in UPSTREAM_MIRRORS.items()}
    assert check_mirrors({"runc": "https://m.example/runc/"})["runc"] == "https://m.example/runc"


@pytest.mark.parametrize("text, expected", [
    (f"{'A' * 64}", "a" * 64),
    (f"{'c' * 64}  other.tgz\n{'d' * 64} *file.tgz\n", "d" * 64),
    (f"{'e' * 64}  ./dist/file.tgz\n", "e" * 64),
])
def test_parse_sum_formats(text: str, expected: str) -> None:
    assert parse_sum(text, "http://m/file.tgz.sha256", "file.tgz") == expected


def test_new_minors_keep_the_files_order() -> None:
    order = versions_update._order
    assert order(["1.35", "1.34", "1.33"], ["1.36"]) == ["1.36", "1.35", "1.34", "1.33"]
    assert order(["1.9", "1.10"], ["1.11"]) == ["1.9", "1.10", "1.11"]
    assert order(["1.34", "1.35", "1.33"], ["1.30"]) == ["1.34", "1.35", "1.33", "1.30"]


def test_parse_assignments() -> None:
    assert parse_assignments(["containerd=http://m/c", "runc = http://m/r"], "--mirror") == {
        "containerd": "http://m/c", "runc": "http://m/r"}
    with pytest.raises(VersionsUpdateError, match="expected NAME=VALUE"):
        parse_assignments(["containerd"], "--mirror")
    with pytest.raises(VersionsUpdateError, match="given twice"):
        parse_assignments(["runc=a", "runc=b"], "--mirror")


# ------------------------------------------------------------------ the shipped file


def test_shipped_lock_file_is_complete() -> None:
    text = (REPO / "versions.lock.yaml").read_text()
    assert text.startswith("#") and "imagebuilder versions update" in text.split("\nschema:")[0]
    lock = VersionsLock.model_validate(yaml.safe_load(text))
    assert len(lock.minors) >= 3
    for minor, pins in lock.minors.items():
        assert re.fullmatch(r"1\.[0-9]+", minor)
        assert set(pins.components) == set(COMPONENTS), minor
        assert pins.kubernetes_version.startswith(minor + "."), minor
        assert set(pins.components["kubernetes"].files) == {"kubeadm", "kubelet", "kubectl"}
        assert re.fullmatch(r"[0-9]+\.[0-9]+(\.[0-9]+)?", pins.pause)
        for name, component in pins.components.items():
            for file_name, pinned in component.files.items():
                where = f"{minor} {name} {file_name}"
                assert f"v{component.version}/" in pinned.path and "{arch}" in pinned.path, where
                assert set(pinned.sha256) == set(ARCHES), where
                for digest in pinned.sha256.values():
                    assert re.fullmatch(r"[0-9a-f]{64}", digest), where
                assert pinned.sha256["amd64"] != pinned.sha256["arm64"], where
    digests = [d for pins in lock.minors.values() for c in pins.components.values() for f in c.files.values()
               for d in f.sha256.values()]
    distinct_files = {(c.version, name, f.path) for pins in lock.minors.values() for name, c in pins.components.items()
                      for f in c.files.values()}
    assert len(set(digests)) == len(ARCHES) * len(distinct_files)  # one sum per distinct file and arch, none reused
