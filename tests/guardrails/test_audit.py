"""The audit chain: idempotent appends, and edits, deletions and reorders are caught."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from guardrails.audit import AuditStore
from guardrails.redaction import REDACTED, register_secret


def fill(path: Path, n: int = 5) -> AuditStore:
    store = AuditStore(path)
    for i in range(n):
        store.append_sync(
            record_id=f"r{i}",
            workflow_id="wf",
            run_id="run",
            kind="proposal",
            actor="agent",
            data={"i": i},
        )
    return store


def test_retried_append_writes_one_record(tmp_path: Path) -> None:
    store = fill(tmp_path / "a.db", 1)
    again = store.append_sync(
        record_id="r0",
        workflow_id="wf",
        run_id="run",
        kind="proposal",
        actor="agent",
        data={"i": 0},
    )
    assert again.seq == 1 and len(store.for_run("wf")) == 1
    assert store.verify() == (1, None)


def test_edit_delete_and_reorder_break_the_chain(tmp_path: Path) -> None:
    for tamper, broken in [
        ("UPDATE audit_records SET data = '{\"i\":99}' WHERE record_id = 'r2'", "r2"),
        ("DELETE FROM audit_records WHERE record_id = 'r1'", "r2"),
        ("UPDATE audit_records SET seq = 100 WHERE record_id = 'r1'", "r2"),
    ]:
        path = tmp_path / f"{broken}-{abs(hash(tamper))}.db"
        store = fill(path)
        assert store.verify() == (5, None)
        with sqlite3.connect(path) as db:
            db.execute(tamper)
        assert store.verify()[1] == broken


def test_secrets_never_reach_the_audit(tmp_path: Path) -> None:
    register_secret("s3cr3t-value-123")
    store = AuditStore(tmp_path / "a.db")
    rec = store.append_sync(
        record_id="x",
        workflow_id="wf",
        run_id="run",
        kind="k",
        actor="a",
        data={"api_key": "abc", "note": "token is s3cr3t-value-123", "prompt_tokens": 12},
    )
    assert rec.data == {"api_key": REDACTED, "note": f"token is {REDACTED}", "prompt_tokens": 12}
