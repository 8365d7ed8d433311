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


def test_a_plugins_directory_joins_the_file_and_one_name_stays_one_identity(
    tmp_path: Path,
) -> None:
    # The deployment's file holds alice's key; a plugin's directory lists how to reach her and
    # an integration of its own.
    main = directory(tmp_path, ALICE.directory_entry())
    bot = Signer("acme-bot", generate_private_key())
    plugin = tmp_path / "plugin.toml"
    plugin.write_text(
        f'[alice]\nemail = "alice@acme.example"\n\n{bot.directory_entry("integration")}\n'
    )
    joined = load_directory(main, [plugin])
    alice = joined.get("alice")
    assert alice is not None and alice.email == "alice@acme.example"
    assert [k.id for k in alice.keys] == [ALICE.key_id]
    assert verify(sign(ALICE), joined, NOW).identity == "alice"
    assert joined.get("acme-bot") is not None
    assert joined.version != load_directory(main).version
    # Either side may revoke the key both list: the earliest revocation holds.
    revoked = ALICE.directory_entry().replace(" }]", f", revoked_at = {NOW.isoformat()} }}]")
    plugin.write_text(revoked + "\n")
    with pytest.raises(StatementRefused, match="revoked"):
        verify(sign(ALICE), load_directory(main, [plugin]), NOW)
    # A missing default file lists no one when a plugin supplies the directory.
    assert load_directory(tmp_path / "none.toml", [plugin], required=False).get("alice")


@pytest.mark.parametrize(
    ("other", "what"),
    [
        (Signer("alice", generate_private_key()).directory_entry(), "keys"),
        (ALICE.directory_entry("integration"), "kind"),
        (ALICE.directory_entry() + '\nemail = "a@elsewhere.example"', "email"),
    ],
)
def test_one_name_in_two_directories_as_two_identities_is_refused(
    tmp_path: Path, other: str, what: str
) -> None:
    main = directory(tmp_path, ALICE.directory_entry() + '\nemail = "alice@example.com"')
    plugin = tmp_path / "plugin.toml"
    plugin.write_text(other + "\n")
    with pytest.raises(IdentityError) as caught:
        load_directory(main, [plugin])
    message = str(caught.value)
    assert message.startswith(f"identity directory: [alice] has {what} ")
    assert f"in {main} but " in message and f"in {plugin}: one name, two identities" in message
    assert "\n" not in message


def test_one_key_listed_for_two_names_across_directories_is_refused(tmp_path: Path) -> None:
    main = directory(tmp_path, ALICE.directory_entry())
    plugin = tmp_path / "plugin.toml"
    plugin.write_text(ALICE.directory_entry().replace('["alice"]', '["mallory"]') + "\n")
    with pytest.raises(IdentityError, match=f"key {ALICE.key_id} is listed for both alice and"):
        load_directory(main, [plugin])
