"""DIMSE (PS3.7), sans-I/O: command sets, messages, fragmentation and assembly.

Incoming: feed each PDV from the upper layer to :class:`DimseAssembler`; it
yields :class:`CommandReceived` (a decoded message) and one
:class:`DatasetFragment` per data set PDV.  Outgoing: ``message.encode()``,
then :func:`command_pdvs` / :func:`dataset_pdvs` cut to the peer's maximum PDU
length, and the UL connection sends each in its own P-DATA-TF
(``Connection.send_each``).
"""

from typing import TYPE_CHECKING

from dicomstore.dimse import status
from dicomstore.dimse.assembler import (
    MAX_COMMAND_LENGTH,
    CommandReceived,
    DatasetFragment,
    DimseAssembler,
    Event,
)
from dicomstore.dimse.commands import BadValue, decode_command, encode_command
from dicomstore.dimse.decoding import (
    GenericRSP,
    InvalidRequest,
    Message,
    UnknownCommand,
    decode_message,
)
from dicomstore.dimse.fragments import (
    DEFAULT_FRAGMENT,
    command_pdvs,
    dataset_pdvs,
    max_pdv_data,
)
from dicomstore.dimse.messages import (
    C_CANCEL_RQ,
    C_ECHO_RQ,
    C_ECHO_RSP,
    C_STORE_RQ,
    C_STORE_RSP,
    PRIORITY_HIGH,
    PRIORITY_LOW,
    PRIORITY_MEDIUM,
    CEchoRQ,
    CEchoRSP,
    CStoreRQ,
    CStoreRSP,
)
from dicomstore.ul.pdu import PDV_OVERHEAD

if TYPE_CHECKING:
    from dicomstore.dimse.normalized_messages import (
        N_ACTION_RQ,
        N_ACTION_RSP,
        N_EVENT_REPORT_RQ,
        N_EVENT_REPORT_RSP,
        NActionRQ,
        NActionRSP,
        NEventReportRQ,
        NEventReportRSP,
    )
    from dicomstore.dimse.query_messages import C_FIND_RQ, C_FIND_RSP, CCancelRQ, CFindRQ, CFindRSP
    from dicomstore.dimse.retrieve_messages import (
        C_GET_RQ,
        C_GET_RSP,
        C_MOVE_RQ,
        C_MOVE_RSP,
        CGetRQ,
        CGetRSP,
        CMoveRQ,
        CMoveRSP,
        RetrieveRQ,
        RetrieveRSP,
        SubOperations,
    )

#: Names of the Q/R and normalized message families, loaded when first used
#: (``dicomstore send`` needs none of them; decoding loads them by command field).
_LAZY = {
    **dict.fromkeys(
        ("N_ACTION_RQ", "N_ACTION_RSP", "N_EVENT_REPORT_RQ", "N_EVENT_REPORT_RSP")
        + ("NActionRQ", "NActionRSP", "NEventReportRQ", "NEventReportRSP"),
        "normalized_messages",
    ),
    **dict.fromkeys(
        ("C_FIND_RQ", "C_FIND_RSP", "CCancelRQ", "CFindRQ", "CFindRSP"), "query_messages"
    ),
    **dict.fromkeys(
        ("C_GET_RQ", "C_GET_RSP", "C_MOVE_RQ", "C_MOVE_RSP", "CGetRQ", "CGetRSP")
        + ("CMoveRQ", "CMoveRSP", "RetrieveRQ", "RetrieveRSP", "SubOperations"),
        "retrieve_messages",
    ),
}


def __getattr__(name: str) -> object:
    """The lazily loaded names (PEP 562)."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


__all__ = [
    "BadValue",
    "C_CANCEL_RQ",
    "C_ECHO_RQ",
    "C_ECHO_RSP",
    "C_STORE_RQ",
    "C_STORE_RSP",
    "C_FIND_RQ",
    "C_FIND_RSP",
    "C_GET_RQ",
    "C_GET_RSP",
    "C_MOVE_RQ",
    "C_MOVE_RSP",
    "CCancelRQ",
    "CEchoRQ",
    "CEchoRSP",
    "CFindRQ",
    "CFindRSP",
    "CGetRQ",
    "CGetRSP",
    "CMoveRQ",
    "CMoveRSP",
    "CStoreRQ",
    "CStoreRSP",
    "CommandReceived",
    "DEFAULT_FRAGMENT",
    "DatasetFragment",
    "DimseAssembler",
    "Event",
    "GenericRSP",
    "InvalidRequest",
    "MAX_COMMAND_LENGTH",
    "Message",
    "PDV_OVERHEAD",
    "PRIORITY_HIGH",
    "PRIORITY_LOW",
    "PRIORITY_MEDIUM",
    "N_ACTION_RQ",
    "N_ACTION_RSP",
    "N_EVENT_REPORT_RQ",
    "N_EVENT_REPORT_RSP",
    "NActionRQ",
    "NActionRSP",
    "NEventReportRQ",
    "NEventReportRSP",
    "RetrieveRQ",
    "RetrieveRSP",
    "SubOperations",
    "UnknownCommand",
    "command_pdvs",
    "dataset_pdvs",
    "decode_command",
    "decode_message",
    "encode_command",
    "max_pdv_data",
    "status",
]
