"""The README's copy-paste inputs for the Temporal UI are valid and do what the README says."""

from __future__ import annotations

import json
import re
from pathlib import Path

from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from countersign.activities.agent_specs import AGENTS
from countersign.agents.run import AgentRun
from countersign.agents.state import RunInput
from tests.agents.test_agent_run import wait_for_pending
from tests.conftest import signed, start_run

README = Path(__file__).parent.parent.parent / "README.md"


def ui_inputs() -> dict[str, dict[str, object]]:
    section = README.read_text().split("### Starting a run from the Temporal UI")[1]
    section = section.split("\n## ")[0]
    blocks = [json.loads(b) for b in re.findall(r"```json\n(.*?)\n```", section, re.S)]
    return {str(b["agent"]): b for b in blocks if "agent" in b}


async def test_readme_has_a_working_ui_input_for_every_agent(
    temporal: WorkflowEnvironment, worker: Worker
) -> None:
    inputs = ui_inputs()
    assert set(inputs) == set(AGENTS)
    for raw in inputs.values():
        RunInput.model_validate(raw)

    refunds = await start_run(temporal.client, worker.task_queue, **inputs["support-refunds"])
    (request,) = await wait_for_pending(refunds)
    assert request.tool == "payments.refund" and request.need.eligible == ["alice", "bob"]
    await refunds.execute_update(
        AgentRun.decide,
        signed(refunds.id, request, "bob", approve=False, comment="test"),
    )
    await refunds.result()

    readonly = await start_run(temporal.client, worker.task_queue, **inputs["support-readonly"])
    statuses = {a.tool: a.status for a in (await readonly.result()).actions}
    assert statuses["orders.lookup"] == "executed"
    assert statuses["payments.refund"] == "denied"

    crm = await start_run(temporal.client, worker.task_queue, **inputs["crm-updates"])
    statuses = {a.tool: a.status for a in (await crm.result()).actions}
    assert statuses["crm.update_contact"] == "executed"
