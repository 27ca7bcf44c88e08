"""The audit records of Storage Commitment reports (PS3.4 J.3.3; PS3.15 A.5.3): a
report taken by its requester, and a request dropped never reported."""

from __future__ import annotations

from typing import Any

from dicomstore.archive.commitment import Verdict
from dicomstore.archive.commitment_journal import CommitmentRequest


def report_record(
    request: CommitmentRequest, verdicts: list[Verdict], how: str, status: int
) -> dict[str, Any]:
    """A report sent and answered ``status``, ``how`` (on which association)."""
    return {
        "event": "commitment",
        "phase": "report",
        "transaction_uid": request.transaction_uid,
        "calling_ae": request.calling_ae,
        "address": request.address,
        "references": len(verdicts),
        "committed": sum(v.committed for v in verdicts),
        "failed": [
            {"sop_instance_uid": v.reference.sop_instance_uid, "reason": v.failure_reason}
            for v in verdicts
            if not v.committed
        ],
        "reported": how,
        "status": f"{status:04X}",
    }


def dropped_record(transaction_uid: str, why: str) -> dict[str, Any]:
    """A request accepted (0000) that is dropped, never reported (review117 F6: its
    request's record was the last word of the audit trail on it)."""
    return {
        "event": "commitment",
        "phase": "dropped",
        "transaction_uid": transaction_uid,
        "calling_ae": None,
        "address": None,
        "references": None,
        "committed": 0,
        "failed": [],
        "reported": f"never: {why}",
        "status": None,
    }
