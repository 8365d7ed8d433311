"""Which policy versions were activated: a version counts only once a verified person in a
group of `[authority] policy` of the policy in force signed it (workers/policies.py writes the
activations to the audit trail; this gate reads them, for the policy source)."""

from __future__ import annotations

from collections.abc import Callable

from countersign.guardrails.audit import AuditStore
from countersign.guardrails.identity import Directory, Envelope, StatementRefused, verify
from countersign.guardrails.policy import ActivationGate, PolicyBundle

ACTIVATED = "policy.activated"
# The audit trail's "run" for policy activations (they belong to no workflow).
POLICY_STREAM = "policy"


def activation_gate(audit: AuditStore, directory: Callable[[], Directory]) -> ActivationGate:
    def gate(candidate: PolicyBundle, active: PolicyBundle | None) -> str | None:
        authority = active or candidate
        for record in reversed(audit.find(POLICY_STREAM, ACTIVATED, version=candidate.version)):
            envelope = Envelope.model_validate(record.data["envelope"])
            if envelope.statement.purpose != "policy":
                continue
            try:
                who = verify(envelope, directory(), envelope.statement.issued_at).identity
            except StatementRefused:
                continue
            if authority.has_authority(who, "policy"):
                return None
        return (
            f"policy {candidate.version} in {candidate.path} is not activated: run `countersign "
            f"policy activate {candidate.path} --as NAME` (NAME in a group of [authority] policy "
            f"of the policy in force)"
        )

    return gate
