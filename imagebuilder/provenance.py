"""Signed provenance: an in-toto Statement v1 with a SLSA provenance v1 predicate, in a DSSE envelope.

- Statement: https://github.com/in-toto/attestation/blob/main/spec/v1/statement.md
- SLSA provenance v1: https://slsa.dev/spec/v1.0/provenance (buildDefinition, runDetails)
- DSSE: https://github.com/secure-systems-lab/dsse/blob/master/envelope.md; the signature is over
  PAE(payloadType, payload) = "DSSEv1" SP len(type) SP type SP len(body) SP body.

The key is an Ed25519 or ECDSA (P-256, SHA-256) private key in PEM, from $IMAGEBUILDER_SIGNING_KEY
(the PEM itself) or the file $IMAGEBUILDER_SIGNING_KEY_FILE names. Without one the build writes
the envelope with no signature and says so; `images verify` refuses such an envelope.
Sigstore keyless signing needs the network and is not done here.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imagebuilder.atomicfile import write_atomically
from imagebuilder.errors import UserError

PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://slsa.dev/provenance/v1"
BUILD_TYPE = "urn:imagebuilder:build:v1"  # names the shape of externalParameters (build_statement)
PROVENANCE_SUFFIX = ".provenance.dsse.json"  # beside the image
KEY_ENV = "IMAGEBUILDER_SIGNING_KEY"
KEY_FILE_ENV = "IMAGEBUILDER_SIGNING_KEY_FILE"
# Subject annotations that carry the image's outputs besides its bytes.
IMAGE_IDS = "imageIds"
IMAGE_METADATA = "imageMetadata"


class ProvenanceError(UserError):
    """The provenance does not hold: one line saying what differs."""


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE's pre-authentication encoding, what is signed."""
    kind = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)


# --- keys ---------------------------------------------------------------------------------


def signing_key_pem() -> tuple[bytes, str] | None:
    """(PEM, where it came from) of the configured signing key, or None."""
    inline = os.environ.get(KEY_ENV, "")
    if inline.strip():
        return inline.encode(), f"${KEY_ENV}"
    path = os.environ.get(KEY_FILE_ENV, "")
    if path:
        try:
            return Path(path).read_bytes(), path
        except OSError as exc:
            raise UserError(f"{path}: cannot read the signing key ({exc.strerror}) "
                            f"| fix: set {KEY_FILE_ENV} to a readable PEM private key file") from None
    return None


def load_private_key(pem: bytes, where: str) -> Any:
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        key = load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise UserError(f"{where}: not an unencrypted PEM private key ({exc}) "
                        "| fix: write one with 'openssl genpkey -algorithm ed25519'") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey):
        raise UserError(f"{where}: a {type(key).__name__} | fix: use an Ed25519 or ECDSA private key")
    return key


def load_public_key(path: Path) -> Any:
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    try:
        key = load_pem_public_key(path.read_bytes())
    except OSError as exc:
        raise UserError(f"{path}: cannot read the public key ({exc.strerror}) | fix: pass --key with a PEM file") from None
    except (ValueError, TypeError) as exc:
        raise UserError(f"{path}: not a PEM public key ({exc}) "
                        "| fix: export it with 'openssl pkey -in KEY -pubout'") from None
    if not isinstance(key, ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey):
        raise UserError(f"{path}: a {type(key).__name__} | fix: use an Ed25519 or ECDSA public key")
    return key


def key_id(public_key: Any) -> str:
    """sha256 of the public key's DER SubjectPublicKeyInfo: the same for the private and public halves."""
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    return hashlib.sha256(public_key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)).hexdigest()


def _sign(key: Any, message: bytes) -> bytes:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    if isinstance(key, ec.EllipticCurvePrivateKey):
        return key.sign(message, ec.ECDSA(hashes.SHA256()))
    return key.sign(message)


def _verify(key: Any, signature: bytes, message: bytes) -> bool:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        if isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, message, ec.ECDSA(hashes.SHA256()))
        else:
            key.verify(signature, message)
    except InvalidSignature:
        return False
    return True


# --- the statement ------------------------------------------------------------------------


@dataclass(frozen=True)
class Subject:
    name: str
    sha256: str
    annotations: dict[str, Any] | None = None

    def descriptor(self) -> dict[str, Any]:
        return {"name": self.name, "digest": {"sha256": self.sha256},
                **({"annotations": self.annotations} if self.annotations else {})}


def statement(subjects: list[Subject], external: dict[str, Any], internal: dict[str, Any],
              dependencies: list[dict[str, Any]], builder_id: str, invocation_id: str,
              started_on: str, finished_on: str) -> dict[str, Any]:
    return {
        "_type": STATEMENT_TYPE,
        "subject": [subject.descriptor() for subject in subjects],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "buildDefinition": {"buildType": BUILD_TYPE, "externalParameters": external,
                                "internalParameters": internal, "resolvedDependencies": dependencies},
            "runDetails": {"builder": {"id": builder_id},
                           "metadata": {"invocationId": invocation_id, "startedOn": started_on,
                                        "finishedOn": finished_on}},
        },
    }


def envelope(statement_value: dict[str, Any], key: Any | None) -> dict[str, Any]:
    """The DSSE envelope of a statement, signed with ``key`` (no signatures without one)."""
    payload = json.dumps(statement_value, sort_keys=True, separators=(",", ":")).encode()
    signatures = []
    if key is not None:
        signatures.append({"keyid": key_id(key.public_key()),
                           "sig": base64.b64encode(_sign(key, pae(PAYLOAD_TYPE, payload))).decode()})
    return {"payloadType": PAYLOAD_TYPE, "payload": base64.b64encode(payload).decode(), "signatures": signatures}


def configured_key() -> Any | None:
    found = signing_key_pem()
    return None if found is None else load_private_key(*found)


def write_envelope(value: dict[str, Any], path: Path) -> None:
    write_atomically(path, json.dumps(value, indent=2) + "\n")


# --- verification -------------------------------------------------------------------------


def open_envelope(path: Path, public_key: Any) -> dict[str, Any]:
    """The statement of a DSSE envelope whose signature the key verifies; ProvenanceError otherwise."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ProvenanceError(f"{path}: no provenance | fix: build the image again") from None
    return open_envelope_bytes(data, str(path), public_key)


def open_envelope_bytes(data: bytes, path: str, public_key: Any) -> dict[str, Any]:
    """open_envelope of an envelope's bytes (a file, an object store's object); ``path`` names it in errors."""
    try:
        value = json.loads(data)
        payload = base64.b64decode(value["payload"], validate=True)
        payload_type = value["payloadType"]
        signatures = value["signatures"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ProvenanceError(f"{path}: not a DSSE envelope ({exc.__class__.__name__}: {exc})") from None
    if payload_type != PAYLOAD_TYPE:
        raise ProvenanceError(f"{path}: payloadType is {payload_type!r}, not {PAYLOAD_TYPE}")
    if not signatures:
        raise ProvenanceError(f"{path}: the provenance is not signed (no signing key was configured for the build) "
                              f"| fix: set {KEY_ENV} or {KEY_FILE_ENV} and build again")
    wanted = key_id(public_key)
    message = pae(payload_type, payload)
    for signature in signatures:
        try:
            raw = base64.b64decode(signature.get("sig", ""), validate=True)
        except (ValueError, AttributeError):
            continue
        if _verify(public_key, raw, message):
            try:
                return json.loads(payload)
            except ValueError as exc:
                raise ProvenanceError(f"{path}: the signed payload is not JSON ({exc})") from None
    keyids = ", ".join(str(s.get("keyid", "?"))[:16] for s in signatures if isinstance(s, dict))
    raise ProvenanceError(f"{path}: the signature does not verify with key {wanted[:16]} (signed by {keyids}): "
                          "the provenance was changed or signed with another key")
