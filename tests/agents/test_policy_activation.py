"""A policy edit is enforced only once a verified person with the authority activates it:
someone who can write the policy folder cannot loosen the guard by themselves."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from temporalio.testing import WorkflowEnvironment

from countersign.activities.runtime import Runtime
from countersign.agents.run import AgentRun
from countersign.guardrails.policy import load_policy
from countersign.settings import Settings
from countersign.workers.identities import signer_for
from countersign.workers.policies import activate
from countersign.workers.worker import check_startup
from tests.conftest import Shop, signed, start_run, worker_for


@pytest.fixture
async def gated(
    temporal: WorkflowEnvironment, settings: Settings, tmp_path: Path, task_queue: str
) -> AsyncIterator[tuple[Runtime, str, Path]]:
    """A worker whose policy folder needs activation; the folder is activated by erin."""
    folder = tmp_path / "policy"
    shutil.copytree(settings.policy_path, folder)  # the default, with the session's roomy limits
    fields = settings.model_dump()
    fields.update(policy_path=folder, require_policy_activation=True)
    gated_settings = Settings(**fields)
    runtime = check_startup(settings)  # the session's, to sign with its audit store
    activate(runtime.audit, load_policy(folder, None), signer_for("erin"))
    gated_runtime = check_startup(gated_settings)
    async with worker_for(temporal.client, gated_settings, gated_runtime, task_queue) as worker:
        yield gated_runtime, worker.task_queue, folder


async def refund_a_1002(temporal: WorkflowEnvironment, task_queue: str, shop: Shop) -> str:
    """A 189.00 refund: "waited" if it waited for a person (rejected here), or "executed"."""
    shop.reset()
    handle = await start_run(temporal.client, task_queue, task="Refund order A-1002: it leaks.")
    while True:
        status = await handle.query(AgentRun.status)
        if status.pending_approvals:
            (request,) = status.pending_approvals
            await handle.execute_update(AgentRun.decide, signed(handle.id, request, "bob", False))
            await handle.result()
            assert shop.refunds("A-1002") == []
            return "waited"
        if status.stage.startswith(("completed", "stopped")):
            result = await handle.result()
            (refund,) = [a for a in result.actions if a.tool == "payments.refund"]
            return refund.status
        await asyncio.sleep(0.05)


async def test_a_loosened_policy_waits_for_a_verified_activation(
    temporal: WorkflowEnvironment, gated: tuple[Runtime, str, Path], shop: Shop
) -> None:
    runtime, task_queue, folder = gated
    assert await refund_a_1002(temporal, task_queue, shop) == "waited"

    # Someone with write access to the folder makes refunds up to 500.00 automatic.
    rules = folder / "refunds.cedar"
    text = rules.read_text().replace("amount_cents <= 5000 }", "amount_cents <= 50000 }")
    rules.write_text(text.replace("amount_cents > 5000 &&", "amount_cents > 50000 &&"))
    loosened = load_policy(folder, None)
    assert await refund_a_1002(temporal, task_queue, shop) == "waited"
    assert "is not activated" in str(runtime.policy.last_error)
    # An activation signed by someone without the authority changes nothing either,
    activate(runtime.audit, loosened, signer_for("mallory"))
    assert await refund_a_1002(temporal, task_queue, shop) == "waited"
    # not even when the edit also names her a duty manager: the policy *in force* says who
    # may activate the next one.
    settings_file = folder / "policy.toml"
    settings_file.write_text(
        settings_file.read_text().replace(
            'duty-managers = ["erin"]', 'duty-managers = ["erin", "mallory"]'
        )
    )
    promoted = load_policy(folder, None)
    assert promoted.has_authority("mallory", "policy")
    activate(runtime.audit, promoted, signer_for("mallory"))
    assert await refund_a_1002(temporal, task_queue, shop) == "waited"
    # An activation of another version (the first edit) does not count for this one.
    activate(runtime.audit, loosened, signer_for("erin"))
    assert await refund_a_1002(temporal, task_queue, shop) == "waited"

    activate(runtime.audit, promoted, signer_for("erin"))
    assert await refund_a_1002(temporal, task_queue, shop) == "executed"
    assert runtime.policy.current().version == promoted.version
    assert len(shop.refunds("A-1002")) == 1
