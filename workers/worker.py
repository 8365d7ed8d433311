"""The worker: connects to Temporal from settings and registers the workflow and activities."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import structlog
from langgraph.graph import StateGraph
from temporalio import activity
from temporalio import client as client_interceptors
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.langgraph import LangGraphPlugin
from temporalio.worker import (
    ActivityInboundInterceptor,
    ExecuteActivityInput,
    Interceptor,
    Worker,
)

# Importing the tool modules registers their tools.
import activities.crm
import activities.shop  # noqa: F401
from activities.audit import AuditActivities
from activities.guard import GuardActivities
from activities.model import ModelActivities
from activities.notify import NotifyActivities
from activities.runtime import Runtime
from activities.tools import tool_activities, tool_schemas, validate_registry
from agents.graph import GRAPH_NAME, build_graph
from agents.run import AgentRun
from workers.credentials import configure_keyring, get_secret
from workers.settings import Settings

log = structlog.get_logger(__name__)

# What a worker runs, and what `countersign replay` replays: the same list, the same plugin.
WORKFLOWS: list[type] = [AgentRun]


def plugins(graph: StateGraph[Any, Any, Any, Any] | None = None) -> list[LangGraphPlugin]:
    """The LangGraph plugin with a fresh graph (the plugin mutates the graph it is given).

    `graph` replaces the guarded loop, for tests that replay against a changed graph."""
    return [LangGraphPlugin(graphs={GRAPH_NAME: graph or build_graph()})]


async def connect(
    settings: Settings, interceptors: Sequence[client_interceptors.Interceptor] = ()
) -> Client:
    """A client for the configured Temporal (dev server, cluster, or Temporal Cloud)."""
    api_key = (
        get_secret(settings.temporal_api_key_credential)
        if settings.temporal_api_key_credential
        else None
    )
    return await Client.connect(
        settings.temporal_address,
        namespace=settings.temporal_namespace,
        api_key=api_key,
        tls=settings.temporal_tls or api_key is not None,
        data_converter=pydantic_data_converter,
        interceptors=interceptors,
    )


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
    """Everything that would otherwise fail mid-run fails here, loudly: tool declarations,
    the keyring backend and the secrets the tools and channels need, the policy file."""
    validate_registry()
    configure_keyring(settings)
    for system in settings.systems.values():
        get_secret(system.credential)
    # A configured notification channel without its secret would fail every notice.
    for name in settings.channel_credentials():
        get_secret(name)
    runtime = Runtime.from_settings(settings, tool_schemas())
    runtime.policy.current()
    if runtime.candidate is not None:
        runtime.candidate.current()
    return runtime


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
        GuardActivities(runtime).decide,
        GuardActivities(runtime).release,
        AuditActivities(runtime).record,
        NotifyActivities(runtime).notify,
        *tool_activities(runtime),
    ]
    return Worker(
        client,
        task_queue=task_queue or settings.task_queue,
        workflows=WORKFLOWS,
        activities=activities_,
        interceptors=[_BindActivityIds()],
        plugins=plugins(),
        **worker_options,
    )


async def run_worker(settings: Settings) -> None:
    runtime = check_startup(settings)
    client = await connect(settings)
    worker = build_worker(
        client, settings, runtime, sticky_queue_schedule_to_start_timeout=timedelta(seconds=3)
    )
    log.info(
        "worker.started",
        temporal=settings.temporal_address,
        namespace=settings.temporal_namespace,
        task_queue=settings.task_queue,
    )
    await worker.run()
