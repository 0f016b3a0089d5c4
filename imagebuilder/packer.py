"""Running the Packer binary: its version, `packer validate`, `packer build`."""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from imagebuilder.errors import UserError

Version = tuple[int, int, int]


def parse_version(text: str) -> Version:
    match = re.search(r"(\d+)\.(\d+)\.(\d+)", text)
    if not match:
        raise UserError(f"cannot read a Packer version from '{text.strip()[:60]}' "
                        "(install Packer or pass --packer-version 1.11.2)")
    major, minor, patch = (int(part) for part in match.groups())
    return major, minor, patch


def packer_binary() -> str:
    found = shutil.which("packer")
    if found is None:
        raise UserError("packer: not found on PATH | fix: install it (https://developer.hashicorp.com/packer/install; "
                        "on Debian: apt-get install packer)")
    return found


# render writes this file (with `required_plugins`) for Packer 1.7 and later.
PLUGINS_FILE = "plugins.pkr.hcl"


def needs_init(cell_dir: Path) -> bool:
    """A cell directory that declares required_plugins must be `packer init`-ed before a build."""
    return (cell_dir / PLUGINS_FILE).is_file()


def packer_init_command() -> list[str]:
    """Installs the declared plugins (once; later runs find them in Packer's plugin directory)."""
    return [packer_binary(), "init", "."]


@lru_cache(maxsize=1)
def installed_version() -> Version | None:
    """The Packer on PATH, or None when there is none (render then emits the modern form)."""
    if shutil.which("packer") is None:
        return None
    result = subprocess.run([packer_binary(), "version"], capture_output=True, text=True, timeout=60)
    return parse_version(result.stdout)


@dataclass(frozen=True)
class ValidateResult:
    directory: Path
    ok: bool
    output: str
    parsed_only: bool = False  # Packer could not check it (plugin_missing): the HCL was parsed instead


def parse_only(cell_dir: Path, reason: str) -> ValidateResult:
    """What can be checked of a cell whose builder this Packer lacks: every .pkr.hcl file parses
    as HCL2 (python-hcl2). `output` is the one line that says so, or the parser's error."""
    import hcl2

    for path in sorted(cell_dir.glob("*.pkr.hcl")):
        try:
            hcl2.loads(path.read_text())
        except Exception as error:  # noqa: BLE001 - the parser's errors have no common base; one line each
            return ValidateResult(directory=cell_dir, ok=False, output=f"{path.name}: does not parse as HCL2 "
                                  f"({' '.join(str(error).split())[:300]}); {reason}")
    return ValidateResult(directory=cell_dir, ok=True, parsed_only=True,
                          output=f"{reason}; the HCL was parsed with python-hcl2 instead")


UPLOADED_SYSEXT = re.compile(r'source\s*=\s*"\$\{path\.root\}/(sysext/[^"/]+\.raw)"')


def prepare_for_validate(cell_dir: Path) -> None:
    """The qemu build's inputs that `imagebuilder build` links in are checked by validate:
    a throw-away key stands in for them until a build links the real ones."""
    for upload in UPLOADED_SYSEXT.findall("".join(path.read_text() for path in cell_dir.glob("*.pkr.hcl"))):
        stand_in = cell_dir / upload  # a Flatcar bake's sysext, built by `build` (flatcar.prepare_packer)
        if not stand_in.exists():
            stand_in.parent.mkdir(parents=True, exist_ok=True)
            stand_in.touch()
    local_build = any("base/id_ed25519" in path.read_text() for path in cell_dir.glob("*.pkr.hcl"))
    if local_build and not (cell_dir / "base" / "id_ed25519").exists():
        (cell_dir / "base" / "seed").mkdir(parents=True, exist_ok=True)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "imagebuilder-validate",
                        "-f", str(cell_dir / "base" / "id_ed25519")], check=True, capture_output=True)
        for name in ("user-data", "meta-data"):
            (cell_dir / "base" / "seed" / name).touch()


_INIT_LOCK = threading.Lock()


def validate(cell_dir: Path, env: dict[str, str] | None = None) -> ValidateResult:
    prepare_for_validate(cell_dir)
    if needs_init(cell_dir):
        with _INIT_LOCK:  # one `packer init` at a time: they install into the same plugin directory
            init = subprocess.run(packer_init_command(), cwd=cell_dir, capture_output=True, text=True, timeout=600,
                                  env=env)
        if init.returncode != 0:
            return ValidateResult(directory=cell_dir, ok=False, output=(init.stdout + init.stderr).strip())
    result = subprocess.run([packer_binary(), "validate", "."], cwd=cell_dir, capture_output=True, text=True,
                            timeout=300, env=env)
    output = (result.stdout + result.stderr).strip()
    return ValidateResult(directory=cell_dir, ok=result.returncode == 0, output=output)
