"""Secrets from keyring, with the backend configured explicitly and checked at start-up.

keyring silently falls back to whatever backend it finds (with keyrings.alt, a plaintext file),
so we never let it choose: the backend is a setting, loaded by name and checked here.
"""

from __future__ import annotations

import os
import secrets

import keyring
import keyring.backend
from keyring.core import load_keyring

from guardrails.redaction import register_secret
from workers.settings import Settings

SERVICE = "countersign"


class CredentialError(Exception):
    """A keyring backend or secret is missing. The message says how to fix it."""


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
    keyring.set_keyring(backend)
    return backend


def get_secret(name: str) -> str:
    """The secret stored under `name`; registered for redaction before it is returned."""
    value = keyring.get_password(SERVICE, name)
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
    keyring.set_password(SERVICE, name, value)
    register_secret(value)


def openai_api_key() -> str:
    """keyring entry 'openai' first, then OPENAI_API_KEY (the convention of every client)."""
    value = keyring.get_password(SERVICE, "openai") or os.environ.get("OPENAI_API_KEY")
    if not value:
        # The offline scripted model needs no key; the client insists on a non-empty one.
        return "offline-no-key"
    register_secret(value)
    return value
