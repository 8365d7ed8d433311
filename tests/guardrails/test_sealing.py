"""Secret and personal fields by type: found in models, sealed, opened, shown redacted."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pydantic import BaseModel, SecretStr

from countersign.activities.crm import ContactUpdated, UpdateContactArgs
from countersign.activities.payload_keys import PayloadKeys
from countersign.activities.sealing import Sealer, SealError, keep_sealed, scrub, seal_fields
from countersign.guardrails.approvals import ApprovalRequest
from countersign.guardrails.policy import ApprovalNeed
from countersign.guardrails.redaction import SEALED, Personal, Secret, redact, sensitive_fields


class Inner(BaseModel):
    email: Personal[str] | None = None
    note: str = ""


class Outer(BaseModel):
    login: Secret[str]
    api: SecretStr
    inner: Inner
    maybe: Inner | None = None
    plain: str = ""


def test_secret_and_personal_fields_are_found_by_type_in_nested_models() -> None:
    assert sensitive_fields(Outer) == {
        ("login",): "secret",
        ("api",): "secret",
        ("inner", "email"): "personal",
        ("maybe", "email"): "personal",
    }
    assert sensitive_fields(UpdateContactArgs) == {
        ("fields", "phone"): "personal",
        ("fields", "email"): "personal",
        ("fields", "address"): "personal",
    }
    assert ("customer", "email") in sensitive_fields(ContactUpdated)


def test_sealed_values_open_only_with_the_ring_and_show_redacted() -> None:
    ring = PayloadKeys.generate()
    sealer = Sealer(ring)
    data = seal_fields(
        sealer, {"login": "hunter22", "api": "k", "inner": {"email": "a@b.example"}}, Outer
    )
    assert "hunter22" not in str(data) and "a@b.example" not in str(data)
    assert SEALED.fullmatch(data["login"]) and SEALED.fullmatch(data["inner"]["email"])
    known: dict[str, str] = {}
    assert sealer.unseal(data, known)["inner"]["email"] == "a@b.example"
    assert known["hunter22"] == "secret"
    assert redact(data)["login"] == "[secret]" and redact(data)["inner"]["email"] == "[personal]"
    with pytest.raises(SealError):
        Sealer(PayloadKeys.generate()).unseal(data)
    forged = "[[sealed:secret:" + ring.active + ":AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA]]"
    with pytest.raises(SealError):
        sealer.unseal({"x": forged})


def test_a_rotated_ring_is_picked_up_to_open_newer_tokens() -> None:
    old = PayloadKeys.generate()
    new = old.rotated()
    token = Sealer(new).seal("x@y.example", "personal")
    assert Sealer(old, lambda: new).unseal(token) == "x@y.example"


def test_known_values_are_sealed_again_in_free_text_but_never_inside_a_token() -> None:
    sealer = Sealer(PayloadKeys.generate())
    known: dict[str, str] = {"Ada Lovelace": "personal", "A": "personal"}
    text = sealer.seal_known("Customer Ada Lovelace called. Ada Lovelace!", known)
    assert "Ada Lovelace" not in text and len(SEALED.findall(text)) == 2
    assert sealer.unseal(text) == "Customer Ada Lovelace called. Ada Lovelace!"
    assert scrub("no: Ada Lovelace", known) == "no: [personal]"


def test_keep_sealed_puts_tokens_back_after_validation_in_clear() -> None:
    sealer = Sealer(PayloadKeys.generate())
    original = seal_fields(sealer, {"login": "pw-123456", "api": "k-123456", "inner": {}}, Outer)
    clear = sealer.unseal(original)
    validated = Outer.model_validate(clear).model_dump(mode="json")
    assert validated["api"] == "**********"  # what pydantic would otherwise keep
    kept = keep_sealed(original, validated, Outer)
    assert kept["api"] == original["api"] and kept["login"] == original["login"]


def test_an_approval_summary_is_built_from_redacted_arguments() -> None:
    sealer = Sealer(PayloadKeys.generate())
    arguments = {
        "customer_id": "C-100",
        "email": sealer.seal("ada@example.com", "personal"),
        "password": "hunter22",  # untyped: the name-based net still catches it
    }
    request = ApprovalRequest(
        request_id="apr_1",
        call_id="c1",
        tool="crm.update_contact",
        arguments=arguments,
        reason="",
        rule_ids=[],
        action_hash="act_1",
        requested_by="dana",
        agent="support-refunds",
        need=ApprovalNeed(
            rule_id="r", groups=[], eligible=[], quorum=1, timeout=timedelta(minutes=1)
        ),
        expires_at=datetime.now(UTC),
    )
    assert request.summary() == (
        "crm.update_contact(customer_id=C-100, email=[personal], password=[redacted])"
    )
