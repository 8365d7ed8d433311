"""The Temporal Web UI as the ops console, in a real browser (Debian chromium, Playwright):
start a run from "Start Workflow", find it waiting, approve it with the `decision` signal, and
read its encrypted payloads through the codec server."""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from urllib.parse import quote

import pytest
from temporalio.client import Client

from countersign.activities.runtime import Runtime
from countersign.agents.run import AgentRun
from countersign.credentials import ensure_secret
from countersign.settings import Settings
from countersign.workers.codec import ENCODING
from countersign.workers.codec_server import capability_endpoint
from countersign.workers.devstack import Service, free_port, start_codec_server, start_temporal
from countersign.workers.worker import build_worker, connect
from tests.conftest import CHROMIUM_ARGS, Shop, signed

playwright = pytest.importorskip("playwright.async_api")

ARTIFACTS = Path(__file__).parent.parent.parent / "test-artifacts" / "temporal-ui"


@dataclass
class UiStack:
    settings: Settings
    client: Client


@pytest.fixture(scope="module")
async def ui_stack(
    settings: Settings, runtime: Runtime, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[UiStack]:
    """A dev server with its UI (configured with the codec server), the codec server, and a
    worker on the task queue the README names; the shop and model are the session's."""
    if shutil.which("chromium") is None:
        pytest.skip("Debian chromium is not installed (apt-get install chromium)")
    temporal_port, ui_port = free_port(), free_port()
    ui = settings.model_copy(
        update={
            "temporal_address": f"127.0.0.1:{temporal_port}",
            "temporal_ui_url": f"http://127.0.0.1:{ui_port}",
            "codec_url": f"http://127.0.0.1:{free_port()}",
            # The dev server's UI has no login: it reads payloads as `countersign dev` does.
            "codec_capability_url": True,
            "task_queue": "countersign",
        }
    )
    endpoint = capability_endpoint(ui, ensure_secret(ui.codec_token_credential))
    services: list[Service] = []
    try:
        services.append(start_codec_server(settings.state_dir, ui))
        server_dir = tmp_path_factory.mktemp("ui-temporal")
        services.append(start_temporal(server_dir, temporal_port, ui_port, endpoint))
        client = await connect(ui)
        async with build_worker(
            client, ui, runtime, sticky_queue_schedule_to_start_timeout=timedelta(seconds=2)
        ):
            yield UiStack(ui, client)
    finally:
        for service in reversed(services):
            service.stop()


@pytest.fixture
async def page(ui_stack: UiStack) -> AsyncIterator[object]:
    async with playwright.async_playwright() as p:
        browser = await p.chromium.launch(
            executable_path=shutil.which("chromium"), args=CHROMIUM_ARGS
        )
        page = await browser.new_page(viewport={"width": 1400, "height": 1100})
        try:
            yield page
        finally:
            await browser.close()


async def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=ARTIFACTS / f"{name}.png", full_page=True)


async def type_json(page, container, value: dict[str, object]) -> None:
    """The UI's payload editor is CodeMirror: focus it, type, and leave it (it reformats the
    JSON on blur, which moves the buttons below it)."""
    editor = container.locator(".cm-content").first
    await editor.click()
    await page.keyboard.insert_text(json.dumps(value))
    await editor.blur()
    await page.wait_for_timeout(300)


async def test_ops_start_a_run_in_the_ui_find_it_waiting_and_approve_it_there(
    ui_stack: UiStack, page, shop: Shop, runtime: Runtime
) -> None:
    expect = playwright.expect
    ui = ui_stack.settings.temporal_ui_url
    workflow_id = f"ui-refund-A-1006-{uuid.uuid4().hex[:6]}"
    before = len(shop.refunds("A-1006"))

    # Start Workflow: id, task queue, type, one JSON payload (encoded by the codec server).
    await page.goto(f"{ui}/namespaces/default/workflows/start-workflow")
    await page.get_by_test_id("workflowId").fill(workflow_id)
    await page.get_by_test_id("taskQueue").fill("countersign")
    await page.get_by_test_id("workflowType").fill("AgentRun")
    await type_json(
        page,
        page,
        {
            "agent": "support-refunds",
            "task": "Refund order A-1006: the glass kettle cracked.",
            "subject": {"order_id": "A-1006"},
            "requested_by": "ops-dana",
        },
    )
    await expect(page.get_by_text("Task Queue is Active")).to_be_visible(timeout=15_000)
    await shot(page, "1-start-workflow-form")
    await page.get_by_test_id("start-workflow-button").click()
    await expect(page.get_by_text("Workflow started successfully").first).to_be_visible()

    # The run waits; its current details say for what, who may decide, and how.
    handle = ui_stack.client.get_workflow_handle_for(AgentRun.run, workflow_id)
    await page.goto(f"{ui}/namespaces/default/workflows/{workflow_id}")
    await page.get_by_role("tab", name="User Metadata").click()
    # The UI renders current details (markdown) in a sandboxed iframe.
    frame = page.frame_locator("iframe").first
    details = frame.get_by_text("Waiting for approval", exact=True)
    for _ in range(10):  # current details come from a query: reload until the run waits
        try:
            await expect(details).to_be_visible(timeout=3000)
            break
        except AssertionError:
            await page.reload()
            await page.get_by_role("tab", name="User Metadata").click()
    await expect(details).to_be_visible()
    (request,) = (await handle.query(AgentRun.status)).pending_approvals
    await expect(frame.get_by_text(request.request_id).first).to_be_visible()
    await expect(frame.get_by_text("amount=129.00 USD").first).to_be_visible()
    await expect(frame.get_by_text("1 of alice, bob (support-leads)").first).to_be_visible()
    # The evidence the guard fetched itself, with its source, and the agent's claim apart.
    await expect(frame.get_by_text("captured=129.00 USD").first).to_be_visible()
    await expect(frame.get_by_text("claim (not verified)").first).to_be_visible()
    await shot(page, "2-waiting-current-details")

    # The `status` query shows the pending request and the actions so far.
    await page.get_by_role("tab", name="Queries").click()
    await expect(page.get_by_role("button", name="status")).to_be_visible()
    await page.get_by_role("button", name="Run Query").click()
    answer = page.get_by_role("textbox", name="Query Result")
    await expect(answer).to_contain_text(request.request_id, timeout=15_000)
    await expect(answer).to_contain_text('"stage": "waiting for approval"')
    await shot(page, "2b-status-query")

    # The list page finds it with the search attribute filter.
    query = f'CountersignWaiting = true AND WorkflowId = "{workflow_id}"'
    await page.goto(f"{ui}/namespaces/default/workflows?query={quote(query)}")
    await expect(page.get_by_role("link", name=workflow_id)).to_be_visible(timeout=15_000)
    await shot(page, "3-list-filtered-waiting")

    async def send_decision_signal(payload: dict, name: str) -> None:
        """More Actions → Send a Signal → decision, with `payload` typed as JSON."""
        await page.goto(f"{ui}/namespaces/default/workflows/{workflow_id}")
        await page.get_by_role("button", name="More Actions").click()
        await page.get_by_role("menuitem", name="Send a Signal").click()
        dialog = page.get_by_role("dialog", name="Send a Signal")
        await dialog.get_by_role("button", name="Select a signal").click()
        await page.get_by_role("option", name="decision").click()
        await type_json(page, dialog, payload)
        await shot(page, name)
        await dialog.get_by_role("button", name="Submit").click()

    # A typed name decides nothing: refused, audited, and shown under Current Details.
    typed = {"request_id": request.request_id, "approver": "alice", "approve": True}
    await send_decision_signal(typed, "4-typed-name-signal")
    for _ in range(100):
        if runtime.audit.find(workflow_id, "approval.refused"):
            break
        await asyncio.sleep(0.1)
    (refusal,) = runtime.audit.find(workflow_id, "approval.refused")
    assert "typed name proves nothing" in refusal.data["reason"]
    await page.reload()
    await page.get_by_role("tab", name="User Metadata").click()
    refused = page.frame_locator("iframe").first.get_by_text("Refused decisions")
    await expect(refused.first).to_be_visible(timeout=15_000)
    await shot(page, "4b-refusal-in-current-details")
    assert len(shop.refunds("A-1006")) == before

    # What works: alice pastes the envelope `countersign approve … --as alice --print` prints.
    pasted = signed(
        workflow_id, request, "alice", channel="temporal-ui", lifetime=timedelta(minutes=30)
    )
    await send_decision_signal({"envelope": pasted.model_dump(mode="json")}, "4c-signed-signal")

    result = await handle.result()
    refund = next(a for a in result.actions if a.tool == "payments.refund")
    assert refund.status == "executed" and refund.approved_by == ["alice"]
    assert len(shop.refunds("A-1006")) == before + 1
    (decided,) = runtime.audit.find(workflow_id, "approval.decided")
    assert decided.data["channel"] == "temporal-ui" and decided.actor == "temporal-ui:alice"

    await page.reload()
    await expect(page.get_by_text("Completed").first).to_be_visible(timeout=15_000)
    # Input and result are encrypted in history; the UI shows them decoded by the codec server.
    await expect(page.get_by_text(f'"{result.final_message}"').first).to_be_visible(timeout=15_000)
    await expect(page.get_by_text("the glass kettle cracked").first).to_be_visible()
    # (How the UI shows a payload it could not decode: metadata in base64.)
    await expect(page.get_by_text(base64.b64encode(ENCODING).decode())).to_have_count(0)
    # Activity summaries label the timeline (local activities show their type only).
    await expect(page.get_by_text("notify: settled").first).to_be_visible()
    await shot(page, "5-completed-decoded")
