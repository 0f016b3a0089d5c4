"""Bad matrix input: one line `FILE:LINE: field: problem (fix)`, exit 2, no traceback, nothing written."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imagebuilder.config import load_matrix
from imagebuilder.errors import UserError
from imagebuilder.planner import plan

DATA = Path(__file__).parent / "data"
ONE_LINE = re.compile(r"^imagebuilder: m\.yaml:\d+: .+ \(.+\)$")


@pytest.fixture()
def workdir(tmp_path: Path) -> Path:
    shutil.copy(DATA / "versions.lock.yaml", tmp_path / "versions.lock.yaml")
    return tmp_path


def run_plan(workdir: Path, text: str | bytes) -> subprocess.CompletedProcess[str]:
    if isinstance(text, bytes):
        (workdir / "m.yaml").write_bytes(text)
    else:
        (workdir / "m.yaml").write_text(text)
    return subprocess.run(
        [sys.executable, "-m", "imagebuilder.cli", "plan", "-m", "m.yaml", "--format", "json"],
        cwd=workdir, capture_output=True, text=True, timeout=60,
    )


GOOD = 'os: [debian-12]\nkubernetes: ["1.31"]\nclouds: {qemu: {}}\n'
HEAD = 'os: [debian-12]\nkubernetes: ["1.31"]\n'  # lines 1-2
QEMU = 'clouds:\n  qemu: {}\n'  # lines 3-4

CASES = {
    "float minor": ('os: [debian-12]\nkubernetes: [1.30]\nclouds: {qemu: {}}\n', 2, "kubernetes[0]", 'quotes'),
    "unknown os": ('os: [debain-12]\nkubernetes: ["1.31"]\nclouds: {qemu: {}}\n', 1, "os[0]", "did you mean 'debian-12'"),
    "unknown cloud": ('os: [debian-12]\nkubernetes: ["1.31"]\nclouds:\n  qemu: {}\n  awss: {}\n', 5, "clouds.awss",
                      "did you mean 'aws'"),
    "unknown minor": ('os: [debian-12]\nkubernetes: ["1.39"]\nclouds: {qemu: {}}\n', 2, "kubernetes[0]", "versions update"),
    "unknown key": ('os: [debian-12]\nkubernetes: ["1.31"]\nclouds: {qemu: {}}\nexcludes: []\n', 4, "excludes",
                    "did you mean 'exclude'"),
    "wrong type": ('os: [debian-12]\nkubernetes: ["1.31"]\nclouds:\n  aws:\n    regions: us-east-1\n', 5,
                   "clouds.aws.regions", "YAML list"),
    "wrong int": ('os: [debian-12]\nkubernetes: ["1.31"]\nclouds:\n  qemu:\n    cpus: many\n', 5, "clouds.qemu.cpus",
                  "whole number"),
    "rebuild_after_days negative": (GOOD + "rebuild_after_days: -1\n", 4, "rebuild_after_days", "whole days from 1"),
    "rebuild_after_days bool": (GOOD + "rebuild_after_days: true\n", 4, "rebuild_after_days", "leave rebuild_after_days out"),
    "rebuild_after_days per cloud": ('os: [debian-12]\nkubernetes: ["1.31"]\nclouds:\n  qemu:\n    rebuild_after_days: 1.5\n',
                                     5, "clouds.qemu.rebuild_after_days", "whole days from 1"),
    "exclude everything": ('os: [debian-12]\nkubernetes: ["1.31"]\nclouds: {qemu: {}}\nexclude:\n  - {cloud: qemu}\n', 4,
                           "exclude", "narrow"),
    "selector unknown cloud": ('os: [debian-12]\nkubernetes: ["1.31"]\nclouds: {qemu: {}}\nexclude:\n  - {cloud: aws}\n',
                               5, "exclude[0].cloud", "qemu"),
    "override unknown setting": ('os: [debian-12]\nkubernetes: ["1.31"]\nclouds: {qemu: {}}\noverrides:\n'
                                 '  - match: {cloud: qemu}\n    settings: {cpu: 4}\n', 6, "overrides[0].settings.cpu",
                                 "did you mean 'cpus'"),
    "missing versions file": ('versions_file: nope.yaml\nos: [debian-12]\nkubernetes: ["1.31"]\nclouds: {qemu: {}}\n', 1,
                              "versions_file", "versions update"),
    "yaml syntax": ('os: [debian-12\nkubernetes: ["1.31"]\n', 2, "", "YAML syntax"),
    "empty": ("", 1, "", "empty"),
    "comment only": ("# nothing\n", 1, "", ""),
    "not a mapping": ("- a\n- b\n", 1, "", "mapping"),
    "duplicate key": ('os: [debian-12]\nos: [ubuntu-2204]\nkubernetes: ["1.31"]\nclouds: {qemu: {}}\n', 2, "os", "twice"),
    "missing field": ('os: [debian-12]\nclouds: {qemu: {}}\n', 1, "kubernetes", "add 'kubernetes'"),
    "alias bomb": ("".join(f"l{i}: &l{i} [" + ",".join([f"*l{i-1}"] * 10 if i else ["1"] * 10) + "]\n"
                           for i in range(7)), 1, "", "aliases"),
    "minor not a minor": ('os: [debian-12]\nkubernetes: ["latest"]\nclouds: {qemu: {}}\n', 2, "kubernetes[0]", "1.31"),
    # issue 17 item 7: a stricter matrix
    "duplicate os": ('os: [debian-12, ubuntu-2204, debian-12]\nkubernetes: ["1.31"]\n' + QEMU, 1, "os[2]", "twice"),
    "duplicate os in a block list": ('os:\n  - debian-12\n  - debian-12\nkubernetes: ["1.31"]\n' + QEMU, 3, "os[1]",
                                     "twice"),
    "duplicate minor": ('os: [debian-12]\nkubernetes:\n  - "1.30"\n  - "1.31"\n  - "1.30"\n' + QEMU, 5,
                        "kubernetes[2]", "twice"),
    "empty cloud still gets its required settings": (HEAD + 'clouds:\n  qemu:\n  gcp:\n', 5, "clouds.gcp.project_id",
                                                     "add 'project_id'"),
    "exclude matches no cell": (HEAD + QEMU + 'exclude:\n  - {os: ubuntu-2204}\n', 6, "exclude[0]",
                                "os=ubuntu-2204 matches no cell"),
    "exclude glob matches no cell": (HEAD + QEMU + 'exclude:\n  - {os: "rocky*", cloud: qemu}\n', 6, "exclude[0]",
                                     "matches no cell"),
    "include matches no cell": (HEAD + QEMU + 'include:\n  - {os: "rocky*"}\n', 6, "include[0]", "matches no cell"),
    "include adds no cell": (HEAD + QEMU + 'include:\n  - {os: debian-12, cloud: qemu}\n', 6, "include[0]",
                             "already planned"),
    "override matches no cell": (HEAD + QEMU + 'overrides:\n  - match: {os: ubuntu-2204}\n    ansible_vars: {a: 1}\n', 6,
                                 "overrides[0].match", "matches no cell"),
    "override matches only excluded cells": ('os: [debian-12]\nkubernetes: ["1.30", "1.31"]\n' + QEMU +
                                             'exclude:\n  - {kubernetes: "1.30"}\n'
                                             'overrides:\n  - match: {kubernetes: "1.30"}\n    arch: arm64\n', 8,
                                             "overrides[0].match", "excludes remove"),
    "unmatched override's settings are checked": (HEAD + QEMU + 'overrides:\n  - match: {os: ubuntu-2204}\n'
                                                  '    settings: {cpu: 4}\n', 7, "overrides[0].settings.cpu",
                                                  "did you mean 'cpus'"),
    "override setting out of range": (HEAD + QEMU + 'overrides:\n  - match: {cloud: qemu}\n    settings: {cpus: 0}\n',
                                      7, "overrides[0].settings.cpus", "raise the value"),
    "override setting of another cloud": (HEAD + 'clouds:\n  qemu: {}\n  aws: {}\noverrides:\n'
                                          '  - match: {os: debian-12}\n    settings: {instance_type: m6i.large}\n', 8,
                                          "overrides[0].settings.instance_type", "add 'cloud: aws' to the match"),
    "mirror without a scheme": (HEAD + QEMU + 'mirrors:\n  kubernetes: mirror.internal/k8s\n', 6, "mirrors.kubernetes",
                                "not an http(s) URL"),
    "mirror on ftp": (HEAD + QEMU + 'mirrors:\n  containerd: ftp://mirror.internal/c\n', 6, "mirrors.containerd",
                      "not an http(s) URL"),
    "tab in indentation": (HEAD + 'clouds:\n\tqemu: {}\n', 4, "", "a tab in the indentation"),
    "tab after spaces in indentation": (HEAD + 'clouds:\n  qemu:\n  \t cpus: 2\n', 5, "", "a tab in the indentation"),
    "non-UTF-8 byte": (HEAD.encode() + b'# caf\xe9\n' + QEMU.encode(), 3, "", "byte 0xe9 is not UTF-8"),
    "control character": (HEAD + '# \x07\n' + QEMU, 3, "", "U+0007"),
    # issue 17 item 3: arch and variant as dimensions
    "unknown arch in a list": (GOOD + "arch: [amd64, arm]\n", 4, "arch[1]", "did you mean 'arm64'"),
    "unknown arch": (GOOD + "arch: x86_64\n", 4, "arch", "choose one of: amd64, arm64"),
    "arch listed twice": (GOOD + "arch:\n  - arm64\n  - arm64\n", 6, "arch[1]", "twice"),
    "unknown variant": (HEAD + 'clouds:\n  qemu:\n    variants: [ef]\n', 5, "clouds.qemu.variants[0]",
                        "did you mean 'efi'"),
    "variant of another cloud": (HEAD + 'clouds:\n  qemu: {}\n  aws:\n    variants: [efi]\n', 6,
                                 "clouds.aws.variants[0]", "aws has no variants"),
    "variant listed twice": (HEAD + 'clouds:\n  qemu:\n    variants:\n      - efi\n      - efi\n', 7,
                             "clouds.qemu.variants[1]", "twice"),
    "variant without the OS's vendor image": (HEAD + 'clouds:\n  azure:\n    resource_group: g\n'
                                              '    variants: [trustedlaunch, cvm]\n', 6, "clouds.azure.variants[1]",
                                              "exclude {os: debian-12, cloud: azure, variant: cvm}"),
    "override sets variants": (HEAD + QEMU + 'overrides:\n  - match: {cloud: qemu}\n    settings: {variants: [efi]}\n',
                               7, "overrides[0].settings.variants", "list variants under clouds.qemu"),
    "selector unknown variant": (HEAD + QEMU + 'exclude:\n  - {variant: cvm}\n', 6, "exclude[0].variant",
                                 "choose one of: none, efi"),
    "selector unknown arch": (HEAD + QEMU + 'exclude:\n  - {arch: aarch64}\n', 6, "exclude[0].arch", "arm64"),
    "exclude matches no arch": (HEAD + QEMU + 'exclude:\n  - {arch: arm64}\n', 6, "exclude[0]",
                                "arch=arm64 matches no cell"),
    "override arch duplicates a cell": (HEAD + QEMU + 'arch: [amd64, arm64]\noverrides:\n'
                                        '  - match: {arch: amd64}\n    arch: arm64\n', 8, "overrides[0].arch",
                                        "second qemu-debian-12-arm64-k8s-1.31"),
    "too many values": ("os: [" + ",".join(["debian-12"] * 100_001) + "]\n", 1, "", "too big"),
    "file too big": ("# " + "x" * (4 * 1024 * 1024) + "\n", 1, "", "bytes"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_gives_one_line(workdir: Path, name: str) -> None:
    text, line, field, hint = CASES[name]
    result = run_plan(workdir, text)
    assert result.returncode == 2, result
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert ONE_LINE.match(lines[0]), lines[0]
    assert lines[0].startswith(f"imagebuilder: m.yaml:{line}:"), lines[0]
    if field:
        assert f": {field}:" in lines[0]
    assert hint in lines[0]


def test_size_guard_names_aliases_only_for_alias_bombs(workdir: Path) -> None:
    bomb = run_plan(workdir, CASES["alias bomb"][0]).stderr
    big = run_plan(workdir, CASES["too many values"][0]).stderr
    assert "aliases" in bomb and "too big" not in bomb
    assert "too big" in big and "alias" not in big


def test_empty_cloud_is_declared_with_defaults(workdir: Path) -> None:
    empty = run_plan(workdir, HEAD + "clouds:\n  qemu:\n")
    braces = run_plan(workdir, HEAD + QEMU)
    assert empty.returncode == 0, empty.stderr
    (cell,) = json.loads(empty.stdout)
    assert cell["id"] == "qemu-debian-12-k8s-1.31"
    assert json.loads(braces.stdout) == [cell]  # same settings, so the same build key


def test_missing_file(workdir: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "imagebuilder.cli", "plan", "-m", "absent.yaml"],
                            cwd=workdir, capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip() == "imagebuilder: absent.yaml:1: file not found (create it or pass the right path)"


def test_good_matrix_passes(workdir: Path) -> None:
    result = run_plan(workdir, GOOD)
    assert result.returncode == 0, result.stderr
    assert '"qemu-debian-12-k8s-1.31"' in result.stdout


# --- fuzz: malformed matrices never crash and never print more than one line -------------------

scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.floats(allow_nan=False, width=16),
                    st.sampled_from(["1.31", "debian-12", "qemu", "", "*", "1.3", "x" * 3]))
keys = st.sampled_from(["os", "kubernetes", "clouds", "exclude", "include", "overrides", "mirrors", "arch",
                        "variants", "variant", "amd64", "efi",
                        "qemu", "aws", "regions", "match", "settings", "cloud", "bogus", "versions_file"])
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(keys, inner, max_size=3),
                      max_leaves=12)


def mutated_matrices() -> st.SearchStrategy[str]:
    base = yaml.safe_load(GOOD)

    def mutate(pair: tuple[str, object]) -> str:
        key, value = pair
        doc = dict(base)
        doc[key] = value
        return yaml.safe_dump(doc)

    raw_text = st.text(alphabet=st.sampled_from(list("abc:[]{}-&*!|>'\"\n #1.,")), max_size=60)
    return st.one_of(st.tuples(keys, values).map(mutate), raw_text)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=mutated_matrices())
def test_fuzz_malformed_matrices(workdir: Path, text: str) -> None:
    path = workdir / "m.yaml"
    path.write_text(text)
    before = sorted(p.name for p in workdir.iterdir())
    try:
        cells = plan(load_matrix(path))
    except UserError as error:
        message = str(error)
        assert "\n" not in message
        assert re.match(rf"^{re.escape(str(path))}:\d+: ", message), message
        assert message.endswith(")"), message
    else:
        assert cells, "a matrix that loads must select at least one cell"
    assert sorted(p.name for p in workdir.iterdir()) == before
