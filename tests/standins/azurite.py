"""Azurite (the Azure Storage emulator from npm) serving the blob API on 127.0.0.1.

Installed with npm into a cache directory the tests control when absent
(``npm install --prefix DIR azurite@3``), then started as ``azurite-blob`` on a free port
with in-memory storage. Only npm (and Node) must be on the machine.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

AZURITE_SPEC = "azurite@3.35.0"  # 3.36 needs Node 21+, 3.37 Node 22; the machines have Node 20
# Azurite's documented well-known development account (public, not a secret).
ACCOUNT = "devstoreaccount1"
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
LISTENING = re.compile(r"successfully listens on (http://127\.0\.0\.1:\d+)")


@dataclass(frozen=True)
class Azurite:
    blob_endpoint: str  # http://127.0.0.1:PORT/devstoreaccount1
    account: str = ACCOUNT
    account_key: str = ACCOUNT_KEY

    @property
    def credential(self) -> dict[str, str]:
        return {"account_name": self.account, "account_key": self.account_key}


def ensure_installed(prefix: Path) -> Path:
    """The azurite-blob executable under prefix, installing azurite with npm when it is missing."""
    executable = prefix / "node_modules" / ".bin" / "azurite-blob"
    if executable.exists():
        return executable
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("npm not found: the Azure tests need Node and npm to install azurite "
                           "| fix: apt-get install nodejs npm")
    prefix.mkdir(parents=True, exist_ok=True)
    result = subprocess.run([npm, "install", "--prefix", str(prefix), "--no-audit", "--no-fund", AZURITE_SPEC],
                            capture_output=True, text=True, check=False, timeout=600)
    if result.returncode != 0 or not executable.exists():
        raise RuntimeError(f"npm install {AZURITE_SPEC} failed: {result.stderr.strip()[-500:]}")
    return executable


@contextmanager
def running_azurite(prefix: Path, timeout: float = 60.0) -> Iterator[Azurite]:
    executable = ensure_installed(prefix)
    process = subprocess.Popen(
        [str(executable), "--blobHost", "127.0.0.1", "--blobPort", "0", "--inMemoryPersistence",
         "--extentMemoryLimit", "512", "--skipApiVersionCheck", "--disableTelemetry", "--loose"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    found: list[str] = []
    output: list[str] = []

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            output.append(line)
            match = LISTENING.search(line)
            if match and not found:
                found.append(match.group(1))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    deadline = time.monotonic() + timeout
    try:
        while not found:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("azurite-blob did not start: " + "".join(output)[-1000:])
            time.sleep(0.05)
        yield Azurite(blob_endpoint=f"{found[0]}/{ACCOUNT}")
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
