"""Events the upper layer delivers to its user: the indications and
confirmations of the PS3.8 7 service primitives."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from dicomstore.ul.pdu import PDV, AssociateAC, AssociateRJ, AssociateRQ


@dataclass(slots=True)
class AssociateIndication:
    """A-ASSOCIATE indication: a peer asks for an association (PS3.8 7.1)."""

    request: AssociateRQ


@dataclass(slots=True)
class AssociateAccepted:
    """A-ASSOCIATE confirmation (accept)."""

    accept: AssociateAC


@dataclass(slots=True)
class AssociateRejected:
    """A-ASSOCIATE confirmation (reject); the transport is then closed."""

    reject: AssociateRJ


@dataclass(slots=True)
class DataIndication:
    """P-DATA indication: the PDVs of one received P-DATA-TF (PS3.8 7.6)."""

    pdvs: Sequence[PDV]


@dataclass(slots=True)
class ReleaseIndication:
    """A-RELEASE indication; ``collision`` when both sides asked (PS3.8 7.2)."""

    collision: bool = False


@dataclass(slots=True)
class ReleaseConfirmation:
    """A-RELEASE confirmation: the peer agreed to release."""


@dataclass(slots=True)
class AbortIndication:
    """A-ABORT (peer user, ``provider`` False) or A-P-ABORT indication (PS3.8 7.3, 7.4)."""

    source: int
    reason: int
    provider: bool
    message: str


ULEvent = (
    AssociateIndication
    | AssociateAccepted
    | AssociateRejected
    | DataIndication
    | ReleaseIndication
    | ReleaseConfirmation
    | AbortIndication
)
