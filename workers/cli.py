"""`countersign`: run the demo, the dev stack or a worker; start runs; decide approvals; read
the audit trail."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
import signal
import sys
import uuid
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from countersign.guardrails.audit import VerifyReport
from countersign.guardrails.money import describe_call
from countersign.settings import Settings, SettingsError, load_settings
from countersign.workers.show import ShowError, cmd_show
from countersign.workers.story import story_line, ui_link


class CliError(Exception):
    """A user error: printed without a traceback, exit code 2."""


def parse_context(pairs: list[str], flag: str = "--context") -> dict[str, str | int | float | bool]:
    context: dict[str, str | int | float | bool] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CliError(f"{flag} {pair!r}: expected KEY=VALUE, e.g. order_id=A-1001")
        context[key] = int(value) if value.isdigit() else value
    return context


async def cmd_start(args: argparse.Namespace, settings: Settings) -> None:
    from temporalio.exceptions import ApplicationError

    from countersign.agents.run import AgentRun
    from countersign.agents.state import parse_run_input
    from countersign.credentials import configure_keyring
    from countersign.workers.decisions import signed_start
    from countersign.workers.identities import signer_for
    from countersign.workers.plugins import apply_plugins
    from countersign.workers.worker import connect

    apply_plugins(settings)  # the agents a run can name, as the worker finds them
    raw = {
        "agent": args.agent,
        "task": args.task,
        "subject": {k: str(v) for k, v in parse_context(args.subject, "--subject").items()},
        "context": parse_context(args.context),
        "requested_by": args.as_,
        "mode": args.mode,
    }
    try:  # the workflow's own check, so what it would refuse is never "started"
        run_input = parse_run_input({k: v for k, v in raw.items() if v is not None})
    except ApplicationError as e:
        raise CliError(e.message) from None
    workflow_id = args.id or f"run-{run_input.agent}-{uuid.uuid4().hex[:8]}"
    configure_keyring(settings)
    run_input = signed_start(signer_for(args.as_), workflow_id, run_input)
    client = await connect(settings)
    handle = await client.start_workflow(
        AgentRun.run,
        run_input.model_dump(mode="json"),
        id=workflow_id,
        task_queue=settings.task_queue,
        static_summary=f"{run_input.agent}: {run_input.task[:120]}",
        static_details=f"Requested by **{run_input.requested_by}**.\n\n{run_input.task}",
    )
    if args.output == "json" and not args.wait:
        print(json.dumps({"workflow_id": workflow_id, "url": ui_link(settings, workflow_id)}))
    elif args.output != "json":
        print(f"started {workflow_id}\n  {ui_link(settings, workflow_id)}")
    if args.wait:
        result = await handle.result()
        print(result.model_dump_json(indent=2))


async def cmd_status(args: argparse.Namespace, settings: Settings) -> None:
    from temporalio.client import (
        WorkflowExecutionStatus,
        WorkflowFailureError,
        WorkflowQueryFailedError,
    )
    from temporalio.service import RPCError

    from countersign.agents.run import AgentRun
    from countersign.agents.state import RunStatus
    from countersign.workers.worker import connect

    client = await connect(settings)
    handle = client.get_workflow_handle(args.run)
    described = await handle.describe()
    state = described.status.name.lower() if described.status else "unknown"
    cause = None
    if described.status == WorkflowExecutionStatus.FAILED:
        try:
            await handle.result()
        except WorkflowFailureError as e:
            cause = failure_cause(e)
    status: RunStatus | None = None
    try:
        status = await handle.query(AgentRun.status)
    except (RPCError, WorkflowQueryFailedError):
        # A run that failed before it had any state (e.g. invalid input) answers no query.
        if described.status == WorkflowExecutionStatus.RUNNING:
            raise
    if args.output == "json":
        shown = {"run": args.run, "status": state, "cause": cause}
        print(json.dumps({**shown, **(status.model_dump(mode="json") if status else {})}))
        return
    if described.status == WorkflowExecutionStatus.RUNNING and status is not None:
        print(f"{args.run}: running, stage {status.stage}, step {status.step}")
    else:
        print(f"{args.run}: {state}" + (f": {cause}" if cause else ""))
    for r in status.pending_approvals if status else []:
        print(
            f"  waiting: {r.request_id} {describe_call(r.tool, r.arguments)} — needs "
            f"{r.need.quorum} of {', '.join(r.need.eligible)}, expires {r.expires_at.isoformat()}"
        )
    for a in status.actions if status else []:
        line = f"  {a.status:9} {describe_call(a.tool, a.arguments)}"
        if a.status in ("denied", "rejected", "expired", "failed") and (a.rule_ids or a.detail):
            line += f" [{', '.join(a.rule_ids)}] {a.detail}".rstrip()
        print(line)
        if a.status == "unknown":
            print(f"            why: {a.detail}")
    unknown = [a for a in status.actions if a.status == "unknown"] if status else []
    if unknown:
        print(
            f"  NEEDS ATTENTION: {len(unknown)} action(s) may or may not have happened; "
            f"check the system of record (countersign audit {args.run})"
        )
    if described.status == WorkflowExecutionStatus.FAILED:
        from countersign.activities.stores import open_audit_store

        # The audit names the classified cause (system unavailable, timeout, ...), if any.
        ended = open_audit_store(settings).find(args.run, "run.compensated")
        if ended:
            print(f"  FAILED: {ended[-1].data.get('reason')}")


def failure_cause(e: BaseException) -> str:
    """The innermost message of a failed run (e.g. `invalid run input: task: Field required`)."""
    message = str(e)
    while e.__cause__ is not None:
        e = e.__cause__
        message = getattr(e, "message", None) or str(e) or message
    return message


async def cmd_decide(args: argparse.Namespace, settings: Settings) -> None:
    """Sign the decision with the approver's own key (from this keyring) and send it; with
    --print, print the signed envelope to paste into the Temporal UI's `decision` signal."""
    from countersign.agents.run import AgentRun
    from countersign.credentials import configure_keyring
    from countersign.workers.decisions import DecisionRefusedError, send_decision, sign_decision
    from countersign.workers.identities import signer_for
    from countersign.workers.show import parse_changes
    from countersign.workers.worker import connect

    configure_keyring(settings)
    signer = signer_for(args.as_)
    client = await connect(settings)
    status = await client.get_workflow_handle(args.run).query(AgentRun.status)
    request = next((r for r in status.pending_approvals if r.request_id == args.request), None)
    if request is None:
        pending = ", ".join(r.request_id for r in status.pending_approvals) or "none"
        raise CliError(f"{args.run} has no pending request {args.request} (pending: {pending})")
    envelope = sign_decision(
        signer,
        args.run,
        request.request_id,
        request.action_hash,
        approve=args.command == "approve",
        comment=args.comment or "",
        channel="temporal-ui" if args.print else "cli",
        lifetime=timedelta(minutes=30 if args.print else 10),
        changes=parse_changes(getattr(args, "change", [])),
    )
    if args.print:
        print(json.dumps({"envelope": envelope.model_dump(mode="json")}))
        return
    try:
        receipt = await send_decision(client, args.run, envelope)
    except DecisionRefusedError as e:
        raise CliError(f"refused: {e}") from e
    print(
        f"{receipt.request_id}: {receipt.status} ({receipt.approvals}/{receipt.quorum} approvals)"
        + (" — the changed action is decided again by the guard" if receipt.changes else "")
    )


async def cmd_rollback(args: argparse.Namespace, settings: Settings) -> None:
    from temporalio.client import WorkflowUpdateFailedError

    from countersign.agents.run import AgentRun
    from countersign.credentials import configure_keyring
    from countersign.workers.decisions import rollback_request
    from countersign.workers.identities import signer_for
    from countersign.workers.worker import connect

    configure_keyring(settings)
    request = rollback_request(signer_for(args.as_), args.run, args.reason)
    client = await connect(settings)
    handle = client.get_workflow_handle_for(AgentRun.run, args.run)
    try:
        await handle.execute_update("rollback", request)
    except WorkflowUpdateFailedError as e:
        raise CliError(f"rollback refused: {e.cause or e}") from e
    result = await handle.result()
    for action in result.actions:
        if action.status == "compensated":
            print(f"  undone  {action.tool} {json.dumps(action.arguments)}")
    for item in result.irreversible:
        print(f"  NOT undone (irreversible): {item}")
    print(f"{args.run}: {result.status}")


async def cmd_identity(args: argparse.Namespace, settings: Settings) -> None:
    """`init`: this keyring's key for NAME (created if missing) and the directory entry to
    register; `show`: who the directory lists and with which keys."""
    from countersign.credentials import configure_keyring
    from countersign.workers.identities import init_identity

    configure_keyring(settings)
    if args.action == "dev":
        from countersign.workers.identities import ensure_dev_directory
        from countersign.workers.plugins import apply_plugins

        # Everyone the plugins' policy names, and the people their directories list.
        path = ensure_dev_directory(apply_plugins(settings))
        print(
            f"development identities in {path}, their keys in this keyring: a demo "
            "convenience, not real people"
        )
        return
    if args.action == "init":
        if not args.as_:
            raise CliError("name the identity: countersign identity init --as NAME")
        signer, created = init_identity(args.as_)
        print(
            f"{'created' if created else 'kept the existing'} key {signer.key_id} for "
            f"{args.as_!r} in this keyring. Add this to the identity directory "
            f"({settings.directory_file}):\n\n{signer.directory_entry(args.kind)}"
        )
        return
    from countersign.workers.plugins import apply_plugins

    settings = apply_plugins(settings)  # the plugins' directories join the file's
    directory = settings.directory().current()
    files = ", ".join(str(p) for p in (settings.directory_file, *settings.extra_directories))
    print(f"{files} ({directory.version}):")
    for identity in directory.identities.values():
        keys = ", ".join(
            k.id + (f" (revoked {k.revoked_at.isoformat()})" if k.revoked_at else "")
            for k in identity.keys
        )
        contact = " ".join(
            f"{k}={v}" for k, v in (("email", identity.email), ("slack", identity.slack_user)) if v
        )
        print(f"  {identity.name:12} {identity.kind:11} keys: {keys or 'none'} {contact}")


AUDIT_ACTIONS = ("verify", "checkpoint", "init-key")


async def cmd_audit(args: argparse.Namespace, settings: Settings) -> None:
    from countersign.activities.stores import ensure_signing_key, open_audit_store, public_key
    from countersign.credentials import configure_keyring

    if args.run in AUDIT_ACTIONS:
        configure_keyring(settings)
    if args.run == "init-key":
        signer = ensure_signing_key(settings)
        from countersign.guardrails.audit_signing import public_key_text

        print(
            f"audit signing key {settings.audit_signing_credential!r}: {signer.key_id}\n"
            f"public key (for COUNTERSIGN_AUDIT_PUBLIC_KEY): {public_key_text(signer.public_key)}"
        )
        return
    store = open_audit_store(settings, signing=args.run == "checkpoint")
    if args.run == "verify":
        print_verification(store.verify(public_key(settings)), store.location)
        return
    if args.run == "checkpoint":
        cp = store.checkpoint()
        print(f"checkpoint: {cp.size} records, head {cp.head[:16]}…, signed by {cp.key_id}")
        return
    records = store.for_run(args.run)
    if not records:
        raise CliError(f"no audit records for run {args.run!r} in {store.location}")
    if args.output == "json":
        print(json.dumps([r.model_dump(mode="json") for r in records], indent=2))
    else:
        print(f"{args.run}:")
        for r in records:
            print(story_line(r))


def _load(path: str | None, settings: Settings) -> Any:
    from countersign.activities.tools import tool_schemas
    from countersign.guardrails.policy import PolicyError, load_policy
    from countersign.workers.plugins import apply_plugins

    settings = apply_plugins(settings)  # the tools the schema is generated from
    try:
        return load_policy(path or settings.policy_path, tool_schemas())
    except PolicyError as e:
        raise CliError(f"invalid policy: {e}") from e


async def cmd_policy(args: argparse.Namespace, settings: Settings) -> None:
    from countersign.activities.stores import open_audit_store
    from countersign.guardrails.review import backtest, diff, run_cases

    if args.action == "activate":
        from countersign.credentials import configure_keyring
        from countersign.workers.identities import signer_for
        from countersign.workers.policies import activate

        if not args.as_:
            raise CliError("sign the activation: countersign policy activate [FOLDER] --as NAME")
        configure_keyring(settings)
        policy = _load(args.path, settings)
        envelope = activate(open_audit_store(settings), policy, signer_for(args.as_))
        print(
            f"activated {policy.version} ({policy.path}) as {args.as_} "
            f"(key {envelope.statement.key_id}); workers put it in force at their next "
            "decision if the policy in force gives you [authority] policy"
        )
        return
    if args.action == "test":
        policy = _load(args.path, settings)
        failures = run_cases(policy)
        for failure in failures:
            print(f"FAIL {failure}")
        if failures:
            raise CliError(f"{len(failures)} case(s) failed in {policy.path / 'cases.toml'}")
        print(
            f"policy {policy.path} is valid ({len(policy.rules)} rules, {policy.version}); "
            "every case holds"
        )
    elif args.action == "diff":
        lines = diff(_load(args.path, settings), _load(args.candidate, settings))
        print("\n".join(lines) or "no differences")
    else:
        candidate = _load(args.candidate, settings)
        verdicts = open_audit_store(settings).of_kind("verdict")
        replayed, flips = backtest(verdicts, candidate)
        print(
            f"backtest of {candidate.version} against {replayed} recorded decisions: "
            f"{len(flips)} flip(s)"
        )
        for f in flips:
            print(
                f"  {f.workflow_id} {f.tool} {json.dumps(f.arguments)}: {f.recorded} "
                f"[{', '.join(f.recorded_rules)}] → {f.candidate} "
                f"[{', '.join(f.candidate_rules)}]"
            )


async def cmd_kill(args: argparse.Namespace, settings: Settings) -> None:
    """Flip the switch with a change signed by the operator's own key; workers count it only
    if the operator is in a group the policy's `[authority] kill_switch` names."""
    from countersign.activities.stores import open_kill_switch
    from countersign.credentials import configure_keyring
    from countersign.guardrails.controls import KillSwitch
    from countersign.guardrails.policy import PolicySource
    from countersign.workers.identities import signer_for
    from countersign.workers.plugins import apply_plugins

    settings = apply_plugins(settings)  # the policy and directory the workers enforce
    store = open_kill_switch(settings)
    stored = store.read()
    policy = PolicySource(settings.policy_path).current()
    directory = settings.directory().current()

    def may_flip(who: str) -> bool:
        return policy.has_authority(who, "kill_switch")

    if args.what != "status":
        if args.what in ("tool", "agent") and not args.name:
            raise CliError(f"name the {args.what}: countersign {args.command} {args.what} NAME")
        if not args.as_:
            raise CliError(
                f"sign the change: countersign {args.command} {args.what} ... --as NAME "
                "(someone with kill_switch authority in the policy)"
            )
        configure_keyring(settings)
        change = signer_for(args.as_).sign(
            purpose="kill",
            channel="cli",
            now=datetime.now(UTC),
            claims={
                "on": args.command == "kill",
                "what": args.what,
                "name": args.name if args.what != "all" else None,
            },
        )
        _, refused = KillSwitch(changes=[change]).effective(directory, may_flip)
        if refused:
            raise CliError(f"not changed: {refused[0]}")
        stored = stored.with_change(change)
    switch, ignored = stored.effective(directory, may_flip)
    if args.what != "status":
        store.write(switch.model_copy(update={"changes": stored.changes}))
    print(
        f"kill switch: all side effects {'OFF' if switch.all_side_effects else 'on'}; "
        f"tools stopped: {', '.join(switch.tools) or 'none'}; "
        f"agents stopped: {', '.join(switch.agents) or 'none'}"
    )
    for reason in ignored:
        print(f"  ignored (not proven): {reason}")


def print_verification(report: VerifyReport, location: str) -> None:
    """Say what holds; raise CliError (exit 2) naming what does not."""
    signed = "signatures checked" if report.signatures_checked else "signatures NOT checked"
    summary = f"{report.records} records, {report.checkpoints} checkpoint(s), {signed}"
    if report.ok:
        print(f"audit chain intact: {summary} ({location})")
        if not report.signatures_checked:
            print("  no public key: set COUNTERSIGN_AUDIT_PUBLIC_KEY to check signatures")
        return
    lines = [f"audit chain BROKEN: {summary} ({location})"]
    if report.problem:
        lines.append(f"  first broken record: {report.problem}")
    lines += [f"  {p}" for p in report.checkpoint_problems]
    raise CliError("\n".join(lines))


async def cmd_replay(args: argparse.Namespace, settings: Settings) -> None:
    from countersign.workers.plugins import apply_plugins
    from countersign.workers.replay import fetch_segments, load_histories, replay, save_history

    apply_plugins(settings)  # the agents the recorded runs name
    if not args.runs and not args.file:
        raise CliError("name a RUN (workflow id) to fetch from Temporal, or --file history.json")
    if args.save and len(args.runs) != 1:
        raise CliError("--save needs exactly one RUN")
    try:
        histories = load_histories(args.file)
    except ValueError as e:
        raise CliError(str(e)) from e
    if args.runs:
        from countersign.workers.worker import connect

        client = await connect(settings)
        for run in args.runs:
            # A long run: every segment (each replays on its own); --save keeps the latest.
            for history in await fetch_segments(client, run):
                histories.append((f"temporal {settings.temporal_address}", history))
            if args.save:
                save_history(args.save, history)
    from countersign.workers.codec import data_converter

    reports = await replay(histories, converter=data_converter(settings))
    if args.output == "json":
        print(json.dumps([r.model_dump(mode="json") for r in reports], indent=2))
    else:
        for r in reports:
            print(r.line())
    diverged = [r for r in reports if not r.deterministic or r.result_matches is False]
    if diverged:
        raise CliError(
            f"{len(diverged)} of {len(reports)} histories do not replay: "
            + ", ".join(r.workflow_id for r in diverged)
        )


async def cmd_stats(args: argparse.Namespace, settings: Settings) -> None:
    from datetime import UTC, datetime

    from countersign.activities.stores import open_audit_store
    from countersign.workers.stats import compute_stats, format_stats, parse_window

    try:
        window = parse_window(args.since)
    except ValueError as e:
        raise CliError(str(e)) from e
    until = datetime.now(UTC)
    since = until - window
    records = open_audit_store(settings).between(since, until)
    stats = compute_stats(records, since=since, until=until, prices=settings.model_prices)
    print(stats.model_dump_json(indent=2) if args.output == "json" else format_stats(stats))


async def cmd_init(args: argparse.Namespace, settings: Settings) -> None:
    from pathlib import Path

    from countersign.workers.scaffold import ScaffoldError, init_project

    try:
        root = init_project(args.name, Path(args.dir))
    except ScaffoldError as e:
        raise CliError(str(e)) from e
    print(
        f"created {root}: a tool, an agent, a policy and their tests; next: "
        f"cd {root} && pip install -e '.[dev]' && pytest"
    )


async def cmd_worker(args: argparse.Namespace, settings: Settings) -> None:
    from countersign.workers.worker import run_worker

    await run_worker(settings)


async def cmd_gateway(args: argparse.Namespace, settings: Settings) -> None:
    from countersign.workers.devstack import port_of
    from countersign.workers.gateway import serve_gateway
    from countersign.workers.plugins import directories_only

    settings = directories_only(settings)  # the plugins' directories: who the gateway verifies
    await serve_gateway(settings, args.host, args.port or port_of(settings.gateway_url))


async def cmd_secrets(args: argparse.Namespace, settings: Settings) -> None:
    from countersign.credentials import configure_keyring, set_secret

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
    from countersign.credentials import configure_keyring
    from countersign.workers.codec_server import serve_codec

    configure_keyring(settings)
    await serve_codec(settings, host=args.host)


async def cmd_keys(args: argparse.Namespace, settings: Settings) -> None:
    from countersign.activities.payload_keys import ensure_payload_keys, rotate_payload_key
    from countersign.credentials import configure_keyring, ensure_secret

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
    from countersign.demo.scenario import serve_dev_stack

    await serve_dev_stack(settings, scripts=args.scripts)


async def cmd_demo(args: argparse.Namespace, settings: Settings) -> None:
    from countersign.demo.scenario import run_demo

    await run_demo(settings, keep=args.keep)


def scripts_folder(value: str) -> Path:
    """A folder of model scripts, checked before anything starts."""
    path = Path(value)
    if not path.is_dir() or not any(path.glob("*.json")):
        raise argparse.ArgumentTypeError(f"{value}: not a folder of model scripts (*.json)")
    return path.resolve()


Command = Callable[[argparse.Namespace, Settings], Coroutine[Any, Any, None]]


def global_options() -> argparse.ArgumentParser:
    """Options every command takes, before or after its name, as the `temporal` CLI's."""
    g = argparse.ArgumentParser(add_help=False)
    # SUPPRESS: a subcommand's parser must not overwrite what was given before its name.
    g.add_argument(
        "--address",
        default=argparse.SUPPRESS,
        metavar="HOST:PORT",
        help="Temporal frontend address (overrides COUNTERSIGN_TEMPORAL_ADDRESS)",
    )
    g.add_argument(
        "-n",
        "--namespace",
        default=argparse.SUPPRESS,
        help="Temporal namespace (overrides COUNTERSIGN_TEMPORAL_NAMESPACE)",
    )
    g.add_argument(
        "-o", "--output", choices=["text", "json"], default=argparse.SUPPRESS, help="output format"
    )
    g.add_argument(
        "--json",
        dest="output",
        action="store_const",
        const="json",
        default=argparse.SUPPRESS,
        help="same as -o json",
    )
    return g


def parser() -> argparse.ArgumentParser:
    # A fresh copy per parser: parsers built from one share its actions and their defaults.
    p = argparse.ArgumentParser(prog="countersign", description=__doc__, parents=[global_options()])
    sub = p.add_subparsers(dest="command", required=True)

    def add(name: str, fn: Command, help: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help, description=help, parents=[global_options()])
        sp.set_defaults(fn=fn)
        return sp

    demo = add("demo", cmd_demo, "run the offline demo end to end on a fresh embedded stack")
    demo.add_argument("--keep", action="store_true", help="leave the stack running afterwards")
    dev = add("dev", cmd_dev, "run the embedded dev stack (Temporal + UI, shop, model, worker)")
    dev.add_argument(
        "--scripts",
        type=scripts_folder,
        metavar="DIR",
        help="the scripted model plays these scripts (default: the demo's), e.g. tests/scripts",
    )
    add("worker", cmd_worker, "run a worker against the configured Temporal")
    init = add("init", cmd_init, "create a project of your own: a tool, an agent, a policy")
    init.add_argument("name", help="project name, e.g. acme-helpdesk")
    init.add_argument("--dir", default=".", help="where to create it (default: here)")
    gateway = add("gateway", cmd_gateway, "run the approval gateway (Slack, email links, webhooks)")
    gateway.add_argument("--host", default="127.0.0.1", help="bind address")
    gateway.add_argument("--port", type=int, help="default: the port of COUNTERSIGN_GATEWAY_URL")

    start = add("start", cmd_start, "start a run")
    start.add_argument("--agent", default="support-refunds")
    start.add_argument("--task", required=True)
    start.add_argument(
        "--subject",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="what the run is about, e.g. order_id=A-1002 (without it a run cannot act)",
    )
    start.add_argument("--context", action="append", default=[], metavar="KEY=VALUE")
    start.add_argument("--as", dest="as_", required=True, metavar="NAME", help="requested by")
    start.add_argument("--mode", choices=["shadow", "augment", "automate"])
    start.add_argument("--id", help="workflow id (default: generated)")
    start.add_argument("--wait", action="store_true", help="wait for the result and print it")

    status = add("status", cmd_status, "show a run's stage, pending approvals and actions")
    status.add_argument("run")
    show = add("show", cmd_show, "show an approval request with its evidence, as approvers see it")
    show.add_argument("ids", nargs="+", metavar="[RUN] REQUEST")
    for verb in ("approve", "reject"):
        d = add(verb, cmd_decide, f"{verb} a pending approval request")
        d.add_argument("run")
        d.add_argument("request")
        d.add_argument(
            "--as", dest="as_", required=True, metavar="NAME", help="sign with NAME's key"
        )
        d.add_argument("--comment")
        if verb == "approve":
            d.add_argument(
                "--change",
                action="append",
                default=[],
                metavar="ARG=VALUE",
                help="approve with this argument changed, e.g. amount_cents=12000 (only what "
                "the tool lets an approver change; `countersign show` lists it)",
            )
        d.add_argument(
            "--print",
            action="store_true",
            help="print the signed envelope to paste into the Temporal UI's `decision` signal",
        )

    rollback = add("rollback", cmd_rollback, "undo a completed run inside its undo window")
    rollback.add_argument("run")
    rollback.add_argument("--as", dest="as_", required=True, metavar="NAME")
    rollback.add_argument("--reason", required=True)

    audit = add(
        "audit",
        cmd_audit,
        "print a run's audit story; `audit verify` checks the chain and signed checkpoints, "
        "`audit checkpoint` signs the current head, `audit init-key` creates the signing key",
    )
    audit.add_argument("run", help="workflow id, or verify | checkpoint | init-key")

    replay = add(
        "replay",
        cmd_replay,
        "replay recorded histories against the current code; report `deterministic` or the "
        "exact divergence (no model, tool or activity is called)",
    )
    replay.add_argument("runs", nargs="*", metavar="RUN", help="workflow ids to fetch")
    replay.add_argument(
        "--file",
        action="append",
        default=[],
        metavar="PATH",
        help="a history JSON file, or a folder of them (repeatable)",
    )
    replay.add_argument("--save", metavar="FILE", help="with one RUN: write its history here")

    policy = add("policy", cmd_policy, "check, compare and backtest policies")
    policy.add_argument("action", choices=["test", "diff", "backtest", "activate"])
    policy.add_argument("path", nargs="?", help="policy folder (test, diff: default active)")
    policy.add_argument("--candidate", help="candidate policy folder (diff, backtest)")
    policy.add_argument("--as", dest="as_", metavar="NAME", help="activate: sign as NAME")
    for verb in ("kill", "revive"):
        k = add(verb, cmd_kill, f"{verb} side effects of a tool, an agent, or all, at once")
        k.add_argument("what", choices=["tool", "agent", "all", "status"])
        k.add_argument("name", nargs="?")
        k.add_argument("--as", dest="as_", metavar="NAME", help="sign the change with NAME's key")

    identity = add(
        "identity", cmd_identity, "keys that prove who you are: `init --as NAME`, `show`"
    )
    identity.add_argument("action", choices=["init", "show", "dev"])
    identity.add_argument("--as", dest="as_", metavar="NAME")
    identity.add_argument("--kind", choices=["person", "integration", "gateway"], default="person")

    codec = add("codec-server", cmd_codec_server, "serve the codec endpoint for the Temporal UI")
    codec.add_argument("--host", help="bind address (default: the host of COUNTERSIGN_CODEC_URL)")
    keys = add("keys", cmd_keys, "payload encryption keys: `init` what is missing, or `rotate`")
    keys.add_argument("action", choices=["init", "rotate"])

    stats = add("stats", cmd_stats, "proposals, verdicts, approvals, override rate, cost")
    stats.add_argument("--since", default="24h", help="window: 30m, 24h, 7d, 2w (default 24h)")

    secrets = sub.add_parser(
        "secrets", help="manage secrets in the configured keyring", parents=[global_options()]
    )
    ssub = secrets.add_subparsers(dest="action", required=True)
    sset = ssub.add_parser(
        "set", help="store a secret (value read from stdin or a prompt)", parents=[global_options()]
    )
    sset.add_argument("name")
    sset.set_defaults(fn=cmd_secrets)
    return p


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP: unwinds like Ctrl-C, so every `finally` stops what it started."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _terminate(signum: int, frame: object) -> None:
    # Once is enough: the unwinding that follows must not be interrupted by a second signal.
    for again in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(again, signal.SIG_IGN)
    raise Terminated(signum)


def main(argv: list[str] | None = None) -> None:
    from temporalio.service import RPCError, RPCStatusCode

    from countersign.activities.agent_specs import AgentSpecError
    from countersign.activities.tools import ToolDeclarationError
    from countersign.agents.search_attributes import SearchAttributesMissing
    from countersign.credentials import CredentialError
    from countersign.guardrails.audit import AuditError
    from countersign.guardrails.audit_signing import SigningKeyError
    from countersign.guardrails.database import DatabaseError
    from countersign.guardrails.identity import IdentityError
    from countersign.guardrails.money import set_currency
    from countersign.guardrails.policy import PolicyError
    from countersign.guardrails.redaction import set_pii_fields
    from countersign.workers.codec import PayloadKeyError
    from countersign.workers.devstack import DevStackError
    from countersign.workers.logging import configure_logging
    from countersign.workers.plugins import PluginError
    from countersign.workers.worker import TemporalUnreachable

    args = parser().parse_args(argv)
    for name, default in (("address", None), ("namespace", None), ("output", "text")):
        if not hasattr(args, name):
            setattr(args, name, default)
    configure_logging(json=args.command in ("worker", "gateway", "codec-server"))
    if args.command in ("dev", "demo"):
        # They own child processes: a supervisor's, `timeout`'s or a closed terminal's signal
        # must stop them as Ctrl-C does (and SIGINT is ignored under `cmd &` in a script).
        for signum in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, _terminate)
    overrides = {
        name: value
        for name, value in (
            ("temporal_address", args.address),
            ("temporal_namespace", args.namespace),
        )
        if value
    }
    code = 0
    try:
        settings = load_settings(**overrides)
        set_pii_fields(settings.pii_fields)
        set_currency(settings.currency)
        asyncio.run(args.fn(args, settings))
    except (TemporalUnreachable, ConnectionError) as e:
        print(f"countersign: {e}", file=sys.stderr)
        code = 1
    except (
        CliError,
        ShowError,
        SettingsError,
        CredentialError,
        DevStackError,
        PolicyError,
        RPCError,
        AuditError,
        DatabaseError,
        SigningKeyError,
        IdentityError,
        PayloadKeyError,
        SearchAttributesMissing,
        ToolDeclarationError,
        AgentSpecError,
        PluginError,
    ) as e:
        print(f"countersign: {e}", file=sys.stderr)
        code = 1 if isinstance(e, RPCError) and e.status == RPCStatusCode.UNAVAILABLE else 2
    except Terminated as e:
        code = 128 + e.signum
    except KeyboardInterrupt:
        code = 130
    # The Temporal client's Rust threads can abort interpreter teardown ("PyGILState_Release
    # ... finalizing", temporalio/sdk-python#300): flush and skip teardown.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
