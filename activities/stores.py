"""Countersign's shared state as configured: the one place that picks the backend.

Unset `COUNTERSIGN_STATE_DSN`: a SQLite file per store in the state folder (zero setup, one
machine). Set: every store — limits ledger, transcripts, approval links, kill switch, and the
audit trail (with its signing key from the keyring, PII fields for redaction) — lives in that
one PostgreSQL database, so workers and gateways on separate machines share them. The
password comes from the keyring entry `COUNTERSIGN_STATE_PASSWORD_CREDENTIAL` (or libpq's
PGPASSWORD/.pgpass), never from the DSN.
"""

from __future__ import annotations

import threading

import keyring
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from countersign.activities.transcript import TranscriptStore
from countersign.credentials import (
    SERVICE,
    CredentialError,
    configure_keyring,
    get_secret,
    set_secret,
)
from countersign.guardrails.audit import AuditStore
from countersign.guardrails.audit_signing import (
    CheckpointSigner,
    generate_signing_key,
    load_public_key,
)
from countersign.guardrails.audit_stores import open_store
from countersign.guardrails.controls import KillSwitchFile, KillSwitchStore, KillSwitchTable
from countersign.guardrails.database import Database, PostgresDatabase, is_postgres
from countersign.guardrails.ledger import Ledger
from countersign.guardrails.redaction import set_pii_fields
from countersign.guardrails.sessions import SessionStore
from countersign.guardrails.tokens import TokenStore
from countersign.settings import Settings

# One PostgresDatabase (its connections) per DSN and process, shared by every store.
_databases: dict[tuple[str, str | None], PostgresDatabase] = {}
_lock = threading.Lock()


def shared_database(settings: Settings) -> Database | None:
    """The fleet's database, or None when state lives in SQLite files."""
    if not settings.state_dsn:
        return None
    credential = settings.state_password_credential
    if credential:
        configure_keyring(settings)
    password = get_secret(credential) if credential else None
    with _lock:
        key = (settings.state_dsn, password)
        if key not in _databases:
            _databases[key] = PostgresDatabase(settings.state_dsn, password=password)
        return _databases[key]


def close_shared_databases() -> None:
    """Close every shared database's connections (tests; a process that is done with them)."""
    with _lock:
        for db in _databases.values():
            db.close()
        _databases.clear()


def state_location(settings: Settings) -> str:
    """For messages and `countersign` output: where the state lives."""
    db = shared_database(settings)
    return db.location if db else str(settings.state_dir)


def open_ledger(settings: Settings) -> Ledger:
    return Ledger(shared_database(settings) or settings.ledger_path)


def open_transcripts(settings: Settings) -> TranscriptStore:
    return TranscriptStore(shared_database(settings) or settings.transcript_path)


def open_tokens(settings: Settings) -> TokenStore:
    return TokenStore(shared_database(settings) or settings.tokens_path)


def open_sessions(settings: Settings) -> SessionStore:
    """Inbox sign-in links and sessions: beside the approval links."""
    return SessionStore(shared_database(settings) or settings.state_dir / "inbox.sqlite3")


def open_kill_switch(settings: Settings) -> KillSwitchStore:
    db = shared_database(settings)
    return KillSwitchTable(db) if db else KillSwitchFile(settings.kill_switch_path)


# --- the audit trail ---


def signer(settings: Settings) -> CheckpointSigner:
    """The checkpoint signer; the key must be in the (configured) keyring."""
    name = settings.audit_signing_credential
    try:
        return CheckpointSigner(get_secret(name))
    except CredentialError:
        raise CredentialError(
            f"the audit signing key {name!r} is not in the keyring; "
            "create one with: countersign audit init-key"
        ) from None


def ensure_signing_key(settings: Settings) -> CheckpointSigner:
    """The signing key, created first if the keyring has none (dev stack, tests, init-key)."""
    if keyring.get_password(SERVICE, settings.audit_signing_credential) is None:
        set_secret(settings.audit_signing_credential, generate_signing_key())
    return signer(settings)


def public_key(settings: Settings) -> Ed25519PublicKey | None:
    """The key auditors verify with: the setting, else derived from the signing key."""
    if settings.audit_public_key:
        return load_public_key(settings.audit_public_key)
    if keyring.get_password(SERVICE, settings.audit_signing_credential) is None:
        return None
    return signer(settings).public_key


def open_audit_store(settings: Settings, *, signing: bool = False) -> AuditStore:
    """The configured store. Given `signing`, it writes a signed checkpoint every
    `audit_checkpoint_every` records (workers sign; readers and the CLI need not)."""
    set_pii_fields(settings.pii_fields)
    postgres = is_postgres(settings.audit_location)
    credential = settings.audit_credential if postgres else None
    if credential:
        configure_keyring(settings)
    password = get_secret(credential) if credential else None
    return open_store(
        settings.audit_location,
        signer=signer(settings) if signing else None,
        checkpoint_every=settings.audit_checkpoint_every,
        password=password,
    )
