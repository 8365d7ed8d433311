"""Secrets from keyring, with the backend configured explicitly and checked at start-up.

keyring silently falls back to whatever backend it finds (with keyrings.alt, a plaintext file),
so we never let it choose: the backend is a setting, loaded by name and checked here.
"""

from __future__ import annotations

import os
import re
import secrets
import tempfile
from pathlib import Path

import keyring
import keyring.backend
import keyring.errors
from keyring.core import load_keyring

from countersign.guardrails.redaction import register_secret
from countersign.settings import Settings

SERVICE = "countersign"


class CredentialError(Exception):
    """A keyring backend or secret is missing. The message says how to fix it."""


class SecretFiles(keyring.backend.KeyringBackend):
    """A keyring of one file per secret in a folder (COUNTERSIGN_SECRETS_DIR, /run/secrets):
    how Docker and Compose secrets, Kubernetes secret volumes and systemd credentials
    (`$CREDENTIALS_DIRECTORY`) hand secrets to a process. Each host gets its own copy of the
    files; nothing is shared at run time. Writable folders take `countersign secrets set`,
    `keys init` and `audit init-key` (files mode 0600); mounted read-only, they only read.

    Select it with COUNTERSIGN_KEYRING_BACKEND=countersign.credentials.SecretFiles."""

    priority = 0.1  # type: ignore[assignment]  # never preferred: we always set it explicitly
    directory = Path("/run/secrets")

    def _path(self, name: str) -> Path:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
            raise keyring.errors.KeyringError(
                f"secret name {name!r}: letters, digits, '.', '_' and '-' only"
            )
        return self.directory / name

    def get_password(self, service: str, username: str) -> str | None:
        try:
            # Files written by `echo` or an editor end with a newline; a secret never does.
            return self._path(username).read_text().rstrip("\r\n")
        except FileNotFoundError:
            return None

    def set_password(self, service: str, username: str, password: str) -> None:
        path = self._path(username)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=f".{username}.")  # 0600
            with os.fdopen(fd, "w") as f:
                f.write(password)
            os.replace(tmp, path)
        except OSError as e:
            raise keyring.errors.PasswordSetError(
                f"cannot write {path} ({e.strerror}); provision the file on this host instead"
            ) from e

    def delete_password(self, service: str, username: str) -> None:
        try:
            self._path(username).unlink()
        except FileNotFoundError:
            raise keyring.errors.PasswordDeleteError(f"no secret {username!r}") from None


def configure_keyring(settings: Settings) -> keyring.backend.KeyringBackend:
    """Install the configured backend as keyring's backend, or raise CredentialError."""
    try:
        backend = load_keyring(settings.keyring_backend)
    except Exception as e:  # keyring raises whatever the import raised
        raise CredentialError(
            f"COUNTERSIGN_KEYRING_BACKEND={settings.keyring_backend!r} could not be loaded: {e}"
        ) from e
    if type(backend).__name__ == "Keyring" and type(backend).__module__.endswith("fail"):
        raise CredentialError("the keyring 'fail' backend stores nothing; configure a real one")
    if hasattr(type(backend), "file_path"):
        # File backends (keyrings.alt) keep their file in the state folder, not in $HOME.
        settings.state_dir.mkdir(parents=True, exist_ok=True)
        backend.file_path = str(settings.keyring_path)  # type: ignore[attr-defined]
    if isinstance(backend, SecretFiles):
        backend.directory = settings.secrets_dir
    keyring.set_keyring(backend)
    return backend


# Secrets are looked up on every call, so a rotated one applies at once. A file-backed keyring
# (keyrings.alt) parses and decrypts its whole file on every lookup, ~0.4 ms, twice per model
# step: while the file's bytes are the same, so is the value. Other backends are asked
# every time.
_looked_up: dict[str, tuple[tuple[object, ...], str | None]] = {}


def _file_stamp() -> tuple[object, ...] | None:
    backend = keyring.get_keyring()
    if not hasattr(type(backend), "file_path"):
        return None
    path = str(backend.file_path)  # type: ignore[attr-defined]
    try:
        return (type(backend), path, Path(path).read_bytes())
    except OSError:
        return None


def _password(name: str) -> str | None:
    stamp = _file_stamp()
    if stamp is not None and (seen := _looked_up.get(name)) is not None and seen[0] == stamp:
        return seen[1]
    value = keyring.get_password(SERVICE, name)
    if stamp is not None:
        _looked_up[name] = (stamp, value)
    return value


def get_secret(name: str) -> str:
    """The secret stored under `name`; registered for redaction before it is returned."""
    value = _password(name)
    if value is None:
        raise CredentialError(
            f"secret {name!r} is not in the keyring ({type(keyring.get_keyring()).__name__}); "
            f"store it with: countersign secrets set {name}"
        )
    register_secret(value)
    return value


def ensure_secret(name: str) -> str:
    """The secret stored under `name`, or a fresh random token stored there (dev stack)."""
    value = keyring.get_password(SERVICE, name)
    if value is None:
        value = secrets.token_urlsafe(24)
        set_secret(name, value)
    register_secret(value)
    return value


def set_secret(name: str, value: str) -> None:
    register_secret(value)
    try:
        keyring.set_password(SERVICE, name, value)
    except keyring.errors.KeyringError as e:
        raise CredentialError(f"cannot store secret {name!r}: {e}") from e


def openai_api_key() -> str:
    """keyring entry 'openai' first, then OPENAI_API_KEY (the convention of every client)."""
    value = _password("openai") or os.environ.get("OPENAI_API_KEY")
    if not value:
        # The offline scripted model needs no key; the client insists on a non-empty one.
        return "offline-no-key"
    register_secret(value)
    return value
