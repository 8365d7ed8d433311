"""Generic webhook: signed notices out, signed decisions back."""

from __future__ import annotations

import json
import time

from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from countersign.activities.channels.webhook import signed_headers, verify
from countersign.activities.runtime import Runtime
from countersign.agents.run import AgentRun
from countersign.workers.gateway import Gateway
from tests.agents.test_agent_run import wait_for_pending
from tests.conftest import signed, start_run
from tests.gateway.conftest import WEBHOOK_SECRET, FakeSlack, gateway_http, wait_until


async def test_signed_notice_goes_out_and_only_a_signed_fresh_callback_decides(
    temporal: WorkflowEnvironment,
    worker: Worker,
    gateway: Gateway,
    fake_slack: FakeSlack,
    channel_runtime: Runtime,
) -> None:
    handle = await start_run(
        temporal.client, worker.task_queue, task="Refund order A-1009: webhook test."
    )
    (request,) = await wait_for_pending(handle)

    def delivered() -> list[tuple[dict[str, str], dict[str, object]]]:
        return [
            (headers, json.loads(body))
            for headers, body in fake_slack.hooks
            if handle.id in body.decode()
        ]

    ((headers, notice),) = await wait_until(delivered, "the webhook notice")
    body = next(b for h, b in fake_slack.hooks if handle.id in b.decode())
    assert verify(WEBHOOK_SECRET, headers, body) is None
    assert headers["x-countersign-signature"].startswith("sha256=")
    assert notice["event"] == "requested"
    assert notice["request"]["request_id"] == request.request_id  # type: ignore[index]
    assert notice["deciders"] == ["alice", "bob"]
    reference = notice["reference"]
    assert notice["decide"]["url"] == f"{gateway.settings.gateway_url}/webhook/decision"  # type: ignore[index]

    # bob's own decision, signed with his key, relayed by the integration.
    bobs = signed(handle.id, request, "bob", approve=False, comment="duplicate")
    decision = json.dumps(
        {"reference": reference, "envelope": bobs.model_dump(mode="json")}
    ).encode()
    async with gateway_http(gateway) as http:

        async def post(content: bytes, headers: dict[str, str]) -> tuple[int, dict[str, object]]:
            r = await http.post("/webhook/decision", content=content, headers=headers)
            return r.status_code, r.json()

        assert (await post(decision, signed_headers("wrong-secret", decision)))[0] == 401
        stale = signed_headers(WEBHOOK_SECRET, decision, now=time.time() - 301)
        assert (await post(decision, stale))[0] == 401
        tampered = decision.replace(b'"duplicate"', b'"approved!"')
        assert (await post(tampered, signed_headers(WEBHOOK_SECRET, decision)))[0] == 401
        assert (await post(decision, {"Content-Type": "application/json"}))[0] == 401
        not_json = b'{"reference": 1}'
        status, error = await post(not_json, signed_headers(WEBHOOK_SECRET, not_json))
        assert status == 400 and error["error"] == "invalid decision"
        unknown = json.dumps({"reference": "ref_unknown000", "approve": True}).encode()
        status, _ = await post(unknown, signed_headers(WEBHOOK_SECRET, unknown))
        assert status == 404

        async def post_signed(callback: dict[str, object]) -> tuple[int, dict[str, object]]:
            body = json.dumps({"reference": reference, **callback}).encode()
            return await post(body, signed_headers(WEBHOOK_SECRET, body))

        # The shared secret never speaks for a person: a name in the body is refused here,
        status, refused = await post_signed({"approver": "alice", "approve": True})
        assert status == 403 and "speaks as 'webhook' only" in str(refused["reason"])
        # a person's envelope edited in transit is refused by the run,
        edited = bobs.model_dump(mode="json")
        edited["statement"]["approve"] = True
        status, refused = await post_signed({"envelope": edited})
        assert status == 409 and "signature does not match" in str(refused["reason"])
        # and the integration as itself decides only where the policy lets it (it does not).
        status, refused = await post_signed({"approve": True})
        assert status == 409 and "webhook may not decide" in str(refused["reason"])
        assert (await handle.query(AgentRun.status)).pending_approvals

        status, receipt = await post(decision, signed_headers(WEBHOOK_SECRET, decision))
        assert status == 200
        assert receipt == {"status": "rejected", "approvals": 0, "quorum": 1, "approver": "bob"}

    result = await handle.result()
    assert [a.status for a in result.actions if a.tool == "payments.refund"] == ["rejected"]
    (decided,) = channel_runtime.audit.find(handle.id, "approval.decided")
    assert decided.actor == "cli:bob" and decided.data["comment"] == "duplicate"
    gateway_refusals = [
        r
        for r in channel_runtime.audit.find(handle.id, "approval.refused")
        if "alice" in str(r.data)
    ]
    assert gateway_refusals  # the name-in-body forgery is audited too
    # The outcome is announced too.
    settled = await wait_until(
        lambda: [n for _, n in delivered() if n["event"] == "settled"], "the settled notice"
    )
    assert settled[0]["outcome"] == "Rejected by bob: duplicate"
