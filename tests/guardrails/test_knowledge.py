"""The knowledge base: passages by section and position, BM25 search, citations checked."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from countersign.guardrails.knowledge import (
    DEFAULT_KNOWLEDGE_PATH,
    KnowledgeError,
    KnowledgeIndex,
    citations_in,
    open_index,
    split_passages,
)
from countersign.guardrails.policy import DEFAULT_POLICY_PATH
from countersign.settings import Settings, SettingsError
from countersign.workers.worker import check_startup

DOC = """\
# Returns

Intro before any section.

## Damaged items

Broken items are refunded in full.

A photo is asked for above 500.00:
- only when the damage is not described
- never twice

## Damaged items

A second section with the same heading.
"""


def shipped() -> KnowledgeIndex:
    return open_index(DEFAULT_KNOWLEDGE_PATH)


def test_a_document_is_split_by_section_and_position() -> None:
    passages = split_passages("returns.md", DOC)
    assert [(p.ref, p.section, p.title) for p in passages] == [
        ("returns.md#returns:1", "Returns", "Returns"),
        ("returns.md#damaged-items:1", "Damaged items", "Returns"),
        ("returns.md#damaged-items:2", "Damaged items", "Returns"),
        ("returns.md#damaged-items-1:1", "Damaged items", "Returns"),
    ]
    # A list stays with the paragraph it belongs to.
    assert passages[2].text == (
        "A photo is asked for above 500.00: - only when the damage is not described - never twice"
    )
    assert passages[1].marker == "[returns.md#damaged-items:1]"


def test_search_ranks_the_section_about_the_problem_first() -> None:
    index = shipped()
    [best, *_] = index.search("the teapot arrived broken", limit=3)
    assert best.ref == "refund-policy.md#damaged-or-defective-items:1"
    assert "arrived broken" in best.text
    [contact, *_] = index.search("may an agent change the customer's email address?")
    assert contact.document == "crm-policy.md" and contact.section == "Contact details"
    assert len(index.search("refund", limit=2)) == 2


@pytest.mark.parametrize("query", ["", "   ", "?!", '"unbalanced', "NEAR(a b) AND OR NOT *"])
def test_any_query_text_is_words_never_a_syntax_error(query: str) -> None:
    found = shipped().search(query)
    assert all(p.ref in shipped().passages for p in found)


def test_a_real_ref_resolves_to_its_passage_and_a_made_up_one_to_nothing() -> None:
    index = shipped()
    passage = index.resolve("refund-policy.md#approval-tiers:2")
    assert passage is not None
    assert "one support lead" in passage.text
    assert index.resolve("refund-policy.md#goodwill-refunds:1") is None
    assert index.resolve("refund-policy.md#approval-tiers:99") is None
    assert index.resolve("handbook.md#approval-tiers:1") is None


def test_citations_in_finds_every_marker_once_in_order() -> None:
    text = (
        "Refund in full [refund-policy.md#damaged-or-defective-items:1], noted "
        "[crm-policy.md#notes:1@0123456789ab] and again [refund-policy.md#damaged-or-defective-"
        "items:1]. Not citations: [note], [1], [see policy], (refund-policy.md#limits:1)."
    )
    assert citations_in(text) == [
        "refund-policy.md#damaged-or-defective-items:1",
        "crm-policy.md#notes:1@0123456789ab",
    ]
    assert citations_in("") == []


def test_a_fabricated_citation_is_flagged_and_a_real_one_is_not() -> None:
    made_up, real, malformed = shipped().cite(
        "Goodwill [refund-policy.md#goodwill-refunds:1] and damage "
        "[refund-policy.md#damaged-or-defective-items:1] and [policy.md#Limits:x]"
    )
    assert (made_up.ref, made_up.status, made_up.passage, made_up.flagged) == (
        "refund-policy.md#goodwill-refunds:1",
        "unresolved",
        None,
        True,
    )
    assert "DOES NOT RESOLVE" in made_up.line()
    assert (real.status, real.flagged) == ("resolved", False)
    assert real.passage is not None and real.passage.text in real.line()
    assert real.index_version == shipped().version
    assert malformed.status == "unresolved"


def test_after_an_edit_a_citation_no_longer_resolves_to_the_old_text(tmp_path: Path) -> None:
    doc = tmp_path / "policy.md"
    doc.write_text("# Policy\n\n## Limits\n\nAt most 3 refunds a week.\n\nAsk a lead.\n")
    before = open_index(tmp_path)
    old = before.resolve("policy.md#limits:1")
    assert old is not None and old.text == "At most 3 refunds a week."
    pinned = f"policy.md#limits:1@{old.version}"
    assert before.check(pinned).status == "resolved"
    assert open_index(tmp_path) is before  # unchanged folder: no rebuild

    doc.write_text("# Policy\n\n## Limits\n\nAt most 2 refunds a week, and never on Sundays.\n")
    os.utime(doc, ns=(doc.stat().st_mtime_ns + 1, doc.stat().st_mtime_ns + 1))
    after = open_index(tmp_path)
    assert after.version != before.version
    new = after.resolve("policy.md#limits:1")
    assert new is not None and new.text != old.text and "2 refunds" in new.text
    changed = after.check(pinned)
    assert (changed.status, changed.flagged) == ("changed", True)
    assert "CHANGED" in changed.line()
    # The paragraph that was removed resolves to nothing now.
    assert after.check("policy.md#limits:2").status == "unresolved"
    # A new document is picked up; a removed one is gone.
    (tmp_path / "extra.md").write_text("# Extra\n\nSundays are closed.\n")
    assert open_index(tmp_path).search("sundays")[0].document in {"extra.md", "policy.md"}
    doc.unlink()
    assert open_index(tmp_path).resolve("policy.md#limits:1") is None


def test_a_missing_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(KnowledgeError, match=r"nowhere does not exist.*COUNTERSIGN_KNOWLEDGE"):
        open_index(tmp_path / "nowhere")


def test_an_unreadable_document_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "bad.md").write_bytes(b"# Bad\n\n\xff\xfe not utf-8\n")
    with pytest.raises(KnowledgeError, match=r"bad\.md cannot be read as UTF-8"):
        open_index(tmp_path)


def test_the_shipped_refund_policy_states_the_demo_policys_figures() -> None:
    """The prose and the rules must not drift apart: the amounts the refund policy states are
    the ones refunds.cedar enforces (in cents)."""
    prose = (DEFAULT_KNOWLEDGE_PATH / "refund-policy.md").read_text()
    rules = (DEFAULT_POLICY_PATH / "refunds.cedar").read_text()
    for amount, cents in [("50.00", "5000"), ("500.00", "50000"), ("2,000.00", "200000")]:
        assert amount in prose
        assert re.search(rf"\b{cents}\b", rules), cents
    assert "At most 3 refunds per customer per week" in prose and ">= 3" in rules
    assert "4 hours" in prose and '@timeout_minutes("240")' in rules


def test_a_worker_does_not_start_without_its_knowledge_folder(
    settings: Settings, tmp_path: Path
) -> None:
    elsewhere = settings.model_copy(update={"knowledge_path": tmp_path / "nowhere"})
    with pytest.raises(SettingsError) as caught:
        check_startup(elsewhere)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"knowledge folder {tmp_path / 'nowhere'} does not exist")
    assert "COUNTERSIGN_KNOWLEDGE_PATH" in message
