"""An auditor's story through the real CLI: sign a checkpoint, verify, catch tampering."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from countersign.guardrails.audit_signing import (
    CheckpointSigner,
    generate_signing_key,
    public_key_text,
)
from countersign.guardrails.audit_stores import open_store
from tests.e2e.test_cli import countersign


@pytest.fixture
def trail(tmp_path: Path) -> tuple[dict[str, str], CheckpointSigner]:
    """A state folder whose keyring holds a signing key, and a trail of 7 records."""
    env = {"COUNTERSIGN_STATE_DIR": str(tmp_path)}
    key = generate_signing_key()
    stored = countersign(env, "secrets", "set", "audit-signing", input=key + "\n")
    assert stored.returncode == 0, stored.stderr
    assert key not in stored.stdout + stored.stderr
    signer = CheckpointSigner(key)
    store = open_store(tmp_path / "audit.sqlite3", signer=signer, checkpoint_every=3)
    for i in range(7):
        store.append_sync(
            record_id=f"r{i}", workflow_id="wf", run_id="run", kind="k", actor="a", data={"i": i}
        )
    return env, signer


def test_auditor_checkpoints_verifies_and_catches_an_edit(
    trail: tuple[dict[str, str], CheckpointSigner], tmp_path: Path
) -> None:
    env, signer = trail
    checkpoint = countersign(env, "audit", "checkpoint")
    assert checkpoint.returncode == 0, checkpoint.stderr
    assert "checkpoint: 7 records" in checkpoint.stdout and signer.key_id in checkpoint.stdout

    verify = countersign(env, "audit", "verify")
    assert verify.returncode == 0, verify.stderr
    assert "audit chain intact: 7 records, 3 checkpoint(s), signatures checked" in verify.stdout

    with sqlite3.connect(tmp_path / "audit.sqlite3") as db:
        db.execute("UPDATE audit_records SET data = '{\"i\":40}' WHERE record_id = 'r4'")
    broken = countersign(env, "audit", "verify")
    assert broken.returncode == 2
    assert "audit chain BROKEN" in broken.stderr
    assert "first broken record: record r4 (position 5): its contents do not match" in (
        broken.stderr
    )
    assert "checkpoint at record 6" in broken.stderr
    assert "a record between 4 and 6 was changed" in broken.stderr


def test_verify_with_someone_elses_public_key_names_the_signing_key(
    trail: tuple[dict[str, str], CheckpointSigner],
) -> None:
    env, signer = trail
    other = CheckpointSigner(generate_signing_key())
    verify = countersign(
        {**env, "COUNTERSIGN_AUDIT_PUBLIC_KEY": public_key_text(other.public_key)},
        "audit",
        "verify",
    )
    assert verify.returncode == 2
    assert f"signed by {signer.key_id}, not by {other.key_id}" in verify.stderr


def test_init_key_creates_a_key_once_and_prints_only_the_public_half(tmp_path: Path) -> None:
    env = {"COUNTERSIGN_STATE_DIR": str(tmp_path)}
    first = countersign(env, "audit", "init-key")
    again = countersign(env, "audit", "init-key")
    assert first.returncode == 0 and first.stdout == again.stdout
    assert "public key (for COUNTERSIGN_AUDIT_PUBLIC_KEY)" in first.stdout
    keyring_file = (tmp_path / "keyring.cfg").read_text()
    assert "audit_2dsigning" in keyring_file  # keyrings.alt escapes the dash
    empty = countersign(env, "audit", "checkpoint")
    assert empty.returncode == 2 and "is empty: nothing to sign" in empty.stderr


def test_audit_on_postgres_through_the_cli(tmp_path: Path, pg_dsn: str) -> None:
    env = {"COUNTERSIGN_STATE_DIR": str(tmp_path), "COUNTERSIGN_AUDIT_DSN": pg_dsn}
    assert countersign(env, "audit", "init-key").returncode == 0
    store = open_store(pg_dsn)
    store.append_sync(
        record_id="x", workflow_id="wf-pg", run_id="run", kind="run.started", actor="a", data={}
    )
    store.close()
    assert countersign(env, "audit", "checkpoint").returncode == 0
    verify = countersign(env, "audit", "verify")
    assert verify.returncode == 0, verify.stderr
    assert "1 records, 1 checkpoint(s), signatures checked" in verify.stdout
    assert "postgresql://countersign@127.0.0.1" in verify.stdout
    story = countersign(env, "audit", "wf-pg")
    assert "run started by" in story.stdout
