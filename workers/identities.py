"""Identity keys in the keyring, and the development directory.

A person's private key lives in that person's own keyring (entry `identity.NAME`);
`countersign identity init --as NAME` creates it and prints the directory entry an admin adds.
On a developer machine (`countersign dev`, the demo, the tests) one keyring holds the keys of
every demo person and the gateway, and the directory is written for them on first use: a
development convenience that proves nothing about real people.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import keyring

from countersign.credentials import SERVICE, CredentialError, get_secret, set_secret
from countersign.guardrails.identity import Kind, Signer, generate_private_key
from countersign.settings import Settings

# The demo policy's people (groups in guardrails/policies/default/policy.toml) and the demo
# requester, reachable through the dev mail catcher.
DEV_PEOPLE = ("alice", "bob", "carol", "erin", "ops-dana")


def key_entry(identity: str) -> str:
    return f"identity.{identity}"


def signer_for(identity: str) -> Signer:
    """Sign as `identity` with the private key in this keyring, or say how to get one."""
    try:
        return Signer(identity, get_secret(key_entry(identity)))
    except CredentialError:
        raise CredentialError(
            f"no key for {identity!r} in this keyring: run `countersign identity init --as "
            f"{identity}` and have the printed entry added to the identity directory"
        ) from None


def init_identity(identity: str) -> tuple[Signer, bool]:
    """This keyring's key for `identity`, created if missing; (signer, created)."""
    created = keyring.get_password(SERVICE, key_entry(identity)) is None
    if created:
        set_secret(key_entry(identity), generate_private_key())
    return signer_for(identity), created


def ensure_dev_directory(
    settings: Settings,
    people: tuple[str, ...] = DEV_PEOPLE,
    *,
    slack_users: dict[str, str] | None = None,
) -> Path:
    """Development only: keys for the demo people, the webhook integration and the gateway in
    this keyring, and a directory listing them (entries already in the file are kept)."""
    path = settings.directory_file
    existing = tomllib.loads(path.read_text()) if path.exists() else {}
    wanted: list[tuple[str, Kind]] = [(p, "person") for p in people]
    if settings.webhook is not None:
        wanted.append((settings.webhook.identity, "integration"))
    wanted.append((settings.gateway_identity, "gateway"))
    lines = []
    for name, kind in wanted:
        if name in existing:
            continue
        signer, _ = init_identity(name)
        lines.append(signer.directory_entry(kind))
        if kind == "person":
            lines.append(f'email = "{name}@example.com"')
            if slack_users and name in slack_users:
                lines.append(f'slack_user = "{slack_users[name]}"')
        lines.append("")
    if lines:
        path.parent.mkdir(parents=True, exist_ok=True)
        header = (
            ""
            if existing
            else "# Development identity directory (countersign dev): keys in this keyring.\n\n"
        )
        with path.open("a") as f:
            f.write(header + "\n".join(lines))
    return path
