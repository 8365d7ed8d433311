"""`countersign init NAME`: a project of your own that builds on Countersign.

It holds one guarded tool against a small system of record (a tickets API, served in its
tests by the tiny ASGI app it ships), one agent (an agents file), a policy folder with rules
and the cases they must decide, scripted-model scenarios, and tests that run all of it on a
real Temporal dev server with `countersign.testing`. Its pyproject.toml declares the plugin
(workers/plugins.py): installed, a Countersign worker finds its tool, agent, policy, the
people the policy names (its identity directory) and system with no change to Countersign.
"""

from __future__ import annotations

import keyword
import re
from pathlib import Path

_PROJECT_NAME = re.compile(r"^[a-z][a-z0-9]*([-_][a-z0-9]+)*$")


class ScaffoldError(Exception):
    """The project cannot be created; the message says why."""


def package_name(name: str) -> str:
    """The import name of project `name`: "acme-helpdesk" -> "acme_helpdesk"."""
    return name.replace("-", "_")


def init_project(name: str, parent: Path) -> Path:
    """Create project `name` in `parent`; return its folder. Refuses to overwrite."""
    if not _PROJECT_NAME.match(name) or keyword.iskeyword(package_name(name)):
        raise ScaffoldError(
            f"project name {name!r}: use lowercase letters, digits and dashes, starting with a "
            "letter (e.g. acme-helpdesk)"
        )
    pkg = package_name(name)
    if pkg in {"countersign", "agents", "activities", "guardrails", "workers", "demo"}:
        raise ScaffoldError(f"project name {name!r}: {pkg} is an import name Countersign uses")
    root = parent / name
    if root.exists():
        raise ScaffoldError(f"{root} already exists: choose another name or folder")
    for path, text in FILES.items():
        target = root / path.replace("{{pkg}}", pkg)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text.replace("{{pkg}}", pkg).replace("{{name}}", name))
    return root


FILES: dict[str, str] = {}

FILES["pyproject.toml"] = """\
[build-system]
requires = ["setuptools>=64"]
build-backend = "setuptools.build_meta"

[project]
name = "{{name}}"
version = "0.1.0"
description = "Guarded tools, an agent and a policy for Countersign"
requires-python = ">=3.11"
dependencies = ["countersign"]

[project.optional-dependencies]
dev = ["pytest>=8", "pytest-asyncio>=0.24"]

# The plugin a Countersign worker loads (COUNTERSIGN_PLUGINS={{pkg}} to load only this one).
[project.entry-points."countersign.tools"]
{{pkg}} = "{{pkg}}.tools"

[project.entry-points."countersign.agents"]
{{pkg}} = "{{pkg}}.plugin:AGENTS"

[project.entry-points."countersign.policies"]
{{pkg}} = "{{pkg}}.plugin:POLICY"

[project.entry-points."countersign.systems"]
{{pkg}} = "{{pkg}}.plugin:SYSTEMS"

[project.entry-points."countersign.directories"]
{{pkg}} = "{{pkg}}.plugin:DIRECTORY"

[tool.setuptools.packages.find]
where = ["src"]

[tool.setuptools.package-data]
{{pkg}} = ["agents.toml", "directory.toml", "policy/*"]

[tool.pytest.ini_options]
testpaths = ["tests"]
asyncio_mode = "auto"
asyncio_default_fixture_loop_scope = "session"
asyncio_default_test_loop_scope = "session"
timeout = 120
"""

FILES["README.md"] = """\
# {{name}}

Guarded tools, an agent and a policy that run on a Countersign worker.

- `src/{{pkg}}/tools.py`: the guarded tool `tickets.close` (add yours beside it).
- `src/{{pkg}}/agents.toml`: the agent `helpdesk` and the scopes it is granted.
- `src/{{pkg}}/policy/`: the rules (`*.cedar`), who approves (`policy.toml`) and the cases the
  rules must decide (`cases.toml`).
- `src/{{pkg}}/directory.toml`: the people the policy names (`lee`) and how to reach them;
  a person's key (`countersign identity init --as lee` prints it) goes here or into the
  deployment's directory file. `countersign dev` and the tests give whoever has none a
  development key.
- `src/{{pkg}}/plugin.py`: the agents file, policy folder, directory and system of record
  the plugin declares (`pyproject.toml` names them under `countersign.*` entry points).
- `src/{{pkg}}/tickets_system.py`: a tiny tickets API the tests serve; point
  `COUNTERSIGN_SYSTEMS__TICKETS__URL` at your real one.
- `tests/`: runs on a real Temporal dev server with the scripted model (`tests/scripts/`).

    pip install -e '.[dev]'
    make test                             # your tool, agent and rules, end to end
    COUNTERSIGN_PLUGINS={{pkg}} countersign policy test
    COUNTERSIGN_PLUGINS={{pkg}} countersign worker
"""

FILES["Makefile"] = """\
# The project's test command (the README's): your tool, agent and rules, end to end.
PYTHON ?= python3

.PHONY: test
test:
\t$(PYTHON) -m pytest -q -p no:cacheprovider
"""

FILES["src/{{pkg}}/__init__.py"] = '''\
"""{{name}}: guarded tools, an agent and a policy for Countersign."""
'''

FILES["src/{{pkg}}/plugin.py"] = '''\
"""What this plugin declares besides its tools (see the entry points in pyproject.toml)."""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).parent

# The agents file: one [[agent]] table per agent.
AGENTS = HERE / "agents.toml"
# The policy a worker enforces, unless COUNTERSIGN_POLICY_PATH names another folder.
POLICY = HERE / "policy"
# Who the policy names: joins the deployment's identity directory file.
DIRECTORY = HERE / "directory.toml"
# Systems of record the tools call: defaults, overridden by COUNTERSIGN_SYSTEMS__TICKETS__URL.
# The bearer token is the keyring entry `credential` (`countersign secrets set tickets`).
SYSTEMS = {"tickets": {"url": "http://127.0.0.1:8110", "credential": "tickets"}}
'''

FILES["src/{{pkg}}/tools.py"] = '''\
"""Guarded tools for the tickets system. Each is an activity the guard checks first: the
policy decides, people approve where a rule says so, and every call is audited."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from countersign import ToolContext, guarded_tool


class CloseArgs(BaseModel):
    ticket_id: str = Field(pattern=r"^T-\\d+$", description="Ticket id, e.g. T-101")
    resolution: str = Field(min_length=3, max_length=500)
    credit_cents: int = Field(ge=0, le=100_000, description="Goodwill credit in cents (0: none)")


class Closed(BaseModel):
    ticket_id: str
    status: Literal["closed"]
    credit_cents: int


@guarded_tool(
    "tickets.close",
    scope="tickets:write",
    risk="medium",
    system="tickets",
    business_key=lambda args: args.ticket_id,  # a ticket is closed once, however often asked
)
async def close_ticket(args: CloseArgs, ctx: ToolContext) -> Closed:
    """Close a ticket with its resolution and an optional goodwill credit (in cents)."""
    async with ctx.http() as tickets:
        r = await tickets.post(
            f"/tickets/{args.ticket_id}/close",
            json=args.model_dump(),
            headers=ctx.idempotency_headers(),
        )
    return Closed.model_validate(r.json())
'''

FILES["src/{{pkg}}/tickets_system.py"] = '''\
"""A tiny tickets API, the system of record the tests serve (replace it with your own).

Bearer-token protected; a close is done once per Idempotency-Key, as a real API's should be.
`closes` lists every close that happened: what the tests count.
"""

from __future__ import annotations

from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route


class TicketSystem:
    def __init__(self, token: str) -> None:
        self.token = token
        self.tickets: dict[str, dict[str, Any]] = {
            t: {"ticket_id": t, "status": "open"} for t in ("T-101", "T-102", "T-103")
        }
        self.closes: list[dict[str, Any]] = []
        self._done: dict[str, dict[str, Any]] = {}
        self.app = Starlette(
            routes=[Route("/tickets/{ticket_id}/close", self.close, methods=["POST"])]
        )

    async def close(self, request: Request) -> JSONResponse:
        if request.headers.get("authorization") != f"Bearer {self.token}":
            return JSONResponse({"error": "unauthorized"}, status_code=401)
        key = request.headers.get("idempotency-key", "")
        if key in self._done:
            return JSONResponse(self._done[key])
        ticket = self.tickets.get(request.path_params["ticket_id"])
        if ticket is None:
            return JSONResponse({"error": "no such ticket"}, status_code=404)
        body = await request.json()
        ticket["status"] = "closed"
        closed = {**ticket, "credit_cents": body["credit_cents"]}
        self.closes.append(closed)
        self._done[key] = closed
        return JSONResponse(closed)
'''

FILES["src/{{pkg}}/agents.toml"] = '''\
# Agents: what each may do (its scopes name tools) and what a run of it is about (subject).

[[agent]]
name = "helpdesk"
description = "Closes helpdesk tickets, with a goodwill credit where one is due."
scopes = ["tickets:write"]
subject = { ticket_id = "^T-\\\\d+$" }
system_prompt = """\\
You close helpdesk tickets. You act only through the tools you are given; every action is
checked by a guard and may wait for a person to countersign it. State your reason for every
action in one sentence. Money is in integer cents."""
'''

FILES["src/{{pkg}}/directory.toml"] = """\
# The people this plugin's policy names and how to reach them (the gateway emails approval
# links, Slack messages name Slack users). It joins the deployment's identity directory file:
# one name in both must be one identity (the same key), or the worker does not start.
#
# A key proves a person: lee runs `countersign identity init --as lee` and the printed
# `keys = [...]` line goes here or into the deployment's directory file. On a developer
# machine (`countersign dev`, the tests) whoever has no key here gets a development key.

[lee]
email = "lee@example.com"
"""

FILES["src/{{pkg}}/policy/policy.toml"] = """\
# Who approves, and who may change this policy. The rules are in *.cedar beside this file.
default_mode = "automate"
augment_groups = ["leads"]

[groups]
leads = ["lee"]

[authority]
rollback = ["leads"]
kill_switch = ["leads"]
policy = ["leads"]
"""

FILES["src/{{pkg}}/policy/tickets.cedar"] = """\
// Closing a ticket: with a credit up to 20.00 automatic, above that a lead countersigns.
// Only the run's own ticket can be closed.

@id("tickets.close_small_credit")
permit(principal, action == Action::"tickets.close", resource)
when { context.args.credit_cents <= 2000 };

@id("tickets.close_large_credit")
@approval_groups("leads")
@quorum("1")
@timeout_minutes("60")
permit(principal, action == Action::"tickets.close", resource)
when { context.args.credit_cents > 2000 };

@id("tickets.subject_binding")
@reason("only the run's own ticket can be closed")
forbid(principal, action == Action::"tickets.close", resource)
unless {
  context.run.subject has ticket_id && context.args.ticket_id == context.run.subject.ticket_id
};
"""

FILES["src/{{pkg}}/policy/cases.toml"] = """\
# What the rules must decide: `countersign policy test` (and the tests) check every case.

[[cases]]
name = "a close with a small credit is automatic"
agent = "helpdesk"
scopes = ["tickets:write"]
tool = { name = "tickets.close", scope = "tickets:write", read_only = false, risk = "medium" }
args = { ticket_id = "T-101", resolution = "replaced", credit_cents = 1500 }
subject = { ticket_id = "T-101" }
expect = "allow"
rule = "tickets.close_small_credit"

[[cases]]
name = "a close with a credit above 20.00 waits for a lead"
agent = "helpdesk"
scopes = ["tickets:write"]
tool = { name = "tickets.close", scope = "tickets:write", read_only = false, risk = "medium" }
args = { ticket_id = "T-102", resolution = "refunded", credit_cents = 5000 }
subject = { ticket_id = "T-102" }
expect = "needs_approval"
rule = "tickets.close_large_credit"

[[cases]]
name = "another ticket than the run's is never closed"
agent = "helpdesk"
scopes = ["tickets:write"]
tool = { name = "tickets.close", scope = "tickets:write", read_only = false, risk = "medium" }
args = { ticket_id = "T-101", resolution = "replaced", credit_cents = 0 }
subject = { ticket_id = "T-103" }
expect = "deny"
rule = "tickets.subject_binding"
"""

FILES["tests/scripts/close-small.json"] = """\
{
  "name": "close-small",
  "description": "Close the ticket the task names with a 15.00 credit.",
  "match": "(?i)close ticket (?P<ticket_id>T-\\\\d+) with a small credit",
  "turns": [
    {
      "say": "Closing ticket {ticket_id}.",
      "tool_calls": [
        {
          "name": "tickets.close",
          "arguments": {"ticket_id": "{ticket_id}", "resolution": "replaced", "credit_cents": 1500},
          "reason": "The customer's item was replaced; a small credit is due."
        }
      ]
    },
    {"say": "Closed ticket {ticket_id}."}
  ]
}
"""

FILES["tests/scripts/close-large.json"] = """\
{
  "name": "close-large",
  "description": "Close the ticket the task names with a 50.00 credit.",
  "match": "(?i)close ticket (?P<ticket_id>T-\\\\d+) with a large credit",
  "turns": [
    {
      "say": "Closing ticket {ticket_id}.",
      "tool_calls": [
        {
          "name": "tickets.close",
          "arguments": {"ticket_id": "{ticket_id}", "resolution": "refunded", "credit_cents": 5000},
          "reason": "The order never arrived; a larger credit is due."
        }
      ]
    },
    {"say": "Closed ticket {ticket_id}."}
  ]
}
"""

FILES["tests/conftest.py"] = '''\
"""Real parts, once per session: the Temporal dev server, the scripted model, the tickets
system, and a worker with this plugin per test (countersign.testing)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from countersign.testing import Stack, serve
from {{pkg}}.tickets_system import TicketSystem

SCRIPTS = Path(__file__).parent / "scripts"
TOKEN = "test-" + uuid.uuid4().hex


@pytest.fixture(scope="session")
def tickets() -> Iterator[tuple[TicketSystem, str]]:
    system = TicketSystem(TOKEN)
    with serve(system.app) as url:
        yield system, url


@pytest.fixture(scope="session")
async def stack(tickets: tuple[TicketSystem, str]) -> AsyncIterator[Stack]:
    _, url = tickets
    async with Stack(
        scripts=SCRIPTS,
        plugins=["{{pkg}}"],
        systems={"tickets": url},
        secrets={"tickets": TOKEN},
    ) as stack:
        yield stack
'''

FILES["tests/test_helpdesk.py"] = '''\
"""The helpdesk agent closes tickets through the guarded tool, as the policy says."""

from __future__ import annotations

from countersign.testing import Stack, actions, check_policy, executed
from {{pkg}}.tickets_system import TicketSystem


def closes(system: TicketSystem, ticket_id: str) -> int:
    return sum(1 for c in system.closes if c["ticket_id"] == ticket_id)


def test_the_policy_decides_every_case() -> None:
    assert check_policy(plugins=["{{pkg}}"]) == []


async def test_a_small_credit_closes_the_ticket_at_once(
    stack: Stack, tickets: tuple[TicketSystem, str]
) -> None:
    system, _ = tickets
    async with stack.worker():
        run = await stack.start_run(
            "helpdesk", "Close ticket T-101 with a small credit.", subject={"ticket_id": "T-101"}
        )
        result = await run.result()
    assert result.status == "completed"
    assert executed(result, "tickets.close") == 1
    assert actions(result, "tickets.close")[0].rule_ids == ["tickets.close_small_credit"]
    assert closes(system, "T-101") == 1
    assert any(r.kind == "verdict" for r in stack.audit(run.id))


async def test_a_large_credit_waits_for_a_lead(
    stack: Stack, tickets: tuple[TicketSystem, str]
) -> None:
    system, _ = tickets
    async with stack.worker():
        run = await stack.start_run(
            "helpdesk", "Close ticket T-102 with a large credit.", subject={"ticket_id": "T-102"}
        )
        (request,) = await stack.wait_for_approvals(run)
        assert request.tool == "tickets.close"
        assert closes(system, "T-102") == 0  # nothing happens while the request waits
        receipt = await stack.approve(run, request, "lee")
        assert receipt.status == "approved"
        result = await run.result()
    (close,) = actions(result, "tickets.close")
    assert (close.status, close.approved_by) == ("executed", ["lee"])
    assert closes(system, "T-102") == 1


async def test_another_ticket_than_the_runs_is_never_closed(
    stack: Stack, tickets: tuple[TicketSystem, str]
) -> None:
    system, _ = tickets
    before = closes(system, "T-101")
    async with stack.worker():
        run = await stack.start_run(
            "helpdesk", "Close ticket T-101 with a small credit.", subject={"ticket_id": "T-103"}
        )
        result = await run.result()
    (close,) = actions(result, "tickets.close")
    assert (close.status, close.rule_ids) == ("denied", ["tickets.subject_binding"])
    assert closes(system, "T-101") == before
'''
