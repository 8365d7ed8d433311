"""Open the audit store a location names: the backends sit above the interface they implement
(`guardrails.audit`), and this module above both."""

from __future__ import annotations

from pathlib import Path

from countersign.guardrails.audit import DEFAULT_CHECKPOINT_EVERY, AuditStore
from countersign.guardrails.audit_postgres import PostgresAuditStore
from countersign.guardrails.audit_signing import CheckpointSigner
from countersign.guardrails.audit_sqlite import SqliteAuditStore
from countersign.guardrails.database import is_postgres


def open_store(
    location: str | Path,
    *,
    signer: CheckpointSigner | None = None,
    checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY,
    password: str | None = None,
) -> AuditStore:
    """The store at `location`: a `postgresql://` DSN, or a SQLite file path."""
    if is_postgres(location):
        return PostgresAuditStore(
            str(location), signer=signer, checkpoint_every=checkpoint_every, password=password
        )
    path = Path(str(location).removeprefix("sqlite:///"))
    return SqliteAuditStore(path, signer=signer, checkpoint_every=checkpoint_every)
