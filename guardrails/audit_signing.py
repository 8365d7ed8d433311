"""Signed checkpoints of the audit trail (Ed25519).

A checkpoint says "the trail had `size` records and its chain head was `head` at `at`", signed
with the audit signing key. The chain head at N commits to every record 1..N and their order
(see `guardrails.audit`), so one signature vouches for the whole prefix. What a checkpoint adds
to the bare chain:

- truncation is caught: deleting the newest records leaves a valid shorter chain, but not one
  that reaches a checkpoint's size;
- a rewritten trail is caught: someone who edits a record and recomputes every hash after it
  gets a valid chain whose head no longer matches the signed one (they would need the key);
- the time and size are vouched for by a key that does not live in the database.

The signed message is a fixed domain-separation prefix followed by the checkpoint's canonical
JSON body, so a checkpoint signature can never be mistaken for a signature over anything else.
"""

from __future__ import annotations

import base64
import hashlib
from datetime import datetime
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)
from pydantic import BaseModel

from countersign.guardrails.policy import canonical_json

CHECKPOINT_DOMAIN = b"countersign audit checkpoint v1\n"


class SigningKeyError(Exception):
    """A signing or public key is malformed. The message says what was expected."""


class Checkpoint(BaseModel):
    """A signed statement about the trail's first `size` records."""

    size: int
    head: str
    at: datetime
    key_id: str
    signature: str

    def body(self) -> dict[str, Any]:
        return {
            "v": 1,
            "size": self.size,
            "head": self.head,
            "at": self.at.isoformat(),
            "key_id": self.key_id,
        }


def _message(body: dict[str, Any]) -> bytes:
    return CHECKPOINT_DOMAIN + canonical_json(body).encode()


def key_id(public_key: Ed25519PublicKey) -> str:
    """A short fingerprint that names the key a checkpoint was signed with."""
    raw = public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    return "ed25519:" + hashlib.sha256(raw).hexdigest()[:16]


def generate_signing_key() -> str:
    """A new private key, as the base64 text kept in the keyring."""
    raw = Ed25519PrivateKey.generate().private_bytes(
        Encoding.Raw, PrivateFormat.Raw, NoEncryption()
    )
    return base64.b64encode(raw).decode()


def public_key_text(public_key: Ed25519PublicKey) -> str:
    return base64.b64encode(public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()


def load_public_key(text: str) -> Ed25519PublicKey:
    try:
        raw = base64.b64decode(text, validate=True)
        return Ed25519PublicKey.from_public_bytes(raw)
    except ValueError as e:
        raise SigningKeyError(
            f"audit public key must be 32 raw bytes in base64 (got {len(text)} characters): {e}"
        ) from None


class CheckpointSigner:
    """Signs checkpoints with the private key from the keyring."""

    def __init__(self, private_key_text: str) -> None:
        try:
            raw = base64.b64decode(private_key_text, validate=True)
            self._key = Ed25519PrivateKey.from_private_bytes(raw)
        except ValueError:
            # Never echo the value: it is a secret.
            raise SigningKeyError(
                "the audit signing key must be a 32-byte Ed25519 private key in base64; "
                "create one with: countersign audit init-key"
            ) from None
        self.public_key = self._key.public_key()
        self.key_id = key_id(self.public_key)

    def sign(self, size: int, head: str, at: datetime) -> Checkpoint:
        unsigned = Checkpoint(size=size, head=head, at=at, key_id=self.key_id, signature="")
        signature = self._key.sign(_message(unsigned.body()))
        return unsigned.model_copy(update={"signature": base64.b64encode(signature).decode()})


def signature_valid(checkpoint: Checkpoint, public_key: Ed25519PublicKey) -> bool:
    try:
        public_key.verify(base64.b64decode(checkpoint.signature), _message(checkpoint.body()))
    except (InvalidSignature, ValueError):
        return False
    return True
