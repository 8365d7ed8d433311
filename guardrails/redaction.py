"""Redaction: secrets never reach logs, history or audit.

Two nets: keys that name a secret (token, password, api_key, authorization, ...) have their
values replaced, and every secret value the process loaded from keyring is replaced wherever it
appears in a string.
"""

from __future__ import annotations

import re
from collections.abc import MutableMapping
from typing import Any

REDACTED = "[redacted]"

_SECRET_KEY = re.compile(
    r"(^|[_-])(pass(word|wd)?|secret|token|api[_-]?key|apikey|authorization|cookie|credentials?"
    r"|private[_-]?key|signing[_-]?key)$",
    re.IGNORECASE,
)
# Values registered at runtime (loaded from keyring); never logged themselves.
_known_secrets: set[str] = set()


def register_secret(value: str) -> None:
    """Make `value` redacted wherever it appears from now on."""
    if value and len(value) >= 6:
        _known_secrets.add(value)


def _redact_text(text: str) -> str:
    for secret in _known_secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


def redact(value: Any) -> Any:
    """A copy of `value` with secrets replaced. Dicts, lists and strings are walked."""
    if isinstance(value, dict):
        return {
            k: REDACTED
            if isinstance(k, str) and _SECRET_KEY.search(k) and v not in (None, "")
            else redact(v)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    if isinstance(value, str):
        return _redact_text(value)
    return value


def redact_processor(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> Any:
    """structlog processor: redact every field of every log event."""
    return redact(dict(event_dict))
