"""The ops and approver story through the real CLI, against `countersign dev` on free ports."""

from __future__ import annotations

import email
import email.policy
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from countersign.workers.devstack import free_port, port_of, port_open
from tests.conftest import dev_env


def countersign(
    env: dict[str, str], *args: str, timeout: float = 60, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "countersign.workers", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        input=input,
    )


@pytest.fixture(scope="module")
def dev_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    state = tmp_path_factory.mktemp("dev-stack")
    env = dev_env(state)
    log = (state / "dev.out").open("w")
    dev = subprocess.Popen(
        [sys.executable, "-m", "countersign.workers", "dev"],
        env={**os.environ, **env},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    out = Path(log.name)
    deadline = time.monotonic() + 90
    while "Ctrl-C stops the stack" not in out.read_text():
        assert dev.poll() is None, out.read_text()
        assert time.monotonic() < deadline, out.read_text()
        time.sleep(0.2)
    banner = out.read_text()
    assert f"Approval gateway {env['COUNTERSIGN_GATEWAY_URL']}" in banner
    assert f"smtp://127.0.0.1:{env['COUNTERSIGN_MAIL_CATCHER_PORT']}" in banner
    yield env
    dev.send_signal(signal.SIGINT)
    assert dev.wait(30) == 130
    # Ctrl-C stops every part of the stack, not just the parent.
    for key in (
        "COUNTERSIGN_TEMPORAL_ADDRESS",
        "COUNTERSIGN_SYSTEMS__SHOP__URL",
        "COUNTERSIGN_GATEWAY_URL",
    ):
        assert not port_open(port_of(env[key])), f"{key} still answers after Ctrl-C"


def test_ops_start_approver_decides_auditor_reads(dev_stack: dict[str, str]) -> None:
    started = countersign(
        dev_stack,
        "start",
        "--task",
        "Refund order A-1006: kettle cracked.",
        "--subject",
        "order_id=A-1006",
        "--as",
        "ops-dana",
        "--id",
        "e2e-cli-1",
    )
    assert started.returncode == 0, started.stderr
    assert "started e2e-cli-1" in started.stdout and "/workflows/e2e-cli-1" in started.stdout

    request_id = None
    for _ in range(100):
        status = countersign(dev_stack, "status", "e2e-cli-1")
        found = re.search(r"waiting: (apr_\w+) payments\.refund", status.stdout)
        if found:
            request_id = found.group(1)
            break
        time.sleep(0.2)
    assert request_id, status.stdout + status.stderr

    self_approval = countersign(dev_stack, "approve", "e2e-cli-1", request_id, "--as", "ops-dana")
    assert self_approval.returncode == 2
    assert "requested this run and cannot approve" in self_approval.stderr

    approved = countersign(
        dev_stack, "approve", "e2e-cli-1", request_id, "--as", "alice", "--comment", "photo checked"
    )
    assert approved.returncode == 0, approved.stderr
    assert f"{request_id}: approved (1/1 approvals)" in approved.stdout

    for _ in range(100):
        audit = countersign(dev_stack, "audit", "e2e-cli-1")
        if "run completed" in audit.stdout:
            break
        time.sleep(0.2)
    story = audit.stdout
    assert "decision refused (ops-dana)" in story
    assert "APPROVED by alice via cli" in story
    assert re.search(r"EXECUTED payments\.refund\(.*amount=129\.00 USD.*\) → ", story), story
    assert story.index("APPROVED by alice") < story.index("EXECUTED payments.refund")

    verify = countersign(dev_stack, "audit", "verify")
    assert verify.returncode == 0 and "audit chain intact" in verify.stdout


def test_demo_runs_on_the_running_stack(dev_stack: dict[str, str]) -> None:
    demo = countersign(dev_stack, "demo", timeout=120)
    assert demo.returncode == 0, demo.stdout + demo.stderr
    out = demo.stdout
    assert out.count("run completed") == 2
    assert "verdict ALLOW payments.refund [refund.automatic]" in out
    assert "verdict NEEDS_APPROVAL payments.refund [refund.over_50]" in out
    assert "APPROVED by alice via cli" in out
    assert out.count("EXECUTED payments.refund") == 2
    assert re.search(r"Audit chain: \d+ records, intact", out)


def test_bad_input_is_a_clear_error_not_a_traceback(dev_stack: dict[str, str]) -> None:
    bad = countersign(
        dev_stack,
        "start",
        "--task",
        "Refund A-1001",
        "--as",
        "dana",
        "--agent",
        "support-refunds",
        "--context",
        "order_id",
    )
    assert bad.returncode == 2
    assert "--context 'order_id': expected KEY=VALUE" in bad.stderr
    assert "Traceback" not in bad.stderr
    unknown = countersign(dev_stack, "audit", "no-such-run")
    assert unknown.returncode == 2 and "no audit records for run 'no-such-run'" in unknown.stderr


def test_dev_stack_mails_an_approval_link_that_decides(dev_stack: dict[str, str]) -> None:
    """What a person does with `countersign dev`: open the caught email, click, confirm."""
    started = countersign(
        dev_stack,
        "start",
        "--task",
        "Refund order A-1054: pan rusted.",
        "--subject",
        "order_id=A-1054",
        "--as",
        "ops-dana",
        "--id",
        "e2e-mail-1",
    )
    assert started.returncode == 0, started.stderr
    mail = Path(dev_stack["COUNTERSIGN_STATE_DIR"]) / "mail"
    for _ in range(150):
        caught = [p for p in mail.glob("*bob@example.com*.eml") if b"A-1054" in p.read_bytes()]
        if caught:
            break
        time.sleep(0.2)
    assert caught, sorted(p.name for p in mail.glob("*"))
    message = email.message_from_bytes(caught[0].read_bytes(), policy=email.policy.default)
    text = message.get_body(preferencelist=("plain",)).get_content()  # type: ignore[union-attr]
    approve = re.search(r"Approve: (http://\S+)", text)
    assert approve, text
    with httpx.Client(timeout=10) as http:
        page = http.get(approve.group(1))
        assert page.status_code == 200 and "Approve this action?" in page.text
        form = dict(re.findall(r"name='(token|csrf)' value='([^']+)'", page.text))
        decided = http.post(page.url.copy_with(query=None), data=form)
    assert decided.status_code == 200 and "Approved by bob" in decided.text
    for _ in range(100):
        audit = countersign(dev_stack, "audit", "e2e-mail-1")
        if "run completed" in audit.stdout:
            break
        time.sleep(0.2)
    assert "APPROVED by bob via email" in audit.stdout
    assert "EXECUTED payments.refund" in audit.stdout


def test_kill_switch_and_policy_activation_need_a_verified_operator(
    dev_stack: dict[str, str],
) -> None:
    unsigned = countersign(dev_stack, "kill", "tool", "payments.refund")
    assert unsigned.returncode == 2 and "--as NAME" in unsigned.stderr
    outsider = countersign(dev_stack, "revive", "all", "--as", "ops-dana")
    assert outsider.returncode == 2
    assert "ops-dana has no kill_switch authority" in outsider.stderr
    killed = countersign(dev_stack, "kill", "tool", "payments.refund", "--as", "erin")
    assert killed.returncode == 0, killed.stderr
    assert "tools stopped: payments.refund" in killed.stdout
    revived = countersign(dev_stack, "revive", "tool", "payments.refund", "--as", "erin")
    assert "tools stopped: none" in revived.stdout
    status = countersign(dev_stack, "kill", "status")
    assert "tools stopped: none" in status.stdout and "ignored" not in status.stdout

    listed = countersign(dev_stack, "identity", "show")
    assert listed.returncode == 0 and "erin" in listed.stdout and "gateway" in listed.stdout
    activation = countersign(dev_stack, "policy", "activate", "--as", "alice")
    assert activation.returncode == 0, activation.stderr  # recorded; counts only with authority
    assert "activated pol_" in activation.stdout


def test_start_refuses_what_the_run_would_refuse_before_saying_started(
    dev_stack: dict[str, str],
) -> None:
    nope = countersign(
        dev_stack, "start", "--agent", "nope", "--task", "Refund A-1001", "--as", "dana"
    )
    assert nope.returncode == 2 and nope.stdout == ""
    assert nope.stderr == (
        "countersign: invalid run input: agent: unknown agent 'nope' "
        "(known: crm-updates, support-planner, support-readonly, support-refunds)\n"
    )
    short = countersign(dev_stack, "start", "--task", "hi", "--as", "dana")
    assert short.returncode == 2 and short.stdout == ""
    assert short.stderr.startswith("countersign: invalid run input: task: ")
    assert len(short.stderr.splitlines()) == 1


def temporal_start(env: dict[str, str], workflow_id: str, payload: str) -> None:
    """Start a run as someone in the Temporal UI would: any JSON, no validation."""
    temporal = Path(sys.executable).parent / "temporal"
    subprocess.run(
        [
            str(temporal),
            "workflow",
            "start",
            "--address",
            env["COUNTERSIGN_TEMPORAL_ADDRESS"],
            "--type",
            "AgentRun",
            "--task-queue",
            "countersign",
            "--workflow-id",
            workflow_id,
            "--input",
            payload,
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )


def test_status_of_a_run_that_failed_on_invalid_input_says_why(
    dev_stack: dict[str, str],
) -> None:
    temporal_start(dev_stack, "e2e-bad-input", '{"agent": "support-refunds"}')
    for _ in range(100):
        status = countersign(dev_stack, "status", "e2e-bad-input")
        if "failed" in status.stdout:
            break
        time.sleep(0.2)
    assert status.returncode == 0, status.stderr
    assert status.stdout == (
        "e2e-bad-input: failed: invalid run input: task: Field required; "
        "requested_by: Field required\n"
    )
    as_json = countersign(dev_stack, "status", "e2e-bad-input", "-o", "json")
    shown = json.loads(as_json.stdout)
    assert (shown["status"], shown["cause"]) == (
        "failed",
        status.stdout.split(": failed: ")[1].strip(),
    )


def test_status_shows_denied_actions_with_rule_and_reason_and_money_as_money(
    dev_stack: dict[str, str],
) -> None:
    started = countersign(
        dev_stack,
        "start",
        "--agent",
        "support-readonly",
        "--task",
        "Refund order A-1003: the desk wobbles.",
        "--as",
        "ops-dana",
        "--id",
        "e2e-denied",
        "-o",
        "json",
    )
    assert started.returncode == 0, started.stderr
    assert json.loads(started.stdout)["workflow_id"] == "e2e-denied"
    for _ in range(150):
        status = countersign(dev_stack, "status", "e2e-denied")
        if status.stdout.startswith("e2e-denied: completed"):
            break
        time.sleep(0.2)
    assert status.stdout.startswith("e2e-denied: completed"), status.stdout + status.stderr
    denied = [line for line in status.stdout.splitlines() if line.strip().startswith("denied")]
    assert denied, status.stdout
    assert re.fullmatch(
        r" +denied +payments\.refund \[[^]]*scope\.not_granted[^]]*\] agent 'support-readonly' "
        r"is not granted scope 'payments:refund', which payments\.refund needs",
        denied[0],
    ), denied


def test_waiting_status_shows_money_with_its_currency(dev_stack: dict[str, str]) -> None:
    started = countersign(
        dev_stack,
        "start",
        "--task",
        "Refund order A-1009: the desk lamp flickers.",
        "--subject",
        "order_id=A-1009",
        "--as",
        "ops-dana",
        "--id",
        "e2e-money",
    )
    assert started.returncode == 0, started.stderr
    for _ in range(100):
        status = countersign(dev_stack, "status", "e2e-money")
        if "waiting:" in status.stdout or ": completed" in status.stdout:
            break
        time.sleep(0.2)
    assert re.search(
        r"waiting: apr_\w+ payments\.refund\(order_id=A-1009, amount=159\.00 USD, reason=",
        status.stdout,
    ), status.stdout
    assert status.stdout.startswith("e2e-money: running, stage waiting for approval")


def test_address_and_namespace_flags_override_settings(dev_stack: dict[str, str]) -> None:
    wrong = {**dev_stack, "COUNTERSIGN_TEMPORAL_ADDRESS": f"127.0.0.1:{free_port()}"}
    right = dev_stack["COUNTERSIGN_TEMPORAL_ADDRESS"]
    # global flags go before or after the command, as with `temporal`
    for args in (
        ("--address", right, "status", "e2e-cli-1"),
        ("status", "e2e-cli-1", "--address", right),
    ):
        done = countersign(wrong, *args)
        assert done.returncode == 0 and done.stdout.startswith("e2e-cli-1: "), done.stderr
    other = countersign(dev_stack, "status", "e2e-cli-1", "--namespace", "nowhere")
    assert other.returncode == 2 and len(other.stderr.splitlines()) == 1
    assert "nowhere" in other.stderr and "Traceback" not in other.stderr


@pytest.mark.parametrize(
    "args",
    [
        ("status", "e2e-cli-1"),
        ("approve", "e2e-cli-1", "apr_0000000000000000", "--as", "alice"),
        ("start", "--task", "Refund order A-1001: broken", "--as", "ops-dana"),
    ],
)
def test_temporal_down_or_wrong_address_is_one_line_exit_1(
    dev_stack: dict[str, str], args: tuple[str, ...]
) -> None:
    dead = f"127.0.0.1:{free_port()}"
    done = countersign(dev_stack, "--address", dead, *args)
    assert done.returncode == 1
    assert done.stderr.startswith(f"countersign: cannot reach Temporal at {dead}: ")
    assert len(done.stderr.splitlines()) == 1 and "Traceback" not in done.stderr
