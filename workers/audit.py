"""The audit trail as configured: the store (SQLite or PostgreSQL) from settings, the signing
key from the keyring, PII fields for redaction."""

from __future__ import annotations

import keyring
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

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
from countersign.guardrails.database import is_postgres
from countersign.guardrails.redaction import set_pii_fields
from countersign.settings import Settings


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
