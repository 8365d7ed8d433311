"""Every mistake that can be caught when a worker starts is caught there, in one line that
says what to fix: the tools' systems and credentials, business keys and compensations, agent
scopes, and what the policy names."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import keyring
import pytest
from pydantic import BaseModel

from countersign.activities.agent_specs import AGENTS, AgentSpec, AgentSpecError
from countersign.activities.tools import (
    REGISTRY,
    ToolContext,
    ToolDeclarationError,
    Undo,
    guarded_tool,
)
from countersign.credentials import SERVICE, CredentialError, set_secret
from countersign.guardrails.policy import DEFAULT_POLICY_PATH, PolicyError
from countersign.settings import Settings, SettingsError, SystemSettings, load_settings
from countersign.workers.worker import check_startup


class ChargeArgs(BaseModel):
    invoice_id: str
    amount_cents: int


class Charge(BaseModel):
    charge_id: str


class VoidArgs(BaseModel):
    charge_id: str


@pytest.fixture
def registry() -> Iterator[Callable[..., None]]:
    """Declare billing tools for one test; the registry is restored afterwards."""
    saved = dict(REGISTRY)

    def declare(**options: Any) -> None:
        @guarded_tool("billing.void", scope="billing:write", system=options.get("system"))
        async def void(args: VoidArgs, ctx: ToolContext) -> Charge:
            """Void a charge."""
            raise NotImplementedError

        @guarded_tool("billing.charge", scope="billing:write", **options)
        async def charge(args: ChargeArgs, ctx: ToolContext) -> Charge:
            """Charge an invoice."""
            raise NotImplementedError

    yield declare
    REGISTRY.clear()
    REGISTRY.update(saved)


def one_line_error(error: type[Exception], settings: Settings) -> str:
    with pytest.raises(error) as caught:
        check_startup(settings)
    message = str(caught.value)
    assert "\n" not in message
    return message


def with_billing(settings: Settings) -> Settings:
    systems = {
        **settings.systems,
        "billing": SystemSettings(url="http://127.0.0.1:9", credential="billing"),
    }
    return settings.model_copy(update={"systems": systems})


def test_a_tool_whose_system_is_not_configured_stops_the_start(
    settings: Settings, registry: Callable[..., None]
) -> None:
    registry(system="billing")
    assert one_line_error(SettingsError, settings) == (
        "tool billing.void calls system 'billing', which is not configured: set "
        "COUNTERSIGN_SYSTEMS__BILLING__URL (configured: shop)"
    )


def test_a_tool_whose_credential_is_missing_stops_the_start(
    settings: Settings, registry: Callable[..., None]
) -> None:
    registry(system="billing")
    message = one_line_error(CredentialError, with_billing(settings))
    assert message.startswith("system 'billing' (tool billing.void): secret 'billing' is not in")
    assert message.endswith("store it with: countersign secrets set billing")
    set_secret("billing", "token")  # configured and stored: the start goes on
    try:
        check_startup(with_billing(settings))
    finally:
        keyring.delete_password(SERVICE, "billing")


def test_a_business_key_that_reads_a_missing_field_stops_the_start(
    settings: Settings, registry: Callable[..., None]
) -> None:
    registry(business_key=lambda a: f"{a.invoice}:{a.amount_cents}")
    assert one_line_error(ToolDeclarationError, settings) == (
        "tool billing.charge: business_key reads a field that does not exist: "
        "'ChargeArgs' object has no attribute 'invoice'"
    )


def test_a_compensation_that_reads_a_missing_field_stops_the_start(
    settings: Settings, registry: Callable[..., None]
) -> None:
    registry(compensate=Undo("billing.void", lambda args, result: {"charge_id": result.id}))
    assert one_line_error(ToolDeclarationError, settings) == (
        "tool billing.charge: compensate reads a field that does not exist: "
        "'Charge' object has no attribute 'id'"
    )


def test_a_compensation_with_wrong_arguments_stops_the_start(
    settings: Settings, registry: Callable[..., None]
) -> None:
    registry(compensate=Undo("billing.void", lambda args, result: {"charge": result.charge_id}))
    assert one_line_error(ToolDeclarationError, settings) == (
        "tool billing.charge: compensate gives billing.void unknown argument(s) charge; "
        "missing required charge_id (its arguments: charge_id)"
    )


def test_a_valid_declaration_starts(settings: Settings, registry: Callable[..., None]) -> None:
    registry(
        business_key=lambda a: f"{a.invoice_id}:{a.amount_cents}",
        compensate=Undo("billing.void", lambda args, result: {"charge_id": result.charge_id}),
    )
    check_startup(settings)


def test_an_agent_scope_that_matches_no_tool_stops_the_start(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    typo = AgentSpec(name="typo", description="x", system_prompt="x", scopes=["payments:refnd"])
    monkeypatch.setitem(AGENTS, "typo", typo)
    message = one_line_error(AgentSpecError, settings)
    assert message.startswith("agent typo: scope 'payments:refnd' matches no registered tool")
    assert "payments:refund" in message  # what would have been accepted


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (
            ("[modes]\n", '[modes]\n"support-refund" = "shadow"\n'),
            "[modes] names agent 'support-refund', which is not declared",
        ),
        (
            ('default_mode = "automate"', 'default_mode = "automate"\naugment_groups = ["leads"]'),
            "augment_groups names group 'leads', which [groups] does not define",
        ),
        (
            ('tool = "payments.refund"\nsum', 'tool = "payments.refnd"\nsum'),
            "counter 'agent_refunded_today_cents': tool 'payments.refnd' is not registered",
        ),
        (
            ('sum = "amount_cents"', 'sum = "amount"'),
            "counter 'agent_refunded_today_cents': sum 'amount' is not an integer argument of "
            "payments.refund (integer arguments: amount_cents)",
        ),
    ],
)
def test_a_policy_that_names_what_does_not_exist_stops_the_start(
    settings: Settings, tmp_path: Path, edit: tuple[str, str], expected: str
) -> None:
    folder = tmp_path / "policy"
    shutil.copytree(DEFAULT_POLICY_PATH, folder)
    toml = folder / "policy.toml"
    text = toml.read_text()
    assert edit[0] in text
    toml.write_text(text.replace(edit[0], edit[1], 1))
    message = one_line_error(PolicyError, settings.model_copy(update={"policy_path": folder}))
    assert message == f"{toml}: {expected}" or message.startswith(f"{toml}: {expected} (")


def test_adding_a_system_keeps_the_default_shop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COUNTERSIGN_SYSTEMS__BILLING__URL", "http://billing.internal")
    systems = load_settings().systems
    assert sorted(systems) == ["billing", "shop"]
    assert systems["billing"].credential == "billing"
    assert systems["shop"].url == "http://127.0.0.1:8101"
    monkeypatch.setenv("COUNTERSIGN_SYSTEMS__SHOP__CREDENTIAL", "shop-prod")
    shop = load_settings().systems["shop"]  # a partial override keeps the default URL
    assert (shop.url, shop.credential) == ("http://127.0.0.1:8101", "shop-prod")


def countersign(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "countersign.workers", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("command", ["worker", "dev", "demo"])
def test_a_settings_error_is_one_line_without_a_traceback(command: str, tmp_path: Path) -> None:
    done = countersign(
        command,
        COUNTERSIGN_STATE_DIR=str(tmp_path),
        COUNTERSIGN_SYSTEMS__BILLING__TIMEOUT_SECONDS="3",
    )
    assert done.returncode == 2
    assert done.stderr == (
        "countersign: invalid settings: COUNTERSIGN_SYSTEMS__BILLING__URL: Field required\n"
    )


def test_a_worker_with_a_policy_naming_an_unknown_agent_says_so_in_one_line(
    settings: Settings, tmp_path: Path
) -> None:
    folder = tmp_path / "policy"
    shutil.copytree(DEFAULT_POLICY_PATH, folder)
    toml = folder / "policy.toml"
    toml.write_text(toml.read_text().replace("[modes]\n", '[modes]\n"nobody" = "shadow"\n'))
    done = countersign(
        "worker",
        COUNTERSIGN_STATE_DIR=str(settings.state_dir),
        COUNTERSIGN_SYSTEMS__SHOP__URL=settings.systems["shop"].url,
        COUNTERSIGN_POLICY_PATH=str(folder),
        COUNTERSIGN_REQUIRE_POLICY_ACTIVATION="false",  # activation is tested on its own
        COUNTERSIGN_TEMPORAL_ADDRESS="127.0.0.1:9",  # never reached: the check comes first
    )
    assert done.returncode == 2
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr
    assert lines[0].startswith(f"countersign: {toml}: [modes] names agent 'nobody'")


BAD_TOOL = """
from pydantic import BaseModel
from countersign.activities.tools import ToolContext, guarded_tool
from countersign.workers.cli import main

class Args(BaseModel):
    invoice_id: str

class Result(BaseModel):
    ok: bool

@guarded_tool("billing.charge", scope="payments:refund", business_key=lambda a: a.invoice)
async def charge(args: Args, ctx: ToolContext) -> Result:
    '''Charge an invoice.'''
    raise NotImplementedError

main(["worker"])
"""


def test_a_tool_declaration_error_is_one_line_from_the_worker_command(
    settings: Settings,
) -> None:
    done = subprocess.run(
        [sys.executable, "-c", BAD_TOOL],
        env={**os.environ, "COUNTERSIGN_STATE_DIR": str(settings.state_dir)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr == (
        "countersign: tool billing.charge: business_key reads a field that does not exist: "
        "'Args' object has no attribute 'invoice'\n"
    )
