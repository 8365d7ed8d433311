"""One way to say what was wrong with validated input: `field.path: what was expected`."""

from __future__ import annotations

from pydantic import ValidationError


def describe(e: ValidationError, whole: str = "(input)") -> str:
    """`amount_cents: Input should be a valid integer; mode: ...` (`whole` names the root)."""
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or whole}: {err['msg']}"
        for err in e.errors(include_url=False)
    )
