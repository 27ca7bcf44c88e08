"""Verification Service Class (PS3.4 Annex A): C-ECHO as SCP and SCU."""

from __future__ import annotations

from dicomstore.dimse import CEchoRQ, CEchoRSP
from dicomstore.uids import VERIFICATION

SUCCESS = 0x0000


def echo_response(rq: CEchoRQ) -> CEchoRSP:
    """The C-ECHO-RSP an SCP answers to a C-ECHO-RQ (PS3.7 9.3.5, always Success)."""
    return CEchoRSP(
        message_id_being_responded_to=rq.message_id,
        status=SUCCESS,
        affected_sop_class_uid=rq.affected_sop_class_uid or VERIFICATION,
    )
