"""Money as people read it. Amounts are integer minor units (`*_cents`) everywhere in code;
wherever a person reads one (CLI, Current Details, notices) it is shown with its currency:
amount_cents=18900 → "189.00 USD".

The currency is the argument's own `currency` field when it has one, else the deployment's
(COUNTERSIGN_CURRENCY, set by each process at start-up with `set_currency`), else USD.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from countersign.guardrails.redaction import redact

DEFAULT_CURRENCY = "USD"
_CURRENCY = re.compile(r"^[A-Z]{3}$")
_currency = DEFAULT_CURRENCY


def set_currency(code: str) -> None:
    """The deployment's currency (ISO 4217, e.g. EUR), from settings."""
    global _currency
    if not _CURRENCY.match(code):
        raise ValueError(f"currency {code!r}: expected a three-letter ISO 4217 code, e.g. USD")
    _currency = code


def money(cents: int, currency: str | None = None) -> str:
    """18900 → "189.00 USD" (minor units → major units, two decimals, thousands separated)."""
    sign = "-" if cents < 0 else ""
    return f"{sign}{abs(cents) / 100:,.2f} {currency or _currency}"


def is_money(key: str, value: Any) -> bool:
    return key.endswith("_cents") and isinstance(value, int) and not isinstance(value, bool)


def format_value(key: str, value: Any, currency: str | None = None) -> str:
    return money(value, currency) if is_money(key, value) else str(value)


def argument_pairs(arguments: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Arguments as (name, text) for people: `amount_cents` 18900 → ("amount", "189.00 USD").
    Redacted first, as every summary is: sealed values read [secret] / [personal]."""
    currency = arguments.get("currency")
    currency = currency if isinstance(currency, str) and _CURRENCY.match(currency) else None
    return [
        (
            key.removesuffix("_cents") if is_money(key, value) else key,
            format_value(key, value, currency),
        )
        for key, value in redact(dict(arguments)).items()
    ]


def describe_call(tool: str, arguments: Mapping[str, Any] | None) -> str:
    """payments.refund(order_id=A-1002, amount=189.00 USD, reason=…); just the tool when the
    arguments are unknown (a proposal denied before they were read)."""
    if arguments is None:
        return tool
    args = ", ".join(f"{k}={v}" for k, v in argument_pairs(arguments))
    return f"{tool}({args})"
