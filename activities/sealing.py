"""Sealing: secret and personal values travel as ciphertext, and are clear only where used.

A value typed `Secret[...]` / `pydantic.SecretStr` / `Personal[...]` (guardrails/redaction.py)
is sealed where it enters the run: in the model's reply (tool arguments) and in a tool's
result. From there on, history, transcripts, verdicts, approval requests and compensation
data carry only the token `[[sealed:<kind>:<key id>:<ciphertext>]]`, which the audit trail and
logs show as `[personal]` / `[secret]`. It is unsealed only inside the activities that need it:
the tool activity (to act) and the model activity (to show the model its conversation).

A value the model saw in clear may come back in its reply as free text ("the phone is ...")
or in an argument that is not typed as personal: every value unsealed for a call is sealed
again wherever it shows up in what that call returns. Failure messages are scrubbed of them.

AES-256-GCM with a key derived (HKDF) from each payload key in the keyring (`payload-keys`,
activities/payload_keys.py): every worker of a deployment shares it, so any worker can unseal.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Callable
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from pydantic import BaseModel, SecretBytes, SecretStr

from countersign.activities.payload_keys import PayloadKeys, load_payload_keys
from countersign.guardrails.redaction import SEALED, Kind, Path, sensitive_fields
from countersign.settings import Settings

_NONCE = 12
# Shorter values are not searched for in free text (they would match by accident).
MIN_KNOWN_LENGTH = 4


class SealError(Exception):
    """A token cannot be unsealed (unknown key id, or it was altered)."""


def _derive(key: bytes) -> AESGCM:
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"countersign-seal")
    return AESGCM(hkdf.derive(key))


class Sealer:
    def __init__(self, keys: PayloadKeys, reload: Callable[[], PayloadKeys] | None = None) -> None:
        self._reload = reload
        self._use(keys)

    def _use(self, keys: PayloadKeys) -> None:
        self.active = keys.active
        self._ciphers = {key_id: _derive(key) for key_id, key in keys.keys.items()}

    # -- one value -------------------------------------------------------------------------

    def seal(self, value: Any, kind: Kind) -> str:
        if isinstance(value, SecretStr | SecretBytes):
            value = value.get_secret_value()
            value = value.decode() if isinstance(value, bytes) else value
        nonce = os.urandom(_NONCE)
        plain = json.dumps(value).encode()
        data = nonce + self._ciphers[self.active].encrypt(nonce, plain, kind.encode())
        token = base64.urlsafe_b64encode(data).decode().rstrip("=")
        return f"[[sealed:{kind}:{self.active}:{token}]]"

    def _open(self, kind: str, key_id: str, token: str) -> Any:
        if key_id not in self._ciphers and self._reload is not None:
            self._use(self._reload())  # sealed by a worker that has a newer ring (rotated)
        cipher = self._ciphers.get(key_id)
        if cipher is None:
            raise SealError(f"sealed value uses key {key_id!r}, which is not in the keyring")
        try:
            data = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
            return json.loads(cipher.decrypt(data[:_NONCE], data[_NONCE:], kind.encode()))
        except (InvalidTag, ValueError):
            raise SealError("a sealed value failed authentication (altered?)") from None

    # -- trees -----------------------------------------------------------------------------

    def unseal(self, value: Any, known: dict[str, Kind] | None = None, strict: bool = True) -> Any:
        """A copy with every token replaced by its value; each clear value lands in `known`.
        Not `strict`: a token that does not open (one the model forged) stays as it is."""
        if isinstance(value, dict):
            return {k: self.unseal(v, known, strict) for k, v in value.items()}
        if isinstance(value, list):
            return [self.unseal(v, known, strict) for v in value]
        if not isinstance(value, str) or "[[sealed:" not in value:
            return value
        try:
            parsed = json.loads(value)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict | list):  # JSON text: keep its quoting intact
            return json.dumps(self.unseal(parsed, known, strict))
        whole = SEALED.fullmatch(value)

        def clear(m: Any) -> Any:
            try:
                opened = self._open(*m.groups())
            except SealError:
                if strict:
                    raise
                return m.group(0)
            _remember(known, opened, m.group(1))
            return opened

        if whole:
            return clear(whole)
        return SEALED.sub(lambda m: _as_text(clear(m)), value)

    def seal_paths(self, data: dict[str, Any], paths: dict[Path, Kind]) -> dict[str, Any]:
        """Seal the values at the given paths (those not sealed yet) in a copy of `data`."""
        out = json.loads(json.dumps(data))
        for path, kind in paths.items():
            parent = out
            for key in path[:-1]:
                parent = parent.get(key) if isinstance(parent, dict) else None
            leaf = path[-1]
            if isinstance(parent, dict) and parent.get(leaf) is not None:
                value = parent[leaf]
                if not (isinstance(value, str) and SEALED.fullmatch(value)):
                    parent[leaf] = self.seal(value, kind)
        return out

    def seal_model(self, obj: BaseModel) -> dict[str, Any]:
        """A model as JSON, with its secret and personal fields sealed (SecretStr included)."""
        data = obj.model_dump(mode="json")
        for path, kind in sensitive_fields(type(obj)).items():
            value: Any = obj
            parent: Any = data
            for key in path:
                value = getattr(value, key, None) if value is not None else None
            for key in path[:-1]:
                parent = parent.get(key) if isinstance(parent, dict) else None
            if value is not None and isinstance(parent, dict):
                parent[path[-1]] = self.seal(value, kind)
        return data

    def seal_known(self, value: Any, known: dict[str, Kind]) -> Any:
        """A copy with every occurrence of a known clear value sealed again."""
        if not known:
            return value
        if isinstance(value, dict):
            return {k: self.seal_known(v, known) for k, v in value.items()}
        if isinstance(value, list):
            return [self.seal_known(v, known) for v in value]
        if not isinstance(value, str):
            return value
        # Between tokens only: a short value could occur inside a token's ciphertext.
        out, i = [], 0
        for m in SEALED.finditer(value):
            out += [self._seal_in(value[i : m.start()], known), m.group(0)]
            i = m.end()
        return "".join([*out, self._seal_in(value[i:], known)])

    def _seal_in(self, text: str, known: dict[str, Kind], order: list[str] | None = None) -> str:
        order = sorted(known, key=len, reverse=True) if order is None else order
        for n, clear in enumerate(order):
            if clear in text:
                # Seal the pieces around it first, so no token is searched afterwards.
                pieces = [self._seal_in(p, known, order[n + 1 :]) for p in text.split(clear)]
                return self.seal(clear, known[clear]).join(pieces)
        return text


def _as_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def scrub(text: str, known: dict[str, Kind]) -> str:
    """A failure message without the clear values of the call that failed."""
    for clear in sorted(known, key=len, reverse=True):
        text = text.replace(clear, f"[{known[clear]}]")
    return text


def _remember(known: dict[str, Kind] | None, value: Any, kind: Kind) -> None:
    if known is None:
        return
    if isinstance(value, str) and len(value) >= MIN_KNOWN_LENGTH:
        known[value] = kind
        escaped = json.dumps(value)[1:-1]  # as it appears inside JSON text
        if escaped != value:
            known[escaped] = kind


def seal_fields(sealer: Sealer, data: dict[str, Any], model: type[BaseModel]) -> dict[str, Any]:
    return sealer.seal_paths(data, sensitive_fields(model))


def keep_sealed(
    original: dict[str, Any], validated: dict[str, Any], model: type[BaseModel]
) -> dict[str, Any]:
    """Validated arguments with the sealed values of `original` back at the sensitive paths
    (validation ran on clear values; a SecretStr would dump as '**********')."""
    out = json.loads(json.dumps(validated))
    for path in sensitive_fields(model):
        source: Any = original
        target: Any = out
        for key in path[:-1]:
            source = source.get(key) if isinstance(source, dict) else None
            target = target.get(key) if isinstance(target, dict) else None
        if isinstance(source, dict) and isinstance(target, dict) and path[-1] in source:
            target[path[-1]] = source[path[-1]]
    return out


_sealers: dict[str, Sealer] = {}


def sealer_for(settings: Settings) -> Sealer:
    """The worker's sealer (keys from the keyring, loaded once per process)."""
    name = settings.payload_keys_credential
    if name not in _sealers:
        _sealers[name] = Sealer(load_payload_keys(settings), lambda: load_payload_keys(settings))
    return _sealers[name]
