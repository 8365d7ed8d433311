"""A plugin brings its own people: its policy's groups name them, its directory lists them
(keys, email), and `countersign dev` gives development keys to those who have none and has the
policy activated by one of them, with none of the demo's people (alice, bob, carol, erin).
A name in two directories with two keys, or a policy naming someone no directory lists, stops
the worker's start in one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path
from textwrap import dedent

from countersign.guardrails.identity import Signer, generate_private_key
from countersign.settings import Settings
from countersign.workers.devstack import free_port
from tests.conftest import dev_env
from tests.workers.test_plugins import one_line, worker

PLUGIN = "acme_desk"

TOOLS = '''
from pydantic import BaseModel, Field, PositiveInt

from countersign import ToolContext, guarded_tool


class GoodwillArgs(BaseModel):
    order_id: str = Field(pattern=r"^[A-Z]-\\d{4}$")
    amount_cents: PositiveInt = Field(le=100_000, description="Amount in cents")
    reason: str = Field(min_length=3, max_length=200)


class Refunded(BaseModel):
    refund_id: str
    order_id: str
    amount_cents: int


@guarded_tool(
    "desk.goodwill_refund",
    scope="desk:refund",
    risk="high",
    system="shop",
    business_key=lambda a: f"{a.order_id}:{a.amount_cents}",
)
async def goodwill_refund(args: GoodwillArgs, ctx: ToolContext) -> Refunded:
    """Refund part of an order as a goodwill gesture. Amount in cents."""
    async with ctx.http() as shop:
        r = await shop.post("/refunds", json=args.model_dump(), headers=ctx.idempotency_headers())
    return Refunded.model_validate(r.json())
'''

PLUGIN_MODULE = """
from pathlib import Path

from countersign import AgentSpec

HERE = Path(__file__).parent
AGENTS = [
    AgentSpec(
        name="desk",
        description="Makes goodwill refunds the desk countersigns.",
        system_prompt="You make goodwill refunds through your tool. Money is in cents.",
        scopes=["desk:refund"],
        subject={"order_id": r"^[A-Z]-\\d{4}$"},
    )
]
POLICY = HERE / "policy"
DIRECTORY = HERE / "directory.toml"
"""

POLICY_TOML = """
default_mode = "automate"
augment_groups = ["desk"]

[groups]
desk = {desk}
admins = ["quinn"]

[authority]
rollback = ["desk"]
kill_switch = ["admins"]
policy = ["admins"]
"""

RULES = """
@id("desk.goodwill_needs_the_desk")
@approval_groups("desk")
@quorum("1")
@timeout_minutes("30")
permit(principal, action == Action::"desk.goodwill_refund", resource)
when { context.args.amount_cents <= 5000 };

@id("desk.subject_binding")
@reason("only the run's own order")
forbid(principal, action == Action::"desk.goodwill_refund", resource)
unless {
  context.run.subject has order_id && context.args.order_id == context.run.subject.order_id
};
"""

SCRIPT = {
    "name": "goodwill",
    "description": "A goodwill refund of 15.00 on the order the task names.",
    "match": r"(?i)goodwill refund for order (?P<order_id>[A-Z]-\d{4})",
    "turns": [
        {
            "say": "Refunding {order_id}.",
            "tool_calls": [
                {
                    "name": "desk.goodwill_refund",
                    "arguments": {
                        "order_id": "{order_id}",
                        "amount_cents": 1500,
                        "reason": "late delivery",
                    },
                    "reason": "The delivery was late; a goodwill refund is due.",
                }
            ],
        },
        {"say": "Refunded {order_id}."},
    ],
}

ENTRY_POINTS = "".join(
    f"[countersign.{kind}]\n{PLUGIN} = {target}\n\n"
    for kind, target in (
        ("tools", f"{PLUGIN}.tools"),
        ("agents", f"{PLUGIN}.plugin:AGENTS"),
        ("policies", f"{PLUGIN}.plugin:POLICY"),
        ("directories", f"{PLUGIN}.plugin:DIRECTORY"),
    )
)


def build_plugin(root: Path, pat: Signer, desk: str = '["pat"]') -> Path:
    """An installed-looking plugin package on a path of its own: its tool, agent, policy and
    directory (pat with pat's own key; quinn, who may activate the policy, with no key), found
    through its entry points."""
    pkg = root / PLUGIN
    (pkg / "policy").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "tools.py").write_text(dedent(TOOLS))
    (pkg / "plugin.py").write_text(dedent(PLUGIN_MODULE))
    (pkg / "policy" / "policy.toml").write_text(POLICY_TOML.replace("{desk}", desk))
    (pkg / "policy" / "desk.cedar").write_text(RULES)
    (pkg / "directory.toml").write_text(
        f'{pat.directory_entry()}\nemail = "pat@acme.example"\n\n'
        '["quinn"]\nemail = "quinn@acme.example"\n'
    )
    info = root / f"{PLUGIN}-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-desk\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text(ENTRY_POINTS)
    return root


DRIVE = """
import asyncio, json, os, sys
from pathlib import Path

import httpx

from countersign.credentials import get_secret, set_secret
from countersign.settings import load_settings
from countersign.testing import approve, start_run, wait_for_approvals
from countersign.activities.stores import open_audit_store
from countersign.workers.devstack import start_dev_stack
from countersign.workers.worker import connect


async def main() -> None:
    settings = load_settings()
    stack = start_dev_stack(settings, scripts=Path(sys.argv[1]))
    try:
        # pat's own key, in pat's keyring (here the same one): the plugin's directory has it.
        set_secret("identity.pat", os.environ["ACME_PAT_KEY"])
        client = await connect(settings)
        run = await start_run(
            client, settings.task_queue, agent="desk", workflow_id="desk-1",
            task="Goodwill refund for order A-1007: late.", subject={"order_id": "A-1007"},
        )
        (request,) = await wait_for_approvals(run, seconds=60)
        receipt = await approve(run, request, "pat")
        result = await run.result()
        shop = settings.systems["shop"]
        refunds = httpx.get(
            f"{shop.url}/refunds", params={"order_id": "A-1007"},
            headers={"Authorization": f"Bearer {get_secret(shop.credential)}"},
        ).json()["refunds"]
        audit = open_audit_store(settings)
        activations = [r.actor for r in audit.for_run("policy") if r.kind == "policy.activated"]
        audit.close()
        print(json.dumps({
            "receipt": receipt.status,
            "status": result.status,
            "actions": [[a.tool, a.status, a.approved_by] for a in result.actions],
            "refunds": [r["amount_cents"] for r in refunds],
            "activated_by": activations,
        }))
    finally:
        stack.stop()


asyncio.run(main())
"""


def test_a_plugins_policy_with_its_own_people_runs_on_the_dev_stack(tmp_path: Path) -> None:
    pat_key = generate_private_key()
    modules = build_plugin(tmp_path / "site", Signer("pat", pat_key))
    scripts = tmp_path / "scripts"
    scripts.mkdir()
    (scripts / "goodwill.json").write_text(json.dumps(SCRIPT))
    (tmp_path / "drive.py").write_text(DRIVE)
    state = tmp_path / "state"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("COUNTERSIGN_")},
        "PYTHONPATH": str(modules),
        "ACME_PAT_KEY": pat_key,
        "COUNTERSIGN_PLUGINS": PLUGIN,
        **dev_env(state),
    }
    done = subprocess.run(
        [sys.executable, str(tmp_path / "drive.py"), str(scripts)],
        env=env,
        capture_output=True,
        text=True,
        timeout=170,
        check=False,
    )
    logs = "".join(
        f"\n--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted((state / "logs").glob("*.log"))
    )
    assert done.returncode == 0, done.stderr + logs
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    # The policy was activated by its own admin, with a development key; pat approved with
    # pat's own key; the refund happened once in the shop.
    assert seen["activated_by"] == ["operator:quinn"]
    assert seen["receipt"] == "approved"
    assert seen["status"] == "completed"
    assert seen["actions"] == [["desk.goodwill_refund", "executed", ["pat"]]]
    assert seen["refunds"] == [1500]
    # Development keys went to the policy's people who had none (and the requester, the
    # gateway), never to the demo's people; pat keeps the plugin's key.
    written = tomllib.loads((state / "directory.toml").read_text())
    assert sorted(written) == ["dev", "gateway", "quinn"]
    assert "email" not in written["quinn"]  # the plugin's entry says how to reach quinn


def test_one_name_with_two_keys_stops_the_worker_in_one_line(
    settings: Settings, tmp_path: Path
) -> None:
    plugin_pat = Signer("pat", generate_private_key())
    modules = build_plugin(tmp_path / "site", plugin_pat)
    other_pat = Signer("pat", generate_private_key())
    directory = tmp_path / "directory.toml"
    directory.write_text(other_pat.directory_entry() + "\n")
    done = worker(
        settings,
        modules,
        COUNTERSIGN_PLUGINS=PLUGIN,
        COUNTERSIGN_DIRECTORY_PATH=str(directory),
    )
    assert one_line(done) == (
        f"identity directory: [pat] has keys {other_pat.key_id} in {directory} but "
        f"{plugin_pat.key_id} in {modules / PLUGIN / 'directory.toml'}: one name, two "
        "identities; remove or correct one entry"
    )


def test_a_policy_naming_someone_no_directory_lists_stops_the_worker_in_one_line(
    settings: Settings, tmp_path: Path
) -> None:
    modules = build_plugin(
        tmp_path / "site", Signer("pat", generate_private_key()), desk='["pat", "ursula"]'
    )
    (tmp_path / "empty.toml").write_text("")
    done = worker(
        settings,
        modules,
        COUNTERSIGN_PLUGINS=PLUGIN,
        COUNTERSIGN_DIRECTORY_PATH=str(tmp_path / "empty.toml"),
    )
    assert one_line(done) == (
        f"{modules / PLUGIN / 'policy' / 'policy.toml'}: group 'desk' names ursula, who is not "
        "in the identity directory (add them: `countersign identity init --as NAME` prints the "
        "entry, or a plugin's directory lists them)"
    )


def test_dev_with_a_policy_no_one_may_activate_says_so_in_one_line(tmp_path: Path) -> None:
    modules = build_plugin(tmp_path / "site", Signer("pat", generate_private_key()))
    policy = modules / PLUGIN / "policy" / "policy.toml"
    policy.write_text(policy.read_text().replace('policy = ["admins"]\n', ""))
    done = subprocess.run(
        [sys.executable, "-m", "countersign.workers", "dev"],
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("COUNTERSIGN_")},
            "PYTHONPATH": str(modules),
            "COUNTERSIGN_PLUGINS": PLUGIN,
            "COUNTERSIGN_STATE_DIR": str(tmp_path / "state"),
            "COUNTERSIGN_TEMPORAL_ADDRESS": f"127.0.0.1:{free_port()}",
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr == (
        f"countersign: {policy}: [authority] policy names no group, so no one may activate "
        'this policy: add policy = ["GROUP"] under [authority]\n'
    )


def test_the_gateway_reads_a_plugins_directory_without_importing_its_tools(
    tmp_path: Path,
) -> None:
    modules = build_plugin(tmp_path / "site", Signer("pat", generate_private_key()))
    probe = (
        "import sys; from countersign.settings import Settings; "
        "from countersign.workers.plugins import directories_only; "
        f"s = directories_only(Settings(plugins=[{PLUGIN!r}])); "
        "print([str(p) for p in s.extra_directories], "
        f"'{PLUGIN}.tools' in sys.modules, 'langgraph' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe],
        env={**os.environ, "PYTHONPATH": str(modules)},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert done.stdout.strip() == f"['{modules / PLUGIN / 'directory.toml'}'] False False"
