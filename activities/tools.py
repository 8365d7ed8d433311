"""Guarded tools: the only way an agent touches the world.

A developer declares what a tool is; the runtime does the rest:

    @guarded_tool("payments.refund", scope="payments:refund", risk="high",
                  compensate=Undo("payments.reverse_refund",
                                  lambda args, result: {"refund_id": result.refund_id}),
                  business_key=lambda a: a.order_id)
    async def refund(args: RefundArgs, ctx: ToolContext) -> RefundResult:
        '''Refund part or all of an order's captured payment.'''
        async with ctx.http("shop") as shop:
            r = await shop.post("/refunds", json=args.model_dump(),
                                headers=ctx.idempotency_headers())
        return RefundResult.model_validate(r.json())

The decorator registers the tool; the worker turns every registered tool into a Temporal
activity (named like the tool) that validates arguments, checks that the exact action was
authorized (an allow verdict or a granted approval in the audit trail), checks the kill switch,
derives the idempotency key, classifies HTTP failures as retryable or not, and audits the
action.
"""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin, get_type_hints

import httpx
from pydantic import BaseModel, ValidationError
from temporalio import activity
from temporalio.exceptions import ApplicationError

from countersign.activities.agent_specs import subject_fields
from countersign.activities.contracts import (
    RECONCILE,
    Compensation,
    Reconciliation,
    ToolCall,
    ToolOutcome,
)
from countersign.activities.failures import cause_of
from countersign.activities.http import BearerFromKeyring
from countersign.activities.runtime import (
    Runtime,
    audit_from_activity,
    current_workflow_id,
    heartbeating,
)
from countersign.activities.sealing import Sealer, SealError, scrub, seal_fields, sealer_for
from countersign.guardrails.approvals import ChangeBound, need_met
from countersign.guardrails.cedar_schema import PolicySurface, ToolSchema
from countersign.guardrails.errors import describe
from countersign.guardrails.policy import (
    ApprovalNeed,
    ToolFacts,
    Verdict,
    action_hash,
    sha256_hex,
)
from countersign.guardrails.redaction import Kind
from countersign.guardrails.redaction import (
    Personal as Personal,  # for tool authors: mark fields by type
)
from countersign.guardrails.redaction import Secret as Secret

Risk = Literal["low", "medium", "high"]
_NAME = re.compile(r"^[a-z][a-z0-9_]*\.[a-z][a-z0-9_]*$")
_SCOPE = re.compile(r"^[a-z][a-z0-9_]*:[a-z][a-z0-9_]*$")


class ToolDeclarationError(Exception):
    """A tool is declared wrongly. Raised at import or worker start, never mid-run."""


@dataclass
class ToolContext:
    """What a tool function gets besides its arguments."""

    call: ToolCall
    idempotency_key: str
    runtime: Runtime
    # The system of record the tool declared (`guarded_tool(system=...)`): ctx.http()'s default.
    system: str | None = None

    def idempotency_headers(self) -> dict[str, str]:
        return {"Idempotency-Key": self.idempotency_key}

    def http(self, system: str | None = None) -> AbstractAsyncContextManager[httpx.AsyncClient]:
        """The declared system's client (see system_http), or another configured one's."""
        system = system or self.system
        if system is None:
            raise ApplicationError(
                f"{self.call.tool}: name the system (ctx.http('shop')) or declare "
                "guarded_tool(system=...)",
                type="ToolMisconfigured",
                non_retryable=True,
            )
        return system_http(self.runtime, system)


@asynccontextmanager
async def system_http(runtime: Runtime, system: str) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client for a configured system: base URL, bearer token from keyring, timeouts.
    Pooled and shared by every tool call and fact on this worker (see activities.http).

    No transport retries: Temporal owns retries, with back-off, bounded per tool call.
    Responses >= 400 raise, so a tool cannot forget to check.
    """
    systems = runtime.settings.systems
    if system not in systems:
        raise ApplicationError(
            f"no system {system!r} configured (known: {sorted(systems)}); "
            f"set COUNTERSIGN_SYSTEMS__{system.upper()}__URL and __CREDENTIAL",
            type="ToolMisconfigured",
            non_retryable=True,
        )
    conf = systems[system]
    yield runtime.http.get(
        f"system:{system}",
        lambda: httpx.AsyncClient(
            base_url=conf.url,
            auth=BearerFromKeyring(conf.credential),
            timeout=conf.timeout_seconds,
            event_hooks={"response": [_raise_for_status]},
        ),
    )


async def _raise_for_status(response: httpx.Response) -> None:
    if response.is_error:
        await response.aread()
        response.raise_for_status()


ToolFunction = Callable[[Any, ToolContext], Awaitable[BaseModel]]
# Finds the action a call with this context's idempotency key made, or None if it made none.
ReconcileFunction = Callable[[Any, ToolContext], Awaitable[BaseModel | None]]


@dataclass(frozen=True)
class Undo:
    """How to undo a tool's action: the compensating tool, and its arguments computed from the
    action's arguments and result (e.g. the refund id to reverse, the before-image to restore)."""

    tool: str
    arguments: Callable[[Any, Any], dict[str, Any]]


@dataclass(frozen=True)
class ToolSpec:
    name: str
    scope: str
    risk: Risk
    read_only: bool
    compensate: Undo | None
    description: str
    args_model: type[BaseModel]
    result_model: type[BaseModel]
    fn: ToolFunction
    business_key: Callable[[Any], str] | None = field(default=None, compare=False)
    reconcile: ReconcileFunction | None = field(default=None, compare=False)
    system: str | None = None
    # Arguments an approver may change when approving, and how (guardrails.approvals).
    approver_may_change: Mapping[str, ChangeBound] = field(default_factory=dict)

    @property
    def facts(self) -> ToolFacts:
        return ToolFacts(
            name=self.name,
            scope=self.scope,
            read_only=self.read_only,
            risk=self.risk,
            compensate=self.compensate.tool if self.compensate else None,
        )

    @property
    def schema(self) -> ToolSchema:
        return ToolSchema(
            name=self.name,
            args_schema=self.args_model.model_json_schema(),
        )

    def model_schema(self) -> dict[str, Any]:
        """The function schema the model sees (OpenAI tool format), with this call's own
        reason as one more property (taken out again before the arguments are validated)."""
        parameters = _closed(self.args_model.model_json_schema())
        parameters.setdefault("properties", {})[CALL_REASON] = {
            "type": "string",
            "description": "Why you make this call, in one or two sentences (shown to the "
            "people who approve it, as your claim). Not passed to the tool.",
        }
        return {
            "type": "function",
            "function": {
                "name": model_tool_name(self.name),
                "description": self.description,
                "parameters": parameters,
            },
        }

    def idempotency_key(self, workflow_id: str, args: BaseModel) -> str:
        """Derived from the business key (default: the arguments), per run."""
        key = self.business_key(args) if self.business_key else args.model_dump(mode="json")
        return "ck_" + sha256_hex({"run": workflow_id, "tool": self.name, "key": key})[:32]


def _closed(schema: Any) -> Any:
    """The schema with every object closed (`additionalProperties: false`): the model is told
    what validate_arguments enforces, that unknown fields are refused."""
    if isinstance(schema, dict):
        closed = {k: _closed(v) for k, v in schema.items()}
        if closed.get("type") == "object" and "properties" in closed:
            closed.setdefault("additionalProperties", False)
        return closed
    if isinstance(schema, list):
        return [_closed(v) for v in schema]
    return schema


REGISTRY: dict[str, ToolSpec] = {}
# The per-call reason the model gives with every tool call (see ToolSpec.model_schema).
CALL_REASON = "call_reason"


def model_tool_name(name: str) -> str:
    # OpenAI function names allow [a-zA-Z0-9_-]: "payments.refund" is offered as "payments__refund".
    return name.replace(".", "__")


def lookup_tool(name: str) -> ToolSpec | None:
    """A registered tool by its name or by the name the model saw."""
    return REGISTRY.get(name) or REGISTRY.get(name.replace("__", "."))


def guarded_tool(
    name: str,
    *,
    scope: str,
    risk: Risk = "low",
    read_only: bool = False,
    compensate: Undo | None = None,
    business_key: Callable[[Any], str] | None = None,
    reconcile: ReconcileFunction | None = None,
    system: str | None = None,
    approver_may_change: Mapping[str, ChangeBound] | None = None,
) -> Callable[[ToolFunction], ToolFunction]:
    """Register an async function `(args: ArgsModel, ctx: ToolContext) -> ResultModel`.

    `system`: the system of record it calls (a key of COUNTERSIGN_SYSTEMS); the worker checks
    at start that it is configured and its credential is in the keyring, and `ctx.http()`
    uses it.

    The policy decides on facts the guard fetches itself (activities/facts.py), never on what
    the tool returned to the model.

    `reconcile` (side effects): `async (args, ctx) -> ResultModel | None`, how to ask the
    system of record whether the action under `ctx.idempotency_key` happened. When the
    tool's activity fails without a definite answer, the run asks before deciding the action
    failed; a tool without one leaves such an action's outcome unknown.

    `approver_may_change`: arguments an approver may change when approving, and how, e.g.
    `{"amount_cents": "decrease"}` (lowered, never raised). The changed action is decided
    again by the guard before it runs.
    """
    if not _NAME.match(name):
        raise ToolDeclarationError(f"tool name {name!r} must look like 'system.action'")
    if reconcile is not None and (read_only or not inspect.iscoroutinefunction(reconcile)):
        raise ToolDeclarationError(
            f"tool {name}: reconcile= must be an async function, on a side-effecting tool"
        )
    if not _SCOPE.match(scope):
        raise ToolDeclarationError(f"tool {name}: scope {scope!r} must look like 'area:verb'")

    def register(fn: ToolFunction) -> ToolFunction:
        where = f"tool {name} ({fn.__module__}.{fn.__qualname__})"
        if not inspect.iscoroutinefunction(fn):
            raise ToolDeclarationError(f"{where} must be an async function")
        hints = get_type_hints(fn)
        params = list(inspect.signature(fn).parameters)
        args_model = hints.get(params[0]) if params else None
        result_model = hints.get("return")
        if len(params) != 2 or not _is_model(args_model) or not _is_model(result_model):
            raise ToolDeclarationError(
                f"{where} must be declared as "
                "`async def f(args: ArgsModel, ctx: ToolContext) -> ResultModel` "
                "with pydantic models"
            )
        if not fn.__doc__:
            raise ToolDeclarationError(f"{where} needs a docstring: the model reads it")
        if name in REGISTRY and REGISTRY[name].fn is not fn:
            first = REGISTRY[name].fn
            raise ToolDeclarationError(
                f"{where}: a tool named {name} is already registered "
                f"({first.__module__}.{first.__qualname__})"
            )
        assert args_model is not None  # checked by _is_model above
        if CALL_REASON in args_model.model_fields:
            raise ToolDeclarationError(f"{where}: the argument name {CALL_REASON!r} is reserved")
        changeable = dict(approver_may_change or {})
        _check_changeable(where, changeable, args_model, read_only)
        REGISTRY[name] = ToolSpec(
            name=name,
            scope=scope,
            risk=risk,
            read_only=read_only,
            compensate=compensate,
            description=inspect.cleandoc(fn.__doc__),
            args_model=args_model,  # type: ignore[arg-type]
            result_model=result_model,  # type: ignore[arg-type]
            fn=fn,
            business_key=business_key,
            reconcile=reconcile,
            system=system,
            approver_may_change=changeable,
        )
        return fn

    return register


def _check_changeable(
    where: str, changeable: dict[str, ChangeBound], args_model: type[BaseModel], read_only: bool
) -> None:
    """An approver can only lower a whole-number argument the model has, of a side effect."""
    if changeable and read_only:
        raise ToolDeclarationError(f"{where}: approver_may_change= is for side effects")
    properties = args_model.model_json_schema().get("properties", {})
    for arg, bound in changeable.items():
        if bound not in get_args(ChangeBound):
            raise ToolDeclarationError(
                f"{where}: approver_may_change[{arg!r}] = {bound!r}; accepted: "
                f"{', '.join(get_args(ChangeBound))}"
            )
        if properties.get(arg, {}).get("type") != "integer":
            raise ToolDeclarationError(
                f"{where}: approver_may_change names {arg!r}, which is not an integer "
                f"argument of {args_model.__name__}"
            )


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def validate_registry() -> None:
    """Fail the worker's start, loudly, on declarations that would break runs later: unknown
    compensating tools, and business keys or compensations that read a field their model
    does not have (evaluated on a sample of the argument and result models)."""
    for spec in REGISTRY.values():
        undo = spec.compensate
        if undo is not None and undo.tool not in REGISTRY:
            raise ToolDeclarationError(
                f"tool {spec.name} names compensating tool {undo.tool!r}, which is not registered"
            )
        if spec.read_only and undo:
            raise ToolDeclarationError(f"tool {spec.name} is read-only and needs no compensation")
        args, result = sample(spec.args_model), sample(spec.result_model)
        if spec.business_key is not None:
            _evaluate(f"tool {spec.name}: business_key", spec.business_key, args)
        if undo is not None:
            produced = _evaluate(f"tool {spec.name}: compensate", undo.arguments, args, result)
            _check_compensation_arguments(spec.name, undo.tool, produced)


def sample(model: type[BaseModel]) -> BaseModel:
    """An instance with a placeholder in every field (nested models too), unvalidated: enough
    to evaluate a declaration's lambda and see which fields it reads."""
    return model.model_construct(
        **{name: _placeholder(f.annotation) for name, f in model.model_fields.items()}
    )


def _placeholder(tp: Any) -> Any:
    if _is_model(tp):
        return sample(tp)
    origin = get_origin(tp)
    if origin in (Union, UnionType):  # X | None: a placeholder of X, so x.field can be read
        options = [a for a in get_args(tp) if a is not type(None)]
        return _placeholder(options[0]) if options else None
    if origin is Annotated:
        return _placeholder(get_args(tp)[0])
    if origin is Literal:
        return get_args(tp)[0]
    base = origin or tp
    if isinstance(base, type):
        for kind, value in ((bool, True), (int, 1), (float, 1.0), (str, "x")):
            if issubclass(base, kind):
                return value
        if issubclass(base, (list, tuple, set, dict)):
            return base()
    return None


def _evaluate(where: str, fn: Callable[..., Any], *models: BaseModel) -> Any:
    try:
        return fn(*models)
    except AttributeError as e:
        # Reading a field a model does not have: a typo that would fail every call. (Not an
        # attribute of a placeholder value, which a real value may well have.)
        if any(f"'{type(m).__name__}' object has no attribute" in str(e) for m in models):
            raise ToolDeclarationError(f"{where} reads a field that does not exist: {e}") from None
        return None
    except Exception:
        return None  # placeholder values cannot satisfy every expression; only typos count here


def _check_compensation_arguments(tool: str, undo_tool: str, produced: Any) -> None:
    if not isinstance(produced, dict):
        return
    model = REGISTRY[undo_tool].args_model
    unknown = sorted(set(produced) - set(model.model_fields))
    missing = sorted(
        name for name, f in model.model_fields.items() if f.is_required() and name not in produced
    )
    if unknown or missing:
        problem = "; ".join(
            [f"unknown argument(s) {', '.join(unknown)}"] * bool(unknown)
            + [f"missing required {', '.join(missing)}"] * bool(missing)
        )
        raise ToolDeclarationError(
            f"tool {tool}: compensate gives {undo_tool} {problem} "
            f"(its arguments: {', '.join(model.model_fields)})"
        )


def validate_arguments(spec: ToolSpec, arguments: dict[str, Any]) -> BaseModel:
    """The model's arguments, validated strictly, whatever the tool's model declares: no
    coercion (`true`, `"4000"` and `39.0` are not integers), no unknown fields (refused, not
    dropped), and the bounds the model declares. Raises ValidationError naming the field."""
    return spec.args_model.model_validate_json(
        json.dumps(arguments, allow_nan=False), strict=True, extra="forbid"
    )


def tool_schemas() -> PolicySurface:
    """What policies are type-checked against: the registered tools, the facts the guard
    fetches, and the subject fields agents declare."""
    from countersign.activities.facts import FACTS  # the fact module imports this one

    return PolicySurface(
        tools=[spec.schema for spec in REGISTRY.values()],
        facts=[f.schema for f in FACTS.values()],
        subject=subject_fields(),
    )


def tool_activities(runtime: Runtime) -> list[Callable[[ToolCall], Awaitable[ToolOutcome]]]:
    """One Temporal activity per registered tool, bound to the worker's runtime."""
    return [_activity_for(spec, runtime) for spec in REGISTRY.values()]


@dataclass
class _Call:
    """One call of a tool inside its activity: clear arguments, idempotency key, and the
    sealed values seen (`known`), to seal them again in results and scrub them from errors."""

    spec: ToolSpec
    args: BaseModel
    ctx: ToolContext
    sealer: Sealer
    known: dict[str, Kind]

    @classmethod
    def parse(cls, spec: ToolSpec, call: ToolCall, runtime: Runtime) -> _Call:
        # Sealed secret and personal values are clear only in here (activities/sealing.py).
        sealer = sealer_for(runtime.settings)
        known: dict[str, Kind] = {}
        try:
            args = validate_arguments(spec, sealer.unseal(call.arguments, known))
        except (ValidationError, SealError, ValueError) as e:
            why = describe(e, "(arguments)") if isinstance(e, ValidationError) else str(e)
            raise ApplicationError(
                f"{spec.name}: invalid arguments: {why}",
                type="InvalidToolArguments",
                non_retryable=True,
            ) from None
        key = spec.idempotency_key(current_workflow_id(), args)
        ctx = ToolContext(call=call, idempotency_key=key, runtime=runtime, system=spec.system)
        return cls(spec, args, ctx, sealer, known)

    @property
    def base(self) -> dict[str, Any]:
        """What every audit record about this action carries."""
        call = self.ctx.call
        return {
            "tool": self.spec.name,
            "call_id": call.call_id,
            "action_hash": call.action_hash,
            "idempotency_key": self.ctx.idempotency_key,
            "arguments": call.arguments,
        }

    def error(self, e: Exception, what: str) -> ApplicationError:
        """The HTTP or transport failure as Temporal should see it, clear values scrubbed."""
        if isinstance(e, httpx.HTTPStatusError):
            return _classify(what, e, self.known)
        if isinstance(e, httpx.TransportError):
            return ApplicationError(
                f"{what}: system unreachable: {scrub(repr(e), self.known)}",
                type="SystemUnavailable",
            )
        assert isinstance(e, ApplicationError)
        return ApplicationError(
            scrub(e.message, self.known), type=e.type, non_retryable=e.non_retryable
        )

    async def done(self, result: BaseModel, n: int = 0, **extra: Any) -> ToolOutcome:
        """Audit what the action did and hand back its outcome (with how to undo it)."""
        spec, sealer, known = self.spec, self.sealer, self.known
        payload = sealer.seal_known(sealer.seal_model(result), known)
        undo = spec.compensate
        compensation = None
        if undo:
            undo_args = undo.arguments(self.args, result)
            undo_spec = REGISTRY.get(undo.tool)
            if undo_spec is not None:
                undo_args = seal_fields(sealer, undo_args, undo_spec.args_model)
            compensation = Compensation(
                tool=undo.tool, arguments=sealer.seal_known(undo_args, known)
            )
        await audit_from_activity(
            self.ctx.runtime,
            "action.read" if spec.read_only else "action.executed",
            {
                **self.base,
                "result": payload,
                "compensation": compensation.model_dump() if compensation else None,
                **extra,
            },
            n=n,
        )
        return ToolOutcome(
            tool=spec.name,
            call_id=self.ctx.call.call_id,
            idempotency_key=self.ctx.idempotency_key,
            result=payload,
            compensation=compensation,
        )


async def execute_tool(
    spec: ToolSpec,
    call: ToolCall,
    runtime: Runtime,
    n: int = 0,
    decided_here: Verdict | None = None,
) -> ToolOutcome:
    """Execute one authorized call from inside the running activity: the tool's own activity,
    or the model call running an allowed read of its reply (activities/model.py). `n` keys its
    audit records apart from other calls the same activity executes.

    `decided_here`: the allow verdict the guard's own code just decided and audited in this
    same activity attempt (the model call's reads). It is the authority itself, not a copy
    that came through Temporal, so the audit trail is not read back for it."""
    this = _Call.parse(spec, call, runtime)
    run = current_workflow_id()
    if decided_here is None:
        await _check_authorized(spec, call, runtime, run)
    elif not (
        spec.read_only
        and decided_here.outcome == "allow"
        and decided_here.action_hash == call.action_hash
        and call.action_hash == action_hash(run, call.call_id, spec.name, call.arguments)
    ):
        raise _not_authorized(spec, call, "it is not the read its guard verdict allowed")
    try:
        async with heartbeating():
            result = await spec.fn(this.args, this.ctx)
    except (httpx.HTTPStatusError, httpx.TransportError, ApplicationError) as e:
        error = this.error(e, spec.name)
        # A read that fails in the model call is run again as the workflow's local activity,
        # which records how it ended: one failure, one record.
        if error.non_retryable and decided_here is None:
            cause = cause_of(error).model_dump()
            await audit_from_activity(
                runtime,
                "action.failed",
                {**this.base, "error": str(error), "cause": cause},
                n=n,
            )
        raise error from None  # the cause's text may echo a clear value
    return await this.done(result, n=n)


def _activity_for(spec: ToolSpec, runtime: Runtime) -> Callable[[ToolCall], Awaitable[ToolOutcome]]:
    async def run_tool(call: ToolCall) -> ToolOutcome:
        return await execute_tool(spec, call, runtime)

    run_tool.__doc__ = spec.description
    return activity.defn(name=spec.name)(run_tool)


def reconcile_activity(runtime: Runtime) -> Callable[[ToolCall], Awaitable[Reconciliation]]:
    """The activity that asks a tool's system of record what became of an action."""

    @activity.defn(name=RECONCILE)
    async def reconcile(call: ToolCall) -> Reconciliation:
        spec = lookup_tool(call.tool)
        if spec is None or spec.reconcile is None:
            return Reconciliation(
                status="unknown",
                detail=f"{call.tool} declares no way to look an action up by its idempotency key",
            )
        this = _Call.parse(spec, call, runtime)
        try:
            async with heartbeating():
                found = await spec.reconcile(this.args, this.ctx)
        except (httpx.HTTPStatusError, httpx.TransportError, ApplicationError) as e:
            raise this.error(e, f"{spec.name} (reconcile)") from None
        key = this.ctx.idempotency_key
        if found is None:
            return Reconciliation(
                status="not_executed", detail=f"the system of record has no action under {key}"
            )
        outcome = await this.done(found, reconciled=True)
        return Reconciliation(
            status="executed",
            outcome=outcome,
            detail=f"the system of record holds the action under {key}",
        )

    return reconcile


async def _check_authorized(spec: ToolSpec, call: ToolCall, runtime: Runtime, run: str) -> None:
    """The activity is the boundary: it follows the guard's own audited verdict for this very
    action, never the run's copy (a verdict in workflow state could be a forged activity
    result: anyone who can reach Temporal can complete the model call)."""
    if not spec.read_only and (await runtime.kill_switch_now()).stops(spec.name, call.agent):
        # Its own record: an approved action stopped at the door, not a failure of the tool.
        await audit_from_activity(
            runtime,
            "action.blocked",
            {
                "tool": spec.name,
                "call_id": call.call_id,
                "action_hash": call.action_hash,
                "reason": "kill_switch",
            },
        )
        raise ApplicationError(
            f"{spec.name} is switched off by the kill switch; the action was not executed",
            type="KillSwitch",
            non_retryable=True,
        )
    # The hash must be of these very arguments: an allow (or an approval) of one action never
    # lets other arguments through under its hash (whoever produced the call).
    if call.action_hash != action_hash(run, call.call_id, spec.name, call.arguments):
        raise _not_authorized(spec, call, "it is not the hash of this call's arguments")
    if await runtime.audit_find(run, "verdict", action_hash=call.action_hash, outcome="allow"):
        return
    if spec.read_only:
        raise _not_authorized(spec, call, "the guard's allow verdict for it is not in the audit")
    # Approved: by people who meet the rule the guard itself recorded for this action.
    needs = await runtime.audit_find(
        run, "verdict", action_hash=call.action_hash, outcome="needs_approval"
    )
    granted = await runtime.audit_find(run, "approval.granted", action_hash=call.action_hash)
    if not (needs and granted):
        raise _not_authorized(
            spec, call, "it has neither an allow verdict nor a granted approval in the audit trail"
        )
    need = ApprovalNeed.model_validate(needs[-1].data["approval"])
    requester = await _verified_requester(runtime, run)
    if not any(need_met(need, g.data.get("approvers", []), requester) for g in granted):
        raise _not_authorized(
            spec, call, f"its approvers do not meet the guard's rule {need.rule_id}"
        )


async def _verified_requester(runtime: Runtime, run: str) -> str | None:
    """The requester the run's signed start proved (its audited start record), or None."""
    started = await runtime.audit_find(run, "run.started")
    data = started[0].data if started else {}
    return data.get("requested_by") if (data.get("requester") or {}).get("verified") else None


def _not_authorized(spec: ToolSpec, call: ToolCall, why: str) -> ApplicationError:
    return ApplicationError(
        f"{spec.name}: refusing to execute action {call.action_hash}: {why}",
        type="ActionNotAuthorized",
        non_retryable=True,
    )


def _classify(tool: str, e: httpx.HTTPStatusError, known: dict[str, Kind]) -> ApplicationError:
    status = e.response.status_code
    try:
        body = e.response.json()
        detail = body.get("detail") or body.get("error") or e.response.text
    except ValueError:
        detail = e.response.text[:500]
    # A system may echo the value it refused: never let a secret or personal one through.
    detail = scrub(str(detail), known)
    message = f"{tool}: {e.request.method} {e.request.url.path} answered {status}: {detail}"
    # 408/429 and 5xx are worth retrying; any other 4xx will fail the same way every time.
    retryable = status in (408, 429) or status >= 500
    return ApplicationError(
        message,
        {"status": status, "detail": detail},
        type="SystemUnavailable" if retryable else "ToolRejected",
        non_retryable=not retryable,
    )
