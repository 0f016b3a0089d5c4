"""Signed sysext updates: ``SHA256SUMS.gpg`` beside ``SHA256SUMS``, and the check nodes make.

systemd-sysupdate, with ``Verify=yes`` in a transfer file, downloads ``SHA256SUMS`` and
``SHA256SUMS.gpg`` from the source URL, checks the detached signature against the keyring
``/etc/systemd/import-pubring.gpg`` (the admin keyring; it takes the place of the vendor's
``/usr/lib/systemd/import-pubring.gpg``), and then each downloaded image against its sum in
``SHA256SUMS`` (sysupdate.d(5), ``Verify=``; the keyring paths are systemd-importd's). ``verify``
makes the same two checks, so hosts without systemd-sysupdate (Debian 12) can run them too.

Signing uses the ``gpg`` binary (Debian's gnupg, also what systemd-sysupdate runs to verify):
it reads the user's keyring and agent as they are, keys with passphrases or on smartcards
included, which a Python OpenPGP library would not. The secret key comes from the user's
keyring (``--signing-key`` with ``$GNUPGHOME``), or as an armored key from a file or the
environment, imported into a throwaway GnuPG home that is removed afterwards; secret material
is never written into the output directory or printed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from imagebuilder.downloads import sha256_file
from imagebuilder.errors import UserError

SIGNATURE_NAME = "SHA256SUMS.gpg"
SUMS_NAME = "SHA256SUMS"
# Where systemd-sysupdate finds the keys it trusts (systemd src/import/pull-common.c, verify_gpg: the
# first of /etc/systemd/import-pubring.pgp, /etc/systemd/import-pubring.gpg, the vendor's
# /usr/lib/systemd/import-pubring.pgp). The .gpg name is the one systemd before 256 reads, and newer
# ones still read while no .pgp keyring is in /etc.
NODE_KEYRING = "/etc/systemd/import-pubring.gpg"
SIGNING_KEY_ENV = "IMAGEBUILDER_SYSEXT_SIGNING_KEY"  # an armored secret key (text), e.g. a CI secret
PASSPHRASE_ENV = "IMAGEBUILDER_SYSEXT_SIGNING_PASSPHRASE"  # only for keys that have one
NO_KEY_FIX = (f"pass --signing-key KEYID (a secret key in your GnuPG keyring or $GNUPGHOME), --signing-key-file "
              f"PATH or {SIGNING_KEY_ENV} (an armored secret key)")


class VerificationFailed(UserError):
    """The update would be refused: bad signature, or a file that does not match SHA256SUMS."""

    exit_code = 1


@dataclass(frozen=True)
class Signer:
    gnupg_home: Path | None  # None: gpg's own ($GNUPGHOME, else ~/.gnupg)
    fingerprint: str  # the primary key; gpg picks its signing subkey if it has one
    public_keyring: bytes  # the public key, binary (what --keyring files hold), for the nodes


def _gpg(args: list[str], home: Path | None, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    command = ["gpg", "--batch", "--no-tty", *(["--homedir", str(home)] if home else []), *args]
    try:
        return subprocess.run(command, input=stdin, capture_output=True, timeout=120)
    except FileNotFoundError:
        raise UserError("gpg: not found | fix: install GnuPG (apt-get install gnupg)") from None


# gpg-agent's sockets live in the home, and a Unix socket path holds at most 107 bytes.
SOCKET_PATH_MAX = 107 - len("/S.gpg-agent.browser")


def throwaway_home() -> Path:
    """A fresh GnuPG home (mode 0700, as gpg wants), in /tmp when $TMPDIR is too deep for its sockets."""
    home = Path(tempfile.mkdtemp(prefix="imagebuilder-gnupg-"))
    if len(str(home)) <= SOCKET_PATH_MAX:
        return home
    home.rmdir()
    return Path(tempfile.mkdtemp(prefix="imagebuilder-gnupg-", dir="/tmp"))


def stop_agent(home: Path) -> None:
    """gpg starts an agent per home; one we made must not outlive it."""
    subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"], capture_output=True, check=False)


def _last_line(result: subprocess.CompletedProcess[bytes]) -> str:
    lines = result.stderr.decode(errors="replace").strip().splitlines()
    return lines[-1] if lines else f"exit {result.returncode}"


def secret_key_fingerprints(home: Path | None, key_id: str | None) -> list[str]:
    """Fingerprints of the primary secret keys in ``home`` matching ``key_id`` (all when None)."""
    result = _gpg(["--with-colons", "--list-secret-keys", *(["--", key_id] if key_id else [])], home)
    if result.returncode != 0:
        return []
    fingerprints: list[str] = []
    expect_primary_fpr = False
    for line in result.stdout.decode(errors="replace").splitlines():
        fields = line.split(":")
        if fields[0] == "sec":
            expect_primary_fpr = True
        elif fields[0] == "fpr" and expect_primary_fpr:
            fingerprints.append(fields[9])
            expect_primary_fpr = False
    return fingerprints


def _signer(home: Path | None, key_id: str | None, source: str) -> Signer:
    fingerprints = secret_key_fingerprints(home, key_id)
    if len(fingerprints) != 1:
        which = "" if key_id is None or source.endswith(key_id) else f" --signing-key {key_id}"
        raise UserError(f"{source}: {len(fingerprints) or 'no'} secret keys match{which} "
                        "| fix: name exactly one secret key with --signing-key (its fingerprint)")
    exported = _gpg(["--export", fingerprints[0]], home)
    if exported.returncode != 0 or not exported.stdout:
        raise UserError(f"{source}: cannot export the public key of {fingerprints[0]} ({_last_line(exported)}) "
                        "| fix: check the key with 'gpg --list-keys'")
    signer = Signer(gnupg_home=home, fingerprint=fingerprints[0], public_keyring=exported.stdout)
    _detach_sign(signer, os.devnull, "-", f"{source}: gpg cannot sign with {signer.fingerprint}")  # before anything is built
    return signer


def _detach_sign(signer: Signer, data: str, output: str, failure: str) -> None:
    """gpg --detach-sign of the file ``data`` into ``output`` (- for stdout); the passphrase,
    if any, goes through a pipe, never the command line."""
    passphrase = os.environ.get(PASSPHRASE_ENV, "").encode()
    result = _gpg(["--yes", "--pinentry-mode", "loopback", "--passphrase-fd", "0", "--local-user", signer.fingerprint,
                   "--output", output, "--detach-sign", data], signer.gnupg_home, stdin=passphrase + b"\n")
    if result.returncode != 0:
        raise UserError(f"{failure} ({_last_line(result)}) | fix: check the key, and set {PASSPHRASE_ENV} "
                        "if it has a passphrase")


@contextmanager
def signer_from(key_id: str | None, key_file: Path | None) -> Iterator[Signer | None]:
    """The signer the user asked for, or None when no key was given by any of the three ways."""
    armored: bytes | None = None
    source = ""
    if key_file is not None:
        try:
            armored, source = key_file.read_bytes(), f"--signing-key-file {key_file}"
        except OSError as error:
            raise UserError(f"--signing-key-file {key_file}: {error.strerror} | fix: give a readable armored "
                            "secret key (gpg --armor --export-secret-keys KEYID)") from None
    elif os.environ.get(SIGNING_KEY_ENV):
        armored, source = os.environ[SIGNING_KEY_ENV].encode(), SIGNING_KEY_ENV
    if armored is None:
        yield _signer(None, key_id, f"--signing-key {key_id}") if key_id else None
        return
    home = throwaway_home()
    try:
        imported = _gpg(["--import"], home, stdin=armored)
        if imported.returncode != 0:
            raise UserError(f"{source}: gpg could not import it ({_last_line(imported)}) "
                            "| fix: give an armored secret key (gpg --armor --export-secret-keys KEYID)")
        yield _signer(home, key_id, source)
    finally:
        stop_agent(home)
        shutil.rmtree(home, ignore_errors=True)


def sign_sums(signer: Signer, directory: Path) -> Path:
    """Write ``SHA256SUMS.gpg``, a detached signature of ``directory/SHA256SUMS``, atomically."""
    partial = directory / f".{SIGNATURE_NAME}.part"
    try:
        _detach_sign(signer, str(directory / SUMS_NAME), str(partial),
                     f"gpg could not sign {directory / SUMS_NAME} with {signer.fingerprint}")
    except UserError:
        partial.unlink(missing_ok=True)
        raise
    signature = directory / SIGNATURE_NAME
    os.replace(partial, signature)
    return signature


def read_sums(text: str) -> dict[str, str]:
    """File name -> sha256 from a sha256sum(1) manifest (text or binary mode lines)."""
    entries: dict[str, str] = {}
    for line in text.splitlines():
        digest, sep, name = line.partition(" ")
        if sep and name:
            entries[name[1:] if name[:1] in (" ", "*") else name] = digest.lower()
    return entries


def check_signature(sums: Path, signature: Path, keyring: Path) -> None:
    """gpg --verify with the options systemd's verify_gpg passes: only ``keyring`` trusted, no user
    config, no key lookup, no trustdb, a throwaway home."""
    if not signature.is_file():
        raise VerificationFailed(f"{signature}: missing (Verify=yes) | the update is refused; fix: sign "
                                 "SHA256SUMS with 'imagebuilder sysext build --signing-key'")
    with tempfile.TemporaryDirectory(prefix="imagebuilder-gpgv-") as home:
        result = _gpg(["--no-options", "--no-default-keyring", "--no-auto-key-locate", "--no-auto-check-trustdb",
                       "--trust-model=always", f"--keyring={keyring.resolve()}", "--verify",
                       str(signature), str(sums)], Path(home))
        stop_agent(Path(home))
    if result.returncode != 0:
        raise VerificationFailed(f"{signature}: does not verify {sums.name} against {keyring} ({_last_line(result)}) "
                                 "| the update is refused")


def verify_directory(directory: Path, keyring: Path) -> list[str]:
    """The check systemd-sysupdate makes before installing: the signature of SHA256SUMS, then each
    image (every *.raw here) and every listed file present against its sum. Returns the files checked."""
    sums = directory / SUMS_NAME
    if not keyring.is_file():
        raise UserError(f"--keyring {keyring}: no such file | fix: export the public key "
                        "(gpg --export KEYID > pubring.gpg) or copy a node's " + NODE_KEYRING)
    if not sums.is_file():
        raise VerificationFailed(f"{sums}: missing | the update is refused")
    check_signature(sums, directory / SIGNATURE_NAME, keyring)
    listed = read_sums(sums.read_text(errors="replace"))
    present = sorted({*(name for name in listed if (directory / name).is_file()),
                      *(path.name for path in directory.glob("*.raw"))})
    for name in present:
        if name not in listed:
            raise VerificationFailed(f"{directory / name}: not listed in {SUMS_NAME} | the update is refused")
        digest = sha256_file(directory / name)
        if digest != listed[name]:
            raise VerificationFailed(f"{directory / name}: sha256 {digest} but {SUMS_NAME} says {listed[name]} "
                                     "| the update is refused")
    return present
