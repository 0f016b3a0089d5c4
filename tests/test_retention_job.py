"""The scheduled cleanup: the GitHub workflow and the Kubernetes CronJob, checked as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import yaml

from imagebuilder.cli.prune import prune

ROOT = Path(__file__).resolve().parent.parent
WORKFLOW = ROOT / ".github" / "workflows" / "cleanup.yml"
CRONJOB = ROOT / "deploy" / "cronjob.yaml"
SECRET = ROOT / "deploy" / "secret.example.yaml"
CRON_FIELD = re.compile(r"^(\*|\d+(-\d+)?(,\d+(-\d+)?)*)(/\d+)?$")
CREDENTIAL = re.compile(r"^(AWS_(ACCESS_KEY_ID|SECRET_ACCESS_KEY|SESSION_TOKEN)|OS_(CLOUD|PASSWORD|.*SECRET.*)"
                        r"|AZURE_.*|GOOGLE_.*)$")


def valid_cron(expression: str) -> bool:
    fields = expression.split()
    return len(fields) == 5 and all(CRON_FIELD.match(field) for field in fields)


def test_cleanup_workflow_matches_the_github_schema() -> None:
    result = subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.github-workflows",
                             str(WORKFLOW)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_cleanup_workflow_applies_only_on_schedule_or_when_asked() -> None:
    workflow = yaml.safe_load(WORKFLOW.read_text())
    triggers = workflow[True]  # YAML 1.1 reads the key `on` as true
    assert all(valid_cron(entry["cron"]) for entry in triggers["schedule"])
    assert triggers["workflow_dispatch"]["inputs"]["apply"]["default"] is False
    assert workflow["concurrency"]["cancel-in-progress"] is False
    steps = workflow["jobs"]["prune"]["steps"]
    prune_step = next(step for step in steps if step.get("name") == "prune")
    assert prune_step["env"]["APPLY"] == "${{ github.event_name == 'schedule' || inputs.apply }}"
    script = prune_step["run"]
    assert 'imagebuilder prune -m "${MATRIX}" --wait --output json ${flags}' in script
    assert '--apply' not in script.replace('flags="--apply"', "")  # only through $APPLY
    assert 'exit "${status}"' in script  # partial failures fail the job
    assert not any(isinstance(v, str) and "AKIA" in v for v in prune_step["env"].values())


def test_cronjob_runs_the_cli_with_credentials_from_the_secret() -> None:
    documents = [d for d in yaml.safe_load_all(CRONJOB.read_text()) if d]
    assert [(d["apiVersion"], d["kind"]) for d in documents] == [("batch/v1", "CronJob")]
    cronjob = documents[0]["spec"]
    assert valid_cron(cronjob["schedule"])
    assert cronjob["concurrencyPolicy"] == "Forbid"
    pod = cronjob["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    (container,) = pod["containers"]
    assert container["command"] == ["imagebuilder"] and container["args"][0] == "prune"
    # Intended: the scheduled cleanup applies; the policy is what keeps it safe.
    assert "--apply" in container["args"] and "--wait" in container["args"]
    context = prune.make_context("prune", list(container["args"][1:]))  # the options are the CLI's own
    assert context.params["do_apply"] is True and context.params["matrix_path"] == Path("/etc/imagebuilder/matrix.yaml")

    secret_name = "imagebuilder-prune-credentials"
    credentials = [e for e in container["env"] if CREDENTIAL.match(e["name"])]
    assert {e["name"] for e in credentials} >= {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    for variable in credentials:
        assert "value" not in variable, f"{variable['name']} is written in the manifest"
        assert variable["valueFrom"]["secretKeyRef"]["name"] == secret_name
    mounted = {v["name"]: v for v in pod["volumes"]}
    assert mounted["openstack"]["secret"]["secretName"] == secret_name
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    cache = next(e["value"] for e in container["env"] if e["name"] == "IMAGEBUILDER_CACHE")
    assert any(m["mountPath"] == cache for m in container["volumeMounts"])  # the lock file has a writable home


def test_the_example_secret_holds_no_real_credentials() -> None:
    secret = yaml.safe_load(SECRET.read_text())
    assert secret["kind"] == "Secret" and secret["metadata"]["name"] == "imagebuilder-prune-credentials"
    cronjob = yaml.safe_load(CRONJOB.read_text())
    container = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    keys = {e["valueFrom"]["secretKeyRef"]["key"] for e in container["env"] if "valueFrom" in e}
    assert keys <= set(secret["stringData"])  # every key the CronJob reads is documented
    assert all("REPLACE-ME" in value for value in secret["stringData"].values())
