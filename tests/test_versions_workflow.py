"""The scheduled versions update (.github/workflows/versions-update.yml), run step by step.

The workflow's `run:` steps run in order, as a runner runs them (bash -eo pipefail, a fresh
$GITHUB_OUTPUT per step, $GITHUB_STEP_SUMMARY, $RUNNER_TEMP, `${{ }}` expressions and `if:`
evaluated), in a clone of a temporary repository whose `origin` is a bare repository standing
for GitHub. Skipped: `uses:` steps (checkout, setup-python, create-pull-request), whose
inputs are checked instead, and the `install` step: this test's environment already runs
imagebuilder from this checkout. The release sites are tests/mirror.py's fixture releases on
127.0.0.1, which publish a new patch of one minor between two runs.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from imagebuilder.config import load_matrix
from imagebuilder.planner import plan
from imagebuilder.versions import COMPONENTS, load_versions
from imagebuilder.versions_update import update_versions
from mirror import mirrors_for, publish_release, serve_directory

REPO = Path(__file__).resolve().parents[1]
WORKFLOW = REPO / ".github" / "workflows" / "versions-update.yml"
SHARED = {"containerd": "1.7.24", "runc": "1.2.3", "cni_plugins": "1.6.1"}
PINS = {**SHARED, "pause": "3.10"}
RELEASES = {"1.31": {"kubernetes": "1.31.4", "crictl": "1.31.0"}, "1.32": {"kubernetes": "1.32.3", "crictl": "1.32.0"}}


# ------------------------------------------------------------------ a runner for the workflow's steps


_TOKEN = re.compile(r"\s*(?:(?P<string>'(?:[^']|'')*')|(?P<op>==|!=|&&|\|\||!|\(|\))|(?P<name>[A-Za-z_][\w.-]*))")


def evaluate(expression: str, context: dict[str, Any]) -> Any:
    """A GitHub Actions expression of context paths, 'strings', ==, !=, &&, || and ! (no functions)."""
    python: list[str] = []
    position, text = 0, expression.strip()
    while position < len(text):
        match = _TOKEN.match(text, position)
        assert match and match.end() > position, f"unsupported expression: {expression!r}"
        position = match.end()
        if match["string"]:
            python.append(repr(match["string"][1:-1].replace("''", "'")))
        elif match["op"]:
            python.append({"&&": " and ", "||": " or ", "!": " not "}.get(match["op"], match["op"]))
        else:
            python.append(repr(lookup(match["name"], context)))
    return eval("".join(python), {"__builtins__": {}}, {})  # noqa: S307 - tokens above are literals and operators


def lookup(name: str, context: dict[str, Any]) -> Any:
    if name in ("true", "false", "null"):
        return {"true": True, "false": False, "null": None}[name]
    value: Any = context
    for part in name.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return "" if value is None else value


def interpolate(value: Any, context: dict[str, Any]) -> str:
    return re.sub(r"\$\{\{(.*?)\}\}", lambda m: str(evaluate(m.group(1), context)), str(value))


def read_outputs(path: Path) -> dict[str, str]:
    outputs: dict[str, str] = {}
    for line in path.read_text().splitlines():
        name, sep, value = line.partition("=")
        assert sep and "<<" not in name, f"unexpected $GITHUB_OUTPUT line {line!r}"
        outputs[name] = value
    return outputs


@dataclass
class Run:
    ran: list[str] = field(default_factory=list)
    skipped_uses: dict[str, dict[str, str]] = field(default_factory=dict)  # action -> its `with`, evaluated
    outputs: dict[str, dict[str, str]] = field(default_factory=dict)
    summary: str = ""


def run_workflow(work: Path, runner_temp: Path, home: Path, variables: dict[str, str]) -> Run:
    workflow = yaml.safe_load(WORKFLOW.read_text())
    (job,) = workflow["jobs"].values()
    summary = runner_temp / "step_summary.md"
    summary.write_text("")
    steps: dict[str, Any] = {}
    context: dict[str, Any] = {"vars": variables, "secrets": {}, "runner": {"temp": str(runner_temp)},
                               "github": {"token": "", "event": {"repository": {"default_branch": "main"}}},
                               "steps": steps, "env": {}}
    base = {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "HOME": str(home),
            "PYTHONPATH": str(REPO), "GIT_CONFIG_NOSYSTEM": "1", "CI": "true", "GITHUB_ACTIONS": "true",
            "RUNNER_TEMP": str(runner_temp), "GITHUB_STEP_SUMMARY": str(summary), "LANG": "C.UTF-8"}
    env = {**base, **{k: interpolate(v, context) for k, v in {**workflow.get("env", {}), **job.get("env", {})}.items()}}
    context["env"] = dict(env)
    result = Run()
    for index, step in enumerate(job["steps"]):
        step_id = step.get("id", f"step{index}")
        condition = str(step.get("if", "true")).removeprefix("${{").removesuffix("}}")
        if not evaluate(condition, context):
            continue
        if "uses" in step:
            result.skipped_uses[step["uses"]] = {k: interpolate(v, context) for k, v in step.get("with", {}).items()}
            continue
        if step_id == "install":
            continue
        output = runner_temp / f"output-{index}"
        output.write_text("")
        script = runner_temp / f"step-{index}.sh"
        script.write_text(step["run"])
        step_env = {**env, **{k: interpolate(v, context) for k, v in step.get("env", {}).items()},
                    "GITHUB_OUTPUT": str(output)}
        done = subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", str(script)], cwd=work,
                              env=step_env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"step {step.get('name', step_id)} failed:\n{done.stdout}\n{done.stderr}"
        steps[step_id] = {"outputs": read_outputs(output)}
        result.ran.append(step_id)
    result.outputs = {name: value["outputs"] for name, value in steps.items()}
    result.summary = summary.read_text()
    return result


# ------------------------------------------------------------------ a repository and the release sites


def git(cwd: Path, *args: str, home: Path) -> str:
    env = {"PATH": os.environ["PATH"], "HOME": str(home), "GIT_CONFIG_NOSYSTEM": "1", "LANG": "C.UTF-8",
           "GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "test@invalid", "GIT_COMMITTER_NAME": "test",
           "GIT_COMMITTER_EMAIL": "test@invalid"}
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout


@dataclass
class Setup:
    mirror: Path
    url: str
    origin: Path
    work: Path
    temp: Path
    home: Path
    lock_before: str

    @property
    def variables(self) -> dict[str, str]:
        return {"IMAGEBUILDER_VERSIONS_MIRRORS": " ".join(f"{c}={u}" for c, u in mirrors_for(self.url).items())}

    def run(self) -> Run:
        return run_workflow(self.work, self.temp, self.home, self.variables)

    def publish(self, minor: str, kubernetes: str, crictl: str | None = None, newest: bool = True) -> None:
        crictl = crictl or RELEASES.get(minor, {}).get("crictl") or f"{minor}.0"
        publish_release(self.mirror, {"kubernetes": kubernetes, "crictl": crictl, **SHARED}, newest=newest)

    def origin_log(self) -> list[str]:
        return git(self.origin, "log", "--format=%s", "main", home=self.home).splitlines()


def make_setup(tmp_path: Path, url: str, mirror: Path, auto_merge: bool) -> Setup:
    home, temp, seed = tmp_path / "home", tmp_path / "runner-temp", tmp_path / "seed"
    for directory in (home, temp, seed):
        directory.mkdir()
    lock = seed / "versions.lock.yaml"
    update_versions(lock, list(RELEASES), mirrors_for(url), pins=PINS, timeout=10)
    matrix = {"os": ["debian-12", "ubuntu-2204"], "kubernetes": list(RELEASES),
              "clouds": {"qemu": {}, "aws": {"regions": ["us-east-1", "eu-west-1"]}},
              "auto_merge_patches": auto_merge}
    (seed / "matrix.yaml").write_text(yaml.safe_dump(matrix, sort_keys=False))
    origin = tmp_path / "origin.git"
    git(tmp_path, "init", "--quiet", "--bare", "--initial-branch=main", str(origin), home=home)
    git(seed, "init", "--quiet", "--initial-branch=main", home=home)
    git(seed, "add", ".", home=home)
    git(seed, "commit", "--quiet", "-m", "matrix and lock", home=home)
    git(seed, "push", "--quiet", str(origin), "main", home=home)
    work = tmp_path / "work"
    git(tmp_path, "clone", "--quiet", str(origin), str(work), home=home)
    return Setup(mirror, url, origin, work, temp, home, lock.read_text())


@pytest.fixture()
def mirror(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    root = tmp_path / "mirror"
    for minor, release in RELEASES.items():
        publish_release(root, {**release, **SHARED}, newest=minor == "1.32")
    with serve_directory(root) as url:
        yield root, url


def cell_ids(work: Path, minor: str) -> set[str]:
    return {cell.id for cell in plan(load_matrix(work / "matrix.yaml")) if cell.kubernetes == minor}


def reported_cells(report: str) -> set[str]:
    return set(re.findall(r"^\| `([^`]+)` \|", report, flags=re.MULTILINE))


# ------------------------------------------------------------------ the tests


def test_a_new_patch_opens_a_pull_request_for_that_minor_only(tmp_path: Path, mirror: tuple[Path, str]) -> None:
    setup = make_setup(tmp_path, mirror[1], mirror[0], auto_merge=False)
    setup.publish("1.32", "1.32.4")
    run = setup.run()

    before, after = yaml.safe_load(setup.lock_before), yaml.safe_load((setup.work / "versions.lock.yaml").read_text())
    assert after["minors"]["1.31"] == before["minors"]["1.31"]
    moved = after["minors"]["1.32"]["components"]
    assert moved["kubernetes"]["version"] == "1.32.4"
    assert moved["kubernetes"]["files"]["kubeadm"]["path"] == "v1.32.4/bin/linux/{arch}/kubeadm"
    assert {c: moved[c] for c in COMPONENTS if c != "kubernetes"} == {
        c: before["minors"]["1.32"]["components"][c] for c in COMPONENTS if c != "kubernetes"}

    outputs = run.outputs["update"]
    expected = cell_ids(setup.work, "1.32")
    assert len(expected) == 4
    assert outputs["changed"] == "true" and outputs["auto_merge"] == "false"
    assert outputs["cells"] == str(len(expected)) and "Kubernetes 1.32.4" in outputs["title"]
    report = Path(outputs["report"]).read_text()
    assert reported_cells(report) == expected
    assert "1.32: kubernetes 1.32.3 -> 1.32.4" in report and report in run.summary

    pull_request = run.skipped_uses[next(a for a in run.skipped_uses if a.startswith("peter-evans/"))]
    assert pull_request["body-path"] == outputs["report"] and pull_request["add-paths"] == "versions.lock.yaml"
    assert pull_request["title"] == outputs["title"]
    assert setup.origin_log() == ["matrix and lock"]  # the pull request carries the change, not the branch

    # The same list, offline, from the command a reviewer would run.
    old = tmp_path / "old.lock.yaml"
    old.write_text(setup.lock_before)
    planned = subprocess.run([sys.executable, "-m", "imagebuilder.cli", "plan", "--matrix",
                              str(setup.work / "matrix.yaml"), "--diff-against", str(old), "--format", "json"],
                             capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert planned.returncode == 0, planned.stderr
    listed = json.loads(planned.stdout)
    assert {cell["id"] for cell in listed} == expected
    assert all(cell["reasons"] == ["kubernetes 1.32.3 -> 1.32.4"] for cell in listed)


def test_auto_merge_commits_to_the_default_branch(tmp_path: Path, mirror: tuple[Path, str]) -> None:
    setup = make_setup(tmp_path, mirror[1], mirror[0], auto_merge=True)
    setup.publish("1.31", "1.31.5", newest=False)
    run = setup.run()

    outputs = run.outputs["update"]
    assert outputs["changed"] == "true" and outputs["auto_merge"] == "true"
    assert not [action for action in run.skipped_uses if action.startswith("peter-evans/")]
    log = setup.origin_log()
    assert log == [outputs["title"], "matrix and lock"]
    changed = git(setup.origin, "diff", "--name-only", "main~1", "main", home=setup.home).split()
    assert changed == ["versions.lock.yaml"]
    message = git(setup.origin, "log", "-1", "--format=%B", "main", home=setup.home)
    assert reported_cells(message) == cell_ids(setup.work, "1.31")
    pushed = yaml.safe_load(git(setup.origin, "show", "main:versions.lock.yaml", home=setup.home))
    assert pushed["minors"]["1.31"]["components"]["kubernetes"]["version"] == "1.31.5"
    assert pushed["minors"]["1.32"] == yaml.safe_load(setup.lock_before)["minors"]["1.32"]

    again = setup.run()  # nothing new upstream: nothing to commit, no pull request
    assert again.outputs["update"]["changed"] == "false" and "commit" not in " ".join(again.ran)
    assert not again.skipped_uses.keys() - {"actions/checkout@v4", "actions/setup-python@v5"}
    assert setup.origin_log() == log and "Up to date" in again.summary


def test_a_new_upstream_minor_is_added_but_rebuilds_nothing(tmp_path: Path, mirror: tuple[Path, str]) -> None:
    setup = make_setup(tmp_path, mirror[1], mirror[0], auto_merge=False)
    setup.publish("1.33", "1.33.0")
    run = setup.run()
    outputs = run.outputs["update"]
    lock = load_versions(setup.work / "versions.lock.yaml")
    assert sorted(lock.minors) == ["1.31", "1.32", "1.33"] and lock.minors["1.33"].kubernetes_version == "1.33.0"
    assert outputs["changed"] == "true" and outputs["cells"] == "0"
    report = Path(outputs["report"]).read_text()
    assert "1.33: added" in report and reported_cells(report) == set()


def test_a_newest_minor_without_all_its_files_waits_and_patches_still_move(tmp_path: Path,
                                                                           mirror: tuple[Path, str]) -> None:
    root, url = mirror
    setup = make_setup(tmp_path, url, root, auto_merge=False)
    setup.publish("1.32", "1.32.4", newest=False)
    publish_release(root, {"kubernetes": "1.33.0", "crictl": "1.32.0", **SHARED}, newest=True)  # no crictl 1.33.0
    report = update_versions(setup.work / "versions.lock.yaml", None, mirrors_for(url), add_newest=True, timeout=10)
    assert report.written and report.added == [] and "1.33: the newest upstream minor is not added yet" in report.deferred
    assert "crictl-v1.33.0" in report.deferred
    lock = load_versions(setup.work / "versions.lock.yaml")
    assert sorted(lock.minors) == ["1.31", "1.32"] and lock.minors["1.32"].kubernetes_version == "1.32.4"


def test_the_workflow_pins_the_third_party_action_and_asks_for_write_access() -> None:
    workflow = yaml.safe_load(WORKFLOW.read_text())
    assert "schedule" in workflow[True]  # YAML 1.1 reads the key `on` as true
    assert workflow["permissions"] == {"contents": "write", "pull-requests": "write"}
    uses = [step["uses"] for job in workflow["jobs"].values() for step in job["steps"] if "uses" in step]
    third_party = [u for u in uses if not u.startswith("actions/")]
    assert third_party and all(re.fullmatch(r"[\w.-]+/[\w.-]+@[0-9a-f]{40}", u) for u in third_party)


def test_a_sum_that_changed_at_the_same_version_goes_to_a_pull_request(tmp_path: Path,
                                                                        mirror: tuple[Path, str]) -> None:
    root, url = mirror
    setup = make_setup(tmp_path, url, root, auto_merge=True)
    (root / "kubernetes" / "v1.31.4" / "bin" / "linux" / "amd64" / "kubeadm.sha256").write_text("f" * 64 + "\n")
    run = setup.run()
    outputs = run.outputs["update"]
    assert outputs["changed"] == "true" and outputs["auto_merge"] == "false"
    assert any(action.startswith("peter-evans/") for action in run.skipped_uses)
    assert setup.origin_log() == ["matrix and lock"]
    report = Path(outputs["report"]).read_text()
    assert "Find out why before merging" in report
    assert reported_cells(report) == cell_ids(setup.work, "1.31")
    assert "kubeadm sha256 or path changed at the same version" in report
