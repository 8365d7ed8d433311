"""The model call: one planning step of an agent, through the real `openai` client.

Offline the base URL points at the scripted model server (`demo/model_server.py`); with
OPENAI_BASE_URL / OPENAI_API_KEY set, the same code talks to OpenAI or any compatible server.
The model sees exactly the tools inside the agent's scopes. Its tool calls come back as
proposals: parsed, never trusted (the guard decides them).
"""

from __future__ import annotations

import json
import weakref
from typing import Any, cast

import openai
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.contracts import MODEL_BOUNDS, PLAN, ModelBounds, PlanInput, PlanOutput, Usage
from activities.runtime import Runtime, audit_from_activity, current_workflow_id, heartbeating
from activities.tools import REGISTRY, lookup_tool
from agents.specs import AGENTS, AgentSpec
from guardrails.policy import Proposal, sha256_hex
from workers.credentials import openai_api_key


def tools_for(agent: AgentSpec) -> list[dict[str, Any]]:
    """Schemas of the tools inside the agent's scopes, and only those."""
    return [t.model_schema() for t in REGISTRY.values() if t.scope in agent.scopes]


def task_message(task: str, context: dict[str, Any]) -> dict[str, Any]:
    text = task
    if context:
        text += "\n\nContext:\n" + "\n".join(f"- {k}: {v}" for k, v in sorted(context.items()))
    return {"role": "user", "content": text}


def proposals_from(message: Any) -> list[Proposal]:
    """Tool calls as proposals; malformed arguments are kept as an error for the guard."""
    reason = (message.content or "").strip()
    proposals = []
    for call in message.tool_calls or []:
        raw = call.function.arguments or "{}"
        arguments: dict[str, Any] | None = None
        error = None
        try:
            parsed = json.loads(raw)
            if isinstance(parsed, dict):
                arguments = parsed
            else:
                error = f"arguments must be a JSON object, got {type(parsed).__name__}"
        except json.JSONDecodeError as e:
            error = f"arguments are not valid JSON ({e.msg} at position {e.pos}): {raw[:200]}"
        spec = lookup_tool(call.function.name)
        proposals.append(
            Proposal(
                call_id=call.id,
                tool=spec.name if spec else call.function.name,
                arguments=arguments,
                arguments_error=error,
                reason=reason,
            )
        )
    return proposals


class ModelActivities:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        # One openai client per pooled HTTP client (so per event loop), rebuilt when the key
        # changes: building one costs milliseconds (it parses and normalizes the base URL).
        self._clients: weakref.WeakKeyDictionary[Any, tuple[str, openai.AsyncOpenAI]] = (
            weakref.WeakKeyDictionary()
        )

    def _client(self) -> openai.AsyncOpenAI:
        settings = self.runtime.settings
        http = self.runtime.http.get("openai", openai.DefaultAsyncHttpxClient)
        api_key = openai_api_key()  # read per call, so a rotated key takes effect at once
        cached = self._clients.get(http)
        if cached is None or cached[0] != api_key:
            client = openai.AsyncOpenAI(
                base_url=settings.openai_base_url,
                api_key=api_key,
                max_retries=0,  # Temporal owns retries
                timeout=settings.openai_timeout_seconds,
                http_client=http,
            )
            cached = self._clients[http] = (api_key, client)
        return cached[1]

    @activity.defn(name=MODEL_BOUNDS)
    async def bounds(self) -> ModelBounds:
        """How the workflow should run model calls: timeouts and attempts from settings."""
        settings = self.runtime.settings
        return ModelBounds(
            start_to_close_seconds=settings.model_start_to_close_seconds,
            heartbeat_seconds=settings.model_heartbeat_seconds,
            max_attempts=settings.model_max_attempts,
        )

    @activity.defn(name=PLAN)
    async def plan(self, input: PlanInput) -> PlanOutput:
        agent = AGENTS.get(input.agent)
        if agent is None:
            raise ApplicationError(
                f"unknown agent {input.agent!r}", type="UnknownAgent", non_retryable=True
            )
        workflow_id = current_workflow_id()
        transcripts = self.runtime.transcripts
        await transcripts.write(workflow_id, input.seq, input.new_messages)
        upto = input.seq + len(input.new_messages)
        history = await transcripts.read(workflow_id, upto)
        if len(history) != upto:
            raise ApplicationError(
                f"transcript of {workflow_id} has {len(history)} messages, expected {upto}"
                " (workers on several machines need one shared COUNTERSIGN_STATE_DSN)",
                type="TranscriptIncomplete",
            )
        messages = [
            {"role": "system", "content": agent.system_prompt},
            task_message(input.task, input.context),
            *history,
        ]
        tools = tools_for(agent)
        client = self._client()
        try:
            async with heartbeating():
                response = await client.chat.completions.create(
                    model=agent.model,
                    messages=cast(Any, messages),
                    tools=cast(Any, tools) if tools else openai.omit,
                )
        except openai.BadRequestError as e:
            raise ApplicationError(
                f"the model rejected the request: {e.message}",
                type="ModelRejected",
                non_retryable=True,
            ) from e
        except openai.AuthenticationError as e:
            raise ApplicationError(
                "the model endpoint refused the API key (keyring entry 'openai' or OPENAI_API_KEY)",
                type="ModelAuthentication",
                non_retryable=True,
            ) from e
        if not response.choices:
            raise ApplicationError("the model returned no choices", type="ModelEmptyReply")
        choice = response.choices[0]
        reply = choice.message
        assistant: dict[str, Any] = {"role": "assistant", "content": reply.content}
        if reply.tool_calls:
            assistant["tool_calls"] = [c.model_dump(mode="json") for c in reply.tool_calls]
        await transcripts.write(workflow_id, upto, [assistant])
        usage = Usage(
            prompt_tokens=response.usage.prompt_tokens if response.usage else 0,
            completion_tokens=response.usage.completion_tokens if response.usage else 0,
        )
        await audit_from_activity(
            self.runtime,
            "model.call",
            {
                "agent": agent.name,
                "step": input.step,
                "model": response.model,
                "prompt_hash": sha256_hex(messages),
                "tools_offered": [t["function"]["name"] for t in tools],
                "usage": usage.model_dump(),
                "finish_reason": choice.finish_reason,
                "content": reply.content,
                "tool_calls": len(reply.tool_calls or []),
            },
            actor=f"agent:{agent.name}",
        )
        return PlanOutput(
            content=reply.content or "",
            proposals=proposals_from(reply),
            finish_reason=choice.finish_reason or "stop",
            model=response.model,
            usage=usage,
            seq=upto + 1,
        )
