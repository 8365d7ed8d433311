"""The model call: one planning step of an agent, through the real `openai` client.

Offline the base URL points at the scripted model server (`demo/model_server.py`); with
OPENAI_BASE_URL / OPENAI_API_KEY set, the same code talks to OpenAI or any compatible server.
The model sees exactly the tools inside the agent's scopes. Its tool calls come back as
proposals: parsed, never trusted (the guard decides them).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import weakref
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import openai
import structlog
from openai.types.chat import ChatCompletion
from temporalio import activity
from temporalio.exceptions import ApplicationError

from countersign.activities.agent_specs import AGENTS, AgentSpec, ContextWindow
from countersign.activities.context import fold_note, fold_point, summary_request
from countersign.activities.contracts import (
    MODEL_BOUNDS,
    PLAN,
    GuardInput,
    GuardResult,
    ModelBounds,
    PlanInput,
    PlanOutput,
    ToolCall,
    ToolOutcome,
    Usage,
    read_results,
    sent_digest,
    unused_reservations,
)
from countersign.activities.guard import GuardActivities
from countersign.activities.runtime import (
    Runtime,
    activity_key,
    activity_record,
    audit_from_activity,
    current_workflow_id,
    heartbeating,
    observe,
)
from countersign.activities.sealing import Sealer, seal_fields, sealer_for
from countersign.activities.tools import CALL_REASON, REGISTRY, ToolSpec, execute_tool, lookup_tool
from countersign.activities.transcript import Fold
from countersign.credentials import openai_api_key
from countersign.guardrails.audit import AuditRecord
from countersign.guardrails.policy import Proposal, sha256_hex
from countersign.guardrails.redaction import Kind

# Each tool's schema as the model sees it, by registered spec (kept with it, so its id stays
# its own): building one runs pydantic's JSON-schema generator, and every model call sends them.
_schemas: dict[int, tuple[ToolSpec, dict[str, Any]]] = {}

log = structlog.get_logger(__name__)


def tools_for(agent: AgentSpec) -> list[dict[str, Any]]:
    """Schemas of the tools inside the agent's scopes, and only those."""
    out = []
    for t in REGISTRY.values():
        if t.scope in agent.scopes:
            kept = _schemas.get(id(t))
            if kept is None:
                kept = _schemas[id(t)] = (t, t.model_schema())
            out.append(kept[1])
    return out


def task_message(task: str, context: dict[str, Any]) -> dict[str, Any]:
    text = task
    if context:
        text += "\n\nContext:\n" + "\n".join(f"- {k}: {v}" for k, v in sorted(context.items()))
    return {"role": "user", "content": text}


def call_reason(arguments: dict[str, Any] | None, content: str, names: tuple[str, ...]) -> str:
    """This call's own reason: its `call_reason` argument (taken out of the arguments); else
    the content's line naming its tool ("payments.refund: because ..."); else the content."""
    given = arguments.pop(CALL_REASON, None) if arguments is not None else None
    if isinstance(given, str) and given.strip():
        return given.strip()
    for line in content.splitlines():
        for name in names:
            if line.startswith(f"{name}:"):
                return line.removeprefix(f"{name}:").strip()
    return content


def proposals_from(message: Any) -> list[Proposal]:
    """Tool calls as proposals; malformed arguments are kept as an error for the guard. Each
    proposal carries its own call's reason, never another call's."""
    content = (message.content or "").strip()
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
            # Not echoed: malformed text may hold a value that could not be sealed by type.
            error = f"arguments are not valid JSON ({e.msg} at position {e.pos})"
        spec = lookup_tool(call.function.name)
        names = (call.function.name, spec.name) if spec else (call.function.name,)
        reason = call_reason(arguments, content, names)
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


# How much of a reply's text the audit keeps; the whole reply is represented by its hash.
AUDIT_EXCERPT_CHARS = 1000
RETRY_NOTE = (
    "Countersign discarded your previous reply and executed none of it: {why}. "
    "Reply again: shorter, with at most the tool calls this step needs, each with its own id."
)


def _usage(response: Any) -> dict[str, int]:
    u = response.usage
    return Usage(
        prompt_tokens=u.prompt_tokens if u else 0, completion_tokens=u.completion_tokens if u else 0
    ).model_dump()


def reply_bytes(message: Any) -> int:
    """The size of what the model sent: its text and every tool call's name and arguments."""
    size = len((message.content or "").encode())
    for call in message.tool_calls or []:
        size += len((call.function.name or "").encode())
        size += len((call.function.arguments or "").encode())
    return size


def refusal(finish_reason: str | None, message: Any, max_bytes: int, max_calls: int) -> str | None:
    """Why a reply must execute nothing, or None. A compromised or broken model must not get a
    half-written or oversized batch of tool calls executed."""
    if finish_reason == "length":
        return "the reply was cut off at the token limit (finish_reason 'length')"
    if finish_reason == "content_filter":
        return "the reply was withheld by the content filter (finish_reason 'content_filter')"
    size = reply_bytes(message)
    if size > max_bytes:
        return f"the reply is {size} bytes; at most {max_bytes} are accepted"
    calls = message.tool_calls or []
    if len(calls) > max_calls:
        return f"the reply has {len(calls)} tool calls; at most {max_calls} per turn are accepted"
    ids = [c.id for c in calls]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        return f"tool-call id(s) {', '.join(duplicates)} are used more than once in one reply"
    return None


def reply_sha256(message: Any) -> str:
    calls = [c.model_dump(mode="json") for c in message.tool_calls or []]
    return sha256_hex({"content": message.content or "", "tool_calls": calls})


def reply_digest(message: Any, sha256: str) -> dict[str, Any]:
    """What the audit keeps of a reply: a bounded excerpt, its size and the sha256 of it all."""
    content = message.content or ""
    text = content[:AUDIT_EXCERPT_CHARS]
    if len(content) > AUDIT_EXCERPT_CHARS:
        text += f" [… {len(content) - AUDIT_EXCERPT_CHARS} more characters]"
    return {
        "content": text,
        "reply_bytes": reply_bytes(message),
        "reply_sha256": sha256,
        "tool_calls": len(message.tool_calls or []),
    }


def sealed_reply(sealer: Sealer, message: Any, known: dict[str, Kind]) -> Any:
    """The reply as the run keeps it: arguments typed secret or personal sealed, and every
    value the model was shown in clear sealed again wherever it repeats it."""
    sealed = message.model_copy(deep=True)
    if sealed.content:
        sealed.content = sealer.seal_known(sealed.content, known)
    for call in sealed.tool_calls or []:
        text = call.function.arguments or ""
        try:
            parsed = json.loads(text)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict):
            spec = lookup_tool(call.function.name)
            if spec is not None:
                parsed = seal_fields(sealer, parsed, spec.args_model)
            call.function.arguments = json.dumps(sealer.seal_known(parsed, known))
        else:
            call.function.arguments = sealer.seal_known(text, known)
    return sealed


class ModelActivities:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.guard = GuardActivities(runtime)
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
        if input.guard is None:
            return await self._reply(agent, input, None)
        # One heartbeat for the whole call, not only for its model calls and the guard's
        # fetches: reads and the steps taken ahead can add up to more than the timeout.
        async with heartbeating():
            key = activity_key()
            out = await self._step(agent, input, key)
            if input.ahead:
                out.ahead = await self._read_ahead(agent, input, out, key)
        return out

    async def _step(
        self,
        agent: AgentSpec,
        input: PlanInput,
        key: str,
        base: int = 0,
        decided: list[GuardResult] | None = None,
    ) -> PlanOutput:
        """One step: the reply, its proposals decided, the reads allowed executed. `base`
        numbers the step's audit records apart from the call's other steps (read-ahead);
        `decided` gets each verdict as soon as it is decided (and has reserved)."""
        # The proposals are decided here, with the guard's own code, so the verdicts land in
        # history with the reply (one workflow activation fewer per proposal). The reply is
        # kept before anything is decided: a retried attempt decides that same reply again.
        assert input.guard is not None
        workflow_id = current_workflow_id()
        transcripts = self.runtime.transcripts
        out = None
        if activity.info().attempt > 1:
            kept = await transcripts.reply_of(workflow_id, key)
            out = PlanOutput.model_validate(kept) if kept is not None else None
            if out is not None and out.verdicts:
                # An earlier attempt decided it all (and audited and reserved it): the same
                # result again, even if the policy or the kill switch changed since.
                return out
        if out is None:
            out = await self._reply(agent, input, key, base)
        # Heartbeats go on while the guard fetches a side effect's facts from its system.
        decided = [] if decided is None else decided
        async with heartbeating():
            for n, proposal in enumerate(out.proposals):
                decided.append(
                    await self.guard.decide_in_activity(
                        GuardInput(
                            agent=agent.name,
                            proposal=proposal,
                            requested_mode=input.guard.requested_mode,
                            requested_by=input.guard.requested_by,
                            subject=input.guard.subject,
                        ),
                        n=base + n,
                    )
                )
        verdicts = list(decided)
        out = out.model_copy(update={"verdicts": verdicts})
        if input.guard.reads:
            out.reads = await self._reads(agent.name, out.verdicts, base)
        # Kept with its reads: a retry returns them as they were and reads nothing again. An
        # attempt that died before this decides again (counted and audited once) and reads
        # again: a read has no side effect, and its audit record is written once.
        if verdicts:
            await transcripts.keep_decided(workflow_id, key, out.model_dump(mode="json"))
        return out

    async def _read_ahead(
        self, agent: AgentSpec, input: PlanInput, first: PlanOutput, key: str
    ) -> list[PlanOutput]:
        """The steps after `first` this call takes itself (PlanInput.ahead), as the workflow
        would ask for them: while every call of the latest reply is a read the guard allowed
        and this call executed, the reads' results are sent to the model as the next step.
        Each step is audited, decided and kept as its own; the workflow takes a step only if
        it would send exactly what the step sent (PlanOutput.sent). A step that fails here is
        left out: the workflow asks for it itself, and any error surfaces there."""
        ahead: list[PlanOutput] = []
        previous, step = first, input
        tokens, size = _tokens(first), _json_bytes(first)
        last_bytes = size
        budget = activity.info().start_to_close_timeout
        for i in range(1, input.ahead + 1):
            results = read_results(previous)
            if results is None:
                break  # the workflow has something to do: a side effect, a denial, the answer
            if input.tokens_left is not None and tokens >= input.tokens_left:
                break
            # The steps go back in one result, which Temporal caps (2 MB; it warns at 512 KB):
            # no step that would, by the size of the last one, take them past AHEAD_MAX_BYTES.
            if size + last_bytes > AHEAD_MAX_BYTES:
                break
            # Half of this attempt's time is kept for the step in hand, and a step may take all
            # of it but a quarter: the steps already taken always go back.
            if budget and _seconds_left() < budget.total_seconds() / 2:
                break
            room = _seconds_left() - budget.total_seconds() / 4 if budget else None
            step = step.model_copy(
                update={"seq": previous.seq, "new_messages": results, "step": step.step + 1}
            )
            decided: list[GuardResult] = []
            try:
                async with asyncio.timeout(room):
                    out = await self._step(
                        agent, step, f"{key}/ahead-{i}", base=i * AHEAD_STRIDE, decided=decided
                    )
            except Exception as e:
                # Its type only: the message may echo a clear value.
                log.warning("model.read_ahead_stopped", step=step.step, error=type(e).__name__)
                await self._give_back(unused_reservations(decided, None))
                break
            out = out.model_copy(update={"step": step.step, "sent": sent_digest(step.seq, results)})
            # A step larger than the last is left to the workflow if it would pass the cap.
            last_bytes = _json_bytes(out)
            if size + last_bytes > AHEAD_MAX_BYTES:
                await self._give_back(unused_reservations(out.verdicts, out.reads))
                break
            ahead.append(out)
            previous, tokens, size = out, tokens + _tokens(out), size + last_bytes
        return ahead

    async def _give_back(self, action_hashes: list[str]) -> None:
        """Release the limits a step taken ahead reserved for actions it does not return."""
        if not action_hashes:
            return
        workflow_id = current_workflow_id()
        ledger = self.runtime.ledger
        await asyncio.to_thread(lambda: [ledger.release(h, workflow_id) for h in action_hashes])

    async def _reads(
        self, agent: str, verdicts: list[GuardResult], base: int = 0
    ) -> dict[str, ToolOutcome]:
        """Execute the reply's reads the guard just allowed, here, through the tool activity's
        own path (`execute_tool`: its audit records; the authority is the allow verdict just
        decided in this attempt): the workflow then needs no local activity, and no
        activation, for them. By action hash.

        A read that fails or runs out of time is left out (the workflow runs it as its local
        activity, as before): a read never fails the model call."""
        reads: dict[str, ToolOutcome] = {}
        for n, g in enumerate(verdicts):
            v = g.verdict
            spec = lookup_tool(v.tool)
            if v.outcome != "allow" or spec is None or not spec.read_only:
                continue
            if v.arguments is None or v.action_hash is None:
                continue
            # Bounded by the tool's own timeout, and by half of what is left of this attempt,
            # so the model call itself is never timed out by its reads.
            budget = min(g.tool_timeout_seconds, _seconds_left() / 2)
            call = ToolCall(
                tool=v.tool,
                call_id=v.call_id,
                arguments=v.arguments,
                action_hash=v.action_hash,
                agent=agent,
            )
            try:
                async with asyncio.timeout(budget):
                    reads[v.action_hash] = await execute_tool(
                        spec, call, self.runtime, n=base + n, decided_here=v
                    )
            except Exception as e:
                # Its type only: the message may echo a clear value (the fallback reports it).
                log.warning(
                    "model.read_deferred", tool=v.tool, call_id=v.call_id, error=type(e).__name__
                )
        return reads

    async def _reply(
        self, agent: AgentSpec, input: PlanInput, key: str | None, base: int = 0
    ) -> PlanOutput:
        """Ask the model for the step's reply; with `key` (its proposals are decided next),
        keep the reply for a retried attempt in the same write as the reply's messages. `base`
        as in _step."""
        workflow_id = current_workflow_id()
        transcripts = self.runtime.transcripts
        upto = input.seq + len(input.new_messages)
        # With a context window only the messages after the latest fold are read and sent.
        window = agent.context
        fold, history = await transcripts.write_and_read(
            workflow_id, input.seq, input.new_messages, folds=window is not None
        )
        start = fold.covers_seq if fold else 0
        if len(history) != upto - start:
            raise ApplicationError(
                f"transcript of {workflow_id} has {start + len(history)} messages, expected"
                f" {upto} (workers on several machines need one shared COUNTERSIGN_STATE_DSN)",
                type="TranscriptIncomplete",
            )
        # The transcript holds sealed values; the model sees its conversation in clear, and
        # every value shown to it is sealed again wherever it comes back (activities/sealing).
        sealer = sealer_for(self.runtime.settings)
        usage = Usage()
        if window and (cut := fold_point(history, window)):
            fold = await self._fold(
                agent, input.step, window, fold, start, history[:cut], usage, base
            )
            start, history = fold.covers_seq, history[cut:]
        known: dict[str, Kind] = {}
        messages = [
            {"role": "system", "content": agent.system_prompt},
            task_message(input.task, input.context),
            *sealer.unseal([*([fold_note(fold)] if fold else []), *history], known, strict=False),
        ]
        tools = tools_for(agent)
        settings = self.runtime.settings
        # A reply that must not execute is discarded, and the model is asked once more with a
        # note saying why; a second such reply stops the run (PlanOutput.refused).
        written: list[dict[str, Any]] = []
        refused: str | None = None
        # A model.call record not yet appended: the last one goes with the transcript's write.
        pending: dict[str, Any] | None = None
        for attempt in range(2):
            if pending is not None:
                await self._keep(pending)
            pending = None
            response, prompt_hash = await self._complete(agent, [*messages, *written], tools)
            if not response.choices:
                raise ApplicationError("the model returned no choices", type="ModelEmptyReply")
            choice = response.choices[0]
            raw_sha256 = reply_sha256(choice.message)
            reply = sealed_reply(sealer, choice.message, known)
            if response.usage:
                usage.prompt_tokens += response.usage.prompt_tokens
                usage.completion_tokens += response.usage.completion_tokens
            refused = refusal(
                choice.finish_reason,
                reply,
                settings.max_reply_bytes,
                settings.max_tool_calls_per_turn,
            )
            pending = activity_record(
                "model.call",
                {
                    "agent": agent.name,
                    "step": input.step,
                    "attempt": attempt + 1,
                    "model": response.model,
                    "prompt_hash": prompt_hash,  # of the request's bytes, as sent
                    # What of the transcript was sent: from which seq, in how many messages.
                    **({"window": {"from_seq": start, "sent": len(messages)}} if window else {}),
                    "tools_offered": [t["function"]["name"] for t in tools],
                    "usage": _usage(response),  # this call's own: stats sum them
                    "finish_reason": choice.finish_reason,
                    **reply_digest(reply, raw_sha256),
                    "refused": refused,
                },
                actor=f"agent:{agent.name}",
                n=base + attempt,
            )
            if refused is None:
                assistant: dict[str, Any] = {"role": "assistant", "content": reply.content}
                if reply.tool_calls:
                    assistant["tool_calls"] = [c.model_dump(mode="json") for c in reply.tool_calls]
                written.append(assistant)
                break
            # What the conversation keeps of a refused reply: that it was discarded, and why.
            written.append({"role": "assistant", "content": f"[reply discarded: {refused}]"})
            if attempt == 0:
                written.append({"role": "user", "content": RETRY_NOTE.format(why=refused)})
        seq = upto + len(written)
        if refused is not None:
            out = PlanOutput(
                content="",
                proposals=[],
                finish_reason=choice.finish_reason or "stop",
                model=response.model,
                usage=usage,
                seq=seq,
                refused=refused,
            )
        else:
            out = PlanOutput(
                content=reply.content or "",
                proposals=proposals_from(reply),
                finish_reason=choice.finish_reason or "stop",
                model=response.model,
                usage=usage,
                seq=seq,
            )
        kept = (key, out.model_dump(mode="json")) if key and out.proposals else None
        assert pending is not None
        await self._keep(pending, lambda: transcripts.write_sync(workflow_id, upto, written, kept))
        return out

    async def _keep(self, record: dict[str, Any], then: Callable[[], None] = lambda: None) -> None:
        """Append a model.call record (activity_record's), then run `then` (the transcript's
        write, which follows it): one thread hop for both."""

        def both() -> AuditRecord:
            appended = self.runtime.audit.append_sync(**record)
            then()
            return appended

        await observe(self.runtime, [await asyncio.to_thread(both)])

    async def _fold(
        self,
        agent: AgentSpec,
        step: int,
        window: ContextWindow,
        previous: Fold | None,
        start: int,
        folded: list[dict[str, Any]],
        usage: Usage,
        base: int = 0,
    ) -> Fold:
        """Fold `folded` (the messages from seq `start`) into a new fold, summarized by the
        model when the agent says so; stored, so a retried activity or the next step reuses it.
        The summary call is audited as `model.summary` and its tokens count as the step's."""
        workflow_id = current_workflow_id()
        replies = sum(1 for m in folded if m.get("role") == "assistant")
        replies += previous.replies if previous else 0
        summary = None
        if window.summarize:
            sealer = sealer_for(self.runtime.settings)
            known: dict[str, Kind] = {}
            request = summary_request(
                sealer.unseal(previous.summary, known, strict=False) if previous else None,
                sealer.unseal(folded, known, strict=False),
                start,
            )
            response, prompt_hash = await self._complete(agent, request, [])
            if not response.choices:
                raise ApplicationError("the model returned no choices", type="ModelEmptyReply")
            choice = response.choices[0]
            raw = choice.message.content or ""
            summary = sealer.seal_known(raw, known)
            if response.usage:
                usage.prompt_tokens += response.usage.prompt_tokens
                usage.completion_tokens += response.usage.completion_tokens
            excerpt = summary[:AUDIT_EXCERPT_CHARS]
            if len(summary) > AUDIT_EXCERPT_CHARS:
                excerpt += f" [… {len(summary) - AUDIT_EXCERPT_CHARS} more characters]"
            await audit_from_activity(
                self.runtime,
                "model.summary",
                {
                    "agent": agent.name,
                    "step": step,
                    "model": response.model,
                    "covers": {"from_seq": start, "to_seq": start + len(folded)},
                    "replies": replies,
                    "prompt_hash": prompt_hash,
                    "usage": _usage(response),
                    "finish_reason": choice.finish_reason,
                    "summary": excerpt,
                    "summary_bytes": len(raw.encode()),
                    "summary_sha256": sha256_hex(raw),
                },
                actor=f"agent:{agent.name}",
                n=base,
            )
        fold = Fold(covers_seq=start + len(folded), replies=replies, summary=summary)
        await self.runtime.transcripts.write_fold(workflow_id, fold)
        return fold

    async def _complete(
        self, agent: AgentSpec, messages: list[dict[str, Any]], tools: list[dict[str, Any]]
    ) -> tuple[Any, str]:
        """The model's reply, and the sha256 of the request as sent."""
        try:
            async with heartbeating():
                # The request as the endpoint takes it, posted by the client itself (its
                # auth, retries off, errors, and the typed reply). `chat.completions.create`
                # first walks every message against the SDK's TypedDicts to rename keys no
                # message here has: ~0.2 ms per message, three quarters of the call's CPU
                # by step 100, and growing with the conversation.
                body: dict[str, Any] = {"model": agent.model, "messages": messages}
                if tools:
                    body["tools"] = tools
                # Serialized once: the bytes sent are the bytes the audit's prompt hash is of.
                sent = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
                response = await self._client().post(
                    "/chat/completions",
                    cast_to=ChatCompletion,
                    content=sent,
                    options={"security": {"bearer_auth": True}},
                )
                return response, hashlib.sha256(sent).hexdigest()
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


# Audit record numbers of a read-ahead step start at its place in the call times this (a
# reply has far fewer calls, and a reply is asked at most twice).
AHEAD_STRIDE = 1000
# The model call takes no more steps ahead once their results add up to this (JSON bytes).
AHEAD_MAX_BYTES = 256 * 1024


def _tokens(out: PlanOutput) -> int:
    return out.usage.prompt_tokens + out.usage.completion_tokens


def _json_bytes(out: PlanOutput) -> int:
    return len(out.model_dump_json().encode())


def _seconds_left() -> float:
    """What is left of this attempt's start-to-close timeout (infinite without one)."""
    info = activity.info()
    if info.start_to_close_timeout is None:
        return float("inf")
    deadline = info.started_time + info.start_to_close_timeout
    return (deadline - datetime.now(UTC)).total_seconds()
