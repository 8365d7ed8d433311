"""The identity directory and signed statements, without a run: what a signature proves."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from countersign.guardrails.identity import (
    IdentityError,
    Signer,
    StatementRefused,
    generate_private_key,
    load_directory,
    verify,
)

NOW = datetime(2026, 11, 30, 12, tzinfo=UTC)
ALICE = Signer("alice", generate_private_key())
GATEWAY = Signer("gateway", generate_private_key())


def directory(tmp_path: Path, *entries: str) -> Path:
    path = tmp_path / "directory.toml"
    path.write_text("\n\n".join(entries) + "\n")
    return path


def sign(signer: Signer, **kw):
    kw.setdefault("purpose", "decision")
    kw.setdefault("channel", "cli")
    return signer.sign(now=NOW, workflow_id="wf", request_id="apr_1", approve=True, **kw)


def test_a_personal_key_proves_its_owner_and_the_gateway_attests_others(tmp_path: Path) -> None:
    d = load_directory(
        directory(tmp_path, ALICE.directory_entry(), GATEWAY.directory_entry("gateway"))
    )
    assert verify(sign(ALICE), d, NOW).identity == "alice"
    attested = verify(sign(GATEWAY, identity="alice", channel="slack"), d, NOW)
    assert (attested.identity, attested.signer, attested.channel) == ("alice", "gateway", "slack")


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda: sign(ALICE, channel="slack"), "attested by the approval gateway only"),
        (lambda: sign(ALICE, identity="bob"), "may not sign for"),
        (lambda: sign(GATEWAY, identity="alice", channel="cli"), "attests email, slack, webhook"),
        (lambda: sign(GATEWAY, channel="slack"), "never acts itself"),
        (lambda: sign(ALICE, lifetime=timedelta(days=2)), "longer than"),
        (lambda: sign(Signer("alice", generate_private_key())), "is not a key of 'alice'"),
    ],
)
def test_statements_that_prove_nothing_say_why(tmp_path: Path, make, reason: str) -> None:
    d = load_directory(
        directory(tmp_path, ALICE.directory_entry(), GATEWAY.directory_entry("gateway"))
    )
    with pytest.raises(StatementRefused, match=reason):
        verify(make(), d, NOW)


def test_expiry_and_revocation_hold_from_their_time_on(tmp_path: Path) -> None:
    entry = ALICE.directory_entry().replace(" }]", f", revoked_at = {NOW.isoformat()} }}]")
    d = load_directory(directory(tmp_path, entry))
    early = NOW - timedelta(minutes=1)
    assert verify(ALICE.sign(purpose="decision", channel="cli", now=early), d, early)
    with pytest.raises(StatementRefused, match="revoked"):
        verify(sign(ALICE), d, NOW)
    fresh = load_directory(directory(tmp_path, ALICE.directory_entry()))
    late = NOW + timedelta(hours=1)
    with pytest.raises(StatementRefused, match="expired"):
        verify(ALICE.sign(purpose="decision", channel="cli", now=early), fresh, late)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ('[alice]\nkeys = [{ id = "key_x", public_key = "AAAA" }]', "32 raw Ed25519 bytes"),
        (
            ALICE.directory_entry().replace(ALICE.key_id, "key_0000"),
            "does not match its public key",
        ),
        (ALICE.directory_entry() + '\nrole = "boss"', "role"),
        ("alice = 3", "must be a table"),
    ],
)
def test_a_bad_directory_names_the_entry(tmp_path: Path, text: str, reason: str) -> None:
    with pytest.raises(IdentityError, match=reason):
        load_directory(directory(tmp_path, text))
