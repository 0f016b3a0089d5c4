"""The GitHub Actions workflows: valid against the published workflow schema, and run as written.

The `run:` steps of nightly.yml's plan job and of cleanup.yml run here in order, with bash -e
as on a runner, the `env:` the workflow sets, $GITHUB_OUTPUT, $GITHUB_ENV and
$GITHUB_STEP_SUMMARY files, against moto (AWS) and a real Glance (OpenStack). The `${{ }}`
expressions are the test's values (secrets, vars, the event); an expression the test does not
know fails it. A `uses:` step is an action: the test checks its `if:` and inputs and gives
the environment the action would leave (credentials aimed at the local services).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import openstack
import pytest
import yaml
from base_mirror import base_mirrors, publish_debian, publish_ubuntu
from mirror import serve_directory
from services import aws_env, glance_url, moto_url, openstack_env, qcow2_file  # noqa: F401 (fixtures)
from test_retention_stores import NovaStandin, nova  # noqa: F401 (fixture: Nova's servers API, for in-use checks)
from test_sysext import Fixture, fixture_mirror  # noqa: F401 (fixture: release files for a sysext)
from test_sysext import write_matrix as write_sysext_matrix

from imagebuilder import baseimages, render
from imagebuilder import sysext_signing as signing
from imagebuilder.artifact import Artifact
from imagebuilder.build import Job, PackerExecutor
from imagebuilder.clouds import store_for
from imagebuilder.clouds.aws.settings import AwsSettings
from imagebuilder.clouds.openstack.settings import OpenstackSettings
from imagebuilder.config import load_matrix
from imagebuilder.github import MATRIX_LIMIT
from imagebuilder.packer import needs_init
from imagebuilder.planner import Cell, plan

REPO = Path(__file__).resolve().parent.parent
WORKFLOWS = REPO / ".github" / "workflows"
DATA = Path(__file__).parent / "data"
EXPRESSION = re.compile(r"\$\{\{\s*(.*?)\s*\}\}")
CONTAINS_CLOUD = re.compile(r"contains\(fromJSON\(steps\.(\w+)\.outputs\.(\w+)\), '([\w-]+)'\)")
CLOUD_ACTIONS = {"aws": "aws-actions/configure-aws-credentials", "gcp": "google-github-actions/auth",
                 "azure": "azure/login"}
OIDC_INPUTS = {"aws": {"role-to-assume"}, "gcp": {"workload_identity_provider", "service_account"},
               "azure": {"client-id", "tenant-id", "subscription-id"}}
# Only clouds the local services provide: qemu (the local catalogue), AWS (moto), OpenStack (Glance).
TEST_MATRIX = """\
versions_file: versions.lock.yaml
os: [debian-12, ubuntu-2204, flatcar]
kubernetes: ["1.30", "1.31", "1.32"]
clouds:
  qemu: {}
  aws: {regions: [us-east-1]}
  openstack: {}
exclude:
  - {os: flatcar, cloud: qemu}
"""


def workflow(name: str) -> dict[str, Any]:
    return yaml.safe_load((WORKFLOWS / name).read_text())


@pytest.mark.parametrize("path", sorted(WORKFLOWS.glob("*.yml")), ids=lambda p: p.name)
def test_workflow_matches_the_github_schema(path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.github-workflows",
                             str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_broken_workflow_is_caught(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yml"
    broken.write_text("on: push\njobs:\n  a:\n    runs-onn: ubuntu-latest\n")
    result = subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.github-workflows",
                             str(broken)], capture_output=True, text=True)
    assert result.returncode != 0


# -- running a job's steps -------------------------------------------------------------------


def parse_command_file(path: Path) -> dict[str, str]:
    """$GITHUB_OUTPUT / $GITHUB_ENV: `name=value` lines and `name<<DELIMITER` blocks."""
    values: dict[str, str] = {}
    lines = path.read_text().splitlines() if path.exists() else []
    index = 0
    while index < len(lines):
        line = lines[index]
        index += 1
        if "<<" in line and ("=" not in line or line.index("<<") < line.index("=")):
            name, delimiter = line.split("<<", 1)
            block: list[str] = []
            while lines[index] != delimiter:
                block.append(lines[index])
                index += 1
            index += 1
            values[name] = "\n".join(block)
        elif "=" in line:
            name, value = line.split("=", 1)
            values[name] = value
    return values


Action = Callable[[dict[str, str]], dict[str, str]]


@dataclass
class JobRun:
    """One job's steps, run in order in a workspace as a runner would."""

    workspace: Path
    temp: Path
    base_env: dict[str, str]
    values: dict[str, str]  # ${{ expression }} -> the value the test gives it
    actions: dict[str, Action]  # action (without @version) -> the environment it leaves
    outputs: dict[str, dict[str, str]] = field(default_factory=dict)  # step id -> outputs
    exported: dict[str, str] = field(default_factory=dict)  # $GITHUB_ENV so far
    ran: list[str] = field(default_factory=list)  # the steps that ran: names, or the action used
    skipped: list[str] = field(default_factory=list)

    @property
    def summary(self) -> Path:
        return self.temp / "step-summary.md"

    def value(self, expression: str) -> str:
        step_output = re.fullmatch(r"steps\.(\w+)\.outputs\.(\w+)", expression)
        if step_output:
            return self.outputs.get(step_output[1], {}).get(step_output[2], "")
        assert expression in self.values, f"the test gives no value to ${{{{ {expression} }}}}"
        return self.values[expression]

    def expand(self, text: str) -> str:
        return EXPRESSION.sub(lambda match: self.value(match[1]), text)

    def condition(self, step: dict[str, Any]) -> bool:
        expression = str(step.get("if", "true")).strip()
        expression = EXPRESSION.fullmatch(expression)[1] if EXPRESSION.fullmatch(expression) else expression
        cloud_check = CONTAINS_CLOUD.fullmatch(expression)
        if cloud_check:
            return cloud_check[3] in json.loads(self.outputs[cloud_check[1]][cloud_check[2]])
        return self.value(expression) == "true" if expression != "true" else True

    def run(self, workflow: dict[str, Any], job_name: str, skip: tuple[str, ...] = ("install",)) -> dict[str, str]:
        """Every step of the job; returns the job's outputs."""
        job = workflow["jobs"][job_name]
        static_env = {**workflow.get("env", {}), **job.get("env", {})}
        for index, step in enumerate(job["steps"]):
            label = step.get("name") or step.get("uses", "").split("@")[0] or f"step {index}"
            if not self.condition(step):
                self.skipped.append(label)
                continue
            if "uses" in step:
                action = step["uses"].split("@")[0]
                assert action in self.actions, f"{label}: the test does not stand in for {action}"
                inputs = {key: self.expand(str(value)) for key, value in step.get("with", {}).items()}
                self.exported.update(self.actions[action](inputs))
            elif label in skip:
                pass  # installs what the test environment has already
            else:
                self._run_script(step, label, static_env)
            self.ran.append(label)
        return {name: self.expand(value) for name, value in job.get("outputs", {}).items()}

    def _run_script(self, step: dict[str, Any], label: str, static_env: dict[str, str]) -> None:
        output, github_env = self.temp / f"output-{len(self.ran)}", self.temp / f"env-{len(self.ran)}"
        env = {**self.base_env, **{k: self.expand(str(v)) for k, v in static_env.items()}, **self.exported,
               **{k: self.expand(str(v)) for k, v in step.get("env", {}).items()},
               "GITHUB_OUTPUT": str(output), "GITHUB_ENV": str(github_env), "GITHUB_STEP_SUMMARY": str(self.summary),
               "GITHUB_WORKSPACE": str(self.workspace), "RUNNER_TEMP": str(self.temp)}
        script = self.temp / f"step-{len(self.ran)}.sh"
        script.write_text(self.expand(step["run"]))
        result = subprocess.run(["bash", "--noprofile", "--norc", "-e", str(script)], cwd=self.workspace, env=env,
                                capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, f"step {label}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        if "id" in step:
            self.outputs[step["id"]] = parse_command_file(output)
        self.exported.update(parse_command_file(github_env))


@dataclass(frozen=True)
class Services:
    moto: str
    glance: str
    nova: NovaStandin
    bases: str  # the sites of the qemu bases (Debian's InRelease files, Ubuntu's cloud images)


@pytest.fixture
def services(aws_env: str, openstack_env: str, nova: NovaStandin, tmp_path: Path) -> Iterator[Services]:
    """moto serves the vendors' AMIs; Glance gets the stock images the cells' bases name."""
    for name in ("debian-12", "ubuntu-22.04"):
        openstack.connect().image.create_image(name=name, filename=str(qcow2_file(tmp_path / f"{name}.qcow2", "1M")),
                                               disk_format="qcow2", container_format="bare", wait=True)
    publish_debian(tmp_path / "bases", "Sat, 01 Mar 2025 10:00:00 UTC")
    publish_ubuntu(tmp_path / "bases")
    with serve_directory(tmp_path / "bases") as bases:
        yield Services(moto=aws_env, glance=openstack_env, nova=nova, bases=bases)


def prepared_run(tmp_path: Path, services: Services, values: dict[str, str]) -> JobRun:
    """A workspace holding the test matrix, `imagebuilder` from this checkout on PATH, no
    credentials but what the actions leave, and every cache of ours under tmp_path."""
    workspace, temp, home, bin_dir = (tmp_path / name for name in ("workspace", "temp", "home", "bin"))
    for directory in (workspace, temp, home, bin_dir):
        directory.mkdir()
    (workspace / "matrix.yaml").write_text(TEST_MATRIX + yaml.safe_dump({"mirrors": base_mirrors(services.bases)}))
    shutil.copy(DATA / "versions.lock.yaml", workspace / "versions.lock.yaml")
    wrapper = bin_dir / "imagebuilder"
    wrapper.write_text(f"#!/bin/sh\nPYTHONPATH={REPO} exec {sys.executable} -m imagebuilder.cli \"$@\"\n")
    wrapper.chmod(0o755)
    base_env = {
        "PATH": os.pathsep.join([str(bin_dir), str(Path(sys.executable).parent), "/usr/local/bin", "/usr/bin", "/bin"]),
        "HOME": str(home), "LANG": "C.UTF-8", "CI": "true",
        "IMAGEBUILDER_CACHE": str(tmp_path / "cache"), "IMAGEBUILDER_CATALOGUE": str(tmp_path / "catalogue"),
        "AWS_CONFIG_FILE": str(home / "aws-config"), "AWS_SHARED_CREDENTIALS_FILE": str(home / "aws-credentials"),
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    clouds_yaml = yaml.safe_dump({"clouds": {"glance": {
        "auth_type": "none", "image_endpoint_override": services.glance + "/",
        "compute_endpoint_override": services.nova.url,
        "block_storage_endpoint_override": services.nova.cinder_url}}})

    def aws_credentials(inputs: dict[str, str]) -> dict[str, str]:
        assert inputs["role-to-assume"].startswith("arn:aws:iam::"), inputs
        region = inputs["aws-region"]
        # What the action exports after assuming the role; the endpoint aims boto3 at moto.
        return {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_SESSION_TOKEN": "testing",
                "AWS_REGION": region, "AWS_DEFAULT_REGION": region, "AWS_ENDPOINT_URL": services.moto}

    def no_environment(inputs: dict[str, str]) -> dict[str, str]:
        return {}

    values = {"secrets.OPENSTACK_CLOUDS_YAML": clouds_yaml, "vars.OS_CLOUD": "glance",
              "vars.AWS_REGION || 'us-east-1'": "us-east-1", "always()": "true", **values}
    actions: dict[str, Action] = {"actions/checkout": no_environment, "actions/setup-python": no_environment,
                                  "actions/upload-artifact": no_environment,
                                  CLOUD_ACTIONS["aws"]: aws_credentials}
    return JobRun(workspace=workspace, temp=temp, base_env=base_env, values=values, actions=actions)


def workspace_cells(workspace: Path) -> list[Cell]:
    """The cells as the workflow plans them, their bases resolved against the local services."""
    loaded = load_matrix(workspace / "matrix.yaml")
    return baseimages.resolve_cells(plan(loaded), loaded, baseimages.Resolver())




def publish_aws(cell: Cell) -> str:
    """What a finished amazon-ebs build of the cell leaves, published with our metadata."""
    ec2 = boto3.client("ec2", region_name="us-east-1")
    volume = ec2.create_volume(AvailabilityZone="us-east-1a", Size=8)
    snapshot = ec2.create_snapshot(VolumeId=volume["VolumeId"])["SnapshotId"]
    image_id = ec2.register_image(
        Name=cell.image_name, Architecture="x86_64", RootDeviceName="/dev/xvda", VirtualizationType="hvm",
        BlockDeviceMappings=[{"DeviceName": "/dev/xvda", "Ebs": {"SnapshotId": snapshot}}])["ImageId"]
    artifact = Artifact(cell_id=cell.id, cloud="aws", build_key=cell.build_key, image_name=cell.image_name,
                        metadata=render.cell_metadata(cell), ids={"us-east-1": image_id})
    return store_for("aws", AwsSettings(regions=["us-east-1"])).publish(artifact)["us-east-1"]


def publish_openstack(cell: Cell, directory: Path) -> str:
    image = qcow2_file(directory / f"{cell.image_name}.qcow2", "8M")
    artifact = Artifact(cell_id=cell.id, cloud="openstack", build_key=cell.build_key, image_name=cell.image_name,
                        metadata=render.cell_metadata(cell), ids={"default": str(image)}, files=[str(image)])
    (image_id,) = store_for("openstack", OpenstackSettings()).publish(artifact).values()
    return image_id


# -- nightly ---------------------------------------------------------------------------------


def test_nightly_plan_job_emits_the_cells_to_bake_in_shards_and_the_sysext_cells_apart(
        tmp_path: Path, services: Services) -> None:
    nightly = workflow("nightly.yml")
    job_run = prepared_run(tmp_path, services, {"vars.AWS_ROLE_ARN": "arn:aws:iam::123456789012:role/nightly"})
    cells = workspace_cells(job_run.workspace)
    by_id = {cell.id: cell for cell in cells}
    built = {publish_aws(by_id["aws-debian-12-k8s-1.31"]): "aws-debian-12-k8s-1.31",
             publish_openstack(by_id["openstack-ubuntu-2204-k8s-1.30"], tmp_path / "qcow2"):
                 "openstack-ubuntu-2204-k8s-1.30"}

    outputs = job_run.run(nightly, "plan")

    # Credentials for the declared clouds only; the OpenStack one from the clouds.yaml secret.
    assert json.loads(job_run.outputs["clouds"]["clouds"]) == ["qemu", "aws", "openstack"]
    assert CLOUD_ACTIONS["aws"] in job_run.ran and "openstack clouds.yaml" in job_run.ran
    assert CLOUD_ACTIONS["gcp"] in job_run.skipped and CLOUD_ACTIONS["azure"] in job_run.skipped
    assert job_run.exported["OS_CLOUD"] == "glance"

    shards = json.loads(outputs["shards"])["include"]
    assert shards and all(len(shard["cells"]["include"]) <= MATRIX_LIMIT for shard in shards)
    entries = [entry for shard in shards for entry in shard["cells"]["include"]]
    to_bake = {cell.id for cell in cells if cell.strategy == "bake"} - set(built.values())
    assert [entry["id"] for entry in entries] == [cell.id for cell in cells if cell.id in to_bake]
    assert all(entry["strategy"] == "bake" for entry in entries)  # no sysext cell in the build matrix
    assert int(outputs["count"]) == len(to_bake) == 16
    sysext = json.loads(outputs["sysext"])["include"]
    assert [entry["id"] for entry in sysext] == [cell.id for cell in cells if cell.os == "flatcar"]
    assert int(outputs["sysext_count"]) == 6
    assert "cells to bake: 16 in 1 shards, sysext cells: 6" in job_run.summary.read_text()


def test_nightly_sysext_job_builds_and_uploads_the_sysext_cells(tmp_path: Path, services: Services,
                                                               fixture_mirror: Fixture) -> None:
    nightly = workflow("nightly.yml")
    bucket = "sysext-images"
    job_run = prepared_run(tmp_path, services, {
        "vars.AWS_ROLE_ARN": "arn:aws:iam::123456789012:role/nightly", "vars.SYSEXT_S3_BUCKET != ''": "true",
        "vars.SYSEXT_BASE_URL": "https://sysext.example.com/", "vars.SYSEXT_S3_BUCKET": bucket,
        "vars.SYSEXT_S3_PREFIX": "sysext/", "secrets.SYSEXT_SIGNING_KEY": fixture_mirror.key.armored_secret,
        "secrets.SYSEXT_SIGNING_PASSPHRASE": ""})
    write_sysext_matrix(job_run.workspace, fixture_mirror)
    planned = subprocess.run([str(tmp_path / "bin" / "imagebuilder"), "plan", "--strategy", "sysext", "--format",
                              "github-matrix"], cwd=job_run.workspace, capture_output=True, text=True, check=True)
    job_run.values["needs.plan.outputs.sysext"] = planned.stdout.strip()
    boto3.client("s3", region_name="us-east-1").create_bucket(Bucket=bucket)

    job_run.run(nightly, "sysext", skip=("install", "install mksquashfs"))

    built = sorted(path.name for path in (job_run.workspace / "build" / "sysext").iterdir())
    image = next(name for name in built if name.endswith(".raw"))
    assert re.fullmatch(r"kubernetes-v[\d.]+-x86-64\.raw", image) and "SHA256SUMS" in built
    keys = {item["Key"] for item in boto3.client("s3", region_name="us-east-1").list_objects_v2(
        Bucket=bucket, Prefix="sysext/")["Contents"]}
    assert {f"sysext/{image}", "sysext/SHA256SUMS", "sysext/SHA256SUMS.gpg"} <= keys
    served = tmp_path / "served"
    served.mkdir()
    for name in ("SHA256SUMS", "SHA256SUMS.gpg"):
        boto3.client("s3", region_name="us-east-1").download_file(bucket, f"sysext/{name}", str(served / name))
    signing.check_signature(served / "SHA256SUMS", served / "SHA256SUMS.gpg", fixture_mirror.key.keyring)


def test_nightly_jobs_consume_the_plan() -> None:
    nightly = workflow("nightly.yml")
    jobs = nightly["jobs"]
    assert "schedule" in nightly[True]  # YAML 1.1 reads the key `on` as true
    build = jobs["build"]
    assert build["strategy"]["matrix"] == "${{ fromJSON(needs.plan.outputs.shards) }}"
    assert build["uses"] == "./.github/workflows/build-cells.yml"
    assert build["with"]["matrix"] == "${{ toJSON(matrix.cells) }}" and build["secrets"] == "inherit"
    sysext_steps = " ".join(step.get("run", "") for step in jobs["sysext"]["steps"])
    assert jobs["build"]["if"] == "${{ !cancelled() && needs.plan.outputs.count > 0 }}"
    assert jobs["sysext"]["if"] == "${{ !cancelled() && needs.plan.outputs.sysext_count > 0 }}"
    assert "imagebuilder sysext build" in sysext_steps
    assert any(step.get("uses", "").startswith("actions/upload-artifact") for step in jobs["sysext"]["steps"])
    assert set(jobs["summary"]["needs"]) == {"plan", "build", "sysext"} and jobs["summary"]["if"] == "always()"

    cells = workflow("build-cells.yml")
    assert cells[True]["workflow_call"]["inputs"]["matrix"]["required"] is True
    cell_job = cells["jobs"]["build"]
    assert cell_job["strategy"]["matrix"] == "${{ fromJSON(inputs.matrix) }}"
    steps = cell_job["steps"]
    packer = next(step for step in steps if step.get("uses", "").startswith("hashicorp/setup-packer@"))
    assert packer["with"]["version"] == "${{ env.PACKER_VERSION }}"
    assert re.fullmatch(r"\d+\.\d+\.\d+", cells["env"]["PACKER_VERSION"])  # pinned
    assert not any("apt-get install" in step.get("run", "") and "grep -vx packer" not in step["run"] for step in steps)
    for cloud, action in CLOUD_ACTIONS.items():  # each cell gets its own cloud's credentials, by OIDC
        (step,) = [step for step in steps if step.get("uses", "").startswith(action + "@")]
        assert step["if"] == f"matrix.cloud == '{cloud}'" and OIDC_INPUTS[cloud] <= set(step["with"])
    build_step = next(step for step in steps if step.get("name", "").startswith("build "))
    assert "sudo" in build_step["run"] and '"${CLOUD}" = "qemu"' in build_step["run"]
    qcow2 = next(step for step in steps if step.get("with", {}).get("name", "").startswith("qcow2-"))
    assert qcow2["if"] == "success() && matrix.cloud == 'qemu'" and qcow2["with"]["path"].endswith(".qcow2")


def test_every_cloud_is_authenticated_only_when_declared() -> None:
    for name, job in (("nightly.yml", "plan"), ("cleanup.yml", "prune")):
        steps = workflow(name)["jobs"][job]["steps"]
        for cloud, action in CLOUD_ACTIONS.items():
            (step,) = [step for step in steps if step.get("uses", "").startswith(action + "@")]
            assert step["if"] == f"contains(fromJSON(steps.clouds.outputs.clouds), '{cloud}')", (name, cloud)
            assert OIDC_INPUTS[cloud] <= set(step["with"])


# -- cleanup ---------------------------------------------------------------------------------


@pytest.mark.parametrize("event, applied", [("workflow_dispatch", False), ("schedule", True)])
def test_cleanup_lists_its_plan_and_applies_only_on_schedule(tmp_path: Path, services: Services, event: str,
                                                              applied: bool) -> None:
    cleanup = workflow("cleanup.yml")
    apply_expression = cleanup["jobs"]["prune"]["steps"][-2]["env"]["APPLY"]
    job_run = prepared_run(tmp_path, services, {
        "vars.AWS_PRUNE_ROLE_ARN": "arn:aws:iam::123456789012:role/prune",
        EXPRESSION.fullmatch(apply_expression)[1]: "true" if event == "schedule" else "false"})
    cells = {cell.id: cell for cell in workspace_cells(job_run.workspace)}
    ami = publish_aws(cells["aws-debian-12-k8s-1.31"])
    glance_image = publish_openstack(cells["openstack-debian-12-k8s-1.31"], tmp_path / "qcow2")
    install = next(step for step in cleanup["jobs"]["prune"]["steps"] if step.get("name") == "install")
    assert "'.[all]'" in install["run"]  # every cloud's SDK: the matrix may declare any

    job_run.run(cleanup, "prune")

    report = json.loads((job_run.workspace / "prune.json").read_text())
    assert report["applied"] is applied
    listed = {(image["cloud"], image["image_id"]): image["action"] for image in report["images"]}
    assert listed == {("aws", ami): "keep", ("openstack", glance_image): "keep"}  # newest of their groups
    summary = job_run.summary.read_text()
    assert f"### prune ({'applied' if applied else 'dry run'})" in summary
    assert f"| aws | us-east-1 | {ami} | keep |" in summary
    assert boto3.client("ec2", region_name="us-east-1").describe_images(ImageIds=[ami])["Images"]
    assert any("image=" in request for request in services.nova.requests)  # in-use checked through clouds.yaml
    assert any("/volumes/detail" in request for request in services.nova.requests)  # boot-from-volume servers too


# -- plan's GitHub formats -------------------------------------------------------------------


def plan_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "imagebuilder.cli", "plan", "--offline", *args], capture_output=True, text=True,
                          cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})


def test_a_matrix_over_256_cells_is_refused_as_one_matrix_and_sharded(tmp_path: Path) -> None:
    sys.path.insert(0, str(REPO / "bench"))
    from matrix1000 import write_matrix

    matrix = write_matrix(tmp_path)
    cells = plan(load_matrix(matrix))
    assert len(cells) > MATRIX_LIMIT

    # the formats, not the bases: planned --offline (its one line on stderr first)
    refused = plan_cli("-m", str(matrix), "--format", "github-matrix")
    assert refused.returncode == 2 and refused.stdout == ""
    note, error = refused.stderr.splitlines()
    assert note == baseimages.OFFLINE_NOTE and "256" in error and "github-shards" in error

    sharded = plan_cli("-m", str(matrix), "--format", "github-shards")
    assert sharded.returncode == 0, sharded.stderr
    shards = json.loads(sharded.stdout)["include"]
    sizes = [len(shard["cells"]["include"]) for shard in shards]
    assert len(shards) == -(-len(cells) // MATRIX_LIMIT) and max(sizes) <= MATRIX_LIMIT
    assert max(sizes) - min(sizes) <= 1  # even shards
    assert [shard["shard"] for shard in shards] == [f"{n}/{len(shards)}" for n in range(1, len(shards) + 1)]
    assert [e["id"] for shard in shards for e in shard["cells"]["include"]] == [cell.id for cell in cells]

    baked = plan_cli("-m", str(matrix), "--strategy", "bake", "--only", "aws-*", "--format", "github-matrix")
    assert baked.returncode == 0, baked.stderr
    assert {e["strategy"] for e in json.loads(baked.stdout)["include"]} == {"bake"}
    clouds = plan_cli("-m", str(matrix), "--only", "gcp-*", "--only", "qemu-*", "--format", "clouds")
    assert json.loads(clouds.stdout) == ["qemu", "gcp"]


# -- packer init -----------------------------------------------------------------------------


FAKE_PACKER = """#!/bin/sh
echo "$*" >> "{calls}"
case "$1" in
  version) echo "Packer v1.11.2" ;;
  init) if [ -e "{fail_init}" ]; then echo "Error: Failed getting the plugin: dial tcp: i/o timeout" >&2; exit 1; fi ;;
  build) exit 0 ;;
esac
"""


@pytest.mark.parametrize("packer_version, initialised", [((1, 11, 2), True), ((1, 6, 6), False)])
def test_build_runs_packer_init_where_render_wrote_required_plugins(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, packer_version: tuple[int, int, int],
        initialised: bool) -> None:
    import threading

    cell = next(c for c in plan(load_matrix(DATA / "matrix.yaml")) if c.cloud == "aws")
    (rendered,) = render.render_cells([cell], tmp_path / "build", packer_version)
    assert needs_init(rendered.directory) is initialised
    calls, fail_init = tmp_path / "calls", tmp_path / "fail-init"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "packer").write_text(FAKE_PACKER.format(calls=calls, fail_init=fail_init))
    (bin_dir / "packer").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    job = Job(cell=cell, directory=rendered.directory, estimate=1.0)

    outcome = PackerExecutor()(job, threading.Event())
    assert outcome.ok
    commands = [line.split()[0] for line in calls.read_text().splitlines()]
    assert commands == (["init", "build"] if initialised else ["build"])
    if initialised:
        fail_init.touch()
        calls.unlink()
        failed = PackerExecutor()(job, threading.Event())
        assert not failed.ok and failed.retryable  # a plugin download that failed is tried again
        assert calls.read_text().split() == ["init", "."]  # no build without its plugins
        assert "Failed getting the plugin" in job.log_path.read_text()
