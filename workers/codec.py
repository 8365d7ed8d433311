"""Protected payloads: a Temporal payload codec that encrypts every workflow and activity
payload (inputs, results, signals, queries, summaries, failure messages) with AES-GCM before
it leaves the process, so the Temporal server (a cluster, Temporal Cloud) stores ciphertext.

Keys live in the keyring (entry `payload-keys`, JSON: the active key id and every key by id).
New payloads use the active key; each payload names its key id in its metadata, so a rotated
key keeps decrypting the history written with it. Payloads without our encoding (written
before encryption was switched on, or typed into a UI without a codec) pass through as they are.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

import keyring
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from temporalio.api.common.v1 import Payload
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import (
    DataConverter,
    DefaultFailureConverterWithEncodedAttributes,
    PayloadCodec,
)

from countersign.credentials import (
    SERVICE,
    CredentialError,
    configure_keyring,
    get_secret,
    set_secret,
)
from countersign.guardrails.redaction import register_secret
from countersign.settings import Settings

ENCODING = b"binary/encrypted"
KEY_ID = "encryption-key-id"
_NONCE_BYTES = 12


class PayloadKeyError(Exception):
    """A payload cannot be decrypted: unknown key id, or the ciphertext was altered."""


@dataclass(frozen=True)
class PayloadKeys:
    """The key ring for payloads: every key by id, and the one new payloads use."""

    active: str
    keys: dict[str, bytes]

    def __post_init__(self) -> None:
        if self.active not in self.keys:
            raise CredentialError(f"payload keys: active key {self.active!r} is not in the ring")
        for key_id, key in self.keys.items():
            if len(key) != 32:
                raise CredentialError(f"payload key {key_id!r} must be 32 bytes (AES-256)")

    @classmethod
    def generate(cls) -> PayloadKeys:
        return cls._with_new_key({})

    @classmethod
    def _with_new_key(cls, keys: dict[str, bytes]) -> PayloadKeys:
        key_id = f"pk_{secrets.token_hex(4)}"
        return cls(key_id, {**keys, key_id: AESGCM.generate_key(bit_length=256)})

    def rotated(self) -> PayloadKeys:
        """A ring with a fresh active key; the old keys stay, to decrypt old payloads."""
        return self._with_new_key(self.keys)

    def to_json(self) -> str:
        keys = {k: base64.b64encode(v).decode() for k, v in self.keys.items()}
        return json.dumps({"active": self.active, "keys": keys})

    @classmethod
    def from_json(cls, text: str) -> PayloadKeys:
        try:
            raw = json.loads(text)
            keys = {k: base64.b64decode(v, validate=True) for k, v in raw["keys"].items()}
            active = raw["active"]
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise CredentialError(
                "the payload keys in the keyring are not valid JSON "
                '{"active": ID, "keys": {ID: base64}}; repair it (its keys decrypt old '
                "histories) or remove it and run `countersign keys init`"
            ) from e
        for value in raw["keys"].values():
            register_secret(value)
        return cls(active, keys)


def load_payload_keys(settings: Settings) -> PayloadKeys:
    backend = configure_keyring(settings)
    try:
        text = get_secret(settings.payload_keys_credential)
    except CredentialError:
        raise CredentialError(
            f"payloads are encrypted (COUNTERSIGN_ENCRYPT_PAYLOADS) but the keyring "
            f"({type(backend).__name__}) has no key ring {settings.payload_keys_credential!r}: "
            "create it with `countersign keys init` and share it with every worker and client "
            "of this deployment"
        ) from None
    return PayloadKeys.from_json(text)


def _stored_ring(settings: Settings) -> PayloadKeys | None:
    """The ring in the keyring, None if there is none; an unreadable ring is an error (never
    silently replaced: its keys may be the only way to read old histories)."""
    configure_keyring(settings)
    if keyring.get_password(SERVICE, settings.payload_keys_credential) is None:
        return None
    return load_payload_keys(settings)


def ensure_payload_keys(settings: Settings) -> PayloadKeys:
    """The ring from the keyring, created with one key if there is none."""
    keys = _stored_ring(settings)
    if keys is None:
        keys = PayloadKeys.generate()
        set_secret(settings.payload_keys_credential, keys.to_json())
    return keys


def rotate_payload_key(settings: Settings) -> PayloadKeys:
    """Add a fresh active key (creating the ring if needed); old keys still decrypt."""
    keys = _stored_ring(settings)
    keys = keys.rotated() if keys is not None else PayloadKeys.generate()
    set_secret(settings.payload_keys_credential, keys.to_json())
    return keys


class EncryptionCodec(PayloadCodec):
    """AES-256-GCM over the serialized payload; the key id is also the associated data, so
    a payload cannot be passed off as encrypted under another key."""

    def __init__(self, keys: PayloadKeys) -> None:
        self.keys = keys
        self._ciphers = {key_id: AESGCM(key) for key_id, key in keys.keys.items()}

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self.encrypt(p) for p in payloads]

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self.decrypt(p) for p in payloads]

    def encrypt(self, payload: Payload) -> Payload:
        key_id = self.keys.active
        nonce = os.urandom(_NONCE_BYTES)
        sealed = self._ciphers[key_id].encrypt(nonce, payload.SerializeToString(), key_id.encode())
        return Payload(
            metadata={"encoding": ENCODING, KEY_ID: key_id.encode()}, data=nonce + sealed
        )

    def decrypt(self, payload: Payload) -> Payload:
        if payload.metadata.get("encoding") != ENCODING:
            return payload
        key_id = payload.metadata.get(KEY_ID, b"").decode()
        cipher = self._ciphers.get(key_id)
        if cipher is None:
            raise PayloadKeyError(
                f"payload encrypted with key {key_id!r}, which is not in this keyring "
                f"(known: {', '.join(sorted(self._ciphers))})"
            )
        try:
            plain = cipher.decrypt(
                payload.data[:_NONCE_BYTES], payload.data[_NONCE_BYTES:], key_id.encode()
            )
        except InvalidTag:
            raise PayloadKeyError(
                f"payload encrypted with key {key_id!r} failed authentication (altered?)"
            ) from None
        return Payload.FromString(plain)


def encrypted_data_converter(keys: PayloadKeys) -> DataConverter:
    """The pydantic converter, with payloads encrypted and failure messages and stack traces
    moved into (encrypted) payloads instead of plain history fields."""
    return dataclasses.replace(
        pydantic_data_converter,
        payload_codec=EncryptionCodec(keys),
        failure_converter_class=DefaultFailureConverterWithEncodedAttributes,
    )


def data_converter(settings: Settings) -> DataConverter:
    """What every client and worker of this deployment must use (COUNTERSIGN_ENCRYPT_PAYLOADS)."""
    if not settings.encrypt_payloads:
        return pydantic_data_converter
    return encrypted_data_converter(load_payload_keys(settings))
