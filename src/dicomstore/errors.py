"""Errors shared by every layer (the h11 model, see DESIGN.md).

``LocalProtocolError`` is our own misuse of the protocol (a bug: raise it).
``RemoteProtocolError`` is the peer's fault: the upper layer turns it into an
A-ABORT with the source and reason it carries (PS3.8 9.3.8) or an
A-ASSOCIATE-RJ, and the caller gets an event.
"""

from __future__ import annotations


class DicomstoreError(Exception):
    """Base class of every error raised by dicomstore."""


class LocalProtocolError(DicomstoreError):
    """We tried to do something the protocol does not allow in this state."""


class RemoteProtocolError(DicomstoreError):
    """The peer sent something malformed or unexpected (PS3.8 9.3.8 reasons).

    ``reason`` is the A-ABORT reason/diag for a service-provider abort:
    0 not specified, 1 unrecognized PDU, 2 unexpected PDU,
    4 unrecognized PDU parameter, 5 unexpected PDU parameter,
    6 invalid PDU parameter value.
    """

    def __init__(self, message: str, reason: int = 0) -> None:
        super().__init__(message)
        self.reason = reason
        #: Good PDUs decoded before the bad one in the same read (PDUReader.parse).
        self.pdus: list = []


class AssociationError(DicomstoreError):
    """An association could not be used (base of the user-facing failures)."""


#: What an abort says of a peer of another protocol (``ul.pdu``): no retry helps
#: (``storage_scu.classify``; review100 W12: send retried it 3 times, ~7 s).
NOT_A_DICOM_PEER = ("the peer is not a DICOM application entity", "the peer speaks TLS")
#: What an abort says of a server that refused our TLS client certificate, or the want
#: of one (``tls.alert_words``): no retry helps either (review107 L2).
CERTIFICATE_REFUSED = (
    "the server requires a client certificate",
    "the server refused our certificate",
)


class AssociationRejected(AssociationError):
    """The peer answered A-ASSOCIATE-RJ (PS3.8 9.3.4)."""

    def __init__(self, result: int, source: int, reason: int) -> None:
        from dicomstore.ul.pdu import describe_reject

        super().__init__(describe_reject(result, source, reason))
        self.result = result
        self.source = source
        self.reason = reason

    @property
    def transient(self) -> bool:
        """True for "rejected-transient" (result 2): trying later may work."""
        return self.result == 2


class AssociationAborted(AssociationError):
    """The association ended by A-ABORT or A-P-ABORT (PS3.8 7.3, 7.4)."""

    def __init__(self, message: str, source: int | None = None, reason: int | None = None):
        super().__init__(message)
        self.source = source
        self.reason = reason


class DimseTimeout(AssociationError):
    """No DIMSE response arrived in time."""
