"""`countersign`: run the demo, the dev stack or a worker; start runs; decide approvals; read
the audit trail."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
import sys
import uuid
from collections.abc import Callable, Coroutine
from typing import Any

from guardrails.audit import AuditRecord, AuditStore
from workers.settings import Settings, SettingsError, load_settings


class CliError(Exception):
    """A user error: printed without a traceback, exit code 2."""


def story_line(r: AuditRecord) -> str:
    """One audit record as a sentence a person can read."""
    d = r.data
    when = r.at.strftime("%H:%M:%S")
    text = {
        "run.started": lambda: f"run started by {d.get('requested_by')}: {d.get('task')!r}",
        "model.call": lambda: (
            f"model {d.get('model')} step {d.get('step')}: "
            f"{d.get('tool_calls')} tool call(s), {sum(d.get('usage', {}).values())} tokens"
            + (f" — {d['content']!r}" if d.get("content") else "")
        ),
        "proposal": lambda: f"proposal {d.get('tool')} {json.dumps(d.get('arguments'))}",
        "verdict": lambda: (
            f"verdict {str(d.get('outcome')).upper()} {d.get('tool')} "
            f"[{', '.join(d.get('rule_ids', []))}] {d.get('reason')} ({d.get('policy_version')})"
        ),
        "approval.requested": lambda: (
            f"approval requested {d.get('request_id')} for "
            f"{d.get('action')} from {', '.join(d.get('eligible', []))}"
        ),
        "approval.decided": lambda: (
            f"{'APPROVED' if d.get('approve') else 'REJECTED'} by "
            f"{d.get('approver')} via {d.get('channel')} ({d.get('request_id')})"
            + (f": {d['comment']}" if d.get("comment") else "")
        ),
        "approval.granted": lambda: (
            f"approval granted {d.get('request_id')} by {', '.join(d.get('approvers', []))}"
        ),
        "approval.refused": lambda: (
            f"decision refused ({d.get('approver', '?')}): {d.get('reason')}"
        ),
        "approval.expired": lambda: f"approval {d.get('request_id')} expired: rejected",
        "action.read": lambda: f"read {d.get('tool')} {json.dumps(d.get('arguments'))}",
        "action.executed": lambda: (
            f"EXECUTED {d.get('tool')} {json.dumps(d.get('arguments'))}"
            f" → {json.dumps(d.get('result'))} (idempotency key {d.get('idempotency_key')})"
        ),
        "action.failed": lambda: f"FAILED {d.get('tool')}: {d.get('error')}",
        "run.finished": lambda: f"run {d.get('status')}: {d.get('final_message')!r}",
    }.get(r.kind, lambda: f"{r.kind} {json.dumps(d)}")()
    return f"  {when}  #{r.seq:<5} {text}"


def ui_link(settings: Settings, workflow_id: str) -> str:
    namespace = settings.temporal_namespace
    return f"{settings.temporal_ui_url}/namespaces/{namespace}/workflows/{workflow_id}"


def parse_context(pairs: list[str]) -> dict[str, str | int | float | bool]:
    context: dict[str, str | int | float | bool] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CliError(f"--context {pair!r}: expected KEY=VALUE, e.g. order_id=A-1001")
        context[key] = int(value) if value.isdigit() else value
    return context


async def cmd_start(args: argparse.Namespace, settings: Settings) -> None:
    from pydantic import ValidationError

    from agents.run import AgentRun
    from agents.state import RunInput
    from workers.worker import connect

    try:
        run_input = RunInput(
            agent=args.agent,
            task=args.task,
            context=parse_context(args.context),
            requested_by=args.as_,
            mode=args.mode,
        )
    except ValidationError as e:
        raise CliError(f"invalid run input: {e}") from e
    client = await connect(settings)
    workflow_id = args.id or f"run-{run_input.agent}-{uuid.uuid4().hex[:8]}"
    handle = await client.start_workflow(
        AgentRun.run,
        run_input.model_dump(mode="json"),
        id=workflow_id,
        task_queue=settings.task_queue,
        static_summary=f"{run_input.agent}: {run_input.task[:120]}",
        static_details=f"Requested by **{run_input.requested_by}**.\n\n{run_input.task}",
    )
    print(f"started {workflow_id}\n  {ui_link(settings, workflow_id)}")
    if args.wait:
        result = await handle.result()
        print(result.model_dump_json(indent=2))


async def cmd_status(args: argparse.Namespace, settings: Settings) -> None:
    from agents.run import AgentRun
    from workers.worker import connect

    client = await connect(settings)
    status = await client.get_workflow_handle(args.run).query(AgentRun.status)
    print(f"{args.run}: stage {status.stage}, step {status.step}")
    for r in status.pending_approvals:
        print(
            f"  waiting: {r.request_id} {r.summary()} — needs {r.need.quorum} of "
            f"{', '.join(r.need.eligible)}, expires {r.expires_at.isoformat()}"
        )
    for a in status.actions:
        print(f"  {a.status:9} {a.tool} {json.dumps(a.arguments)}")


async def cmd_decide(args: argparse.Namespace, settings: Settings) -> None:
    from guardrails.approvals import Decision
    from workers.decisions import DecisionRefusedError, send_decision
    from workers.worker import connect

    decision = Decision(
        request_id=args.request,
        approver=args.as_,
        approve=args.command == "approve",
        channel="cli",
        comment=args.comment or "",
    )
    client = await connect(settings)
    try:
        receipt = await send_decision(client, args.run, decision, AuditStore(settings.audit_path))
    except DecisionRefusedError as e:
        raise CliError(f"refused: {e}") from e
    print(
        f"{receipt.request_id}: {receipt.status} ({receipt.approvals}/{receipt.quorum} approvals)"
    )


async def cmd_audit(args: argparse.Namespace, settings: Settings) -> None:
    store = AuditStore(settings.audit_path)
    if args.run == "verify":
        count, broken = store.verify()
        if broken:
            raise CliError(f"audit chain BROKEN at record {broken} (after {count} good records)")
        print(f"audit chain intact: {count} records")
        return
    records = store.for_run(args.run)
    if not records:
        raise CliError(f"no audit records for run {args.run!r} in {settings.audit_path}")
    if args.json:
        print(json.dumps([r.model_dump(mode="json") for r in records], indent=2))
    else:
        print(f"{args.run}:")
        for r in records:
            print(story_line(r))


async def cmd_stats(args: argparse.Namespace, settings: Settings) -> None:
    from datetime import UTC, datetime

    from workers.stats import compute_stats, format_stats, parse_window

    try:
        window = parse_window(args.since)
    except ValueError as e:
        raise CliError(str(e)) from e
    until = datetime.now(UTC)
    since = until - window
    records = AuditStore(settings.audit_path).between(since, until)
    stats = compute_stats(records, since=since, until=until, prices=settings.model_prices)
    print(stats.model_dump_json(indent=2) if args.json else format_stats(stats))


async def cmd_worker(args: argparse.Namespace, settings: Settings) -> None:
    from workers.worker import run_worker

    await run_worker(settings)


async def cmd_secrets(args: argparse.Namespace, settings: Settings) -> None:
    from workers.credentials import configure_keyring, set_secret

    configure_keyring(settings)
    value = (
        sys.stdin.readline().strip()
        if not sys.stdin.isatty()
        else getpass.getpass(f"value for {args.name}: ")
    )
    if not value:
        raise CliError("no value given; nothing stored")
    set_secret(args.name, value)
    print(f"stored secret {args.name!r} in {settings.keyring_backend}")


async def cmd_codec_server(args: argparse.Namespace, settings: Settings) -> None:
    from workers.codec_server import serve_codec
    from workers.credentials import configure_keyring

    configure_keyring(settings)
    await serve_codec(settings, host=args.host)


async def cmd_keys(args: argparse.Namespace, settings: Settings) -> None:
    from workers.codec import ensure_payload_keys, rotate_payload_key
    from workers.credentials import configure_keyring, ensure_secret

    configure_keyring(settings)
    if args.action == "rotate":
        keys = rotate_payload_key(settings)
        print(
            f"new active payload key {keys.active}; {len(keys.keys)} key(s) in "
            f"{settings.payload_keys_credential!r} (old ones still decrypt)"
        )
    else:  # init: whatever is missing, nothing that exists is replaced
        keys = ensure_payload_keys(settings)
        ensure_secret(settings.codec_token_credential)
        print(
            f"payload keys ready (active {keys.active}); codec token ready in "
            f"{settings.codec_token_credential!r}"
        )


async def cmd_dev(args: argparse.Namespace, settings: Settings) -> None:
    from demo.scenario import serve_dev_stack

    await serve_dev_stack(settings)


async def cmd_demo(args: argparse.Namespace, settings: Settings) -> None:
    from demo.scenario import run_demo

    await run_demo(settings, keep=args.keep)


Command = Callable[[argparse.Namespace, Settings], Coroutine[Any, Any, None]]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="countersign", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    def add(name: str, fn: Command, help: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help, description=help)
        sp.set_defaults(fn=fn)
        return sp

    demo = add("demo", cmd_demo, "run the offline demo end to end on a fresh embedded stack")
    demo.add_argument("--keep", action="store_true", help="leave the stack running afterwards")
    add("dev", cmd_dev, "run the embedded dev stack (Temporal + UI, shop, model, worker)")
    add("worker", cmd_worker, "run a worker against the configured Temporal")

    start = add("start", cmd_start, "start a run")
    start.add_argument("--agent", default="support-refunds")
    start.add_argument("--task", required=True)
    start.add_argument("--context", action="append", default=[], metavar="KEY=VALUE")
    start.add_argument("--as", dest="as_", required=True, metavar="NAME", help="requested by")
    start.add_argument("--mode", choices=["shadow", "augment", "automate"])
    start.add_argument("--id", help="workflow id (default: generated)")
    start.add_argument("--wait", action="store_true", help="wait for the result and print it")

    status = add("status", cmd_status, "show a run's stage, pending approvals and actions")
    status.add_argument("run")
    for verb in ("approve", "reject"):
        d = add(verb, cmd_decide, f"{verb} a pending approval request")
        d.add_argument("run")
        d.add_argument("request")
        d.add_argument("--as", dest="as_", required=True, metavar="NAME")
        d.add_argument("--comment")

    audit = add("audit", cmd_audit, "print a run's audit story, or `audit verify` the chain")
    audit.add_argument("run", help="workflow id, or `verify`")
    audit.add_argument("--json", action="store_true")

    codec = add("codec-server", cmd_codec_server, "serve the codec endpoint for the Temporal UI")
    codec.add_argument("--host", help="bind address (default: the host of COUNTERSIGN_CODEC_URL)")
    keys = add("keys", cmd_keys, "payload encryption keys: `init` what is missing, or `rotate`")
    keys.add_argument("action", choices=["init", "rotate"])

    stats = add("stats", cmd_stats, "proposals, verdicts, approvals, override rate, cost")
    stats.add_argument("--since", default="24h", help="window: 30m, 24h, 7d, 2w (default 24h)")
    stats.add_argument("--json", action="store_true")

    secrets = sub.add_parser("secrets", help="manage secrets in the configured keyring")
    ssub = secrets.add_subparsers(dest="action", required=True)
    sset = ssub.add_parser("set", help="store a secret (value read from stdin or a prompt)")
    sset.add_argument("name")
    sset.set_defaults(fn=cmd_secrets)
    return p


def main(argv: list[str] | None = None) -> None:
    from temporalio.service import RPCError

    from agents.search_attributes import SearchAttributesMissing
    from workers.codec import PayloadKeyError
    from workers.credentials import CredentialError
    from workers.devstack import DevStackError
    from workers.logging import configure_logging

    args = parser().parse_args(argv)
    configure_logging(json=args.command in ("worker", "codec-server"))
    code = 0
    try:
        settings = load_settings()
        asyncio.run(args.fn(args, settings))
    except (
        CliError,
        SettingsError,
        CredentialError,
        DevStackError,
        RPCError,
        PayloadKeyError,
        SearchAttributesMissing,
    ) as e:
        print(f"countersign: {e}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        code = 130
    # The Temporal client's Rust threads can abort interpreter teardown ("PyGILState_Release
    # ... finalizing", temporalio/sdk-python#300): flush and skip teardown.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
