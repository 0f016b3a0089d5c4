"""RHEL's subscription: from the environment only, checked before anything of the cell is built."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from imagebuilder.config import PROJECT_ROOT, load_matrix
from imagebuilder.errors import UserError
from imagebuilder.osinfo import OPERATING_SYSTEMS, RHSM
from imagebuilder.pipeline import check_subscription
from imagebuilder.planner import plan
from imagebuilder.render import ansible_vars

CREDENTIALS = {"RHSM_USER": "someone", "RHSM_PASS": "s3cret-value", "RHSM_ACTIVATION_KEY": "key-value",
               "RHSM_ORG_ID": "org-value"}


@pytest.fixture()
def rhel_cell(tmp_path: Path):
    (tmp_path / "m.yaml").write_text(f'versions_file: {PROJECT_ROOT / "versions.lock.yaml"}\n'
                                     'os: [rhel-9, almalinux-9]\nkubernetes: ["1.35"]\nclouds:\n  aws: {}\n')
    return {cell.os: cell for cell in plan(load_matrix(tmp_path / "m.yaml"))}


def test_a_rhel_cell_without_credentials_fails_naming_the_variables(rhel_cell) -> None:
    with pytest.raises(UserError) as caught:
        check_subscription(rhel_cell["rhel-9"], {"RHSM_USER": "someone"})
    message = str(caught.value)
    assert "\n" not in message and message.startswith("aws-rhel-9-k8s-1.35: rhel-9 registers with")
    assert "RHSM_USER and RHSM_PASS, or RHSM_ACTIVATION_KEY and RHSM_ORG_ID" in message
    check_subscription(rhel_cell["almalinux-9"], {})  # no subscription: nothing asked


@pytest.mark.parametrize("names", RHSM.credentials)
def test_either_credential_set_is_enough(rhel_cell, names: tuple[str, ...]) -> None:
    check_subscription(rhel_cell["rhel-9"], {name: CREDENTIALS[name] for name in names})


def test_credentials_never_reach_the_cells_variables_or_key(rhel_cell, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    cell = rhel_cell["rhel-9"]
    text = json.dumps(ansible_vars(cell)) + json.dumps(cell.__dict__, default=str)
    assert ansible_vars(cell)["imagebuilder_subscription"] == "rhsm"
    assert "imagebuilder_subscription" not in ansible_vars(rhel_cell["almalinux-9"])
    assert not any(value in text for value in CREDENTIALS.values())
    assert OPERATING_SYSTEMS["rhel-9"].subscription is RHSM
