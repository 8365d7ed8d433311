"""Real parts, started once per session: the Temporal dev server, the demo system of record,
the scripted model server. Each test gets its own task queue and workflow ids."""

from __future__ import annotations

import asyncio
import re
import shutil
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import hypothesis  # noqa: F401  (imported early: a lazy import during failure reports trips a CPython 3.11 AST bug)
import pytest
from temporalio.client import Client, WorkflowHandle
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from countersign import testing
from countersign.activities.agent_specs import AGENTS
from countersign.activities.payload_keys import PayloadKeys
from countersign.activities.runtime import Runtime
from countersign.activities.stores import ensure_signing_key
from countersign.agents.graph_registry import register_graph, unregister_graph
from countersign.agents.run import AgentRun
from countersign.agents.state import RunResult
from countersign.credentials import configure_keyring, set_secret
from countersign.guardrails.policy import DEFAULT_POLICY_PATH
from countersign.settings import Settings, SystemSettings
from countersign.workers.devstack import (
    Postgres,
    free_port,
    postgres_bin_dir,
    start_model_server,
    start_postgres,
    start_shop,
)
from countersign.workers.identities import ensure_dev_directory
from countersign.workers.plugins import load
from countersign.workers.worker import build_worker, check_startup

# The demo plugin's tools and agents, found through its entry points as a worker finds them,
# before any test reads the registries. Only the demo: other installed plugins stay out.
load(["demo"])

SHOP_TOKEN = "test-shop-token-" + uuid.uuid4().hex
# Debian's chromium, as Playwright must launch it here (never `playwright install`): headless,
# and nothing that reaches for the network beyond loopback.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# A fixed, test-only key ring, so histories recorded by tests stay decryptable for replay
# (tests/histories). Never used outside tests.
TEST_PAYLOAD_KEYS = PayloadKeys("pk_tests", {"pk_tests": bytes(range(32))})
SCRIPTS = Path(__file__).parent.parent / "demo" / "scripts"
# Everyone the tests sign as: the policy's people, the default requester, an outsider (mallory,
# in no group) and the webhook integration. Their keys are in the session's keyring.
TEST_PEOPLE = ("alice", "bob", "carol", "erin", "dana", "ops-dana", "mallory")
TEST_SLACK_USERS = {"alice": "U0ALICE", "bob": "U0BOB", "carol": "U0CAROL", "dana": "U0DANA"}


def dev_env(state: Path) -> dict[str, str]:
    """Settings for a `countersign dev` stack of its own: its state folder and free ports."""
    return {
        "COUNTERSIGN_STATE_DIR": str(state),
        "COUNTERSIGN_TEMPORAL_ADDRESS": f"127.0.0.1:{free_port()}",
        "COUNTERSIGN_TEMPORAL_UI_URL": f"http://127.0.0.1:{free_port()}",
        "COUNTERSIGN_OPENAI_BASE_URL": f"http://127.0.0.1:{free_port()}/v1",
        "COUNTERSIGN_SYSTEMS__SHOP__URL": f"http://127.0.0.1:{free_port()}",
        "COUNTERSIGN_GATEWAY_URL": f"http://127.0.0.1:{free_port()}",
        "COUNTERSIGN_MAIL_CATCHER_PORT": str(free_port()),
        "COUNTERSIGN_CODEC_URL": f"http://127.0.0.1:{free_port()}",
        "COUNTERSIGN_METRICS_ADDRESS": f"127.0.0.1:{free_port()}",
    }


@dataclass
class Shop:
    url: str
    token: str

    def client(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {self.token}"}, timeout=10
        )

    def state(self) -> dict[str, Any]:
        with self.client() as c:
            return c.get("/_state").json()

    def refunds(self, order_id: str) -> list[dict[str, Any]]:
        with self.client() as c:
            return c.get("/refunds", params={"order_id": order_id}).json()["refunds"]

    def faults(self, **rule: Any) -> None:
        with self.client() as c:
            c.post("/_faults", json=rule).raise_for_status()

    def clear_faults(self) -> None:
        with self.client() as c:
            c.delete("/_faults").raise_for_status()

    def reset(self) -> None:
        with self.client() as c:
            c.post("/_reset").raise_for_status()


@pytest.fixture(scope="session")
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("countersign-state")


@pytest.fixture(scope="session")
def scripts_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the shipped scripts; tests add their own scenario scripts here."""
    target = tmp_path_factory.mktemp("scripts")
    for f in SCRIPTS.glob("*.json"):
        shutil.copy(f, target / f.name)
    return target


@pytest.fixture(scope="session")
def shop(state_dir: Path) -> Iterator[Shop]:
    port = free_port()
    service = start_shop(state_dir, port, SHOP_TOKEN)
    yield Shop(f"http://127.0.0.1:{port}", SHOP_TOKEN)
    service.stop()


@pytest.fixture(scope="session")
def model_url(state_dir: Path, scripts_dir: Path) -> Iterator[str]:
    port = free_port()
    service = start_model_server(state_dir, port, scripts_dir)
    yield f"http://127.0.0.1:{port}/v1"
    service.stop()


def count_tiers_per_run(folder: Path) -> None:
    """Refund tiers count a customer's refunds per run, not per week: a test session refunds
    the same customers again and again (the shop is reset per test, the ledger is not)."""
    toml = folder / "policy.toml"
    week = 'per = "facts.order.customer_id"\nwindow = "week"'
    text = toml.read_text()
    block = text.index('id = "customer_refunded_week_cents"')
    assert text.index(week, block) < text.index("[[counters]]", block)
    toml.write_text(text[:block] + text[block:].replace(week, week.replace("week", "run"), 1))


@pytest.fixture(scope="session")
def session_policy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default policy with roomy limits: one session refunds far more per customer and
    per day than the default allows, and the refund tiers count a customer's refunds per run,
    not per week (every test starts from the same shop, the ledger stays). The limits
    themselves are tested in tests/guardrails (decision table, properties, concurrent ledger)."""
    folder = tmp_path_factory.mktemp("policy") / "default"
    shutil.copytree(DEFAULT_POLICY_PATH, folder)
    for name, old, new in [
        ("refunds.cedar", "> 200000", "> 100000000"),
        ("refunds.cedar", ">= 3", ">= 1000"),
    ]:
        text = (folder / name).read_text()
        assert old in text, (name, old)
        (folder / name).write_text(text.replace(old, new))
    count_tiers_per_run(folder)
    return folder


@pytest.fixture(scope="session")
def settings(state_dir: Path, shop: Shop, model_url: str, session_policy: Path) -> Settings:
    settings = Settings(
        policy_path=session_policy,
        state_dir=state_dir,
        plugins=["demo"],
        openai_base_url=model_url,
        systems={"shop": SystemSettings(url=shop.url, credential="shop")},
        tool_start_to_close_seconds=5,
        tool_max_attempts=3,
        # Tests rewrite policies freely; activation itself is tested in test_policy_activation.
        require_policy_activation=False,
    )
    configure_keyring(settings)
    set_secret("shop", shop.token)
    ensure_signing_key(settings)
    set_secret(settings.payload_keys_credential, TEST_PAYLOAD_KEYS.to_json())
    ensure_dev_directory(settings, TEST_PEOPLE, slack_users=TEST_SLACK_USERS)
    return settings


@pytest.fixture(scope="session")
def postgres(state_dir: Path) -> Iterator[Postgres]:
    """A real PostgreSQL server (Debian's package; .ci/run installs it)."""
    if postgres_bin_dir() is None:
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")
    cluster = start_postgres(state_dir / "logs", free_port())
    yield cluster
    cluster.stop()


@pytest.fixture
def pg_dsn(postgres: Postgres) -> str:
    """A fresh, empty database for one test."""
    import psycopg

    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres.dsn(), autocommit=True) as db:
        db.execute(f"CREATE DATABASE {name}")
    return postgres.dsn(name)


@pytest.fixture(scope="session")
def runtime(settings: Settings) -> Runtime:
    return check_startup(settings)


@pytest.fixture(scope="session")
async def temporal(settings: Settings) -> AsyncIterator[WorkflowEnvironment]:
    """The dev server; its client encrypts payloads exactly as the worker's `connect()` does."""
    async with testing.dev_server(settings) as env:
        yield env


@pytest.fixture
def task_queue(shop: Shop) -> str:
    """A fresh task queue, and the shop back at its seed data: every run-level test starts
    from the same orders, whatever earlier tests refunded."""
    shop.reset()
    return f"test-{uuid.uuid4().hex[:12]}"


def worker_for(client: Client, settings: Settings, runtime: Runtime, task_queue: str) -> Worker:
    """A worker as tests run one: a run whose worker went away moves to another within 2 s
    (the sticky queue's schedule-to-start timeout), not the SDK's default 10 s."""
    return build_worker(
        client,
        settings,
        runtime,
        task_queue=task_queue,
        sticky_queue_schedule_to_start_timeout=timedelta(seconds=2),
    )


@pytest.fixture
async def worker(
    temporal: WorkflowEnvironment, settings: Settings, runtime: Runtime, task_queue: str
) -> AsyncIterator[Worker]:
    async with worker_for(temporal.client, settings, runtime, task_queue) as w:
        yield w


async def start_run(
    client: Client,
    task_queue: str,
    *,
    workflow_id: str | None = None,
    execution_timeout: timedelta | None = timedelta(minutes=5),
    signed_requester: bool = False,
    **run_input: Any,
) -> WorkflowHandle[AgentRun, RunResult]:
    """Start a run as the Temporal UI does (the requester only claimed), or, with
    `signed_requester`, as `countersign start` does (signed with the requester's key)."""
    run_input.setdefault("agent", "support-refunds")
    run_input.setdefault("requested_by", "dana")
    if "subject" not in run_input and "context" not in run_input:
        # As ops would: the run is about the order its task names (the scripted model reads
        # the same order from the task). Tests of runs without a subject pass subject={}.
        order = re.search(r"\b[A-Z]-\d{4}\b", run_input.get("task", ""))
        run_input["subject"] = {"order_id": order[0]} if order else {}
    return await testing.start_run(
        client,
        task_queue,
        workflow_id=workflow_id,
        execution_timeout=execution_timeout,
        signed_requester=signed_requester,
        **run_input,
    )


signed = testing.signed


RunWithGraph = Callable[..., Awaitable[tuple[WorkflowHandle[AgentRun, RunResult], RunResult]]]


@pytest.fixture
def run_with_graph(
    temporal: WorkflowEnvironment,
    settings: Settings,
    runtime: Runtime,
    task_queue: str,
    monkeypatch: pytest.MonkeyPatch,
) -> RunWithGraph:
    """Run agent `name` (agent `base` with its own graph `graph`) to its result on a worker:
    `await run_with_graph(base=..., name=..., graph=..., task=...)`."""

    async def run(
        *, base: str, name: str, graph: Callable[[], Any], task: str
    ) -> tuple[WorkflowHandle[AgentRun, RunResult], RunResult]:
        agent = AGENTS[base].model_copy(update={"name": name, "graph": name})
        monkeypatch.setitem(AGENTS, name, agent)
        register_graph(name, graph)
        try:
            async with build_worker(temporal.client, settings, runtime, task_queue=task_queue):
                handle = await start_run(temporal.client, task_queue, agent=name, task=task)
                return handle, await handle.result()
        finally:
            unregister_graph(name)

    return run


async def wait_for_undo_window(handle: WorkflowHandle[Any, Any]) -> None:
    """Until the run has completed and waits in its undo window."""
    for _ in range(200):
        if (await handle.query(AgentRun.status)).stage.startswith("completed"):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{handle.id} did not complete")
