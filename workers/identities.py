"""Identity keys in the keyring, and the development directory.

A person's private key lives in that person's own keyring (entry `identity.NAME`);
`countersign identity init --as NAME` creates it and prints the directory entry an admin adds.
On a developer machine (`countersign dev`, the demo, the tests) one keyring holds the keys of
everyone the active policies name, the development requester and the gateway, and the
directory file is written for those who have no key yet: a development convenience that proves
nothing about real people. Who they are comes from the policy in force (its groups), so a
plugin's policy with people of its own runs in `countersign dev` as it is.
"""

from __future__ import annotations

import tomllib
from collections.abc import Sequence
from pathlib import Path

import keyring

from countersign.credentials import SERVICE, CredentialError, get_secret, set_secret
from countersign.guardrails.identity import (
    Directory,
    Kind,
    Signer,
    generate_private_key,
    load_directory,
)
from countersign.guardrails.policy import PolicyBundle, load_policy
from countersign.settings import Settings

# Who starts runs on a developer machine unless told otherwise: in no policy group, so never
# one of the run's approvers (`countersign start --as dev`).
DEV_REQUESTER = "dev"


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


def policy_people(settings: Settings) -> list[str]:
    """Everyone the active policies' groups name (the policy in force and the candidate)."""
    people: set[str] = set()
    for path in (settings.policy_path, settings.candidate_policy_path):
        if path is not None:
            for members in load_policy(path).settings.groups.values():
                people.update(members)
    return sorted(people)


def ensure_dev_directory(
    settings: Settings,
    people: Sequence[str] | None = None,
    *,
    slack_users: dict[str, str] | None = None,
) -> Path:
    """Development only: keys in this keyring for `people` (default: everyone the active
    policies name, the development requester, and whom the plugins' directories list without
    a key), the webhook integration and the gateway, and entries for them in the directory
    file. Pass settings with the plugins applied (workers.plugins.apply_plugins).

    Whoever already has a key in the directory (the file, or a plugin's directory) keeps it:
    a plugin's real people are never given a second identity."""
    path = settings.directory_file
    existing = tomllib.loads(path.read_text()) if path.exists() else {}
    directory = load_directory(path, settings.extra_directories, required=False)
    if people is None:
        keyless = [
            i.name for i in directory.identities.values() if i.kind == "person" and not i.keys
        ]
        people = sorted({*policy_people(settings), DEV_REQUESTER, *keyless})
    wanted: list[tuple[str, Kind]] = [(p, "person") for p in people]
    if settings.webhook is not None:
        wanted.append((settings.webhook.identity, "integration"))
    wanted.append((settings.gateway_identity, "gateway"))
    lines = []
    for name, kind in wanted:
        known = directory.get(name)
        if name in existing or (known is not None and known.keys):
            continue
        signer, _ = init_identity(name)
        lines.append(signer.directory_entry(kind))
        if kind == "person":
            # A plugin's entry may already say how to reach them.
            if known is None or known.email is None:
                lines.append(f'email = "{name}@example.com"')
            if slack_users and name in slack_users and (known is None or not known.slack_user):
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


def dev_activator(policy: PolicyBundle, directory: Directory) -> str:
    """Who activates `policy` on a developer machine: the first member of a group its
    `[authority] policy` names whose key is in this keyring and the directory."""
    where = policy.path / "policy.toml"
    groups = policy.settings.authority.get("policy", [])
    if not groups:
        raise CredentialError(
            f"{where}: [authority] policy names no group, so no one may activate this policy: "
            'add policy = ["GROUP"] under [authority]'
        )
    members = [m for g in groups for m in policy.settings.groups.get(g, [])]
    for name in members:
        identity = directory.get(name)
        try:
            signer = signer_for(name)
        except CredentialError:
            continue
        if identity is not None and any(k.id == signer.key_id for k in identity.keys):
            return name
    raise CredentialError(
        f"{where}: no one who may activate this policy ([authority] policy: "
        f"{', '.join(groups)}: {', '.join(members) or 'no members'}) has a key in this keyring "
        "and the identity directory"
    )
