"""`countersign show [RUN] REQUEST`: an approval request with its evidence pack, laid out as
every channel shows it (guardrails/rendering.py); and `--change ARG=VALUE` for approving
with changes."""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from typing import Any

from countersign.settings import Settings


class ShowError(Exception):
    """A user error of `show` or `--change`; the message says what was wrong."""


def parse_changes(pairs: list[str]) -> dict[str, Any]:
    """`--change amount_cents=12000` → {"amount_cents": 12000}. Whole numbers stay numbers;
    whether the change is allowed is for the run to say (it refuses, saying why)."""
    changes: dict[str, Any] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise ShowError(f"--change {pair!r}: expected ARG=VALUE, e.g. amount_cents=12000")
        text = value.strip()
        changes[name.strip()] = int(text) if text.lstrip("-").isdigit() else text
    return changes


async def find_request(client: Any, run: str | None, request_id: str) -> tuple[str, Any, str]:
    """(workflow id, pending ApprovalRequest, the run's task); without RUN, among the runs
    waiting for approval."""
    from countersign.agents import search_attributes as sa
    from countersign.agents.run import AgentRun

    if run is not None:
        candidates = [run]
    else:
        candidates = [
            w.id async for w in client.list_workflows(f"{sa.WAITING.name} = true", limit=200)
        ]
    for workflow_id in candidates:
        status = await client.get_workflow_handle(workflow_id).query(AgentRun.status)
        found = next((r for r in status.pending_approvals if r.request_id == request_id), None)
        if found is not None:
            return workflow_id, found, status.task
    where = f"run {run}" if run else "runs waiting for approval"
    raise ShowError(f"no pending approval request {request_id} in {where}")


async def cmd_show(args: argparse.Namespace, settings: Settings) -> None:
    from countersign.guardrails.rendering import as_json, as_text, request_view
    from countersign.workers.worker import connect

    if len(args.ids) not in (1, 2):
        raise ShowError("usage: countersign show [RUN] REQUEST")
    run, request_id = (args.ids[0], args.ids[1]) if len(args.ids) == 2 else (None, args.ids[0])
    client = await connect(settings)
    workflow_id, request, task = await find_request(client, run, request_id)
    view = request_view(
        request, workflow_id=workflow_id, agent=request.agent, task=task, now=datetime.now(UTC)
    )
    if args.output == "json":
        print(json.dumps(as_json(view)))
        return
    print(as_text(view))
    how = f"countersign approve {workflow_id} {request_id} --as NAME"
    print(f"\nDecide: {how}  (or reject; --comment TEXT)")
    if request.may_change:
        names = ", ".join(request.may_change)
        print(f"Approve with changes: {how} --change ARG=VALUE  (changeable: {names})")
