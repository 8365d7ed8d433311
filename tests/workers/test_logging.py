"""The one log pipeline: stdlib records (temporalio's) with tracebacks render in both modes,
with no frame locals and no registered secret."""

from __future__ import annotations

import json
import logging

import pytest

from countersign.guardrails.redaction import register_secret
from countersign.workers.logging import configure_logging

SECRET = "sk-test-logging-0123456789abcdef"


def _fail_with_secret_local() -> None:
    token = SECRET  # noqa: F841 - a local a traceback with locals would print
    raise RuntimeError("the shop said no")


@pytest.fixture
def restore_logging():
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.parametrize("as_json", [True, False])
def test_a_foreign_exception_renders_without_locals(restore_logging, capsys, as_json):
    register_secret(SECRET)
    configure_logging(json=as_json)
    try:
        _fail_with_secret_local()
    except RuntimeError:
        logging.getLogger("temporalio.activity").exception(
            "Completing activity as failed", extra={"activity_type": "model.plan"}
        )
    err = capsys.readouterr().err
    assert "--- Logging error ---" not in err
    assert "the shop said no" in err
    assert "_fail_with_secret_local" in err
    assert SECRET not in err
    if as_json:
        line = json.loads(err.strip().splitlines()[-1])
        assert line["activity_type"] == "model.plan"
        assert all("locals" not in frame for e in line["exception"] for frame in e["frames"])
