"""Money as people read it: integer cents in, amount and currency out."""

from __future__ import annotations

import pytest

from countersign.guardrails.money import argument_pairs, describe_call, money, set_currency


def test_cents_read_as_money_with_currency() -> None:
    assert money(18900) == "189.00 USD"
    assert money(5) == "0.05 USD"
    assert money(123456789) == "1,234,567.89 USD"
    assert money(-4200, "EUR") == "-42.00 EUR"


def test_arguments_show_money_under_its_plain_name() -> None:
    args = {"order_id": "A-1002", "amount_cents": 18900, "urgent": True, "count_cents": True}
    assert argument_pairs(args) == [
        ("order_id", "A-1002"),
        ("amount", "189.00 USD"),
        ("urgent", "True"),
        ("count_cents", "True"),  # a bool is not money
    ]
    assert describe_call("payments.refund", {"order_id": "A-1002", "amount_cents": 18900}) == (
        "payments.refund(order_id=A-1002, amount=189.00 USD)"
    )
    assert describe_call("payments.refund", None) == "payments.refund"


def test_an_argument_currency_wins_over_the_deployment_currency() -> None:
    set_currency("EUR")
    try:
        assert money(100) == "1.00 EUR"
        assert argument_pairs({"total_cents": 250, "currency": "GBP"})[0] == ("total", "2.50 GBP")
    finally:
        set_currency("USD")


def test_a_currency_must_be_an_iso_code() -> None:
    with pytest.raises(ValueError, match="expected a three-letter ISO 4217 code"):
        set_currency("dollars")


def test_what_people_read_is_redacted_like_every_summary() -> None:
    from countersign.guardrails.redaction import REDACTED

    shown = describe_call("crm.update_contact", {"customer_id": "C-100", "api_token": "s3cr3t"})
    assert shown == f"crm.update_contact(customer_id=C-100, api_token={REDACTED})"
