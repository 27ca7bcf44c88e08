"""Verification Service Class (PS3.4 Annex A): C-ECHO as SCP and SCU.

C-ECHO is answered Success only on a presentation context of the Verification
SOP Class naming it: on any other context (a storage context, say) it is
Refused: SOP Class Not Supported, 0122 (PS3.7 9.1.5.1.4, Annex C). A PDV on a
context that was not accepted never gets here: the association is aborted
(``acceptor.py``, PS3.8 7.1.1.13, 9.3.5.1).
"""

from __future__ import annotations

from dicomstore.dimse import CEchoRQ, CEchoRSP
from dicomstore.status import SOP_CLASS_NOT_SUPPORTED
from dicomstore.uids import VERIFICATION

SUCCESS = 0x0000


def echo_refusal(rq: CEchoRQ, abstract_syntax: str) -> CEchoRSP | None:
    """0122 for a C-ECHO-RQ on a context of ``abstract_syntax`` other than Verification,
    or naming another SOP class; ``None`` when it may be answered. (The Error Comment
    is cut to 64 characters on the wire: the UID comes last.)"""
    if abstract_syntax != VERIFICATION:
        comment = f"not a Verification context: {abstract_syntax}"
    elif (rq.affected_sop_class_uid or VERIFICATION) != VERIFICATION:
        comment = f"C-ECHO of SOP class {rq.affected_sop_class_uid}"
    else:
        return None
    return rq.response(SOP_CLASS_NOT_SUPPORTED, comment)


def echo_response(rq: CEchoRQ) -> CEchoRSP:
    """The C-ECHO-RSP an SCP answers to a C-ECHO-RQ (PS3.7 9.3.5, always Success)."""
    return CEchoRSP(
        message_id_being_responded_to=rq.message_id,
        status=SUCCESS,
        affected_sop_class_uid=rq.affected_sop_class_uid or VERIFICATION,
    )
