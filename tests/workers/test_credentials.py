"""The secret-files keyring: how each host of a fleet (Compose or Kubernetes secrets, systemd
credentials) gets its own copy of the deployment's secrets."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import keyring
import pytest

from countersign.credentials import (
    SERVICE,
    CredentialError,
    configure_keyring,
    get_secret,
    set_secret,
)
from countersign.settings import Settings


@pytest.fixture
def secrets_dir(tmp_path: Path) -> Iterator[Path]:
    folder = tmp_path / "secrets"
    before = keyring.get_keyring()
    configure_keyring(
        Settings(
            keyring_backend="countersign.credentials.SecretFiles",
            secrets_dir=folder,
            state_dir=tmp_path / "state",
        )
    )
    yield folder
    keyring.set_keyring(before)


def test_a_provisioned_file_is_the_secret(secrets_dir: Path) -> None:
    secrets_dir.mkdir()
    (secrets_dir / "shop").write_text("tok-123\n")  # as `echo tok-123 > shop` leaves it
    assert get_secret("shop") == "tok-123"
    with pytest.raises(CredentialError, match="countersign secrets set missing"):
        get_secret("missing")


def test_set_writes_a_file_only_its_owner_reads(secrets_dir: Path) -> None:
    set_secret("state-db", "s3cret")
    assert get_secret("state-db") == "s3cret"
    assert (secrets_dir / "state-db").stat().st_mode & 0o777 == 0o600


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_folder_says_to_provision_the_file(secrets_dir: Path) -> None:
    secrets_dir.mkdir(mode=0o500)
    with pytest.raises(CredentialError, match="provision the file on this host"):
        set_secret("shop", "tok")


def test_a_name_that_is_not_a_file_name_is_refused(secrets_dir: Path) -> None:
    with pytest.raises(Exception, match="letters, digits"):
        keyring.get_password("countersign", "../etc/passwd")


def test_a_file_keyring_secret_changed_by_anyone_is_read_again(tmp_path: Path) -> None:
    """Lookups of a file-backed keyring are not re-parsed while its file is unchanged; a
    change by any writer (here keyring itself, not set_secret, with same-length values in
    quick succession) is seen by the very next lookup, and a deleted secret is missing."""
    before = keyring.get_keyring()
    configure_keyring(
        Settings(keyring_backend="keyrings.alt.file.PlaintextKeyring", state_dir=tmp_path)
    )
    try:
        for n in range(30):
            value = f"token-{n:04d}-abcdef"
            keyring.set_password(SERVICE, "rotating", value)
            assert get_secret("rotating") == value
            assert get_secret("rotating") == value
        # Unchanged, the file is not parsed again.
        backend = keyring.get_keyring()
        parsed: list[str] = []
        lookup = backend.get_password
        backend.get_password = lambda s, n: parsed.append(n) or lookup(s, n)  # type: ignore[method-assign]
        assert get_secret("rotating") == value and parsed == []
        keyring.set_password(SERVICE, "rotating", "changed-0001-abcdef")
        assert get_secret("rotating") == "changed-0001-abcdef" and parsed == ["rotating"]
        keyring.delete_password(SERVICE, "rotating")
        with pytest.raises(CredentialError, match="'rotating' is not in the keyring"):
            get_secret("rotating")
    finally:
        keyring.set_keyring(before)
