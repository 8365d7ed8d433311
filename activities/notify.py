"""Notifications to approvers: where a request is announced and its outcome shown.

A failed notification never fails a run: the request stays answerable from the CLI and the
Temporal UI, and the failure is logged.
"""

from __future__ import annotations

import structlog
from temporalio import activity

from activities.contracts import NOTIFY, ApprovalNotice
from activities.runtime import Runtime

log = structlog.get_logger(__name__)


class NotifyActivities:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    @activity.defn(name=NOTIFY)
    async def notify(self, notice: ApprovalNotice) -> list[str]:
        """Announce on every configured channel; returns the channels used."""
        request = notice.request
        log.info(
            f"approval.{notice.event}",
            request_id=request.request_id,
            action=request.summary(),
            status=request.status,
            how=f"countersign approve {notice.workflow_id} {request.request_id} --as NAME",
        )
        return ["log"]
