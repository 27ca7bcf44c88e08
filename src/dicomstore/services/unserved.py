"""The answer to a request that no service here takes (PS3.7 C.5.6 0211), or that
dimse/ decoded as invalid (its own refusal, e.g. 0212 mistyped)."""

from __future__ import annotations

from typing import Any

from dicomstore.dimse import N_ACTION_RQ, N_EVENT_REPORT_RQ, InvalidRequest, UnknownCommand
from dicomstore.dimse import status as st

#: Requests dimse/ decodes that no service here takes (N-ACTION without the Storage
#: Commitment SCP, N-EVENT-REPORT always): answered 0211 (PS3.7 C.5.6).
NOT_SERVED = {N_ACTION_RQ: "N-ACTION", N_EVENT_REPORT_RQ: "N-EVENT-REPORT"}


def unserved_response(message: Any, commitments: bool) -> Any:
    """The response to ``message`` (an invalid or unknown request, an N-ACTION-RQ or an
    N-EVENT-REPORT-RQ none of the SCPs took); ``commitments``: the Storage Commitment
    SCP serves N-ACTION here."""
    served = message.command_field not in NOT_SERVED or (
        message.command_field == N_ACTION_RQ and commitments
    )
    if served and isinstance(message, InvalidRequest | UnknownCommand):
        return message.response()
    return message.response(  # decoded, but no service takes it
        st.UNRECOGNIZED_OPERATION,
        f"{NOT_SERVED.get(message.command_field)} is not supported here",
    )
