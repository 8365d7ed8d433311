"""The worker: connects to Temporal from settings and registers the workflow and activities."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import structlog
from langgraph.graph import StateGraph
from temporalio import activity
from temporalio import client as temporal_client
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import (
    AddSearchAttributesRequest,
    ListSearchAttributesRequest,
)
from temporalio.client import Client
from temporalio.langgraph import LangGraphPlugin
from temporalio.service import RPCError, RPCStatusCode
from temporalio.worker import (
    ActivityInboundInterceptor,
    ExecuteActivityInput,
    Interceptor,
    Worker,
)

from countersign.activities.agent_specs import AGENTS, check_agent_graphs, check_agent_scopes
from countersign.activities.audit import AuditActivities
from countersign.activities.evidence import EvidenceActivities
from countersign.activities.guard import GuardActivities
from countersign.activities.identity import IdentityActivities
from countersign.activities.knowledge import knowledge_index
from countersign.activities.model import ModelActivities
from countersign.activities.notify import NotifyActivities
from countersign.activities.runtime import Runtime
from countersign.activities.sealing import sealer_for
from countersign.activities.tools import (
    REGISTRY,
    reconcile_activity,
    tool_activities,
    tool_schemas,
    validate_registry,
)
from countersign.agents import search_attributes
from countersign.agents.graph import GRAPH_NAME
from countersign.agents.graph_registry import build_graphs
from countersign.agents.run import AgentRun
from countersign.credentials import CredentialError, configure_keyring, get_secret
from countersign.guardrails.identity import Directory, IdentityError
from countersign.guardrails.knowledge import KnowledgeError
from countersign.guardrails.money import set_currency
from countersign.guardrails.policy import PolicyBundle, PolicyError
from countersign.settings import Settings, SettingsError
from countersign.workers.codec import data_converter
from countersign.workers.plugins import apply_plugins
from countersign.workers.sandbox import Parking, WorkflowSandbox
from countersign.workers.telemetry import client_interceptors, temporal_runtime

log = structlog.get_logger(__name__)

# What a worker runs, and what `countersign replay` replays: the same list, the same plugin.
WORKFLOWS: list[type] = [AgentRun]


def plugins(graph: StateGraph[Any, Any, Any, Any] | None = None) -> list[LangGraphPlugin]:
    """The LangGraph plugin with a fresh graph (the plugin mutates the graph it is given).

    `graph` replaces the guarded loop, for tests that replay against a changed graph."""
    graphs = build_graphs()
    if graph is not None:
        graphs[GRAPH_NAME] = graph
    return [LangGraphPlugin(graphs=graphs)]


class TemporalUnreachable(Exception):
    """No Temporal server answers at the configured address."""


# The frontend opens its port a moment before it serves; a client that connects in between
# (a worker started with its dev server, a compose stack coming up) waits instead of failing.
STARTING_SERVER = "Frontend is not healthy yet"
STARTING_SERVER_WAIT = 30.0


async def connect(
    settings: Settings,
    *,
    serve_metrics: bool = False,
    interceptors: Sequence[temporal_client.Interceptor] = (),
) -> Client:
    """A client for the configured Temporal (dev server, cluster, or Temporal Cloud), with the
    deployment's data converter (payloads encrypted unless COUNTERSIGN_ENCRYPT_PAYLOADS=false).

    `serve_metrics`: a worker's client serves /metrics on COUNTERSIGN_METRICS_ADDRESS (CLI
    clients never do: they would fight the worker for the port). `interceptors`: extra client
    interceptors (the gateway's updates-only guard)."""
    configure_keyring(settings)
    api_key = (
        get_secret(settings.temporal_api_key_credential)
        if settings.temporal_api_key_credential
        else None
    )
    deadline = time.monotonic() + STARTING_SERVER_WAIT
    while True:
        try:
            return await Client.connect(
                settings.temporal_address,
                namespace=settings.temporal_namespace,
                api_key=api_key,
                tls=settings.temporal_tls or api_key is not None,
                data_converter=data_converter(settings),
                runtime=temporal_runtime(settings) if serve_metrics else None,
                # Client interceptors that are also worker interceptors apply to the workers too.
                interceptors=[*client_interceptors(settings), *interceptors],
            )
        except RuntimeError as e:  # the SDK's "Failed client connect: ..." (down, wrong address)
            # A server that is up but still starting says so; one that is down does not.
            if STARTING_SERVER in str(e) and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
                continue
            raise TemporalUnreachable(
                f"cannot reach Temporal at {settings.temporal_address}: {str(e).splitlines()[0]} "
                "(is it running? `countersign dev` starts one; --address or "
                "COUNTERSIGN_TEMPORAL_ADDRESS points elsewhere)"
            ) from None


async def ensure_search_attributes(client: Client) -> list[str]:
    """Register the search attributes runs upsert, if the namespace lacks them; return the
    names added. Without them every workflow task would fail in a loop, so fail here instead."""
    namespace = client.namespace
    known: set[str] = set()
    try:
        listed = await client.operator_service.list_search_attributes(
            ListSearchAttributesRequest(namespace=namespace)
        )
        known = {*listed.system_attributes, *listed.custom_attributes}
    except RPCError as e:
        # The time-skipping test server can add attributes but not list them.
        if e.status != RPCStatusCode.UNIMPLEMENTED:
            raise
    missing = {
        k.name: IndexedValueType.ValueType(k.indexed_value_type)
        for k in search_attributes.KEYS
        if k.name not in known
    }
    if not missing:
        return []
    try:
        await client.operator_service.add_search_attributes(
            AddSearchAttributesRequest(namespace=namespace, search_attributes=missing)
        )
    except RPCError as e:
        how = " ".join(
            f"--name {n} --type {search_attributes.REGISTRATION[n]}" for n in sorted(missing)
        )
        raise search_attributes.SearchAttributesMissing(
            f"namespace {namespace!r} lacks search attributes {', '.join(sorted(missing))} "
            f"and this worker may not add them ({e.message}); register them with "
            f"`temporal operator search-attribute create {how}` (Temporal Cloud: in the "
            "namespace's settings)"
        ) from e
    return sorted(missing)


class _BindActivityIds(Interceptor):
    """Every log line from an activity carries its workflow, run and activity ids."""

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _ActivityIds(next)


class _ActivityIds(ActivityInboundInterceptor):
    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        info = activity.info()
        with structlog.contextvars.bound_contextvars(
            workflow_id=info.workflow_id,
            run_id=info.workflow_run_id,
            activity_id=info.activity_id,
            activity_type=info.activity_type,
            attempt=info.attempt,
        ):
            return await self.next.execute_activity(input)


def check_startup(settings: Settings) -> Runtime:
    """Everything that would otherwise fail mid-run fails here, in one line that says what to
    fix: the plugins (workers/plugins.py) that bring the tools, agents, systems and policy;
    tool declarations (business keys, compensations), agent scopes, the systems the tools
    call and their credentials, the keyring backend and the channels' secrets, the policy
    and what it names."""
    settings = apply_plugins(settings)
    set_currency(settings.currency)
    validate_registry()
    check_agent_scopes(AGENTS, {spec.scope for spec in REGISTRY.values()})
    # Built once here too, so a graph declared wrongly stops the start before Temporal.
    check_agent_graphs(AGENTS, set(build_graphs()))
    configure_keyring(settings)
    check_systems(settings)
    # A configured notification channel without its secret would fail every notice.
    for name in settings.channel_credentials():
        get_secret(name)
    # Secret and personal values are sealed with the key ring (even with payload encryption
    # off): without it every model and tool activity would fail.
    sealer_for(settings)
    # The knowledge base is indexed now: a missing or unreadable folder fails here, not mid-run.
    try:
        knowledge_index(settings)
    except KnowledgeError as e:
        raise SettingsError(str(e)) from None
    runtime = Runtime.from_settings(settings, tool_schemas())
    policy = runtime.policy.current()
    check_policy_references(policy)
    if runtime.candidate is not None:
        check_policy_references(runtime.candidate.current())
    # The directory file joined by the plugins' (a name in two with two keys stops here).
    directory = runtime.directory.current()
    check_directory(directory, policy)
    if runtime.candidate is not None:
        check_directory(directory, runtime.candidate.current())
    return runtime


def check_systems(settings: Settings) -> None:
    """Every system a tool declares is configured, and its credential is in the keyring."""
    users: dict[str, list[str]] = {}
    for spec in REGISTRY.values():
        if spec.system:
            users.setdefault(spec.system, []).append(spec.name)
    for system, tools in sorted(users.items()):
        conf = settings.systems.get(system)
        if conf is None:
            raise SettingsError(
                f"tool {tools[0]} calls system {system!r}, which is not configured: set "
                f"COUNTERSIGN_SYSTEMS__{system.upper()}__URL "
                f"(configured: {', '.join(sorted(settings.systems)) or 'none'})"
            )
        try:
            get_secret(conf.credential)
        except CredentialError as e:
            raise CredentialError(f"system {system!r} (tool {tools[0]}): {e}") from None


def check_policy_references(policy: PolicyBundle) -> None:
    """What policy.toml names must exist: agents in [modes], approver groups in
    augment_groups. (Counters' tools and fields are checked when the policy loads.)"""
    where = policy.path / "policy.toml"
    conf = policy.settings
    for agent in conf.modes:
        if agent not in AGENTS:
            raise PolicyError(
                f"{where}: [modes] names agent {agent!r}, which is not declared "
                f"(agents: {', '.join(sorted(AGENTS))})"
            )
    for group in conf.augment_groups:
        if group not in conf.groups:
            raise PolicyError(
                f"{where}: augment_groups names group {group!r}, which [groups] does not define "
                f"(defined: {', '.join(sorted(conf.groups)) or 'none'})"
            )


def check_directory(directory: Directory, policy: PolicyBundle) -> None:
    """Everyone the policy's groups name must be able to prove who they are."""
    for group, members in sorted(policy.settings.groups.items()):
        missing = [m for m in members if directory.get(m) is None]
        if missing:
            raise IdentityError(
                f"{policy.path / 'policy.toml'}: group {group!r} names {', '.join(missing)}, "
                f"who {'is' if len(missing) == 1 else 'are'} not in the identity directory "
                "(add them: `countersign identity init --as NAME` prints the entry, or a "
                "plugin's directory lists them)"
            )


def build_worker(
    client: Client,
    settings: Settings,
    runtime: Runtime,
    *,
    task_queue: str | None = None,
    **worker_options: Any,
) -> Worker:
    activities_: Sequence[Any] = [
        ModelActivities(runtime).plan,
        ModelActivities(runtime).bounds,
        GuardActivities(runtime).decide,
        GuardActivities(runtime).release,
        AuditActivities(runtime).record,
        IdentityActivities(runtime).verify,
        NotifyActivities(runtime).notify,
        EvidenceActivities(runtime).gather,
        *tool_activities(runtime),
        reconcile_activity(runtime),
    ]
    parking = (
        Parking(settings.evict_parked_max_events) if settings.evict_parked_max_events else None
    )
    worker = Worker(
        client,
        task_queue=task_queue or settings.task_queue,
        workflows=WORKFLOWS,
        activities=activities_,
        interceptors=[_BindActivityIds(), *worker_options.pop("interceptors", [])],
        plugins=plugins(),
        **{
            "workflow_runner": WorkflowSandbox(parking=parking),
            "max_cached_workflows": settings.max_cached_workflows,
            **worker_options,
        },
    )
    if parking is not None:
        parking.install(worker)
    return worker


async def run_worker(settings: Settings) -> None:
    runtime = check_startup(settings)
    client = await connect(settings, serve_metrics=True)
    added = await ensure_search_attributes(client)
    if added:
        log.info("worker.search_attributes_registered", names=added)
    worker = build_worker(
        client, settings, runtime, sticky_queue_schedule_to_start_timeout=timedelta(seconds=3)
    )
    log.info(
        "worker.started",
        temporal=settings.temporal_address,
        namespace=settings.temporal_namespace,
        task_queue=settings.task_queue,
    )
    try:
        await worker.run()
    finally:
        await runtime.http.aclose()
