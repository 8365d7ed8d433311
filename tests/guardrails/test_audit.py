"""The audit trail, on SQLite and on a real PostgreSQL server: idempotent appends, domain-
separated hashes, signed checkpoints, and every kind of tampering named by `verify`."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from countersign.guardrails.audit import (
    GENESIS,
    AuditError,
    AuditStore,
    chain_hash,
)
from countersign.guardrails.audit_signing import CheckpointSigner, generate_signing_key
from countersign.guardrails.audit_stores import open_store
from countersign.guardrails.redaction import REDACTED, register_secret, set_pii_fields
from countersign.settings import SettingsError, load_settings

SIGNER = CheckpointSigner(generate_signing_key())
StoreFactory = Callable[..., AuditStore]


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh location: a SQLite file, or an empty database on the test PostgreSQL server."""
    if request.param == "sqlite":
        return str(tmp_path / "audit.sqlite3")
    return str(request.getfixturevalue("pg_dsn"))


@pytest.fixture
def make_store(backend: str) -> Iterator[StoreFactory]:
    opened: list[AuditStore] = []

    def make(**kwargs: Any) -> AuditStore:
        store = open_store(backend, **kwargs)
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()


def tamper(store: AuditStore, *statements: str) -> None:
    """Change the stored trail behind the store's back, as someone with database access."""
    if store.location.startswith("postgresql://"):
        with psycopg.connect(store.dsn, autocommit=True) as db:  # type: ignore[attr-defined]
            for sql in statements:
                db.execute(sql)  # type: ignore[arg-type]
    else:
        with sqlite3.connect(store.location) as db:
            for sql in statements:
                db.execute(sql)


def fill(store: AuditStore, n: int = 5, start: int = 0) -> AuditStore:
    for i in range(start, start + n):
        store.append_sync(
            record_id=f"r{i}",
            workflow_id="wf",
            run_id="run",
            kind="proposal",
            actor="agent",
            data={"i": i},
            event={"activity_id": str(i + 1), "activity_type": "guard.decide", "attempt": 1},
        )
    return store


def test_retried_append_writes_one_record(make_store: StoreFactory) -> None:
    store = fill(make_store(), 1)
    again = store.append_sync(
        record_id="r0",
        workflow_id="wf",
        run_id="run",
        kind="proposal",
        actor="agent",
        data={"i": "a retry may carry different data; the first write wins"},
    )
    assert again.seq == 1 and again.data == {"i": 0}
    assert len(store.for_run("wf")) == 1
    report = store.verify(SIGNER.public_key)
    assert report.ok and report.records == 1


def test_hashes_are_rfc6962_domain_separated(make_store: StoreFactory) -> None:
    store = fill(make_store(), 2)
    first, second = store.for_run("wf")
    leaf = {
        "seq": 1,
        "record_id": "r0",
        "at": first.at.isoformat(),
        "workflow_id": "wf",
        "run_id": "run",
        "kind": "proposal",
        "actor": "agent",
        "event": {"activity_id": "1", "activity_type": "guard.decide", "attempt": 1},
        "data": {"i": 0},
    }
    canonical = json.dumps(leaf, sort_keys=True, separators=(",", ":")).encode()
    leaf_digest = hashlib.sha256(b"\x00" + canonical).digest()
    head = hashlib.sha256(b"\x01" + bytes(32) + leaf_digest).hexdigest()
    assert first.prev_hash == GENESIS
    assert first.hash == head == chain_hash(GENESIS, leaf)
    assert second.prev_hash == first.hash


@pytest.mark.parametrize(
    ("tampering", "broken", "says"),
    [
        (["UPDATE audit_records SET data = '{\"i\":99}' WHERE record_id = 'r2'"], "r2", "edited"),
        (["UPDATE audit_records SET actor = 'admin' WHERE record_id = 'r3'"], "r3", "edited"),
        (["DELETE FROM audit_records WHERE record_id = 'r1'"], "r2", "deleted"),
        (["UPDATE audit_records SET seq = 100 WHERE record_id = 'r1'"], "r2", "reordered"),
        (
            [
                "UPDATE audit_records SET seq = 100 WHERE record_id = 'r1'",
                "UPDATE audit_records SET seq = 2 WHERE record_id = 'r3'",
                "UPDATE audit_records SET seq = 4 WHERE record_id = 'r1'",
            ],
            "r3",
            "prev_hash",
        ),
    ],
)
def test_edit_delete_and_reorder_name_the_first_broken_record(
    make_store: StoreFactory, tampering: list[str], broken: str, says: str
) -> None:
    store = fill(make_store(signer=SIGNER, checkpoint_every=10))
    assert store.verify(SIGNER.public_key).ok
    tamper(store, *tampering)
    report = store.verify(SIGNER.public_key)
    assert not report.ok
    assert report.first_broken == broken
    assert report.problem is not None and says in report.problem


def test_checkpoints_are_signed_every_n_records_and_on_demand(make_store: StoreFactory) -> None:
    store = fill(make_store(signer=SIGNER, checkpoint_every=3), 10)
    assert [cp.size for cp in store.checkpoints()] == [3, 6, 9]
    manual = store.checkpoint()
    assert manual.size == 10 and manual.key_id == SIGNER.key_id
    assert store.checkpoint() == manual  # nothing new: the same checkpoint
    assert manual.head == store.for_run("wf")[-1].hash
    report = store.verify(SIGNER.public_key)
    assert report.ok and report.checkpoints == 4 and report.signatures_checked


def test_a_deleted_tail_is_caught_by_a_checkpoint(make_store: StoreFactory) -> None:
    store = fill(make_store(signer=SIGNER, checkpoint_every=4), 8)
    tamper(store, "DELETE FROM audit_records WHERE seq > 6")
    report = store.verify(SIGNER.public_key)
    assert report.first_broken is None  # the shorter chain is consistent in itself…
    assert report.checkpoint_problems == [
        f"checkpoint at record 8 ({store.checkpoints()[1].at.isoformat()}): covers 8 records "
        "but the trail has 6: records after 6 were deleted"
    ]


def test_a_rewritten_trail_is_caught_by_the_signed_head(make_store: StoreFactory) -> None:
    """Edit record 6 and recompute every hash after it: the chain verifies, the signature
    over the old head does not, and the change is narrowed to between two checkpoints."""
    store = fill(make_store(signer=SIGNER, checkpoint_every=4), 12)
    rows = store.for_run("wf")
    prev = rows[4].hash
    statements = []
    for r in rows[5:]:
        data = {"i": 666} if r.seq == 6 else r.data
        fields = {
            "seq": r.seq,
            "record_id": r.record_id,
            "at": r.at.isoformat(),
            "workflow_id": r.workflow_id,
            "run_id": r.run_id,
            "kind": r.kind,
            "actor": r.actor,
            "event": r.event,
            "data": data,
        }
        digest = chain_hash(prev, fields)
        statements.append(
            f"UPDATE audit_records SET data = '{json.dumps(data, separators=(',', ':'))}', "
            f"prev_hash = '{prev}', hash = '{digest}' WHERE seq = {r.seq}"
        )
        prev = digest
    tamper(store, *statements)
    report = store.verify(SIGNER.public_key)
    assert report.first_broken is None
    assert len(report.checkpoint_problems) == 2
    assert "checkpoint at record 8" in report.checkpoint_problems[0]
    assert "a record between 5 and 8 was changed" in report.checkpoint_problems[0]


def test_forged_or_foreign_checkpoints_are_named(make_store: StoreFactory) -> None:
    store = fill(make_store(signer=SIGNER, checkpoint_every=2), 4)
    tamper(store, f"UPDATE audit_checkpoints SET head = '{'ab' * 32}' WHERE size = 2")
    report = store.verify(SIGNER.public_key)
    assert report.checkpoint_problems == [
        f"checkpoint at record 2 ({store.checkpoints()[0].at.isoformat()}): "
        "signature does not match its contents"
    ]
    other = CheckpointSigner(generate_signing_key())
    foreign = store.verify(other.public_key)
    assert all(
        f"signed by {SIGNER.key_id}, not by {other.key_id}" in p
        for p in foreign.checkpoint_problems
    )
    assert len(foreign.checkpoint_problems) == 2


def test_concurrent_writers_extend_one_chain(make_store: StoreFactory) -> None:
    """Four writers with their own connections, each also retrying the others' record ids."""
    stores = [make_store(signer=SIGNER, checkpoint_every=25) for _ in range(4)]
    errors: list[BaseException] = []

    def write(w: int) -> None:
        try:
            for i in range(40):
                for record_id in (f"w{w}-{i}", f"w{(w + 1) % 4}-{i}"):
                    stores[w].append_sync(
                        record_id=record_id,
                        workflow_id="wf",
                        run_id="run",
                        kind="k",
                        actor=f"writer{w}",
                        data={"i": i},
                    )
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=write, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    records = stores[0].for_run("wf")
    assert [r.seq for r in records] == list(range(1, 161))
    assert len({r.record_id for r in records}) == 160
    report = stores[0].verify(SIGNER.public_key)
    assert report.ok and report.records == 160
    assert [cp.size for cp in stores[0].checkpoints()] == [25, 50, 75, 100, 125, 150]


def test_secrets_and_pii_never_reach_the_audit(make_store: StoreFactory) -> None:
    register_secret("s3cr3t-value-123")
    set_pii_fields(["email", "phone"])
    try:
        rec = make_store().append_sync(
            record_id="x",
            workflow_id="wf",
            run_id="run",
            kind="k",
            actor="a",
            data={
                "api_key": "abc",
                "note": "token is s3cr3t-value-123",
                "prompt_tokens": 12,
                "customer": {"customer_email": "ann@example.com", "Phone": "+1 555", "name": "Ann"},
            },
        )
    finally:
        set_pii_fields([])
    assert rec.data == {
        "api_key": REDACTED,
        "note": f"token is {REDACTED}",
        "prompt_tokens": 12,
        "customer": {"customer_email": REDACTED, "Phone": REDACTED, "name": "Ann"},
    }


def test_pii_fields_setting_is_comma_separated() -> None:
    assert load_settings(pii_fields="email, phone").pii_fields == ["email", "phone"]


def test_a_dsn_with_a_password_is_refused() -> None:
    with pytest.raises(SettingsError) as e:
        load_settings(audit_dsn="postgresql://app:hunter22@db:5432/audit")
    assert "COUNTERSIGN_AUDIT_DSN" in str(e.value) and "keyring" in str(e.value)
    assert "hunter22" not in str(e.value)


def test_an_old_v1_sqlite_trail_gets_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE audit_records (seq INTEGER PRIMARY KEY, record_id TEXT)")
    with pytest.raises(AuditError, match="old \\(v1\\) hash scheme"):
        open_store(path)


def test_pii_fields_are_redacted_from_log_events_too() -> None:
    from countersign.guardrails.redaction import redact_processor

    set_pii_fields(["email"])
    try:
        event = redact_processor(None, "info", {"event": "crm.updated", "email": "ann@x.io"})
    finally:
        set_pii_fields([])
    assert event == {"event": "crm.updated", "email": REDACTED}
    assert redact_processor(None, "info", {"email": "ann@x.io"}) == {"email": "ann@x.io"}


def test_find_matches_exactly_what_it_prefilters(make_store: StoreFactory) -> None:
    """`find` narrows by the stored text first: LIKE's wildcards and escape in a value, text
    that only contains the value, nested values and non-string values all match as before."""
    store = make_store()
    values = ["50%_off", "a\\b", "100% x", 'añ€ "q"', "A", "a"]
    records = [{"v": v, "n": 1} for v in values] + [
        {"v": "50%_offer"},  # contains a value without being it
        {"other": {"v": "A"}},  # the value, nested: not a top-level match
        {"v": 1.0},
    ]
    for i, data in enumerate(records):
        store.append_many_sync(
            [
                {
                    "record_id": f"r{i}",
                    "workflow_id": "wf",
                    "run_id": "run",
                    "kind": "k",
                    "actor": "x",
                    "data": data,
                }
            ]
        )
    for v in values:
        assert [r.data["v"] for r in store.find("wf", "k", v=v)] == [v]
    assert [r.record_id for r in store.find("wf", "k", v="A", n=1)] == ["r4"]
    assert [r.record_id for r in store.find("wf", "k", v=1)] == ["r8"]
    assert store.find("wf", "k", v="%") == []
    assert store.find("other-wf", "k", v="A") == []
    assert store.verify().ok


def test_append_many_extends_the_chain_in_order(make_store: StoreFactory) -> None:
    store = fill(make_store(signer=SIGNER, checkpoint_every=3), 2)

    def record(i: int) -> dict[str, Any]:
        return {
            "record_id": f"r{i}",
            "workflow_id": "wf",
            "run_id": "run",
            "kind": "proposal",
            "actor": "agent",
            "data": {"i": i},
        }

    appended = store.append_many_sync([record(1), record(2), record(3)])
    assert [(r.record_id, r.seq) for r in appended] == [("r1", 2), ("r2", 3), ("r3", 4)]
    assert store.count() == 4 and len(store.checkpoints()) == 1
    assert store.verify(SIGNER.public_key).ok
