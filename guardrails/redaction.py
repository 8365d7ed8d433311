"""Redaction: secrets and personal data never reach logs or audit. The one place for it.

Three nets: keys that name a secret (token, password, api_key, authorization, ...) have their
values replaced; keys that name a configured PII field (`COUNTERSIGN_PII_FIELDS=email,phone`;
`email` also covers `customer_email` and `billing-email`) have their values replaced; and every
secret value the process loaded from keyring is replaced wherever it appears in a string.
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
# Field names holding personal data, from settings (`set_pii_fields`).
_pii_key: re.Pattern[str] | None = None


def set_pii_fields(names: list[str] | tuple[str, ...]) -> None:
    """Redact the values of these fields (and of `*_name` / `*-name` variants) from now on."""
    global _pii_key
    cleaned = sorted({n.strip() for n in names if n.strip()})
    _pii_key = (
        re.compile(r"(^|[_-])(" + "|".join(map(re.escape, cleaned)) + r")$", re.IGNORECASE)
        if cleaned
        else None
    )


def _is_sensitive_key(key: object) -> bool:
    if not isinstance(key, str):
        return False
    return bool(_SECRET_KEY.search(key) or (_pii_key is not None and _pii_key.search(key)))


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
            k: REDACTED if _is_sensitive_key(k) and v not in (None, "") else redact(v)
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
