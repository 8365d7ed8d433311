"""The key ring for payloads, held in the keyring (entry `payload-keys`, JSON: the active key
id and every key by id). The payload codec (workers/codec.py) encrypts Temporal payloads with
it; sealing (activities/sealing.py) seals secret and personal values with it. New data uses
the active key; a rotated key keeps decrypting what was written with it."""

from __future__ import annotations

import base64
import json
import secrets
from dataclasses import dataclass

import keyring
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from countersign.credentials import (
    SERVICE,
    CredentialError,
    configure_keyring,
    get_secret,
    set_secret,
)
from countersign.guardrails.redaction import register_secret
from countersign.settings import Settings


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
