"""The GitHub Actions workflows: valid against the published workflow schema, and wired as intended."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

WORKFLOWS = Path(__file__).resolve().parent.parent / ".github" / "workflows"


@pytest.mark.parametrize("path", sorted(WORKFLOWS.glob("*.yml")), ids=lambda p: p.name)
def test_workflow_matches_the_github_schema(path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.github-workflows",
                             str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_nightly_fans_out_over_the_changed_plan() -> None:
    workflow = yaml.safe_load((WORKFLOWS / "nightly.yml").read_text())
    triggers = workflow[True]  # YAML 1.1 reads the key `on` as true
    assert "schedule" in triggers
    jobs = workflow["jobs"]
    plan_steps = " ".join(step.get("run", "") for step in jobs["plan"]["steps"])
    assert "imagebuilder plan --changed --format github-matrix" in plan_steps
    assert jobs["build"]["strategy"]["fail-fast"] is False
    assert "fromJSON(needs.plan.outputs.matrix)" in jobs["build"]["strategy"]["matrix"]
    assert jobs["summary"]["needs"] == ["plan", "build"] and jobs["summary"]["if"] == "always()"


def test_a_broken_workflow_is_caught(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yml"
    broken.write_text("on: push\njobs:\n  a:\n    runs-onn: ubuntu-latest\n")
    result = subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.github-workflows",
                             str(broken)], capture_output=True, text=True)
    assert result.returncode != 0
