"""Protected payloads: a Temporal payload codec that encrypts every workflow and activity
payload (inputs, results, signals, queries, summaries, failure messages) with AES-GCM before
it leaves the process, so the Temporal server (a cluster, Temporal Cloud) stores ciphertext.

Keys live in the keyring (entry `payload-keys`, JSON: the active key id and every key by id;
activities/payload_keys.py).
New payloads use the active key; each payload names its key id in its metadata, so a rotated
key keeps decrypting the history written with it. Payloads without our encoding (written
before encryption was switched on, or typed into a UI without a codec) pass through as they are.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import ClassVar

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from temporalio.api.common.v1 import Payload
from temporalio.contrib.pydantic import PydanticPayloadConverter
from temporalio.converter import (
    DataConverter,
    DefaultFailureConverterWithEncodedAttributes,
    PayloadCodec,
)

from countersign.activities.payload_keys import PayloadKeys, load_payload_keys
from countersign.settings import Settings

ENCODING = b"binary/encrypted"
KEY_ID = "encryption-key-id"
_NONCE_BYTES = 12


class SharedPydanticPayloadConverter(PydanticPayloadConverter):
    """Temporal's pydantic payload converter, built once per process and shared.

    The SDK builds a new payload converter for every copy of a data converter it makes: two
    or three per workflow activation, and one per run inside the sandbox. A new pydantic
    converter starts with an empty type-adapter cache, so each run rebuilt the adapters of
    its types (a millisecond or more each, held in memory while the run is parked), and each
    activation paid ~0.2 ms to build converters it used only to visit payloads. Every
    instance here shares the first one's converters and cache; an adapter is a pure function
    of its type, so sharing one changes no result."""

    _first: ClassVar[PydanticPayloadConverter | None] = None

    def __init__(self) -> None:
        first = SharedPydanticPayloadConverter._first
        if first is None:
            super().__init__()
            SharedPydanticPayloadConverter._first = self
        else:
            self.__dict__.update(first.__dict__)


# Payloads as JSON through pydantic (what `temporalio.contrib.pydantic` gives), not encrypted.
pydantic_data_converter = DataConverter(payload_converter_class=SharedPydanticPayloadConverter)


class PayloadKeyError(Exception):
    """A payload cannot be decrypted: unknown key id, or the ciphertext was altered."""


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
