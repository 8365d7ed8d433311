"""Identities and signed statements: who is behind a decision, a start, a rollback, a kill.

A typed name proves nothing. A person (or a bot, an integration, the approval gateway) is an
entry of the *directory* with the credentials that prove them: Ed25519 public keys (the
private key stays in that person's own keyring), a Slack user id, an email address.
Anything that must come from a verified person travels as a *signed statement*
(an envelope): what is asserted — the purpose, the run, the approval request, the exact action
hash, the verdict — who asserts it, with which key, over which channel, when it was issued,
until when it holds, and a nonce.

Two ways to sign:
- with the person's own key (CLI; pasted into the Temporal UI): `signer == identity`, channel
  `cli` or `temporal-ui`;
- by the approval gateway's attestation key, after the gateway verified the channel's own proof
  (Slack's request signature and user mapping, a single-use email token, a webhook
  integration's HMAC): `signer` is the gateway, `identity` the person or integration it
  verified, channel `slack`, `email` or `webhook`.

`verify()` is pure: given the envelope, the directory and the time, it says who is proven, or
raises StatementRefused saying why not. The directory is a TOML file, versioned by its hash;
adding, rotating or revoking a key is one edit, and a revoked key decides nothing from its
revocation on (recorded decisions stay checkable: the audit keeps the key id and signature).
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import tomllib
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from countersign.guardrails.errors import describe
from countersign.guardrails.policy import canonical_json, sha256_hex

STATEMENT_DOMAIN = b"countersign signed statement v1\n"
# Longest an envelope may live: a decision printed to paste into the Temporal UI, or carried
# by a slow mail client, still lands; a stolen old one does not.
MAX_LIFETIME = timedelta(hours=24)
# Clocks of the signer and the run may disagree a little.
CLOCK_SKEW = timedelta(minutes=2)

Kind = Literal["person", "integration", "gateway"]
Purpose = Literal["decision", "start", "rollback", "kill", "policy"]
Channel = Literal["cli", "temporal-ui", "slack", "email", "webhook"]
# Channels a person proves with their own key, and channels only the gateway can attest.
SELF_SIGNED_CHANNELS: frozenset[str] = frozenset({"cli", "temporal-ui"})
ATTESTED_CHANNELS: frozenset[str] = frozenset({"slack", "email", "webhook"})


class IdentityError(Exception):
    """The directory or a key is malformed. The message names the file and entry."""


class StatementRefused(Exception):
    """A signed statement that proves nothing. The message says why, for the sender."""


class Key(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str
    public_key: str
    revoked_at: datetime | None = None

    def revoked(self, now: datetime) -> bool:
        return self.revoked_at is not None and self.revoked_at <= now


class Identity(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    kind: Kind = "person"
    keys: list[Key] = []
    email: str | None = None
    slack_user: str | None = None


class Directory(BaseModel):
    """Everyone who can prove who they are, and how."""

    identities: dict[str, Identity]
    version: str

    def get(self, name: str) -> Identity | None:
        return self.identities.get(name)

    def by_slack_user(self, slack_user: str) -> Identity | None:
        return next((i for i in self.identities.values() if i.slack_user == slack_user), None)

    def by_email(self, email: str) -> Identity | None:
        email = email.lower()
        return next(
            (i for i in self.identities.values() if i.email and i.email.lower() == email), None
        )


def load_directory(path: Path, extra: Sequence[Path] = (), *, required: bool = True) -> Directory:
    """Read a directory file, and the `extra` files whose entries join it (the plugins'
    directories); raise IdentityError naming the file, the entry and the reason.

    One name in two files must be one identity: the same kind and the same keys (either may
    revoke one of them; the earliest revocation holds), and no two emails or Slack users. A
    field only one of them sets is taken from it (a plugin may list its people's addresses,
    the deployment's file their keys). `required=False`: a missing `path` lists no one."""
    merged: dict[str, tuple[Identity, Path]] = {}
    for file, must_exist in [(path, required), *((p, True) for p in extra)]:
        for name, identity in _read_entries(file, must_exist).items():
            if name in merged:
                first, first_file = merged[name]
                merged[name] = (_merge(first, first_file, identity, file), first_file)
            else:
                merged[name] = (identity, file)
    identities = {name: identity for name, (identity, _) in merged.items()}
    seen_keys: dict[str, str] = {}
    for name, identity in identities.items():
        for key in identity.keys:
            if key.id in seen_keys:
                raise IdentityError(
                    f"{merged[name][1]}: key {key.id} is listed for both {seen_keys[key.id]} "
                    f"and {name}"
                )
            seen_keys[key.id] = name
    version = (
        "dir_" + sha256_hex({n: i.model_dump(mode="json") for n, i in identities.items()})[:16]
    )
    return Directory(identities=identities, version=version)


def _read_entries(path: Path, required: bool) -> dict[str, Identity]:
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        if not required:
            return {}
        raise IdentityError(
            f"{path}: identity directory not found; register people with "
            "`countersign identity init --as NAME` (it prints the entry to add)"
        ) from None
    except tomllib.TOMLDecodeError as e:
        raise IdentityError(f"{path}: not valid TOML: {e}") from None
    identities = {}
    for name, entry in raw.items():
        if not isinstance(entry, dict):
            raise IdentityError(f"{path}: [{name}] must be a table (an identity)")
        try:
            identity = Identity.model_validate({"name": name, **entry})
        except ValidationError as e:
            raise IdentityError(f"{path}: [{name}]: {describe(e)}") from None
        for key in identity.keys:
            try:
                public = load_public_key(key.public_key)
            except IdentityError as e:
                raise IdentityError(f"{path}: [{name}] key {key.id}: {e}") from None
            if key.id != key_id(public):
                raise IdentityError(
                    f"{path}: [{name}] key id {key.id!r} does not match its public key "
                    f"(expected {key_id(public)!r})"
                )
        identities[name] = identity
    return identities


def _merge(first: Identity, first_file: Path, second: Identity, second_file: Path) -> Identity:
    """One identity listed in two directory files, or IdentityError naming both."""

    def conflict(what: str, a: object, b: object) -> IdentityError:
        return IdentityError(
            f"identity directory: [{first.name}] has {what} {a} in {first_file} but {b} in "
            f"{second_file}: one name, two identities; remove or correct one entry"
        )

    if first.kind != second.kind:
        raise conflict("kind", first.kind, second.kind)
    keys = first.keys or second.keys
    if first.keys and second.keys:
        mine = {k.id: k for k in first.keys}
        theirs = {k.id: k for k in second.keys}
        if set(mine) != set(theirs):
            raise conflict("keys", ", ".join(sorted(mine)), ", ".join(sorted(theirs)))
        keys = [
            k.model_copy(update={"revoked_at": _earliest(k.revoked_at, theirs[k.id].revoked_at)})
            for k in first.keys
        ]
    contact = {}
    for field in ("email", "slack_user"):
        a, b = getattr(first, field), getattr(second, field)
        if a is not None and b is not None and a != b:
            raise conflict(field, repr(a), repr(b))
        contact[field] = a if a is not None else b
    return first.model_copy(update={"keys": keys, **contact})


def _earliest(a: datetime | None, b: datetime | None) -> datetime | None:
    return min(a, b) if a is not None and b is not None else a or b


class DirectorySource:
    """The directory file (and the plugins' directory files), re-read when one changes (a
    revocation applies at once)."""

    def __init__(self, path: Path, extra: Sequence[Path] = (), *, required: bool = True) -> None:
        self.path = path
        self.extra = tuple(extra)
        self.required = required
        self._stamp: tuple[float | None, ...] | None = None
        self._directory: Directory | None = None

    def current(self) -> Directory:
        stamp = tuple(_mtime(p) for p in (self.path, *self.extra))
        if stamp != self._stamp or self._directory is None:
            self._directory = load_directory(self.path, self.extra, required=self.required)
            self._stamp = stamp
        return self._directory


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return None


# --- keys ------------------------------------------------------------------------------------


def key_id(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    return "key_" + hashlib.sha256(raw).hexdigest()[:16]


def load_public_key(text: str) -> Ed25519PublicKey:
    try:
        return Ed25519PublicKey.from_public_bytes(base64.b64decode(text, validate=True))
    except ValueError:
        raise IdentityError("a public key must be 32 raw Ed25519 bytes in base64") from None


def generate_private_key() -> str:
    """A new private key as the base64 text kept in its owner's keyring."""
    raw = Ed25519PrivateKey.generate().private_bytes(
        Encoding.Raw, PrivateFormat.Raw, NoEncryption()
    )
    return base64.b64encode(raw).decode()


class Signer:
    """Signs statements as one identity, with its private key (from that identity's keyring)."""

    def __init__(self, identity: str, private_key_text: str) -> None:
        try:
            self._key = Ed25519PrivateKey.from_private_bytes(
                base64.b64decode(private_key_text, validate=True)
            )
        except ValueError:
            # Never echo the value: it is a secret.
            raise IdentityError(
                f"the private key of {identity!r} in the keyring is not a 32-byte Ed25519 key "
                "in base64; create one with `countersign identity init --as NAME`"
            ) from None
        self.identity = identity
        self.public_key = base64.b64encode(
            self._key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        ).decode()
        self.key_id = key_id(self._key.public_key())

    def directory_entry(self, kind: Kind = "person") -> str:
        """The TOML to add to the directory for this key."""
        lines = [f'["{self.identity}"]']
        if kind != "person":
            lines.append(f'kind = "{kind}"')
        lines.append(f'keys = [{{ id = "{self.key_id}", public_key = "{self.public_key}" }}]')
        return "\n".join(lines)

    def sign(
        self,
        *,
        purpose: Purpose,
        channel: Channel,
        now: datetime,
        lifetime: timedelta = timedelta(minutes=10),
        identity: str | None = None,
        **claims: Any,
    ) -> Envelope:
        """A signed statement by this key's owner; `identity` only for the gateway attesting
        someone it verified."""
        statement = Statement(
            purpose=purpose,
            identity=identity or self.identity,
            signer=self.identity,
            key_id=self.key_id,
            channel=channel,
            issued_at=now,
            expires_at=now + lifetime,
            nonce=secrets.token_urlsafe(18),
            **claims,
        )
        signature = self._key.sign(_message(statement))
        return Envelope(statement=statement, signature=base64.b64encode(signature).decode())


# --- statements ------------------------------------------------------------------------------


class Statement(BaseModel):
    """What is signed. Every field is bound by the signature."""

    model_config = ConfigDict(extra="forbid")

    purpose: Purpose
    # Who acts (the approver, the requester, the operator).
    identity: str = Field(min_length=1, max_length=200)
    # Whose key signed: the identity itself, or the gateway that verified it.
    signer: str = Field(min_length=1, max_length=200)
    key_id: str = Field(min_length=1, max_length=100)
    channel: Channel
    workflow_id: str = ""
    request_id: str = ""
    action_hash: str = ""
    approve: bool | None = None
    comment: str = Field(default="", max_length=2000)
    # Purpose-specific claims: a start's input hash, a rollback's reason, a kill switch change.
    claims: dict[str, Any] = {}
    issued_at: datetime
    expires_at: datetime
    nonce: str = Field(min_length=16, max_length=64)


class Envelope(BaseModel):
    """A statement and its Ed25519 signature (base64)."""

    model_config = ConfigDict(extra="forbid")

    statement: Statement
    signature: str = Field(min_length=1, max_length=200)


class Verified(BaseModel):
    """Who a statement proves, and how."""

    identity: str
    kind: Kind
    key_id: str
    signer: str
    channel: Channel
    directory_version: str


def _message(statement: Statement) -> bytes:
    return STATEMENT_DOMAIN + canonical_json(statement.model_dump(mode="json")).encode()


def verify(envelope: Envelope, directory: Directory, now: datetime) -> Verified:
    """Who the envelope proves, or StatementRefused saying why it proves nothing."""
    s = envelope.statement
    signer = directory.get(s.signer)
    if signer is None:
        raise StatementRefused(f"signer {s.signer!r} is not in the identity directory")
    key = next((k for k in signer.keys if k.id == s.key_id), None)
    if key is None:
        raise StatementRefused(f"key {s.key_id} is not a key of {s.signer!r}")
    if key.revoked(now):
        assert key.revoked_at is not None
        raise StatementRefused(
            f"key {s.key_id} of {s.signer!r} was revoked at {key.revoked_at.isoformat()}"
        )
    try:
        load_public_key(key.public_key).verify(
            base64.b64decode(envelope.signature, validate=True), _message(s)
        )
    except (InvalidSignature, ValueError):
        raise StatementRefused(
            f"the signature does not match the statement and key {s.key_id} of {s.signer!r}"
        ) from None
    if s.expires_at - s.issued_at > MAX_LIFETIME:
        raise StatementRefused(f"the statement claims to hold longer than {MAX_LIFETIME}")
    if now < s.issued_at - CLOCK_SKEW:
        raise StatementRefused(f"the statement is issued in the future ({s.issued_at.isoformat()})")
    if now > s.expires_at:
        raise StatementRefused(f"the statement expired at {s.expires_at.isoformat()}")
    if s.signer == s.identity:
        if signer.kind == "gateway":
            raise StatementRefused("the approval gateway attests others; it never acts itself")
        if s.channel not in SELF_SIGNED_CHANNELS:
            raise StatementRefused(
                f"channel {s.channel!r} is attested by the approval gateway only; a personal "
                f"key signs for {', '.join(sorted(SELF_SIGNED_CHANNELS))}"
            )
        proven: Identity | None = signer
    else:
        if signer.kind != "gateway":
            raise StatementRefused(f"{s.signer!r} may not sign for {s.identity!r}")
        if s.channel not in ATTESTED_CHANNELS:
            raise StatementRefused(
                f"the gateway attests {', '.join(sorted(ATTESTED_CHANNELS))} only"
            )
        proven = directory.get(s.identity)
    if proven is None or proven.kind == "gateway":
        raise StatementRefused(f"{s.identity!r} is not a person or integration in the directory")
    return Verified(
        identity=proven.name,
        kind=proven.kind,
        key_id=key.id,
        signer=s.signer,
        channel=s.channel,
        directory_version=directory.version,
    )
