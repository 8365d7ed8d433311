"""Redaction: secrets and personal data never reach logs or audit. The one place for it.

First, by type: a tool's argument and result models mark fields `Secret[str]` (or
`pydantic.SecretStr`) and `Personal[str]`. The worker seals those values where they enter
(the model's reply, a tool's result; activities/sealing.py) into tokens
`[[sealed:<kind>:<key id>:<ciphertext>]]`, so history, transcripts and audit only ever carry
ciphertext; `redact` shows a token as `[secret]` / `[personal]`.

Then three nets by name and value: keys that name a secret (token, password, api_key,
authorization, ...) have their values replaced; keys that name a configured PII field
(`COUNTERSIGN_PII_FIELDS=email,phone`; `email` also covers `customer_email` and
`billing-email`) have their values replaced; and every secret value the process loaded from
keyring is replaced wherever it appears in a string.
"""

from __future__ import annotations

import re
from collections.abc import MutableMapping
from dataclasses import dataclass
from types import UnionType
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, get_origin

from pydantic import BaseModel, SecretBytes, SecretStr

REDACTED = "[redacted]"

Kind = Literal["secret", "personal"]


@dataclass(frozen=True)
class Sensitive:
    """The marker inside `Secret[...]` and `Personal[...]`."""

    kind: Kind


T = TypeVar("T")
# `password: Secret[str]`, `email: Personal[str]`: the type says what the value is.
Secret = Annotated[T, Sensitive("secret")]
Personal = Annotated[T, Sensitive("personal")]

# A sealed value, as it travels through history, transcripts and tool arguments.
SEALED = re.compile(r"\[\[sealed:(secret|personal):([A-Za-z0-9_]+):([A-Za-z0-9_-]+)\]\]")

Path = tuple[str, ...]


def _kind_of(tp: Any) -> tuple[Kind | None, type[BaseModel] | None]:
    """Whether a type is sensitive, or else the model nested in it (through Optional)."""
    if tp in (SecretStr, SecretBytes):
        return "secret", None
    origin = get_origin(tp)
    if origin is Annotated:
        base, *meta = get_args(tp)
        for m in meta:
            if isinstance(m, Sensitive):
                return m.kind, None
        return _kind_of(base)
    if origin in (Union, UnionType):
        nested = None
        for arg in get_args(tp):
            kind, model = _kind_of(arg)
            if kind:
                return kind, None
            nested = nested or model
        return None, nested
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return None, tp
    return None, None


def sensitive_fields(model: type[BaseModel], prefix: Path = ()) -> dict[Path, Kind]:
    """The paths of a model's secret and personal fields (nested models included), by type.

    Inside lists and dicts, values are not found by type; the name-based nets still apply."""
    found: dict[Path, Kind] = {}
    for name, info in model.model_fields.items():
        path = (*prefix, name)
        kind = next((m.kind for m in info.metadata if isinstance(m, Sensitive)), None)
        nested = None
        if kind is None:
            kind, nested = _kind_of(info.annotation)
        if kind:
            found[path] = kind
        elif nested is not None and nested is not model:
            found.update(sensitive_fields(nested, path))
    return found


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
    text = SEALED.sub(lambda m: f"[{m.group(1)}]", text)
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
