"""One fleet, many hosts: workers with separate state folders (no shared filesystem), one
Temporal, one PostgreSQL for Countersign's state (COUNTERSIGN_STATE_DSN). They must behave as
one worker: limits hold across hosts, a kill switch flipped through one host stops the other,
a link issued on one host decides on another's gateway, and a run whose host is SIGKILLed
mid-step completes on the other with exactly one side effect."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import keyring
import pytest
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from countersign.activities.runtime import Runtime
from countersign.activities.stores import close_shared_databases, open_ledger, open_tokens
from countersign.credentials import SERVICE, configure_keyring
from countersign.guardrails.audit_stores import open_store
from countersign.guardrails.policy import DEFAULT_POLICY_PATH
from countersign.settings import Settings
from countersign.workers.devstack import Service, free_port, start_service, wait_until
from countersign.workers.gateway import Gateway, UpdatesOnly, create_app
from countersign.workers.worker import build_worker, check_startup, connect
from tests.agents.test_agent_run import wait_for_pending
from tests.conftest import TEST_PAYLOAD_KEYS, Shop, count_tiers_per_run, start_run
from tests.gateway.conftest import serve, stop

TODAY = datetime.now(UTC).date().isoformat()


def on_host(settings: Settings, name: str, pg_dsn: str, **update: Any) -> Settings:
    """The session's settings as host `name` sees them: its own state folder holding its own
    copy of the keyring, and the fleet's database. (Built afresh: a copied Settings would keep
    the original's cached paths.)"""
    fields = settings.model_dump()
    fields.update(state_dir=settings.state_dir / f"fleet-{uuid.uuid4().hex[:6]}-{name}")
    # The identity directory is configuration, like the policy: the same file on every host.
    fields.update(state_dsn=pg_dsn, directory_path=settings.directory_file, **update)
    host = Settings(**fields)
    host.state_dir.mkdir(parents=True)
    shutil.copy(settings.keyring_path, host.keyring_path)
    return host


@pytest.fixture
def host_policy(request: pytest.FixtureRequest, settings: Settings, tmp_path: Path) -> Path:
    """The session's roomy policy; with the parameter "tight", the default policy with a daily
    refund limit of 100.00 (and 3 refunds per customer per week, as shipped), so a handful of
    small automatic refunds crosses both."""
    if getattr(request, "param", None) != "tight":
        return settings.policy_path
    folder = tmp_path / "policy"
    shutil.copytree(DEFAULT_POLICY_PATH, folder)
    rules = folder / "refunds.cedar"
    rules.write_text(rules.read_text().replace("> 200000", "> 10000"))
    count_tiers_per_run(folder)
    return folder


@pytest.fixture
async def two_hosts(
    temporal: WorkflowEnvironment,
    settings: Settings,
    pg_dsn: str,
    host_policy: Path,
    task_queue: str,
) -> AsyncIterator[list[tuple[Settings, Runtime, Worker]]]:
    """Host A and host B, each a worker on its own task queue (so every test knows which host
    decided what), sharing nothing but Temporal and the state database."""
    hosts = []
    for name in ("a", "b"):
        s = on_host(
            settings,
            name,
            pg_dsn,
            policy_path=host_policy,
            temporal_address=temporal.client.service_client.config.target_host,
        )
        runtime = check_startup(s)
        worker = build_worker(
            temporal.client,
            s,
            runtime,
            task_queue=f"{task_queue}-{name}",
            sticky_queue_schedule_to_start_timeout=timedelta(seconds=2),
        )
        hosts.append((s, runtime, worker))
    try:
        async with hosts[0][2], hosts[1][2]:
            yield hosts
    finally:
        for _, runtime, _ in hosts:
            runtime.audit.close()
        close_shared_databases()
        configure_keyring(settings)  # back to the session's keyring file


# Small refunds the policy allows automatically: (order, customer, captured cents).
SMALL_REFUNDS = [
    ("A-1001", "C-100", 4200),
    ("A-1008", "C-200", 2400),
    ("A-1015", "C-300", 4800),
    ("A-1004", "C-100", 2500),
    ("A-1016", "C-400", 1500),
    ("A-1007", "C-100", 3100),
    ("A-1013", "C-100", 3900),
]


@pytest.mark.parametrize("host_policy", ["tight"], indirect=True)
async def test_limits_hold_under_concurrent_refunds_spread_over_two_hosts(
    temporal: WorkflowEnvironment, two_hosts: list[tuple[Settings, Runtime, Worker]], shop: Shop
) -> None:
    handles = [
        await start_run(
            temporal.client,
            two_hosts[i % 2][2].task_queue,
            task=f"Refund order {order}: it arrived broken.",
        )
        for i, (order, _, _) in enumerate(SMALL_REFUNDS)
    ]
    results = await asyncio.wait_for(asyncio.gather(*(h.result() for h in handles)), 120)

    refunded = {order: shop.refunds(order) for order, _, _ in SMALL_REFUNDS}
    total = sum(r["amount_cents"] for refunds in refunded.values() for r in refunds)
    to_c100 = sum(len(refunded[o]) for o, customer, _ in SMALL_REFUNDS if customer == "C-100")
    # Apart, each host's ledger would let 100.00 and 3 refunds for C-100 through: 2x both.
    assert total <= 10_000, f"{total} refunded against a daily limit of 10000"
    assert to_c100 <= 3
    denied = {
        order: a.rule_ids
        for (order, _, _), result in zip(SMALL_REFUNDS, results, strict=True)
        for a in result.actions
        if a.tool == "payments.refund" and a.status == "denied"
    }
    assert denied and all(
        {"refund.agent_daily_limit", "refund.customer_weekly_limit"} & set(rules)
        for rules in denied.values()
    )
    # Tight: each refused refund would have crossed the limit when it was decided.
    daily_refused = [
        amount
        for order, _, amount in SMALL_REFUNDS
        if "refund.agent_daily_limit" in denied.get(order, [])
    ]
    if daily_refused:
        assert total + max(daily_refused) > 10_000
    # Every host's ledger is the same ledger, and it agrees with the system of record.
    for s, _, _ in two_hosts:
        assert open_ledger(s).total("agent_refunded_today_cents", "support-refunds", TODAY) == total
    # Both hosts decided: each one's runs ended, none failed (a refused refund says so).
    assert {r.status for r in results} <= {"completed", "completed_with_refusals"}


def cli(host: Settings, *args: str) -> str:
    """`countersign …` as an operator on that host runs it."""
    done = subprocess.run(
        [sys.executable, "-m", "countersign.workers", *args],
        env={
            **os.environ,
            "COUNTERSIGN_STATE_DIR": str(host.state_dir),
            "COUNTERSIGN_STATE_DSN": host.state_dsn or "",
            "COUNTERSIGN_DIRECTORY_PATH": str(host.directory_file),
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


async def test_the_kill_switch_flipped_through_one_host_stops_the_other(
    temporal: WorkflowEnvironment, two_hosts: list[tuple[Settings, Runtime, Worker]], shop: Shop
) -> None:
    (host_a, _, _), (_, _, worker_b) = two_hosts
    assert "payments.refund" in cli(host_a, "kill", "tool", "payments.refund", "--as", "erin")
    handle = await start_run(
        temporal.client, worker_b.task_queue, task="Refund order A-1004: the sampler was stale."
    )
    result = await asyncio.wait_for(handle.result(), 60)
    refund = next(a for a in result.actions if a.tool == "payments.refund")
    assert refund.status == "denied" and "kill_switch" in refund.rule_ids
    assert shop.refunds("A-1004") == []

    cli(host_a, "revive", "tool", "payments.refund", "--as", "erin")
    handle = await start_run(
        temporal.client, worker_b.task_queue, task="Refund order A-1004: the sampler was stale."
    )
    result = await asyncio.wait_for(handle.result(), 60)
    assert [a.status for a in result.actions if a.tool == "payments.refund"] == ["executed"]
    assert len(shop.refunds("A-1004")) == 1


@pytest.fixture
async def gateway_b(
    two_hosts: list[tuple[Settings, Runtime, Worker]],
) -> AsyncIterator[str]:
    """Host B's approval gateway on real HTTP."""
    host_b = two_hosts[1][0]
    client = await connect(host_b, interceptors=[UpdatesOnly()])
    port = free_port()
    server, task = await serve(create_app(Gateway.from_settings(host_b, client)), port)
    yield f"http://127.0.0.1:{port}"
    await stop(server, task)


async def test_a_link_issued_on_one_host_decides_through_another_hosts_gateway(
    temporal: WorkflowEnvironment,
    two_hosts: list[tuple[Settings, Runtime, Worker]],
    gateway_b: str,
    shop: Shop,
) -> None:
    host_a, _, worker_a = two_hosts[0]
    handle = await start_run(
        temporal.client, worker_a.task_queue, task="Refund order A-1002: the machine leaks."
    )
    (request,) = await wait_for_pending(handle)
    # What host A's email channel does for alice: a reference and a single-use token.
    links = open_tokens(host_a)
    ref = links.reference(handle.id, request.request_id, request.action_hash, request.expires_at)
    token = links.issue(ref, "alice", True)

    async with httpx.AsyncClient(base_url=gateway_b, timeout=10) as http:
        page = await http.get("/email/decide", params={"token": token})
        assert page.status_code == 200, page.text
        match = re.search(r"name='csrf' value='([^']+)'", page.text)
        assert match
        decided = await http.post(
            "/email/decide",
            data={"token": token, "csrf": match.group(1), "comment": "photo checked"},
        )
        assert decided.status_code == 200 and "Approved by alice" in decided.text
        again = await http.get("/email/decide", params={"token": token})
        assert again.status_code == 410  # used, on every host

    result = await asyncio.wait_for(handle.result(), 60)
    refund = next(a for a in result.actions if a.tool == "payments.refund")
    assert refund.status == "executed" and refund.approved_by == ["alice"]
    assert [r["refund_id"] for r in shop.refunds("A-1002")] == [refund.result["refund_id"]]


# --- a host dies mid-step -----------------------------------------------------------------


def provision_host(settings: Settings, pg_dsn: str, name: str) -> dict[str, str]:
    """A host's environment and its own copy of the deployment's secrets (secret files, as a
    container or systemd gets them): nothing shared with the other host but the values."""
    root = settings.state_dir / f"fleet-{uuid.uuid4().hex[:6]}-{name}"
    secrets = root / "secrets"
    secrets.mkdir(parents=True)
    signing = keyring.get_password(SERVICE, settings.audit_signing_credential)
    assert signing is not None
    for entry, value in {
        "shop": keyring.get_password(SERVICE, "shop"),
        settings.payload_keys_credential: TEST_PAYLOAD_KEYS.to_json(),
        settings.audit_signing_credential: signing,
    }.items():
        assert value is not None
        (secrets / entry).write_text(value + "\n")
    return {
        "COUNTERSIGN_STATE_DIR": str(root / "state"),
        "COUNTERSIGN_STATE_DSN": pg_dsn,
        "COUNTERSIGN_KEYRING_BACKEND": "countersign.credentials.SecretFiles",
        "COUNTERSIGN_SECRETS_DIR": str(secrets),
    }


def start_fleet(
    temporal: WorkflowEnvironment,
    settings: Settings,
    pg_dsn: str,
    task_queue: str,
    **env: str,
) -> list[Service]:
    """Two real `countersign worker` processes on one task queue; `env`: more settings."""
    services = []
    address = temporal.client.service_client.config.target_host
    for name in ("a", "b"):
        host = provision_host(settings, pg_dsn, name)
        services.append(
            start_service(
                f"fleet-worker-{name}-{uuid.uuid4().hex[:6]}",
                [sys.executable, "-m", "countersign.workers", "worker"],
                Path(host["COUNTERSIGN_STATE_DIR"]) / "logs",
                env={
                    **host,
                    "COUNTERSIGN_TEMPORAL_ADDRESS": address,
                    "COUNTERSIGN_TASK_QUEUE": task_queue,
                    "COUNTERSIGN_POLICY_PATH": str(settings.policy_path),
                    "COUNTERSIGN_DIRECTORY_PATH": str(settings.directory_file),
                    "COUNTERSIGN_OPENAI_BASE_URL": settings.openai_base_url,
                    "COUNTERSIGN_SYSTEMS__SHOP__URL": settings.systems["shop"].url,
                    "COUNTERSIGN_TOOL_START_TO_CLOSE_SECONDS": "3",
                    # as in-process test workers (activation: test_policy_activation)
                    "COUNTERSIGN_REQUIRE_POLICY_ACTIVATION": "false",
                    **env,
                },
            )
        )
    return services


@pytest.fixture
def worker_processes(
    temporal: WorkflowEnvironment, settings: Settings, pg_dsn: str, task_queue: str
) -> Iterator[list[Service]]:
    services = start_fleet(temporal, settings, pg_dsn, task_queue)
    yield services
    for service in services:
        service.stop()


async def activity_host(handle: Any, activity_type: str) -> str | None:
    """The worker identity (pid@host) running the run's pending activity, if any."""
    description = await handle.describe()
    for pending in description.raw_description.pending_activities:
        if pending.activity_type.name == activity_type and pending.last_worker_identity:
            return str(pending.last_worker_identity)
    return None


@pytest.mark.slow
async def test_a_run_whose_host_is_killed_mid_refund_completes_on_the_other_once(
    temporal: WorkflowEnvironment,
    worker_processes: list[Service],
    pg_dsn: str,
    shop: Shop,
    task_queue: str,
) -> None:
    # The shop commits the refund but holds its answer back: the host dies mid-call.
    shop.faults(latency_ms=8000, latency_after_commit=True, path_prefix="/refunds")
    try:
        handle = await start_run(
            temporal.client, task_queue, task="Refund order A-1001: the lid is cracked."
        )
        identity = None
        for _ in range(600):
            identity = await activity_host(handle, "payments.refund")
            # (/_state is exempt from the injected latency; GET /refunds is not.)
            if identity and [r for r in shop.state()["refunds"] if r["order_id"] == "A-1001"]:
                break
            await asyncio.sleep(0.05)
        assert identity, "the refund never started"
        pid = int(identity.split("@")[0])
        (dying,) = [s for s in worker_processes if s.process.pid == pid]
        (survivor,) = [s for s in worker_processes if s is not dying]
        dying.kill()
    finally:
        shop.clear_faults()

    result = await asyncio.wait_for(handle.result(), 90)
    assert result.status == "completed"
    assert survivor.process.poll() is None
    refunds = shop.refunds("A-1001")
    assert len(refunds) == 1
    refund = next(a for a in result.actions if a.tool == "payments.refund")
    assert refund.status == "executed" and refund.result["refund_id"] == refunds[0]["refund_id"]
    notes = next(a for a in result.actions if a.tool == "crm.add_note")
    assert notes.status == "executed"

    # One trail, in the shared database, intact: the action recorded once, by the survivor.
    audit = open_store(pg_dsn)
    try:
        executed = audit.find(handle.id, "action.executed", tool="payments.refund")
        assert len(executed) == 1 and executed[0].event["attempt"] >= 2
        assert audit.verify().ok
    finally:
        audit.close()


@pytest.fixture
def slow_model(settings: Settings, scripts_dir: Path) -> Iterator[str]:
    """A model endpoint that takes 3 s to answer."""
    port = free_port()
    service = start_service(
        f"slow-model-{port}",
        [
            sys.executable,
            "-m",
            "countersign.demo.model_server",
            "--port",
            str(port),
            "--latency-ms",
            "3000",
            "--scripts",
            str(scripts_dir),
        ],
        settings.state_dir / "logs",
    )
    wait_until(service, f"http://127.0.0.1:{port}/healthz")
    yield f"http://127.0.0.1:{port}/v1"
    service.stop()


@pytest.mark.slow
async def test_a_worker_dying_during_a_model_call_is_noticed_in_seconds(
    temporal: WorkflowEnvironment,
    settings: Settings,
    pg_dsn: str,
    task_queue: str,
    slow_model: str,
) -> None:
    """The model call heartbeats: the dead worker's call is retried on the other after the
    2 s heartbeat timeout, long before its 60 s start-to-close would have run out."""
    services = start_fleet(
        temporal,
        settings,
        pg_dsn,
        task_queue,
        COUNTERSIGN_OPENAI_BASE_URL=slow_model,
        COUNTERSIGN_MODEL_START_TO_CLOSE_SECONDS="60",
        COUNTERSIGN_MODEL_HEARTBEAT_SECONDS="2",
    )
    try:
        # No script matches: one model call, then the run is done.
        handle = await start_run(temporal.client, task_queue, task="Say hello to the team.")
        identity = None
        for _ in range(600):
            identity = await activity_host(handle, "model.plan")
            if identity:
                break
            await asyncio.sleep(0.05)
        assert identity, "the model call never started"
        (dying,) = [s for s in services if s.process.pid == int(identity.split("@")[0])]
        dying.kill()
        killed_at = time.monotonic()
        result = await asyncio.wait_for(handle.result(), 40)
        took = time.monotonic() - killed_at
    finally:
        for service in services:
            service.stop()
    assert result.status == "completed" and result.steps == 1
    # heartbeat timeout 2 s + retry back-off 1 s + a 3 s answer, with room for a slow machine.
    assert took < 20, f"the run took {took:.1f}s after its worker died"
