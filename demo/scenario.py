"""The offline demo: a fresh embedded stack, two refund runs, and what happened, told from
the audit trail. Also `countersign dev`: the same stack, left running for a person."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from pathlib import Path

from temporalio.client import Client

from countersign.activities.stores import open_audit_store, public_key
from countersign.agents.run import AgentRun
from countersign.agents.state import RunInput
from countersign.settings import Settings
from countersign.workers.decisions import decide_as, wait_for_requests
from countersign.workers.devstack import DevStack, port_of, port_open, start_dev_stack
from countersign.workers.story import story_line, ui_link
from countersign.workers.worker import connect

REFUNDS = [
    ("A-1001", "Refund order A-1001: the teapot arrived broken.", None),
    ("A-1002", "Refund order A-1002: the espresso machine leaks.", "alice"),
]


def _banner(stack: DevStack) -> str:
    s = stack.settings
    lines = [
        f"Temporal UI     {s.temporal_ui_url}",
        f"Temporal        {s.temporal_address} (namespace {s.temporal_namespace}, "
        f"task queue {s.task_queue})",
        f"System of record {s.systems['shop'].url}",
        f"Scripted model  {s.openai_base_url}",
        f"Approval gateway {s.gateway_url} (Slack, email links, webhooks)",
    ]
    if s.encrypt_payloads:
        lines.append(
            f"Codec server    {s.codec_url} (payloads encrypted; the UI decodes through it)"
        )
    lines.append(f"Worker metrics  http://{s.metrics_address or '127.0.0.1:9464'}/metrics")
    if s.email is not None and s.email.smtp_port == s.mail_catcher_port:
        lines.append(
            f"Mail catcher    smtp://127.0.0.1:{s.mail_catcher_port}: approval emails land in "
            f"{(s.state_dir / 'mail').resolve()} (open the .html files, click a link)"
        )
    lines.append(f"State and logs  {s.state_dir}")
    return "\n".join(lines)


async def _refund(
    client: Client, settings: Settings, order_id: str, task: str, approver: str | None
) -> str:
    workflow_id = f"demo-refund-{order_id}-{uuid.uuid4().hex[:6]}"
    run_input = RunInput(
        agent="support-refunds", task=task, subject={"order_id": order_id}, requested_by="ops-dana"
    )
    handle = await client.start_workflow(
        AgentRun.run,
        run_input.model_dump(mode="json"),
        id=workflow_id,
        task_queue=settings.task_queue,
        static_summary=f"support-refunds: {task}",
        execution_timeout=timedelta(minutes=10),
    )
    print(f"\n▶ {workflow_id}: {task!r} (requested by ops-dana)")
    if approver:
        (request,) = await wait_for_requests(handle)
        print(
            f"  … waiting for approval {request.request_id}; approving as {approver} "
            "(CLI path: signed with their development key)"
        )
        await decide_as(
            client,
            workflow_id,
            request,
            approver,
            comment="Leak confirmed from the customer's photo.",
        )
    result = await handle.result()
    for record in open_audit_store(settings).for_run(workflow_id):
        print(story_line(record))
    print(f"  result: {result.status}, {result.steps} steps, {len(result.actions)} actions")
    print(f"  see it in the Temporal UI: {ui_link(settings, workflow_id)}")
    return workflow_id


async def run_demo(settings: Settings, keep: bool = False) -> None:
    """Start the stack (or use the running one), run the refund scenarios, print the story."""
    if not port_open(port_of(settings.systems["shop"].url)):
        # The demo system of record starts from its seed data; audit and history are kept.
        (settings.state_dir / "shop.sqlite3").unlink(missing_ok=True)
    print("Starting the embedded stack (Temporal dev server + UI, shop, scripted model, worker)…")
    # In this thread, not a worker thread: SIGTERM during start-up then stops what started.
    stack = start_dev_stack(settings)
    try:
        print(_banner(stack))
        client = await connect(stack.settings)
        for order_id, task, approver in REFUNDS:
            await _refund(client, stack.settings, order_id, task, approver)
        report = open_audit_store(stack.settings).verify(public_key(stack.settings))
        print(
            f"\nAudit chain: {report.records} records, {'intact' if report.ok else 'BROKEN'}"
            f" ({report.checkpoints} signed checkpoint(s))."
        )
        if keep:
            print(
                "\nThe stack keeps running (Ctrl-C stops it). Try:\n"
                "  countersign start --task 'Refund order A-1003: desk wobbles' \\\n"
                "      --subject order_id=A-1003 --as ops-dana"
            )
            await _forever()
    finally:
        stack.stop()


async def serve_dev_stack(settings: Settings, scripts: Path | None = None) -> None:
    """`countersign dev`: the stack until a signal; `scripts`: the model's (default: the
    demo's)."""
    # In this thread, not a worker thread: SIGTERM during start-up then stops what started.
    stack = start_dev_stack(settings, scripts=scripts)
    try:
        print(_banner(stack))
        print(
            "\nStart a run from the UI (Start Workflow: type AgentRun, task queue countersign)"
            " or:\n  countersign start --task 'Refund order A-1002: it leaks' \\\n"
            "      --subject order_id=A-1002 --as ops-dana\n"
            "Then: countersign status RUN · countersign approve RUN REQUEST --as alice\n"
            "Ctrl-C stops the stack."
        )
        await _forever()
    finally:
        stack.stop()


async def _forever() -> None:
    await asyncio.Event().wait()  # until Ctrl-C
