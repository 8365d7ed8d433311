"""Policy activation: a policy version counts only once a verified person activated it.

Editing the policy folder is not enough: `countersign policy activate [FOLDER] --as NAME`
signs the folder's version with NAME's key and appends it to the audit trail (kind
`policy.activated`), which every worker of the deployment reads. A worker puts a new version in
force only when such an activation verifies against the identity directory and NAME is in a
group that the policy *in force* names under `[authority] policy` (the first policy a worker
loads vouches for itself). Until then the previous version stays in force and the guard logs
why. The candidate policy (shadow evaluation) is never enforced and needs no activation.
"""

from __future__ import annotations

from datetime import UTC, datetime

from countersign.guardrails.activation import ACTIVATED, POLICY_STREAM, activation_gate
from countersign.guardrails.audit import AuditStore
from countersign.guardrails.identity import Directory, Envelope, Signer
from countersign.guardrails.policy import PolicyBundle


def activate(audit: AuditStore, policy: PolicyBundle, signer: Signer) -> Envelope:
    """Sign `policy`'s version as `signer` and append the activation to the audit trail."""
    envelope = signer.sign(
        purpose="policy",
        channel="cli",
        now=datetime.now(UTC),
        claims={"version": policy.version, "path": str(policy.path)},
    )
    audit.append_sync(
        record_id=f"{POLICY_STREAM}/{envelope.statement.nonce}",
        workflow_id=POLICY_STREAM,
        run_id="",
        kind=ACTIVATED,
        actor=f"operator:{signer.identity}",
        data={
            "version": policy.version,
            "path": str(policy.path),
            "envelope": envelope.model_dump(mode="json"),
        },
    )
    return envelope


def ensure_activated(
    audit: AuditStore, policy: PolicyBundle, directory: Directory, who: str
) -> None:
    """Development only (`countersign dev`, the demo): activate `policy` as `who` (with the
    development key in this keyring) unless a verified activation exists."""
    from countersign.workers.identities import signer_for

    if activation_gate(audit, lambda: directory)(policy, None) is not None:
        activate(audit, policy, signer_for(who))
